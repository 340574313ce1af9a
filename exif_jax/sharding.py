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
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# A rule's spec is either a PartitionSpec (one entry per dim, applied only when its rank matches) or
# FSDP, which means "the largest still-unsharded dim that the fsdp axis size divides".
FSDP = "fsdp"
Rule = tuple[str, "P | str"]

# Every rule whose regex matches (re.search on the path, e.g. "image/Transformer/encoderblock_3/
# MlpBlock_0/Dense_0/kernel") contributes, in order, to dims still free; a mesh axis is used at most once
# per array and only where its size divides the dim, so a rule never makes an array unshardable.
# Optimizer moments carry the parameter's path as a suffix ("opt/1/0/mu/image/..."), so they get the
# same layout as their parameter. tests/test_sharding.py builds every tower kind and checks that each rule
# matches a real parameter and that every attention/MLP kernel is split as below.
_ATTN = r"MultiHeadDotProductAttention_\d+"  # models/vit.py: ViT and text-transformer blocks, the MAP head
_MLP = r"MlpBlock_\d+"
TENSOR_RULES: list[Rule] = [
    # Megatron-style: q/k/v and the MLP's first matmul split their output (column parallel), the attention
    # output and the MLP's second matmul their input (row parallel), so each block needs one all-reduce
    # after attention and one after the MLP, and nothing in between.
    # big_vision layout (models/vit.py, models/text.py): q/k/v kernels [D, heads, head_dim] split on heads,
    # out [heads, head_dim, D] on heads.
    (rf"{_ATTN}/(query|key|value)/kernel$", P(None, "tensor", None)),
    (rf"{_ATTN}/(query|key|value)/bias$", P("tensor", None)),
    (rf"{_ATTN}/out/kernel$", P("tensor", None, None)),
    (rf"{_MLP}/Dense_0/kernel$", P(None, "tensor")),
    (rf"{_MLP}/Dense_0/bias$", P("tensor")),
    (rf"{_MLP}/Dense_1/kernel$", P("tensor", None)),
    # DistilBERT (models/distilbert.py): [D, D] Linears whose output is reshaped to (heads, head_dim), so a
    # split of the output dim is a split of the heads (whole heads when heads % tensor == 0).
    (r"attention/(q_lin|k_lin|v_lin)/kernel$", P(None, "tensor")),
    (r"attention/(q_lin|k_lin|v_lin)/bias$", P("tensor")),
    (r"attention/out_lin/kernel$", P("tensor", None)),
    (r"ffn/lin1/kernel$", P(None, "tensor")),
    (r"ffn/lin1/bias$", P("tensor")),
    (r"ffn/lin2/kernel$", P("tensor", None)),
    # Not tensor-parallel, on purpose: embeddings, the towers' projections (image/head, image/fc,
    # text/head: their output feeds the loss whole) and ResNet's convolutions (its activations are far
    # larger than its 25M weights, so splitting channels would all-reduce more than it saves). FSDP
    # shards all of them.
]
FSDP_RULES: list[Rule] = [
    # Embed tables (looked up by id: text Embed_0, DistilBERT's word/position tables) split their rows only.
    # A table split on its feature dim makes the lookup's output feature-sharded, and XLA carries that
    # layout into the next matmul, all-reducing whole global activations instead of gathering weights
    # (8 fake devices, fsdp=8, batch 256: vocab 1001 moved ~40x the collective bytes of vocab 1000). A table
    # whose row count the axis does not divide stays replicated (DistilBERT's 30522 rows: 94 MB in f32).
    (r"(Embed_\d+|word_embeddings|position_embeddings)/embedding$", P("fsdp", None)),
    # Every other matrix: Linear / LinearGeneral / Conv kernels (all towers and their projections) and the
    # learned position embeddings that are added, not looked up. Vectors (norms, biases), the cls token and
    # the MAP probe stay replicated.
    (r"(kernel|pos_embedding)$", FSDP),
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
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    try:
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
    except NotImplementedError:
        # jax.make_mesh lays each mesh axis over whole axes of the TPU torus (it splits one only on v5e). A
        # v4/v5p 4x4x4 has no set of physical axes of size 8, so fsdp=8 there needs one split: still every chip
        # once, the axis then rides part of a ring. Meshes that fit the torus whole keep jax's layout.
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return Mesh(grid, MESH_AXES, axis_types=axis_types)


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
            if axis == "fsdp" and math.prod(shape) < fsdp_min_size:
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


def _per_device_bytes(leaf: Any, sh: NamedSharding) -> float:
    """Bytes of `leaf` that one device holds under `sh` (replicated dims count whole)."""
    size = math.prod(leaf.shape) * jax.numpy.dtype(leaf.dtype).itemsize
    split = 1
    for entry in sh.spec:
        for axis in (entry if isinstance(entry, tuple) else (entry,)):
            split *= sh.mesh.shape[axis] if axis is not None else 1
    return size / split


def overview(params: Any, shardings: Any, opt_state: Any = None, opt_shardings: Any = None,
             max_specs: int = 3) -> str:
    """A table for the start-up log: per top-level group its arrays, parameters, MiB, MiB per device and
    layouts (share of the group's elements per spec); then the total, with the optimizer state's bytes."""
    groups: dict[str, dict[str, Any]] = {}
    mesh = None
    for (path, leaf), sh in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(shardings)):
        mesh = sh.mesh
        g = groups.setdefault(path_str(path).split("/")[0], dict(arrays=0, n=0, bytes=0, dev=0.0, specs={}))
        n = math.prod(leaf.shape)
        g["arrays"] += 1
        g["n"] += n
        g["bytes"] += n * jax.numpy.dtype(leaf.dtype).itemsize
        g["dev"] += _per_device_bytes(leaf, sh)
        spec = "P(" + ",".join(repr(e) if e is not None else "None" for e in sh.spec) + ")"
        g["specs"][spec] = g["specs"].get(spec, 0) + n
    mib = 2.0**20
    mesh_txt = " ".join(f"{k}={v}" for k, v in (mesh.shape.items() if mesh is not None else ()))
    lines = [f"parameters and their layout (mesh {mesh_txt}; optimizer moments follow their parameter)",
             f"{'group':<8} {'arrays':>6} {'params':>10} {'MiB':>9} {'MiB/dev':>9}  layouts (share of elements)"]
    for name, g in groups.items():
        specs = sorted(g["specs"].items(), key=lambda kv: -kv[1])
        shown = [f"{s} {100 * k / max(g['n'], 1):.0f}%" for s, k in specs[:max_specs]]
        if len(specs) > max_specs:
            rest = sum(k for _, k in specs[max_specs:])
            shown.append(f"{len(specs) - max_specs} more {100 * rest / max(g['n'], 1):.0f}%")
        lines.append(f"{name:<8} {g['arrays']:>6} {g['n'] / 1e6:>9.2f}M {g['bytes'] / mib:>9.1f} "
                     f"{g['dev'] / mib:>9.1f}  {', '.join(shown)}")
    n_total = sum(g["n"] for g in groups.values())
    arrays, nbytes = sum(g["arrays"] for g in groups.values()), sum(g["bytes"] for g in groups.values())
    dev = sum(g["dev"] for g in groups.values())
    total = (f"{'total':<8} {arrays:>6} {n_total / 1e6:>9.2f}M {nbytes / mib:>9.1f} {dev / mib:>9.1f}"
             f"  {n_total / 1e6:.2f}M parameters")
    if opt_state is not None and opt_shardings is not None:
        leaves = list(zip(jax.tree.leaves(opt_state), jax.tree.leaves(opt_shardings)))
        opt_bytes = sum(math.prod(x.shape) * jax.numpy.dtype(x.dtype).itemsize for x, _ in leaves)
        opt_dev = sum(_per_device_bytes(x, sh) for x, sh in leaves)
        total += f"; optimizer state {opt_bytes / mib:.1f} MiB, {opt_dev / mib:.1f} MiB/dev"
    return "\n".join(lines + [total])
