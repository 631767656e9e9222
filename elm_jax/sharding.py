"""Device mesh and the mapping from logical parameter axes to mesh axes (MaxText-style rules).

A rule list is `((logical_name, mesh_axes), ...)`; the first rule naming a logical axis wins. A
dimension that a mesh axis cannot divide, or whose mesh axis an earlier dimension of the same
array already uses, is replicated instead of failing: SmolLM2's 3 KV heads on a tensor axis of 2
must still load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Parameters: FSDP over `fsdp`, Megatron-style tensor parallelism over `tensor`.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
    ("adapter_in", None),
    ("adapter_hidden", "tensor"),
)


def _rule_table(rules: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name, axes in rules:
        table.setdefault(name, axes)
    return table


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh over `MESH_AXES`; one axis may be -1 (all remaining devices). Auto axes: GSPMD propagation."""
    devices = list(devices if devices is not None else jax.devices())
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh axes {sorted(unknown)} are unknown; use {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {dict(shape)}: at most one axis may be -1")
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % fixed:
            raise ValueError(f"mesh {dict(shape)}: {len(devices)} devices are not divisible by {fixed}")
        sizes[sizes.index(-1)] = len(devices) // fixed
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {len(devices)}")
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def spec_for(
    shape: Sequence[int], names: Sequence[str | None], mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES
) -> P:
    """PartitionSpec for one array from its logical axis names."""
    table = _rule_table(rules)
    used: set[str] = set()
    spec = []
    for size, name in zip(shape, names):
        axes = table.get(name) if name is not None else None
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
        if not axes or size % math.prod(mesh.shape[a] for a in axes):
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Any:
    """NamedShardings for a tree whose leaves are `nn.LogicallyPartitioned` (e.g. from eval_shape(init))."""

    def one(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            return NamedSharding(mesh, spec_for(leaf.value.shape, leaf.names, mesh, rules))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, boxed_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def batch_sharding(mesh: Mesh, ndim: int, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> NamedSharding:
    """Leading axis over the batch mesh axes, the rest replicated."""
    axes = _rule_table(rules).get("batch")
    axes = tuple(a for a in ((axes,) if isinstance(axes, str) else axes or ()) if mesh.shape[a] > 1)
    lead = None if not axes else axes[0] if len(axes) == 1 else axes
    return NamedSharding(mesh, P(lead, *([None] * (ndim - 1))))


def batch_divisor(mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> int:
    """Global batch sizes must be multiples of this (the number of batch shards)."""
    spec = batch_sharding(mesh, 1, rules).spec[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else spec
    return int(np.prod([mesh.shape[a] for a in axes]))


def to_host(x: Any) -> np.ndarray:
    """An array as float32 numpy on this host, gathered from other hosts' shards where it spans several (a
    collective then: every process must call it for the same arrays)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x), np.float32)
