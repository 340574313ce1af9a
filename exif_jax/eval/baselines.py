"""Non-learned patch embedders with the learned model's interface (patches.PatchEmbedder), for the same
consistency / consensus harness.

noise: local statistics of high-pass noise residuals (the classic camera-noise / JPEG-trace cues that
  learned splice detectors compete with): per residual filter (1st/2nd order, SRM "square" 3x3, KV 5x5)
  log variance, log kurtosis and lag-1 autocorrelation across and down; JPEG 8x8 blockiness across and down;
  chroma residual level. 28 features, z-scored over the photo's patches before the cosine.
random: features drawn at random per patch (keyed by a hash of its pixels, so a photo's result is
  reproducible): the chance level of every metric.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from exif_jax.eval.patches import PatchEmbedder

_KV = np.array([[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2],
                [-1, 2, -2, 2, -1]], np.float32) / 12.0

# Baseline embedders by name -> the method name tables and reports use for them.
BASELINE_METHOD = {"noise": "classical", "random": "random"}


def residual_filters() -> np.ndarray:
    """[5, 5, 1, 6] HWIO high-pass filters: 1st order across/down, 2nd order across/down, SRM square, KV."""
    f = np.zeros((6, 5, 5), np.float32)
    f[0, 2, 2], f[0, 2, 3] = -1, 1
    f[1, 2, 2], f[1, 3, 2] = -1, 1
    f[2, 2, 1:4] = (1, -2, 1)
    f[3, 1:4, 2] = (1, -2, 1)
    f[4, 1:4, 1:4] = np.array([[-1, 2, -1], [2, -4, 2], [-1, 2, -1]], np.float32) / 4.0
    f[5] = _KV
    return f.transpose(1, 2, 0)[:, :, None, :]


def _conv(x: jax.Array, w: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _blockiness(gray: jax.Array, axis: int) -> jax.Array:
    """log(strongest / mean) of the mean |1st difference| at the 8 phases of an 8-px grid along `axis`."""
    d = jnp.abs(jnp.diff(gray, axis=axis))
    prof = d.mean(axis=3 - axis)  # [B, p-1] along `axis`
    phase = np.arange(prof.shape[1]) % 8
    onehot = (phase[:, None] == np.arange(8)[None, :]).astype(np.float32)
    per_phase = prof @ (onehot / onehot.sum(0))
    return jnp.log(per_phase.max(1) / (per_phase.mean(1) + 1e-6) + 1e-6)


def noise_features(patches: jax.Array) -> jax.Array:
    """uint8 [B, p, p, 3] -> [B, 28] f32 noise-residual statistics."""
    x = patches.astype(jnp.float32)
    gray = x @ jnp.asarray([0.299, 0.587, 0.114], jnp.float32)
    r = _conv(gray[..., None], jnp.asarray(residual_filters()))  # [B, p-4, p-4, 6]
    r = r - r.mean((1, 2), keepdims=True)
    var = jnp.mean(r * r, (1, 2))
    kurt = jnp.mean(r ** 4, (1, 2)) / (var * var + 1e-6)
    corr_x = jnp.mean(r[:, :, 1:] * r[:, :, :-1], (1, 2)) / (var + 1e-6)
    corr_y = jnp.mean(r[:, 1:] * r[:, :-1], (1, 2)) / (var + 1e-6)
    chroma = jnp.stack([x[..., 0] - x[..., 1], x[..., 2] - x[..., 1]], -1)  # [B, p, p, 2]
    sq = jnp.asarray(residual_filters()[:, :, :, 4:5])
    rc = jnp.concatenate([_conv(chroma[..., k:k + 1], sq) for k in range(2)], -1)
    cvar = jnp.mean(jnp.square(rc - rc.mean((1, 2), keepdims=True)), (1, 2))
    return jnp.concatenate([
        jnp.log(var + 1e-3), jnp.log(kurt + 1e-3), corr_x, corr_y,
        jnp.stack([_blockiness(gray, 2), _blockiness(gray, 1)], 1), jnp.log(cvar + 1e-3)], 1)


def _noise_apply(_params: None, patches: jax.Array) -> jax.Array:
    return noise_features(patches)


def noise_embedder(patch_size: int) -> PatchEmbedder:
    """The noise-residual statistics baseline at patch size p."""
    return PatchEmbedder(_noise_apply, None, int(patch_size), "noise", standardize=True)


def _random_apply(key_data: jax.Array, patches: jax.Array, dim: int = 64) -> jax.Array:
    # uint32 arithmetic wraps: a cheap content hash, so the same patch gets the same features.
    w = (jnp.arange(np.prod(patches.shape[1:]), dtype=jnp.uint32) * jnp.uint32(2654435761)) | jnp.uint32(1)
    h = jnp.sum(patches.reshape(patches.shape[0], -1).astype(jnp.uint32) * w, axis=1)
    key = jax.random.wrap_key_data(key_data)
    return jax.vmap(lambda hh: jax.random.normal(jax.random.fold_in(key, hh), (dim,)))(h)


def random_embedder(patch_size: int, seed: int = 0) -> PatchEmbedder:
    """The chance-level baseline: 64 random features a patch."""
    return PatchEmbedder(_random_apply, jax.random.key_data(jax.random.key(seed)), int(patch_size), "random")
