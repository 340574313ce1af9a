"""The flax <-> torch tensor rules and names of exif_jax/export/layout.py that every exporter and the importer
use: the rules compute what torch computes, invert each other, and refuse what has no torch layout."""
import jax
import numpy as np
import pytest

from exif_jax.export import layout


@pytest.mark.torch
def test_conv_and_linear_rules_compute_what_torch_computes():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 11, 3)).astype(np.float32)     # NHWC
    kernel = rng.normal(size=(3, 5, 3, 4)).astype(np.float32)  # HWIO, kh != kw: a swapped H/W shows
    ours = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    w = layout.to_torch(("image", "conv1", "kernel"), kernel)
    assert w.shape == (4, 3, 3, 5) and w.flags.c_contiguous
    theirs = torch.nn.functional.conv2d(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(w))
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy().transpose(0, 2, 3, 1), atol=1e-5)

    v = rng.normal(size=(5, 6)).astype(np.float32)
    k = rng.normal(size=(6, 2)).astype(np.float32)  # [in, out]
    w = layout.to_torch(("text", "head", "kernel"), k)
    assert w.shape == (2, 6)
    np.testing.assert_allclose(torch.nn.functional.linear(torch.from_numpy(v), torch.from_numpy(w)).numpy(),
                               v @ k, atol=1e-5)


def test_rules_invert_and_shapes_read_alike():
    rng = np.random.default_rng(1)
    for path, shape in ((("image", "conv1", "kernel"), (7, 7, 3, 64)), (("image", "fc", "kernel"), (2048, 768)),
                        (("image", "bn1", "mean"), (64,)), (("text", "x", "embedding"), (10, 4))):
        x = rng.normal(size=shape).astype(np.float32)
        t = layout.to_torch(path, x)
        assert t.shape == layout.torch_shape(path, shape)
        np.testing.assert_array_equal(layout.to_flax(path, t), x)
    assert layout.torch_shape(("image", "conv1", "kernel"), (7, 7, 3, 64)) == (64, 3, 7, 7)
    with pytest.raises(layout.NotExportable, match="image/attn/kernel: a rank-3 kernel"):
        layout.to_torch(("image", "attn", "kernel"), np.zeros((4, 2, 2), np.float32))


def test_official_names():
    assert layout.torch_key(("image", "layer1", 0, "conv1", "kernel")) == "model.visual.layer1.0.conv1.weight"
    assert layout.torch_key(("image", "bn1", "var")) == "model.visual.bn1.running_var"
    assert (layout.torch_key(("text", "transformer", "layer", 3, "attention", "q_lin", "bias"))
            == "model.transformer.transformer.layer.3.attention.q_lin.bias")
    with pytest.raises(KeyError, match="t: no counterpart"):
        layout.torch_key(("t",))
