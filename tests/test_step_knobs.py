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

from exif_jax.eval.localize import random_init_model
from exif_jax.models import towers
from test_models import VOCAB, images, tiny_config, tokens

# f32 on the CPU: the variants reorder the same float operations, nothing more.
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
    assert len(bns) == 1 + 4 * 4 and set(bns) == {jnp.dtype(jnp.float32)}  # stem + 3 per block and a downsample per stage


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
