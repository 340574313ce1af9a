"""Partition rules and meshes: the rules shard what they should, and FSDP / tensor parallel train like data parallel."""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from exif_jax import sharding, train

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
    assert spec("text/Embed_0/embedding", (1001, 512), FSDP8) == P(None, "fsdp")
    # Nothing divisible: replicated rather than an error.
    assert spec("text/Embed_0/embedding", (1001, 513), FSDP8) == P()
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
