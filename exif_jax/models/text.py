"""Text transformer over sentencepiece ids (big_vision's text tower layout; blocks shared with the ViT).

Ours (under `text/`) -> big_vision `txt/` -> transformers SiglipTextModel `text_model.`:
  Embed_0/embedding [V,D]        Embed_0/embedding     embeddings.token_embedding.weight
  pos_embedding [1,L,D]          pos_embedding         embeddings.position_embedding.weight [L,D]
  Encoder_0/encoderblock_i/...   same                  encoder.layers.i.... (table in vit.py)
  Encoder_0/encoder_norm         same                  final_layer_norm
  head/{kernel,bias} [D,E]       head                  head.{weight (=.T), bias}
SigLIP's text tower is pool="last", mask_pad=False (it attends to its pad tokens; padding="max_length"),
causal=False, head with bias.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from exif_jax.models.vit import Encoder, encoder_flops

POOLS = ("last", "eos", "mean")


class TextTransformer(nnx.Module):
    """Token + learned position embeddings, pre-LN encoder, final LayerNorm, pool, optional Linear `head`."""

    def __init__(self, *, vocab_size: int, max_len: int, width: int, depth: int, heads: int, mlp_dim: int,
                 pool: str = "mean", pad_id: int = 0, eos_id: int = 1, mask_pad: bool = True,
                 causal: bool = False, num_classes: int | None = None, head_bias: bool = True,
                 dtype=jnp.bfloat16, param_dtype=jnp.float32, remat: str = "none", attention: str = "xla",
                 norm_dtype=None, rngs: nnx.Rngs):
        if pool not in POOLS:
            raise ValueError(f"text pool must be one of {POOLS}, got {pool!r}")
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.max_len, self.pool, self.pad_id, self.eos_id = max_len, pool, pad_id, eos_id
        self.mask_pad, self.causal = mask_pad, causal
        self.Embed_0 = nnx.Embed(vocab_size, width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.pos_embedding = nnx.Param(
            nnx.initializers.normal(1 / math.sqrt(width))(rngs.params(), (1, max_len, width), param_dtype))
        self.Encoder_0 = Encoder(width, depth, heads, mlp_dim, dtype=dtype, param_dtype=param_dtype,
                                 remat=remat, attention=attention, norm_dtype=norm_dtype, rngs=rngs)
        self.head = (nnx.Linear(width, num_classes, use_bias=head_bias, dtype=dtype, param_dtype=param_dtype,
                                rngs=rngs) if num_classes else None)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """int32 ids [B, L] (L <= max_len, pad = pad_id) -> [B, num_classes or width] in the compute dtype."""
        if tokens.ndim != 2 or tokens.shape[1] > self.max_len:
            raise ValueError(f"tokens must be [B, L<={self.max_len}], got shape {tokens.shape}")
        length = tokens.shape[1]
        x = self.Embed_0(tokens)
        x = x + self.pos_embedding[:, :length].astype(x.dtype)
        valid = tokens != self.pad_id
        mask = None
        if self.mask_pad:
            mask = valid[:, None, None, :]  # [B, 1, 1(query), L(key)]
        if self.causal:
            tri = jnp.tril(jnp.ones((length, length), bool))[None, None]
            mask = tri if mask is None else mask & tri
        x = self.Encoder_0(x, mask)
        x = self._pool(x, tokens, valid)
        return self.head(x) if self.head is not None else x

    def _pool(self, x: jax.Array, tokens: jax.Array, valid: jax.Array) -> jax.Array:
        if self.pool == "last":
            return x[:, -1]
        if self.pool == "mean":
            w = valid.astype(jnp.float32)[..., None]
            total = jnp.sum(x.astype(jnp.float32) * w, axis=1)
            return (total / jnp.maximum(jnp.sum(w, axis=1), 1.0)).astype(x.dtype)
        # "eos": the first eos; a sequence truncated before its eos uses its last non-pad token.
        length = tokens.shape[1]
        pos = jnp.arange(length)
        is_eos = tokens == self.eos_id
        first_eos = jnp.argmax(is_eos, axis=1)
        last_valid = jnp.max(jnp.where(valid, pos, 0), axis=1)
        idx = jnp.where(jnp.any(is_eos, axis=1), first_eos, last_valid)
        return jnp.take_along_axis(x, idx[:, None, None], axis=1)[:, 0]


def text_forward_flops(length: int, width: int, depth: int, mlp_dim: int, num_classes: int | None) -> float:
    """Forward matmul FLOPs of one sequence of `length` tokens (the embedding lookup is free)."""
    flops = encoder_flops(length, width, depth, mlp_dim)
    if num_classes:
        flops += 2.0 * width * num_classes
    return float(flops)
