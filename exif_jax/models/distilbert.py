"""DistilBERT (transformers' DistilBertModel) in Flax NNX: the paper's text tower, masked-mean pooled.

Paths map 1:1 to DistilBertModel's state_dict by replacing '/' with '.' and renaming leaves:
  embeddings/word_embeddings/embedding [V,D]       embeddings.word_embeddings.weight
  embeddings/position_embeddings/embedding [P,D]   embeddings.position_embeddings.weight (learned)
  embeddings/LayerNorm/{scale,bias}                embeddings.LayerNorm.{weight,bias}
  transformer/layer/i/attention/{q,k,v,out}_lin    transformer.layer.i.attention.{q,k,v,out}_lin
      /{kernel [D,D], bias}                            .{weight (=kernel.T), bias}
  transformer/layer/i/sa_layer_norm                transformer.layer.i.sa_layer_norm
  transformer/layer/i/ffn/lin{1,2}                 transformer.layer.i.ffn.lin{1,2} (weight = kernel.T)
  transformer/layer/i/output_layer_norm            transformer.layer.i.output_layer_norm
  head/{kernel,bias} (optional, ours)              - (the paper feeds the 768-d mean to the loss as is)
Computation as DistilBertModel in eval mode: word + position embeddings -> LayerNorm (eps 1e-12); each block
post-LN: x = LN(x + attn(x)), x = LN(x + lin2(gelu(lin1(x)))), GELU exact (erf), attention scale
head_dim**-0.5, padded keys masked. The paper's EXIFNet.encode_text (avg_word_embs=True) then averages the
last hidden state over the attention mask (tokens != pad_id); no projection, no final LayerNorm.
model.attention and model.norm_dtype do not apply here: this tower keeps its einsum attention (softmax in f32)
and LayerNorms in the compute dtype, as its torch parity tests pin them; model.text.remat does.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from exif_jax.models.vit import REMAT_POLICIES, check_choice, remat_block_call

LN_EPS = 1e-12
INIT_STD = 0.02  # DistilBertConfig.initializer_range


def _linear(cin: int, cout: int, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(cin, cout, kernel_init=nnx.initializers.normal(INIT_STD), dtype=dtype,
                      param_dtype=param_dtype, rngs=rngs)


def _layer_norm(width: int, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance, as torch: the one-pass E[x^2]-E[x]^2 loses digits on DistilBERT's large activations.
    return nnx.LayerNorm(width, epsilon=LN_EPS, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype,
                         rngs=rngs)


class Embeddings(nnx.Module):
    """Word + learned position embeddings, then LayerNorm."""

    def __init__(self, vocab_size: int, max_len: int, width: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        init = nnx.initializers.normal(INIT_STD)
        self.word_embeddings = nnx.Embed(vocab_size, width, embedding_init=init, dtype=dtype,
                                         param_dtype=param_dtype, rngs=rngs)
        self.position_embeddings = nnx.Embed(max_len, width, embedding_init=init, dtype=dtype,
                                             param_dtype=param_dtype, rngs=rngs)
        self.LayerNorm = _layer_norm(width, dtype, param_dtype, rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.word_embeddings(tokens) + self.position_embeddings(jnp.arange(tokens.shape[1]))[None]
        return self.LayerNorm(x)


class Attention(nnx.Module):
    """Multi-head self-attention with separate q/k/v/out Linears (DistilBertSelfAttention)."""

    def __init__(self, width: int, heads: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.q_lin = _linear(width, width, dtype, param_dtype, rngs)
        self.k_lin = _linear(width, width, dtype, param_dtype, rngs)
        self.v_lin = _linear(width, width, dtype, param_dtype, rngs)
        self.out_lin = _linear(width, width, dtype, param_dtype, rngs)

    def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
        b, n, d = x.shape
        def split(y):
            return y.reshape(b, n, self.heads, d // self.heads)
        q, k, v = split(self.q_lin(x)), split(self.k_lin(x)), split(self.v_lin(x))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * (d // self.heads) ** -0.5
        logits = jnp.where(valid[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        return self.out_lin(jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, n, d))


class FFN(nnx.Module):
    """lin1 -> exact GELU -> lin2."""

    def __init__(self, width: int, hidden: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.lin1 = _linear(width, hidden, dtype, param_dtype, rngs)
        self.lin2 = _linear(hidden, width, dtype, param_dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.lin2(jax.nn.gelu(self.lin1(x), approximate=False))


class Block(nnx.Module):
    """Post-LN transformer block (DistilBERT's TransformerBlock)."""

    def __init__(self, width: int, heads: int, hidden: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.attention = Attention(width, heads, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.sa_layer_norm = _layer_norm(width, dtype, param_dtype, rngs)
        self.ffn = FFN(width, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.output_layer_norm = _layer_norm(width, dtype, param_dtype, rngs)

    def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
        x = self.sa_layer_norm(x + self.attention(x, valid))
        return self.output_layer_norm(x + self.ffn(x))


class Transformer(nnx.Module):
    """The stack of blocks (DistilBERT's `transformer.layer`)."""

    def __init__(self, width: int, depth: int, heads: int, hidden: int, *, dtype, param_dtype,
                 remat: str = "none", rngs: nnx.Rngs):
        self.remat = check_choice(remat, REMAT_POLICIES, "model.text.remat")
        self.layer = nnx.List([Block(width, heads, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                               for _ in range(depth)])

    def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
        call = remat_block_call(self.remat)
        for block in self.layer:
            x = call(block, x, valid)
        return x


class DistilBert(nnx.Module):
    """DistilBERT over WordPiece ids, masked mean of the last hidden state, optional Linear `head`."""

    def __init__(self, *, vocab_size: int, max_len: int = 512, width: int = 768, depth: int = 6, heads: int = 12,
                 mlp_dim: int = 3072, pad_id: int = 0, num_classes: int | None = None, head_bias: bool = True,
                 dtype=jnp.float32, param_dtype=jnp.float32, remat: str = "none", rngs: nnx.Rngs):
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.max_len, self.pad_id = int(max_len), int(pad_id)
        self.embeddings = Embeddings(vocab_size, max_len, width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.transformer = Transformer(width, depth, heads, mlp_dim, dtype=dtype, param_dtype=param_dtype,
                                       remat=remat, rngs=rngs)
        self.head = (nnx.Linear(width, num_classes, use_bias=head_bias, dtype=dtype, param_dtype=param_dtype,
                                rngs=rngs) if num_classes else None)

    def hidden_states(self, tokens: jax.Array) -> jax.Array:
        """int32 ids [B, L] -> the last hidden state [B, L, width] (DistilBertModel(...)[0])."""
        if tokens.ndim != 2 or tokens.shape[1] > self.max_len:
            raise ValueError(f"tokens must be [B, L<={self.max_len}], got shape {tokens.shape}")
        return self.transformer(self.embeddings(tokens), tokens != self.pad_id)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """int32 ids [B, L] (pad = pad_id) -> [B, num_classes or width] in the compute dtype."""
        x = self.hidden_states(tokens)
        w = (tokens != self.pad_id).astype(jnp.float32)[..., None]
        # The paper divides by max(count, 1e-9); every encoded text holds [CLS] and [SEP], so count >= 2.
        x = (jnp.sum(x.astype(jnp.float32) * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1e-9)).astype(x.dtype)
        return self.head(x) if self.head is not None else x

