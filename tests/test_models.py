"""The towers: shapes and norms, parameter counts and paths, padding masks, BatchNorm modes, precision, FLOPs."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from exif_jax.config import config_file, resolve
from exif_jax.models import resnet, text, towers, vit

REPO = Path(__file__).resolve().parents[1]
VOCAB = 50


def tiny_config():
    """configs/tiny.py, the schema every module shares."""
    return config_file(str(REPO / "configs" / "tiny.py"))


def count_params(module: nnx.Module) -> int:
    """Number of nnx.Param scalars (running statistics excluded); works on nnx.eval_shape outputs."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, nnx.Param))))


def images(n: int, size: int = 32, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)), jnp.uint8)


def tokens(n: int, length: int = 64, seed: int = 0, pad: int = 0, eos: int = 1) -> jax.Array:
    """Distinct sentences of 3..12 ids from [3, VOCAB), then eos, then pads."""
    rng = np.random.default_rng(seed)
    out = np.full((n, length), pad, np.int32)
    for i in range(n):
        k = rng.integers(3, 13)
        out[i, :k] = rng.integers(3, VOCAB, k)
        out[i, k] = eos
    return jnp.asarray(out)


@nnx.jit
def run(module: nnx.Module, *args):
    """module(*args) compiled: one XLA compile beats hundreds of eager dispatches on 2 CPU cores."""
    return module(*args)


def param_paths(module: nnx.Module) -> dict[str, tuple[int, ...]]:
    """'image/embedding/kernel' -> shape, for every Variable (params and BatchNorm statistics)."""
    out = {}
    for path, x in jax.tree_util.tree_leaves_with_path(nnx.state(module)):
        parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        out["/".join(parts[:-1] if parts[-1] == "value" else parts)] = tuple(x.shape)
    return out


@pytest.mark.parametrize("kind,pool,text_pool,causal", [
    ("vit", "avg", "mean", False), ("vit", "map", "last", False), ("vit", "cls", "eos", True),
    ("resnet", "avg", "mean", False)])
@pytest.mark.slow
def test_embeddings_have_shape_and_unit_norm(kind, pool, text_pool, causal):
    c = tiny_config()
    c.model.image.update(kind=kind, pool=pool)
    if kind == "resnet":
        c.model.image.update(variant="tiny", width=8)
    c.model.text.update(pool=text_pool, causal=causal)
    model = towers.create_model(c, VOCAB, nnx.Rngs(0))
    img, txt, scale, bias = run(model, images(3), tokens(3))
    assert img.shape == txt.shape == (3, c.model.embed_dim)
    assert img.dtype == txt.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    assert np.isclose(float(scale), 1 / 0.07, rtol=1e-5) and bias is None
    # Different inputs give different embeddings (the towers are not constant).
    assert float(jnp.abs(img[0] - img[1]).max()) > 1e-3 and float(jnp.abs(txt[0] - txt[1]).max()) > 1e-3


@pytest.mark.slow
def test_vit_b16_and_resnet50_parameter_counts():
    v = nnx.eval_shape(lambda: vit.VisionTransformer(image_size=224, **vit.decode_variant("B/16"), rngs=nnx.Rngs(0)))
    # timm vit_base_patch16_224(num_classes=0): 85,798,656, which has a cls token and its position (2 x 768).
    assert count_params(v) == 85_798_656 - 2 * 768
    v_cls = nnx.eval_shape(lambda: vit.VisionTransformer(
        image_size=224, pool="cls", **vit.decode_variant("B/16"), rngs=nnx.Rngs(0)))
    assert count_params(v_cls) == 85_798_656 - 768
    r = nnx.eval_shape(lambda: resnet.ResNet(num_classes=1000, rngs=nnx.Rngs(0)))
    assert count_params(r) == 25_557_032  # torchvision resnet50(): sum(p.numel() for p in parameters())
    r512 = nnx.eval_shape(lambda: resnet.ResNet(num_classes=512, rngs=nnx.Rngs(0)))
    assert count_params(r512) == 25_557_032 - 2049 * 1000 + 2049 * 512


def test_resnet50_paths_map_to_torchvision_names():
    r = nnx.eval_shape(lambda: resnet.ResNet(num_classes=1000, rngs=nnx.Rngs(0)))
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
    torch = {}
    for path, shape in param_paths(r).items():
        *mods, name = path.split("/")
        shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
        torch[".".join(mods + [leaf[name]])] = shape
    # torchvision's state_dict without the 53 num_batches_tracked buffers: 53 convs + 53 x 4 BN + fc.
    assert len(torch) == 53 + 53 * 4 + 2
    assert torch["conv1.weight"] == (64, 3, 7, 7)
    assert torch["layer2.0.downsample.0.weight"] == (512, 256, 1, 1)
    assert torch["layer2.0.downsample.1.running_var"] == (512,)
    assert torch["layer3.5.conv2.weight"] == (256, 256, 3, 3)
    assert torch["layer4.2.bn3.weight"] == (2048,)
    assert torch["fc.weight"] == (1000, 2048) and torch["fc.bias"] == (1000,)
    assert "layer1.3.conv1.weight" not in torch and "layer3.6.conv1.weight" not in torch


@pytest.mark.slow
def test_siglip_layout_is_expressible():
    c = tiny_config()
    c.loss.kind = "sigmoid"
    c.model.embed_dim = 64  # = both widths: SiglipModel has no vision projection
    c.model.image.update(pool="map", head="none")
    c.model.text.update(pool="last", mask_pad=False, head="linear")
    c.model.update(logit_scale_init=10.0, logit_scale_max=float("inf"))
    model = towers.create_model(c, VOCAB, nnx.Rngs(0))
    paths = param_paths(model)
    assert paths["image/MAPHead_0/probe"] == (1, 1, 64)
    assert paths["image/MAPHead_0/MultiHeadDotProductAttention_0/query/kernel"] == (64, 4, 16)
    assert paths["image/Transformer/encoderblock_1/MultiHeadDotProductAttention_0/out/kernel"] == (4, 16, 64)
    assert paths["image/Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel"] == (64, 128)
    assert paths["image/embedding/kernel"] == (8, 8, 3, 64) and paths["image/pos_embedding"] == (1, 16, 64)
    assert paths["text/Embed_0/embedding"] == (VOCAB, 64) and paths["text/pos_embedding"] == (1, 64, 64)
    assert paths["text/Encoder_0/encoder_norm/scale"] == (64,) and paths["text/head/kernel"] == (64, 64)
    assert paths["t"] == (1,) and paths["b"] == (1,)
    assert not any(p.startswith("image/head") for p in paths)
    assert np.isclose(float(model.logit_scale()), 10.0, rtol=1e-6) and float(model.logit_bias()) == -10.0


@pytest.mark.parametrize("pool,causal", [("eos", False), ("mean", False), ("eos", True)])
@pytest.mark.slow
def test_text_embedding_ignores_extra_padding(pool, causal):
    tower = text.TextTransformer(vocab_size=VOCAB, max_len=32, width=32, depth=2, heads=2, mlp_dim=64,
                                 pool=pool, causal=causal, num_classes=16, dtype=jnp.float32, rngs=nnx.Rngs(1))
    short = tokens(4, length=16)
    long = jnp.pad(short, ((0, 0), (0, 16)))
    np.testing.assert_allclose(run(tower, short), run(tower, long), atol=1e-5)
    if not causal:  # Without the pad mask the pads are attended to: the same comparison must then fail.
        tower.mask_pad = False
        assert float(jnp.abs(run(tower, short) - run(tower, long)).max()) > 1e-3


@pytest.mark.slow
def test_text_eos_pool_reads_the_first_eos_and_falls_back_to_the_last_token():
    tower = text.TextTransformer(vocab_size=VOCAB, max_len=32, width=32, depth=2, heads=2, mlp_dim=64,
                                 pool="eos", causal=True, dtype=jnp.float32, rngs=nnx.Rngs(2))
    t = jnp.asarray([[5, 6, 1, 7, 1, 0, 0, 0], [5, 6, 7, 8, 0, 0, 0, 0]], jnp.int32)
    tower.pool = "last"  # causal + no pads after position k: the state at k only sees tokens <= k
    ref0 = run(tower, jnp.asarray([[5, 6, 1]], jnp.int32))
    ref1 = run(tower, jnp.asarray([[5, 6, 7, 8]], jnp.int32))
    tower.pool = "eos"
    out = run(tower, t)
    np.testing.assert_allclose(out[0], ref0[0], atol=1e-5)
    np.testing.assert_allclose(out[1], ref1[0], atol=1e-5)


def _tiny_resnet(**kw) -> resnet.ResNet:
    return resnet.ResNet(variant="tiny", width=8, dtype=jnp.float32, rngs=nnx.Rngs(3), **kw)


@pytest.mark.slow
def test_batchnorm_train_eval_and_frozen_modes():
    x = images(8)
    model = _tiny_resnet()
    mean0 = np.array(model.bn1.mean[...])
    model.train()
    y_train = run(model, x)
    mean1 = np.array(model.bn1.mean[...])
    assert not np.allclose(mean0, mean1)  # running stats moved
    model.eval()
    y_eval = run(model, x)
    np.testing.assert_array_equal(model.bn1.mean[...], mean1)  # and stay put in eval mode
    assert float(jnp.abs(y_train - y_eval).max()) > 1e-3  # batch stats != running stats
    frozen = _tiny_resnet(bn_frozen=True)
    frozen.train()
    m_before = np.array(frozen.layer2[0].downsample[1].mean[...])
    y_frozen = run(frozen, x)
    np.testing.assert_array_equal(frozen.layer2[0].downsample[1].mean[...], m_before)
    frozen.eval()
    np.testing.assert_allclose(run(frozen, x), y_frozen, atol=1e-6)


@pytest.mark.slow
def test_batchnorm_statistics_cover_the_global_sharded_batch():
    assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    # Each device's shard has its own brightness, so per-device statistics would differ from global ones.
    x = np.concatenate([np.full((2, 32, 32, 3), 30 * i, np.uint8) + images(2, seed=i) // 8 for i in range(8)])
    model = _tiny_resnet()
    model.train()
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, x):
        m = nnx.merge(graphdef, state)
        return m(x), nnx.state(m)

    _, new_sharded = step(state, jax.device_put(x, NamedSharding(mesh, P("data"))))
    _, new_single = step(state, jax.device_put(x, jax.devices()[0]))
    got = np.asarray(nnx.merge(graphdef, new_sharded).bn1.mean[...])
    np.testing.assert_allclose(got, nnx.merge(graphdef, new_single).bn1.mean[...], rtol=1e-4, atol=1e-5)
    # The update is momentum 0.9 towards the mean of conv1 over the whole batch.
    conv = np.asarray(model.conv1(vit.normalize_uint8(jnp.asarray(x), model.mean, model.std, jnp.float32)))
    np.testing.assert_allclose(got, 0.1 * conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    shard0 = 0.1 * conv[:2].mean(axis=(0, 1, 2))
    assert np.abs(got - shard0).max() > 1e-2


@pytest.mark.slow
def test_bf16_compute_is_close_to_f32():
    c = tiny_config()
    outs = {}
    for dtype in ("float32", "bfloat16"):
        c.model.dtype = dtype
        model = towers.create_model(c, VOCAB, nnx.Rngs(4))
        assert model.image.pos_embedding[...].dtype == jnp.float32  # params stay f32
        outs[dtype] = run(model, images(4), tokens(4))
    for a, b in zip(outs["float32"][:2], outs["bfloat16"][:2]):
        assert b.dtype == jnp.float32
        assert float(jnp.min(jnp.sum(a * b, axis=1))) > 0.995  # cosine of unit vectors
        assert float(jnp.abs(a - b).max()) < 0.05


@pytest.mark.slow
def test_temperature_clip_and_fixed_scale():
    c = tiny_config()
    c.model.update(logit_scale_init=1000.0, logit_scale_max=100.0)
    model = towers.create_model(c, VOCAB, nnx.Rngs(0))
    assert float(model.logit_scale()) == pytest.approx(100.0)
    grad = nnx.grad(lambda m: m.logit_scale())(model)
    assert float(grad["t"][...][0]) == 0.0  # clipped: no gradient pushes it further
    c.model.update(logit_scale_init=10.0)
    model = towers.create_model(c, VOCAB, nnx.Rngs(0))
    grad = nnx.grad(lambda m: m.logit_scale())(model)
    assert float(grad["t"][...][0]) == pytest.approx(10.0, rel=1e-5)  # d exp(t)/dt
    c.model.learn_logit_scale = False
    model = towers.create_model(c, VOCAB, nnx.Rngs(0))
    assert "t" not in param_paths(model)
    assert float(model.logit_scale()) == pytest.approx(10.0, rel=1e-6)
    assert model.logit_bias() is None
    c.loss.kind = "sigmoid"
    assert float(towers.create_model(c, VOCAB, nnx.Rngs(0)).logit_bias()) == -10.0


@pytest.mark.slow
def test_a_gradient_step_reduces_a_contrastive_loss():
    c = tiny_config()
    c.model.image.depth = c.model.text.depth = 1
    c.model.text.remat = "full"  # also exercises the rematerialized encoder
    model = towers.create_model(c, VOCAB, nnx.Rngs(5))
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    x, t = images(8), tokens(8)

    def loss_fn(m):
        img, txt, scale, _ = m(x, t)
        logits = scale * img @ txt.T
        labels = jnp.arange(logits.shape[0])
        return 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                      + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())

    @nnx.jit
    def step(m, opt):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, grads)
        return loss

    losses = [float(step(model, opt)) for _ in range(6)]
    assert np.isfinite(losses).all()
    assert float(nnx.jit(loss_fn)(model)) < losses[0] - 0.1, losses


@pytest.mark.slow
def test_flops_per_example_matches_xla_for_b16_plus_text():
    c = tiny_config()
    c.data.crop_size = 128
    c.model.image.update(variant="B/16", width=None, depth=None, heads=None, mlp_dim=None, patch=None)
    resolve(c)
    c.model.text.update(width=512, depth=6, heads=8, mlp_dim=2048)
    c.model.embed_dim = 512
    flops = towers.flops_per_example(c)
    assert flops == pytest.approx(40.70e9, rel=1e-3)  # the performance notes' figure
    model = nnx.eval_shape(lambda: towers.create_model(c, 32000, nnx.Rngs(0)))
    graphdef, state = nnx.split(model)

    def loss(state, x, t):
        img, txt, scale, _ = nnx.merge(graphdef, state)(x, t)
        return jnp.sum(scale * img @ txt.T)

    n = 4
    lowered = jax.jit(jax.grad(loss)).lower(state, jax.ShapeDtypeStruct((n, 128, 128, 3), jnp.uint8),
                                            jax.ShapeDtypeStruct((n, 64), jnp.int32))
    xla = lowered.cost_analysis()["flops"] / n
    assert xla == pytest.approx(flops, rel=0.05), (xla, flops)


def test_resnet_flops_match_the_published_count():
    # ResNet-50 at 224: 4.09 GMACs (torchvision's model card: 4.09 GFLOPS counted as multiply-adds).
    assert resnet.resnet_forward_flops(224, "50", 64, 1000) / 2 == pytest.approx(4.09e9, rel=0.01)


def test_bad_configs_and_inputs_fail_clearly():
    c = tiny_config()
    model = towers.create_model(c, VOCAB, nnx.Rngs(0))
    with pytest.raises(ValueError, match="32x32"):
        model.embed_image(images(1, size=48))
    with pytest.raises(ValueError, match="max_len|L<="):
        model.embed_text(jnp.zeros((1, 65), jnp.int32))
    c.model.image.pool = "gap"
    with pytest.raises(ValueError, match="pool"):
        towers.create_model(c, VOCAB, nnx.Rngs(0))
    c = tiny_config()
    c.model.image.head = "none"
    with pytest.raises(ValueError, match="embed_dim"):
        towers.create_model(c, VOCAB, nnx.Rngs(0))
    with pytest.raises(ValueError, match="variant"):
        vit.decode_variant("Q/16")
