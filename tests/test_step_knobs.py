"""The step's speed knobs (model.attention, model.{image,text}.remat, model.norm_dtype): each computes the same
loss and gradients as the default, on small shapes in f32 (tolerances below), and a choice this backend cannot
run fails by name."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from test_models import VOCAB, images, tiny_config, tokens

from exif_jax.eval.embedders import random_init_model
from exif_jax.models import towers

# f32 on the CPU: the variants reorder the same float operations, nothing more.
# Every test here compiles towers or a sharded train step (seconds to a minute each on 2 cores).
pytestmark = pytest.mark.slow
RTOL, ATOL = 2e-5, 1e-6
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def small_config(**model):
    """configs/tiny.py with one block per tower, f32 compute, a MAP head (its attention too), a causal text tower
    over padded texts (padding and causal masks combined) and the knobs given ("image.remat" -> model.image.remat)."""
    c = tiny_config()
    c.model.dtype = "float32"
    c.model.image.update(depth=1, pool="map")
    c.model.text.update(depth=1, causal=True)
    for key, value in model.items():
        node = c.model
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def loss_and_grads(config, seed: int = 3):
    """Symmetric InfoNCE and its gradients for weights drawn from `seed` (the knobs change no parameter, so every
    variant gets the same weights). Weights come from numpy and the step compiles at XLA's lowest optimization
    level: what would otherwise dominate these tests on 2 cores (the numerics are the same operations)."""
    _, params, rest = nnx.split(random_init_model(config, vocab_size=VOCAB, seed=seed), nnx.Param, ...)
    graphdef = nnx.split(abstract_model(config), nnx.Param, ...)[0]

    def f(params, x, t):
        def loss_fn(p):
            img, txt, scale, _ = nnx.merge(graphdef, p, rest)(x, t)
            logits = scale * img @ txt.T
            labels = jnp.arange(logits.shape[0])
            return 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                          + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())

        return jax.value_and_grad(loss_fn)(params)

    x, t = images(6), tokens(6)  # padded texts: the text mask is exercised
    step = jax.jit(f).lower(params, x, t).compile(FAST_COMPILE)
    loss, grads = step(params, x, t)
    return float(loss), {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(grads)}


def assert_same(got, want, rtol=RTOL, atol=ATOL):
    assert got[0] == pytest.approx(want[0], rel=rtol, abs=atol)
    assert got[1].keys() == want[1].keys()
    for k in want[1]:
        np.testing.assert_allclose(got[1][k], want[1][k], rtol=rtol, atol=atol, err_msg=k)


def abstract_model(config):
    """The model's structure without computing its weights."""
    return nnx.eval_shape(lambda: towers.create_model(config, VOCAB, nnx.Rngs(0)))


@pytest.fixture(scope="module")
def default():
    return loss_and_grads(small_config())


def test_einsum_attention_equals_jax_dot_product_attention(default):
    # model.norm_dtype "" = the compute dtype, f32 here: the einsum's softmax is f32 as in jax's XLA path.
    assert_same(loss_and_grads(small_config(attention="einsum")), default)


@pytest.mark.parametrize("image,text", [("dots", "full"), ("dots_all", "dots_all")])
def test_remat_policies_change_memory_not_results(default, image, text):
    assert_same(loss_and_grads(small_config(**{"image.remat": image, "text.remat": text})), default)


def test_remat_policy_reaches_the_blocks():
    """The forward jaxpr holds one rematerialized call per block under that policy, none without."""
    def jaxpr(policy):
        graphdef, state = nnx.split(abstract_model(small_config(**{"image.remat": policy, "text.remat": policy})))
        return str(jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(images(2), tokens(2)))(state))

    assert "policy=" not in jaxpr("none")
    dots = jaxpr("dots")
    assert dots.count("policy=DotsSaveable(only_if_no_batch_dims=True)") == 2, dots[:2000]  # 1 image + 1 text block


def test_norm_dtype_float32_under_bf16_compute_is_close_and_applied():
    """bf16 compute with f32 norms is what the default computes up to bf16 rounding (loss within 2%, all gradients
    together within 5% of their norm; one by one some are pure rounding noise, e.g. key biases, whose exact
    gradient is 0); and the knob reaches every LayerNorm."""
    want = loss_and_grads(small_config(dtype="bfloat16"))
    c = small_config(dtype="bfloat16", norm_dtype="float32")
    got = loss_and_grads(c)
    assert got[0] == pytest.approx(want[0], rel=2e-2)
    flat = lambda g: np.concatenate([g[k].ravel() for k in sorted(g)])  # noqa: E731
    assert np.linalg.norm(flat(got[1]) - flat(want[1])) <= 0.05 * np.linalg.norm(flat(want[1]))
    norms = lambda m: [x.dtype for _, x in nnx.iter_graph(m) if isinstance(x, nnx.LayerNorm)]  # noqa: E731
    assert norms(abstract_model(c)) == [jnp.dtype(jnp.float32)] * 7  # 3 per encoder (2 in the block) + MAP head's
    assert norms(abstract_model(small_config(dtype="bfloat16"))) == [jnp.dtype(jnp.bfloat16)] * 7


def test_resnet_takes_norm_dtype():
    c = small_config(norm_dtype="float32", **{"image.kind": "resnet", "image.variant": "tiny", "image.width": 8,
                                              "image.pool": "avg"})
    bns = [x.dtype for _, x in nnx.iter_graph(abstract_model(c).image) if isinstance(x, nnx.BatchNorm)]
    # the stem + 3 per block and a downsample per stage
    assert len(bns) == 1 + 4 * 4 and set(bns) == {jnp.dtype(jnp.float32)}


def test_choices_this_backend_cannot_run_fail_by_name():
    if jax.devices()[0].platform == "gpu":
        pytest.skip("cuDNN attention runs here")
    model = abstract_model(small_config(attention="cudnn", dtype="bfloat16"))
    with pytest.raises(ValueError, match=r"model\.attention='cudnn'.*needs a CUDA GPU.*'xla'"):
        nnx.eval_shape(lambda m: m(images(2), tokens(2)), model)
    with pytest.raises(ValueError, match=r"model\.attention must be one of 'xla', 'cudnn', 'einsum', got 'flash'"):
        abstract_model(small_config(attention="flash"))
    with pytest.raises(ValueError, match=r"model\.text\.remat must be one of 'none', 'dots', 'dots_all', 'full'"):
        abstract_model(small_config(**{"text.remat": "some"}))


def initial_state(trainer) -> dict:
    """A host state of the trainer's layout without compiling its init: weights from numpy, Adam's moments 0 and
    every count 1 (the schedule's count too: its lr at 0 is 0, at 1 it is past the 1-step warmup)."""
    from exif_jax.eval.embedders import random_weights

    def zero_or_one(x):
        return np.ones(x.shape, x.dtype) if x.dtype == np.int32 and x.shape == () else np.zeros(x.shape, x.dtype)

    state = {k: jax.tree.map(zero_or_one, v) for k, v in trainer.abstract_state.items()}
    state.update({k: jax.device_get(random_weights(trainer.abstract_state[k], 3)) for k in ("params", "rest")})
    return state


def test_every_knob_at_once_gives_the_default_train_step_on_8_devices():
    """The real train step (exif_jax.train, sharded data=4 x fsdp=2 over 8 fake devices) with every knob changed at
    once (einsum attention, remat "dots"/"full", f32 norms, the ring loss) gives the default's loss, gradient norm
    and parameter update from the same state and batch, in f32 within RTOL/ATOL. The optimizer is set so the
    update shows the gradients: Adam's first update is -lr * g / (|g| + eps), with lr = eps = 1 (no decay or
    clipping) a one-to-one function of each gradient entry rather than nearly its sign."""
    from exif_jax import sharding, train

    if jax.device_count() < 8:
        pytest.skip("needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")

    def step_config(**model):
        c = small_config(**model)
        c.mesh.update(data=4, fsdp=2, fsdp_min_size=64)  # small arrays sharded too: the fsdp gathers run
        c.data.global_batch_size = 8
        c.optim.update(lr=1.0, eps=1.0, warmup_steps=1, weight_decay=0.0, clip_norm=0.0)
        return c

    knobs = step_config(attention="einsum", norm_dtype="float32", **{"image.remat": "dots", "text.remat": "full"})
    knobs.loss.impl = "ring"
    rng = np.random.default_rng(0)
    host = {"image": np.asarray(images(8)), "tokens": np.asarray(tokens(8)),
            "image_id": np.arange(8, dtype=np.int32), "text_id": rng.permutation(8).astype(np.int32)}
    state0, results = None, []
    for config in (step_config(), knobs):
        mesh = sharding.make_mesh(config.mesh)
        trainer = train.make_trainer(config, mesh, VOCAB)
        if state0 is None:  # the knobs change no parameter: both steps start from one state
            state0 = initial_state(trainer)
        state = jax.device_put(state0, trainer.state_shardings)
        batch = jax.device_put(host, sharding.batch_sharding(mesh))
        step = trainer.train_step.lower(state, batch).compile(FAST_COMPILE)
        new, metrics = step(state, batch)
        update = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), jax.device_get(new["params"]),
                              state0["params"])
        results.append((float(metrics["loss"]), float(metrics["grad_norm"]), update))
    (loss, norm, update), (want_loss, want_norm, want_update) = results
    assert loss == pytest.approx(want_loss, rel=RTOL, abs=ATOL)
    assert norm == pytest.approx(want_norm, rel=RTOL, abs=ATOL)
    flat = lambda p: dict(jax.tree_util.tree_flatten_with_path(p)[0])  # noqa: E731
    got, want = flat(update), flat(want_update)
    assert got.keys() == want.keys() and max(np.abs(u).max() for u in want.values()) > 1e-3  # it moved
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=ATOL, err_msg=jax.tree_util.keystr(k))
