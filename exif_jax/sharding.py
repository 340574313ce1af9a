"""Device mesh from the config, and partition rules (regex over parameter paths -> PartitionSpec) as data.

Three mesh axes: "data" (pure data parallel: params replicated), "fsdp" (batch split too, and large
matrices sharded ZeRO-3 style: gathered just in time by XLA), "tensor" (Megatron-style: attention
heads and the MLP hidden dim split, activations all-reduced). The batch is split over ("data", "fsdp").
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# A rule's spec is either a PartitionSpec (one entry per dim, applied only when its rank matches) or
# FSDP, which means "the largest still-unsharded dim that the fsdp axis size divides".
FSDP = "fsdp"
Rule = tuple[str, "P | str"]

# Every rule whose regex matches (re.search on the path, e.g. "image/Transformer/encoderblock_3/
# MlpBlock_3/Dense_0/kernel") contributes, in order, to dims still free; a mesh axis is used at most once
# per array and only where its size divides the dim, so a rule never makes an array unshardable.
# Optimizer moments carry the parameter's path as a suffix ("opt_state/0/mu/image/..."), so they get the
# same layout as their parameter.
TENSOR_RULES: list[Rule] = [
    # Attention: q/k/v project D -> (heads, head_dim); split heads. The output projection takes
    # (heads, head_dim) -> D, split on heads: one all-reduce per attention block.
    (r"(query|key|value)/kernel$", P(None, "tensor", None)),
    (r"(query|key|value)/bias$", P("tensor", None)),
    (r"(query|key|value)/kernel$", P(None, "tensor")),  # the same as plain [D, D] Linears
    (r"(query|key|value)/bias$", P("tensor")),
    (r"(out|proj|out_proj)/kernel$", P("tensor", None, None)),
    (r"(?:Attention|attn)[^/]*/(out|proj|out_proj)/kernel$", P("tensor", None)),
    # MLP: the first matmul splits its output (columns), the second its input (rows).
    (r"Mlp[^/]*/Dense_0/kernel$", P(None, "tensor")),
    (r"Mlp[^/]*/Dense_0/bias$", P("tensor")),
    (r"Mlp[^/]*/Dense_1/kernel$", P("tensor", None)),
    (r"(mlp|Mlp[^/]*)/(fc1|linear1|up)/kernel$", P(None, "tensor")),
    (r"(mlp|Mlp[^/]*)/(fc1|linear1|up)/bias$", P("tensor")),
    (r"(mlp|Mlp[^/]*)/(fc2|linear2|down)/kernel$", P("tensor", None)),
]
FSDP_RULES: list[Rule] = [
    # Matrices, conv kernels and embedding tables; vectors (norms, biases) stay replicated.
    (r"(kernel|embedding|pos_embedding|posemb[^/]*)$", FSDP),
]
DEFAULT_RULES: list[Rule] = TENSOR_RULES + FSDP_RULES


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes with at most one -1 resolved to the remaining devices."""
    sizes = [int(mesh_config.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} does not fit {num_devices} devices")
    sizes = [num_devices // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} of "
                         f"{num_devices} devices; set one axis to -1 or make the product match")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(mesh_config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over all (or the given) devices."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = mesh_shape(mesh_config, len(devices))
    # Auto axis types, on purpose: the shardings that matter (params, optimizer state, batch) are
    # pinned at the jit boundary and XLA's propagation places the FSDP all-gathers and the tensor-parallel
    # all-reduces inside. Explicit axes would make every matmul in the towers spell out its output
    # sharding (an FSDP-sharded kernel times a batch sharded over the same "fsdp" axis is an error
    # there), and the losses' shard_map would reject inputs that are not already laid out as it asks.
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def path_str(path: Sequence[Any]) -> str:
    """'a/b/c' for a pytree key path, without nnx's trailing '/value' (the Variable's payload)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    if parts and parts[-1] == "value":
        parts.pop()
    return "/".join(parts)


def spec_for(path: str, shape: Sequence[int], axis_sizes: dict[str, int], rules: Sequence[Rule],
             fsdp_min_size: int = 2**14) -> P:
    """The PartitionSpec that `rules` give an array of `shape` at `path` on a mesh of `axis_sizes`."""
    dims: list[str | None] = [None] * len(shape)
    used: set[str] = set()
    for pattern, spec in rules:
        if not re.search(pattern, path):
            continue
        if isinstance(spec, str):  # FSDP: largest free dim divisible by the axis size
            n = axis_sizes.get(spec, 1)
            if n <= 1 or spec in used or math.prod(shape) < fsdp_min_size:
                continue
            free = [i for i, d in enumerate(shape) if dims[i] is None and d % n == 0]
            if free:
                i = max(free, key=lambda j: (shape[j], -j))  # ties: the earlier dim
                dims[i] = spec
                used.add(spec)
            continue
        if len(spec) != len(shape):
            continue
        for i, axis in enumerate(spec):
            if axis is None or dims[i] is not None or axis in used:
                continue
            n = axis_sizes.get(axis, 1)
            if n > 1 and shape[i] % n == 0:
                dims[i] = axis
                used.add(axis)
    while dims and dims[-1] is None:
        dims.pop()
    return P(*dims)


def state_shardings(state: Any, mesh: Mesh, rules: Sequence[Rule] = DEFAULT_RULES,
                    fsdp_min_size: int = 2**14) -> Any:
    """A pytree like `state` (an nnx.State or any pytree of arrays / ShapeDtypeStructs) of NamedShardings."""
    axis_sizes = dict(mesh.shape)

    def one(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        return NamedSharding(mesh, spec_for(path_str(path), shape, axis_sizes, rules, fsdp_min_size))

    return jax.tree_util.tree_map_with_path(one, state)


def batch_sharding(mesh: Mesh, batch_axes: Sequence[str] = BATCH_AXES) -> NamedSharding:
    """Leading dim split over the batch axes, the rest replicated."""
    return NamedSharding(mesh, P(tuple(batch_axes)))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def describe(state: Any, shardings: Any) -> list[str]:
    """One line per array, 'path shape spec', for logs and for checking the rules by eye."""
    lines = []
    for (path, leaf), sh in zip(jax.tree_util.tree_leaves_with_path(state), jax.tree_util.tree_leaves(shardings)):
        lines.append(f"{path_str(path)} {tuple(leaf.shape)} {sh.spec}")
    return lines
