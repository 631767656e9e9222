"""The paper's setting: MovieLens 25M, a teacher LLM's targets, two-stage training (paper §3-4).

Run:  python -m elm_jax.main --config=configs/movielens.py --workdir=runs/ml25m --config.data.path=/data/ml-25m.zip
Args: --config=configs/movielens.py:llm=gemma3-270m  (or any .gguf file / Hugging Face folder)
      --config=configs/movielens.py:job=prepare|train|evaluate
      --config=configs/movielens.py:targets=file  (your own JSONL targets: --config.targets.file=...)

Schedule as the paper's (§4): stage 1 for 20k steps and stage 2 for 300k steps at batch 32 (about seven
epochs of the ~1.4M movie-task examples). The paper does not give learning rates, lengths or precision;
these are the values we chose (README "Training"). Sized for one accelerator host: bf16 compute with
float32 master weights, layers scanned; for pod slices see configs/pod.py.
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = default.parse_arg(arg, llm="smollm2-135m-instruct", job="train", targets="teacher")
    c = default.get_config(f"llm={args.llm},job={args.job}")
    c.data.source = "movielens"
    c.data.path = ml_collections.config_dict.placeholder(str)  # ml-25m.zip or its extracted folder: required
    c.data.catalog.wals = dict(rank=64, l2=50.0, alpha=10.0, iterations=15)
    c.targets.source = args.targets  # teacher (paper §3.1) | file; metadata exists only for the default
    c.targets.tasks = c.eval.tasks = ("movie", "user")  # the paper's 24 movie tasks and the user profile
    c.targets.per_task = None  # every training entity
    c.targets.test_per_task = 200
    c.llm.dtype = "bfloat16"
    c.train.batch_size = 32
    c.train.max_len = 512
    c.train.eval_examples = 512
    c.stage1 = default.stage_config(
        trainable=r"adapters_.*", steps=20_000, learning_rate=1e-3, warmup_steps=500, eval_every=2_000, save_every=1_000
    )
    c.stage2 = default.stage_config(
        trainable=r".*", steps=300_000, learning_rate=2e-5, warmup_steps=1_000, eval_every=10_000, save_every=5_000
    )
    c.stage2.weight_decay = 0.01
    c.eval.max_examples_per_task = 200
    c.report.interpolation_tasks = (  # the paper's Fig. 3 and Fig. 4 tasks and sweeps
        "summary",
        "positive_review",
        "negative_review",
        "neutral_review",
        "five_pos_char",
        "long_description",
        "pitch",
    )
    c.report.sweep_tasks = ("five_pos_char", "long_description")
    c.report.alphas = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    c.report.user_alphas = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    c.report.n_movie_concepts, c.report.n_user_concepts = 4, 12
    c.report.n_movies = c.report.n_users = 32
    return c
