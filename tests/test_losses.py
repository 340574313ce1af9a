"""exif_jax.losses: the reference equals NumPy loops; every sharded impl equals the reference.

Equality means loss, accuracies and gradients w.r.t. both embeddings, the scale and the bias, within
1e-5 in f32, on 8 fake CPU devices. The memory test only compiles (N=8192, D=512).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from exif_jax import losses

if jax.device_count() < 8:
    pytest.skip("needs 8 devices: run with XLA_FLAGS=--xla_force_host_platform_device_count=8",
                allow_module_level=True)

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")
N, D, SCALE, BIAS, TOL = 64, 32, 10.0, -2.0, 1e-5
SHARDED = {("infonce", "all_gather"): losses.infonce_all_gather, ("infonce", "ring"): losses.infonce_ring,
           ("sigmoid", "all_gather"): losses.sigmoid_all_gather, ("sigmoid", "ring"): losses.sigmoid_ring}


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


@functools.cache
def _make_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    img = _unit(rng.normal(size=(N, D)))
    # Texts near their images, so accuracies land strictly between 0 and 1.
    txt = _unit(img + 0.6 * rng.normal(size=(N, D)))
    # Two crops per photo, shuffled so that duplicates sit on different devices; a few photos share
    # one EXIF text with another photo.
    image_ids = rng.permutation(np.arange(N) // 2).astype(np.int32)
    text_ids = image_ids.copy()
    text_ids[image_ids == 3] = 17
    text_ids[image_ids == 8] = 25
    return dict(img=img, txt=txt, image_ids=image_ids, text_ids=text_ids)


@pytest.fixture
def data() -> dict[str, np.ndarray]:
    return _make_data()


def _explicit_mesh(shape=(8, 1, 1)):
    # Explicit axes: shard_map refuses inputs not already sharded as its in_specs say, which checks
    # that the specs here match the trainer's batch sharding.
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Explicit,) * 3)


def _auto_mesh(shape):
    # Auto axes, as exif_jax.sharding.make_mesh builds them: shard_map reshards plain inputs itself.
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3)


def _run(fn, data, ids=True, dtype=jnp.float32):
    """jit(value_and_grad) of fn w.r.t. (img, txt, scale, bias) -> ((loss, metrics), grads)."""
    iid, tid = (data["image_ids"], data["text_ids"]) if ids else (None, None)

    def f(x, y, s, b):
        return fn(x, y, s, b, iid, tid)

    grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))
    return grad(data["img"].astype(dtype), data["txt"].astype(dtype), jnp.float32(SCALE),
                jnp.float32(BIAS))


def _shard(data, mesh):
    put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))  # noqa: E731
    return dict(img=put(data["img"], P(BATCH, None)), txt=put(data["txt"], P(BATCH, None)),
                image_ids=put(data["image_ids"], P(BATCH)), text_ids=put(data["text_ids"], P(BATCH)))


def _assert_same(out, ref, tol=TOL):
    (loss, metrics), grads = out
    (ref_loss, ref_metrics), ref_grads = ref
    assert abs(float(loss) - float(ref_loss)) <= tol, (float(loss), float(ref_loss))
    assert float(metrics["loss"]) == float(loss)  # the logged loss is the differentiated one
    exact = {k: float(v) for k, v in metrics.items() if k != "loss"}
    assert exact == {k: float(v) for k, v in ref_metrics.items() if k != "loss"}
    assert set(metrics) == set(losses.METRICS)
    for name, g, r in zip(("img", "txt", "scale", "bias"), grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32), rtol=0,
                                   atol=tol, err_msg=f"grad w.r.t. {name}")


@functools.cache
def _reference(kind: str, ids: bool):
    # Single device, no mesh: the plain global N x N function.
    return _run(losses.make_loss_fn(kind, "naive", None), _make_data(), ids=ids)


# ------------------------------------------------------------------ the reference vs NumPy loops

def _numpy_loss(kind, img, txt, image_ids, text_ids):
    x, y = img.astype(np.float64), txt.astype(np.float64)
    n = len(x)
    logits = SCALE * x @ y.T + (BIAS if kind == "sigmoid" else 0.0)
    related = np.zeros((n, n), bool)
    for i in range(n):
        for j in range(n):
            related[i, j] = i != j and (image_ids[i] == image_ids[j] or text_ids[i] == text_ids[j])
    if kind == "infonce":
        i2t = [np.log(sum(np.exp(logits[i, j]) for j in range(n) if not related[i, j])) - logits[i, i]
               for i in range(n)]
        t2i = [np.log(sum(np.exp(logits[i, j]) for i in range(n) if not related[i, j])) - logits[j, j]
               for j in range(n)]
        loss = (np.mean(i2t) + np.mean(t2i)) / 2
    else:
        loss = sum(np.log1p(np.exp(-(1.0 if i == j or related[i, j] else -1.0) * logits[i, j]))
                   for i in range(n) for j in range(n)) / n
    hit_i = sum(all(logits[i, i] > logits[i, j] for j in range(n) if j != i and not related[i, j])
                for i in range(n))
    hit_t = sum(all(logits[j, j] > logits[i, j] for i in range(n) if i != j and not related[i, j])
                for j in range(n))
    return loss, hit_i / n, hit_t / n


@pytest.mark.parametrize("kind", losses.KINDS)
def test_reference_matches_numpy_loops(kind, data):
    small = {k: v[:24] for k, v in data.items()}
    for ids in (True, False):
        iid, tid = (small["image_ids"], small["text_ids"]) if ids else (np.arange(24),) * 2
        want = _numpy_loss(kind, small["img"], small["txt"], iid, tid)
        loss, m = losses.make_loss_fn(kind, "naive", None)(
            small["img"], small["txt"], SCALE, BIAS, *((iid, tid) if ids else (None, None)))
        np.testing.assert_allclose([float(loss), float(m["i2t_top1"]), float(m["t2i_top1"])], want,
                                   rtol=1e-6, atol=1e-6)
        assert float(m["loss"]) == float(loss) and float(m["logit_scale"]) == float(np.float32(SCALE))
    # The duplicate ids must change the loss, or the masking is not being exercised.
    unmasked = _numpy_loss(kind, small["img"], small["txt"], np.arange(24), np.arange(24))[0]
    masked = _numpy_loss(kind, small["img"], small["txt"], small["image_ids"], small["text_ids"])[0]
    assert abs(masked - unmasked) > 1e-3


def test_reference_accuracy_is_strictly_between_0_and_1(data):
    (_, m), _ = _reference("infonce", True)
    assert 0.0 < float(m["i2t_top1"]) < 1.0 and 0.0 < float(m["t2i_top1"]) < 1.0


# --------------------------------------------------------------- sharded impls vs the reference

@pytest.mark.parametrize("impl", losses.IMPLS)
@pytest.mark.parametrize("kind", losses.KINDS)
def test_impl_matches_reference_8_devices(kind, impl, data):
    mesh = _explicit_mesh()
    out = _run(losses.make_loss_fn(kind, impl, mesh), _shard(data, mesh))
    _assert_same(out, _reference(kind, True))


@pytest.mark.parametrize("kind,impl", list(SHARDED))
def test_named_function_without_ids(kind, impl, data):
    mesh = _explicit_mesh()
    fn = functools.partial(SHARDED[kind, impl], mesh=mesh)
    _assert_same(_run(fn, _shard(data, mesh), ids=False), _reference(kind, False))


@pytest.mark.parametrize("shape", [(4, 2, 1), (2, 2, 2)])
@pytest.mark.parametrize("kind,impl", list(SHARDED))
def test_other_meshes(kind, impl, shape, data):
    mesh = _auto_mesh(shape)
    out = _run(losses.make_loss_fn(kind, impl, mesh, batch_axes=BATCH), data)
    _assert_same(out, _reference(kind, True))


def test_infonce_ignores_bias_and_grad_is_zero(data):
    (_, _), grads = _reference("infonce", True)
    assert float(grads[3]) == 0.0 and float(grads[2]) != 0.0


@pytest.mark.parametrize("impl", ["all_gather", "ring"])
def test_bfloat16_inputs_are_computed_in_float32(impl, data):
    mesh = _auto_mesh((8, 1, 1))
    rounded = dict(data, img=data["img"].astype(jnp.bfloat16).astype(np.float32),
                   txt=data["txt"].astype(jnp.bfloat16).astype(np.float32))
    ref = _run(losses.make_loss_fn("infonce", "naive", None), rounded)
    (loss, metrics), grads = _run(losses.make_loss_fn("infonce", impl, mesh), data, dtype=jnp.bfloat16)
    assert grads[0].dtype == jnp.bfloat16
    # Only the returned embedding grads are rounded to bf16; the loss must match the f32 reference.
    assert abs(float(loss) - float(ref[0][0])) <= TOL
    np.testing.assert_allclose(np.asarray(grads[0], np.float32), np.asarray(ref[1][0]), atol=4e-3)


def test_all_gather_grad_reduce_scatters(data):
    mesh = _explicit_mesh()
    d = _shard(data, mesh)
    fn = losses.make_loss_fn("infonce", "all_gather", mesh)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x, y: fn(x, y, SCALE)[0], argnums=(0, 1)))(
        d["img"], d["txt"]))
    assert "all_gather" in jaxpr and "reduce_scatter" in jaxpr


def test_bad_arguments_name_the_problem(data):
    with pytest.raises(ValueError, match="kind"):
        losses.make_loss_fn("softmax", "naive", None)
    with pytest.raises(ValueError, match="impl"):
        losses.make_loss_fn("infonce", "tree", None)
    with pytest.raises(ValueError, match="needs a mesh|mesh"):
        losses.make_loss_fn("infonce", "ring", None)
    mesh = _auto_mesh((8, 1, 1))
    with pytest.raises(ValueError, match="not divisible"):
        losses.make_loss_fn("infonce", "ring", mesh)(data["img"][:60], data["txt"][:60], SCALE)
    with pytest.raises(ValueError, match="not in mesh"):
        losses.make_loss_fn("infonce", "ring", mesh, batch_axes=("batch",))(
            data["img"], data["txt"], SCALE)


# ----------------------------------------------------------------------------------- memory

def _temp_mib(kind: str, impl: str, n: int = 8192, d: int = 512) -> float:
    """Compiled temp memory (MiB per device) of jit(value_and_grad) on 8 devices; never runs."""
    mesh = _explicit_mesh()
    sh = lambda shape, dtype, spec: jax.ShapeDtypeStruct(  # noqa: E731
        shape, dtype, sharding=NamedSharding(mesh, spec))
    emb, ids, scalar = sh((n, d), jnp.float32, P(BATCH, None)), sh((n,), jnp.int32, P(BATCH)), \
        sh((), jnp.float32, P())
    fn = losses.make_loss_fn(kind, impl, mesh)
    grad = jax.jit(jax.value_and_grad(lambda x, y, s, b, i, t: fn(x, y, s, b, i, t),
                                      argnums=(0, 1, 2, 3), has_aux=True))
    compiled = grad.lower(emb, emb, scalar, scalar, ids, ids).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


@pytest.mark.slow
@pytest.mark.parametrize("kind", losses.KINDS)
def test_memory_ring_le_all_gather_le_quarter_naive(kind):
    naive, gathered, ring = (_temp_mib(kind, impl) for impl in losses.IMPLS)
    print(f"{kind}: naive {naive:.0f} MiB, all_gather {gathered:.0f} MiB, ring {ring:.0f} MiB")
    assert ring <= gathered <= naive / 4
    # The ring never holds an n x N f32 block (n = 8192 / 8), forward or backward.
    assert ring < 1024 * 8192 * 4 / 2**20
