"""Partition rules and meshes: the rules shard what they should, and FSDP / tensor parallel train like data parallel."""
from __future__ import annotations

import re
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from exif_jax import sharding, train
from exif_jax.models import distilbert, towers, vit

REPO = Path(__file__).parents[1]
MLP0 = "image/Transformer/encoderblock_0/MlpBlock_0/Dense_0"
MLP1 = "image/Transformer/encoderblock_0/MlpBlock_0/Dense_1"
ATT = "text/Transformer/encoderblock_1/MultiHeadDotProductAttention_0"
FSDP8 = {"data": 1, "fsdp": 8, "tensor": 1}
TP2 = {"data": 4, "fsdp": 1, "tensor": 2}
BOTH = {"data": 2, "fsdp": 2, "tensor": 2}

needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices: "
                             "XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu")


def spec(path, shape, sizes, min_size=0):
    return sharding.spec_for(path, shape, sizes, sharding.DEFAULT_RULES, fsdp_min_size=min_size)


def test_fsdp_shards_the_largest_divisible_dim():
    assert spec(f"{MLP0}/kernel", (768, 3072), FSDP8) == P(None, "fsdp")
    assert spec(f"{MLP1}/kernel", (3072, 768), FSDP8) == P("fsdp")
    # 1001 is not divisible by 8: the other dim takes the axis.
    assert spec("image/head/kernel", (1001, 512), FSDP8) == P(None, "fsdp")
    # Nothing divisible: replicated rather than an error.
    assert spec("image/head/kernel", (1001, 513), FSDP8) == P()
    # Embed tables split their rows or nothing (a feature-split table makes XLA all-reduce activations).
    assert spec("text/Embed_0/embedding", (1000, 512), FSDP8) == P("fsdp")
    assert spec("text/Embed_0/embedding", (1001, 512), FSDP8) == P()
    assert spec("text/embeddings/word_embeddings/embedding", (30522, 768), FSDP8) == P()
    assert spec("text/Embed_0/embedding", (1000, 8), FSDP8, min_size=2**14) == P()
    # Vectors and small arrays stay replicated.
    assert spec(f"{MLP0}/bias", (3072,), FSDP8) == P()
    assert spec("image/Transformer/encoder_norm/scale", (768,), FSDP8) == P()
    assert spec(f"{MLP0}/kernel", (64, 128), FSDP8, min_size=2**14) == P()
    # ResNet conv kernels [kh, kw, in, out]: the largest divisible dim.
    assert spec("image/layer3/0/conv2/kernel", (3, 3, 256, 512), FSDP8) == P(None, None, None, "fsdp")


def test_tensor_parallel_is_megatron_style():
    assert spec(f"{ATT}/query/kernel", (512, 8, 64), TP2) == P(None, "tensor")
    assert spec(f"{ATT}/value/bias", (8, 64), TP2) == P("tensor")
    assert spec(f"{ATT}/out/kernel", (8, 64, 512), TP2) == P("tensor")
    assert spec(f"{ATT}/out/bias", (512,), TP2) == P()
    assert spec(f"{MLP0}/kernel", (768, 3072), TP2) == P(None, "tensor")
    assert spec(f"{MLP0}/bias", (3072,), TP2) == P("tensor")
    assert spec(f"{MLP1}/kernel", (3072, 768), TP2) == P("tensor")
    # 3 heads cannot be split in 2: replicated.
    assert spec(f"{ATT}/key/kernel", (192, 3, 64), TP2) == P()
    # Embeddings are not tensor-parallel.
    assert spec("text/Embed_0/embedding", (1000, 512), TP2) == P()


def test_fsdp_and_tensor_combine_and_optimizer_state_follows():
    assert spec(f"{MLP0}/kernel", (768, 3072), BOTH) == P("fsdp", "tensor")
    assert spec(f"{ATT}/query/kernel", (512, 8, 64), BOTH) == P("fsdp", "tensor")
    assert spec(f"opt/1/0/mu/{MLP0}/kernel", (768, 3072), BOTH) == P("fsdp", "tensor")
    assert spec(f"opt/1/0/nu/{ATT}/out/kernel", (8, 64, 512), BOTH) == P("tensor", None, "fsdp")
    assert spec("opt/1/0/count", (), BOTH) == P()


# ------------------------------------------------------------------- the rules against the real towers

# Every tower kind the configs can build, at small sizes (the parameter names are the real ones). The
# vocabulary is odd on purpose: its dim never divides an fsdp axis.
TOWER_KINDS = {
    "vit-avg+text": [],
    "vit-map": ["model.image.pool=map"],
    "vit-cls+sigmoid": ["model.image.pool=cls", "loss.kind=sigmoid"],
    "resnet": ["model.image.kind=resnet", "model.image.variant=tiny", "model.image.width=16"],
    "distilbert": ["model.text.kind=distilbert"],
}
VOCAB = 61
COL, ROW = "column", "row"
# Which child of which block is column parallel (split its output) or row parallel (split its input):
# read off the model code, independently of the rules' regexes.
ROLES = {
    vit.MultiHeadDotProductAttention: {"query": COL, "key": COL, "value": COL, "out": ROW},
    vit.MlpBlock: {"Dense_0": COL, "Dense_1": ROW},
    distilbert.Attention: {"q_lin": COL, "k_lin": COL, "v_lin": COL, "out_lin": ROW},
    distilbert.FFN: {"lin1": COL, "lin2": ROW},
}


def _abstract_tower(overrides):
    from flax import nnx

    config = train.load_config(str(REPO / "configs" / "tiny.py"), overrides)
    model = nnx.eval_shape(lambda: towers.create_model(config, VOCAB, nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    tx, _ = train.make_optimizer(config)
    return model, {"params": params, "opt": jax.eval_shape(tx.init, params)}


@pytest.fixture(scope="module")
def abstract_towers():
    """kind -> (abstract model, abstract {"params", "opt"}): shapes only, no weights."""
    return {kind: _abstract_tower(ov) for kind, ov in TOWER_KINDS.items()}


def _leaves(state):
    return [(sharding.path_str(p), x) for p, x in jax.tree_util.tree_leaves_with_path(state)]


def _specs(state, sizes, min_size=0):
    mesh = jax.sharding.AbstractMesh(tuple(sizes[a] for a in sharding.MESH_AXES), sharding.MESH_AXES)
    shardings = sharding.state_shardings(state, mesh, fsdp_min_size=min_size)
    return {path: (x.shape, sh.spec) for (path, x), sh in zip(_leaves(state), jax.tree.leaves(shardings))}


def test_every_rule_matches_a_parameter_of_some_tower(abstract_towers):
    paths = [p for _, state in abstract_towers.values() for p, _ in _leaves(state["params"])]
    dead = [(pattern, spec) for pattern, spec in sharding.DEFAULT_RULES
            if not any(re.search(pattern, p) for p in paths)]
    assert not dead, f"rules that match no parameter of any tower: {dead}"


def _tensor_kernels(model):
    """(param path prefix, role, number of input dims) of every attention/MLP projection in `model`."""
    from flax import nnx

    out, unknown = [], []
    for path, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.Module):
            continue
        roles = ROLES.get(type(node))
        if roles is None:
            if any(w in type(node).__name__ for w in ("Attention", "Mlp", "FFN")):
                unknown.append(type(node).__name__)
            continue
        for child, role in roles.items():
            layer = getattr(node, child)
            n_out = len(layer.out_features) if isinstance(layer.out_features, tuple) else 1
            out.append(("/".join(map(str, path + (child,))), role, layer.kernel.ndim - n_out))
    assert not unknown, f"attention/MLP blocks the test does not know: {unknown}; add them to ROLES"
    return out


@pytest.mark.parametrize("sizes", [TP2, BOTH], ids=["tensor2", "fsdp2xtensor2"])
def test_every_attention_and_mlp_kernel_is_split_megatron_style(abstract_towers, sizes):
    seen = {}
    for kind, (model, state) in abstract_towers.items():
        specs = _specs(state, sizes)
        kernels = _tensor_kernels(model)
        seen[kind] = len(kernels)
        for prefix, role, n_in in kernels:
            shape, spec = specs[f"params/{prefix}/kernel"]
            dims = [i for i, e in enumerate(spec) if e == "tensor"]
            assert dims, f"{kind}: {prefix}/kernel {shape} has no tensor axis: {spec}"
            # Column parallel splits an output dim, row parallel an input dim.
            assert (dims[0] >= n_in) == (role == COL), f"{kind}: {prefix}/kernel is {role} parallel, got {spec}"
            if role == COL:  # the column-parallel bias is split with its outputs
                shape, spec = specs[f"params/{prefix}/bias"]
                assert spec and spec[0] == "tensor", f"{kind}: {prefix}/bias {shape} {spec}"
        # Optimizer moments ("opt/.../mu/<param path>") take their parameter's layout.
        moments = 0
        for path, (shape, spec) in specs.items():
            parts = path.split("/")
            param = next((f"params/{'/'.join(parts[i:])}" for i in range(1, len(parts))
                          if f"params/{'/'.join(parts[i:])}" in specs), None)
            if path.startswith("opt/") and param and specs[param][0] == shape:
                assert spec == specs[param][1], f"{kind}: {path} {spec} != {param} {specs[param][1]}"
                moments += 1
        assert moments >= 2 * len(kernels), f"{kind}: optimizer moments not found"
    # Every transformer tower was checked: ViT (with the MAP head's block), text transformer, DistilBERT.
    assert all(n > 0 for n in seen.values()), seen
    assert seen["vit-map"] > seen["vit-avg+text"] and seen["resnet"] > 0


@pytest.mark.parametrize("sizes", [{"data": 1, "fsdp": f, "tensor": t} for f, t in ((2, 1), (3, 1), (8, 1), (4, 2))],
                         ids=lambda s: f"fsdp{s['fsdp']}xtensor{s['tensor']}")
def test_specs_only_split_divisible_dims_and_fsdp_covers_every_matrix(abstract_towers, sizes):
    for kind, (_, state) in abstract_towers.items():
        for path, (shape, spec) in _specs(state, sizes).items():
            axes = [a for e in spec for a in (e if isinstance(e, tuple) else (e,)) if a is not None]
            assert len(axes) == len(set(axes)), f"{kind}: {path} uses an axis twice: {spec}"
            for dim, entry in zip(shape, spec):
                n = 1
                for a in (entry if isinstance(entry, tuple) else (entry,)):
                    n *= sizes[a] if a is not None else 1
                assert dim % n == 0, f"{kind}: {path} {shape} {spec}: {dim} is not divisible by {n}"
            # Every weight matrix (two or more dims > 1; biases such as q/k/v's [heads, head_dim] aside) of
            # every tower, projections included, is FSDP-sharded when one of its dims divides the axis.
            big = [d for d in shape if d > 1]
            if path.endswith("/embedding"):
                # Embed tables: rows or nothing (a feature-split lookup output makes XLA all-reduce
                # activations; tests/test_pod_compile.py measures it).
                want = P("fsdp") if shape[0] % sizes["fsdp"] == 0 else P()
                assert spec == want, f"{kind}: {path} {shape} {spec}, expected {want}"
            elif (path.startswith("params/") and not path.endswith("/bias") and len(big) >= 2
                    and any(d % sizes["fsdp"] == 0 for d in big)):
                assert "fsdp" in axes, f"{kind}: {path} {shape} is not FSDP-sharded: {spec}"


def test_overview_tables_groups_counts_and_per_device_bytes(abstract_towers):
    _, state = abstract_towers["vit-cls+sigmoid"]
    mesh = jax.sharding.AbstractMesh((1, 2, 2), sharding.MESH_AXES)
    sh = sharding.state_shardings(state, mesh, fsdp_min_size=0)
    text = sharding.overview(state["params"], sh["params"], state["opt"], sh["opt"])
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:]}
    assert set(rows) == {"image", "text", "t", "b", "total"}, text
    n = {g: sum(x.size for _, x in _leaves(state["params"][g])) for g in ("image", "text", "t", "b")}
    assert rows["total"][2] == f"{sum(n.values()) / 1e6:.2f}M", text
    for g in ("image", "text"):
        assert rows[g][2] == f"{n[g] / 1e6:.2f}M" and int(rows[g][1]) == len(_leaves(state["params"][g]))
        # fsdp=2 x tensor=2: every matrix is split at least in two, vectors are a sliver.
        mib, per_dev = float(rows[g][3]), float(rows[g][4])
        assert per_dev < 0.6 * mib and "'tensor'" in text and "'fsdp'" in text, text
    # Adam: two moments per parameter, laid out like it.
    opt_mib, opt_dev = map(float, re.search(r"optimizer state ([\d.]+) MiB, ([\d.]+) MiB/dev", text).groups())
    assert abs(opt_mib - 2 * float(rows["total"][3])) <= 0.1 and opt_dev < 0.6 * opt_mib, text


def test_mesh_shape_resolves_minus_one_and_rejects_misfits():
    cfg = lambda **kw: train.ml_collections.ConfigDict(kw)  # noqa: E731
    assert sharding.mesh_shape(cfg(data=-1, fsdp=1, tensor=1), 8) == (8, 1, 1)
    assert sharding.mesh_shape(cfg(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="does not fit"):
        sharding.mesh_shape(cfg(data=3, fsdp=-1, tensor=1), 8)
    with pytest.raises(ValueError, match="at most one"):
        sharding.mesh_shape(cfg(data=-1, fsdp=-1, tensor=1), 8)


def _config(data: int, fsdp: int, tensor: int):
    # f32 compute so that the only differences between meshes are reduction orders.
    return train.load_config(str(REPO / "configs" / "tiny.py"), [
        f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}", "mesh.fsdp_min_size=0",
        "model.dtype=float32", "data.crop_size=16", "data.global_batch_size=16", "tokenizer.max_len=16",
        "model.image.patch=8", "model.image.depth=1", "model.text.depth=1", "model.text.vocab_size=64",
        "train.steps=4", "optim.warmup_steps=1"])


def _batches(n: int, b: int = 16, crop: int = 16, length: int = 16) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    ids = rng.permutation(64)
    return [{"image": rng.integers(0, 256, (b, crop, crop, 3), dtype=np.uint8),
             "tokens": rng.integers(3, 64, (b, length), dtype=np.int32),
             "image_id": ids[i * b:(i + 1) * b].astype(np.int32),
             "text_id": ids[i * b:(i + 1) * b].astype(np.int32)} for i in range(n)]


def _train(config, batches, init_state=None):
    mesh = sharding.make_mesh(config.mesh)
    trainer = train.make_trainer(config, mesh, vocab_size=64)
    # One compiled init serves every mesh (compiles are the slow part here): re-lay it out.
    state = trainer.init() if init_state is None else jax.device_put(init_state, trainer.state_shardings)
    bsh = sharding.batch_sharding(mesh)
    batches = [{k: jax.device_put(v, bsh) for k, v in b.items()} for b in batches]
    # -O0 for XLA's CPU backend: compiles twice as fast, and compiling is what this test spends on.
    step = trainer.train_step.lower(state, batches[0]).compile(
        {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})
    losses = []
    for b in batches:
        state, m = step(state, b)
        losses.append(float(m["loss"]))
    return losses, trainer.state_shardings, state


@needs_8
@pytest.mark.slow
def test_fsdp_and_tensor_parallel_train_like_data_parallel():
    batches = _batches(1) * 4  # one batch, repeated: the loss must fall
    init = train.make_trainer(_config(8, 1, 1), sharding.make_mesh(_config(8, 1, 1).mesh), 64).init()
    init = jax.tree.map(np.asarray, init)  # host copy: the train step donates its input
    ref, _, _ = _train(_config(8, 1, 1), batches, init)
    assert all(np.isfinite(ref)) and ref[-1] < ref[0]
    for mesh in ((1, 8, 1), (4, 1, 2)):
        losses, shardings, state = _train(_config(*mesh), batches, init)
        specs = [s.spec for s in jax.tree.leaves(shardings["params"])]
        axis = "fsdp" if mesh[1] > 1 else "tensor"
        # The rules really sharded something on this mesh, and the arrays carry that layout.
        assert sum(axis in str(s) for s in specs) >= 4, specs
        leaf = state["params"]["image"]["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]["kernel"]
        assert axis in str(leaf[...].sharding.spec)
        np.testing.assert_allclose(losses, ref, rtol=2e-5, err_msg=f"mesh data,fsdp,tensor={mesh}")
