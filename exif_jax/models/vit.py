"""Vision Transformer in big_vision's layout, and the pre-LN transformer blocks the text tower shares.

Parameter paths are big_vision's (SigLIP checkpoints) so an exporter renames without reshuffling.
Ours (under `image/`) -> big_vision `img/` -> transformers SiglipVisionModel `vision_model.` -> timm:
  embedding/kernel [p,p,3,D] (HWIO)      embedding/kernel       embeddings.patch_embedding.weight (OIHW)  patch_embed.proj.weight (OIHW)
  embedding/bias                          embedding/bias         embeddings.patch_embedding.bias           patch_embed.proj.bias
  pos_embedding [1,N,D]                   pos_embedding          embeddings.position_embedding.weight [N,D] pos_embed [1,N,D] (1)
  cls [1,1,D] (pool="cls")                cls                    -                                          cls_token (1)
  Transformer/encoderblock_i/             encoderblock_i/        encoder.layers.i.                          blocks.i.
    LayerNorm_0/{scale,bias}                LayerNorm_0            layer_norm1.{weight,bias}                  norm1
    MultiHeadDotProductAttention_0/         MultiHead..._0/        self_attn.                                 attn.
      {query,key,value}/kernel [D,H,d]        same                   {q,k,v}_proj.weight = k.reshape(D,D).T    qkv.weight = concat(q,k,v)
      {query,key,value}/bias [H,d]            same                   {q,k,v}_proj.bias = b.reshape(D)          qkv.bias
      out/kernel [H,d,D], out/bias [D]        same                   out_proj.weight = k.reshape(D,D).T         proj
    LayerNorm_1                             LayerNorm_1            layer_norm2                                norm2
    MlpBlock_0/Dense_{0,1}/{kernel,bias}    MlpBlock_0/Dense_{0,1} mlp.fc{1,2}.{weight (=.T),bias}            mlp.fc{1,2}
  Transformer/encoder_norm                encoder_norm           post_layernorm                             norm
  MAPHead_0/probe [1,1,D]                 MAPHead_0/probe        head.probe                                 attn_pool.latent
  MAPHead_0/MultiHeadDotProductAttention_0  same                 head.attention.in_proj_{weight,bias}=concat(q,k,v); out_proj
  MAPHead_0/LayerNorm_0, MlpBlock_0       same                   head.layernorm, head.mlp.fc{1,2}           attn_pool.norm, attn_pool.mlp
  head/{kernel,bias} (optional)           head                   - (SiglipModel has no vision projection)   head
(1) timm adds pos_embed to the cls token too; fold it: our cls = cls_token + pos_embed[:, :1].
timm's global_pool="avg" models norm after pooling (fc_norm); ours (big_vision "gap") pools after the norm.
Old google-research/vision_transformer (AugReg .npz) numbers the block's children by a global counter:
LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3 (ours: _0, _0, _1, _0).
SigLIP's computation: LayerNorm eps 1e-6, GELU tanh approximation ("gelu_pytorch_tanh"), attention
scale head_dim**-0.5, patch conv with bias and VALID padding, no cls token, pool="map", no image head.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

LN_EPS = 1e-6
POOLS = ("avg", "map", "cls")
# model.attention: how q.k -> softmax -> p.v is computed (same math; exif_jax/schema.py says when to use which).
ATTENTION = ("xla", "cudnn", "einsum")
# model.{image,text}.remat: what a block keeps for the backward pass (None: no rematerialization at all).
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "none": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # projections/MLP outputs kept
    "dots_all": jax.checkpoint_policies.checkpoint_dots,                # every matmul output kept
    "full": jax.checkpoint_policies.nothing_saveable,                   # only the block's input kept
}

# Name -> (width, depth, heads, mlp_dim, patch); big_vision's table (arXiv:2106.04560, Table 2).
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "Ti": (192, 12, 3, 768), "S": (384, 12, 6, 1536), "M": (512, 12, 8, 2048), "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096), "So400m": (1152, 27, 16, 4304), "H": (1280, 32, 16, 5120),
}


def decode_variant(variant: str) -> dict[str, int]:
    """'B/16' -> dict(width=768, depth=12, heads=12, mlp_dim=3072, patch=16); '' or 'tiny' -> {}."""
    if variant in ("", "tiny", None):
        return {}
    name, _, patch = variant.partition("/")
    if name not in VARIANTS or (patch and not patch.isdigit()):
        raise ValueError(f"unknown ViT variant {variant!r}; expected one of {sorted(VARIANTS)} "
                         "with an optional '/patch', e.g. 'B/16', or '' / 'tiny' for explicit sizes")
    width, depth, heads, mlp_dim = VARIANTS[name]
    out = dict(width=width, depth=depth, heads=heads, mlp_dim=mlp_dim)
    if patch:
        out["patch"] = int(patch)
    return out


def _dense_kw(dtype, param_dtype, rngs: nnx.Rngs) -> dict:
    # big_vision's init: xavier-uniform kernels, near-zero biases.
    return dict(dtype=dtype, param_dtype=param_dtype, kernel_init=nnx.initializers.xavier_uniform(),
                bias_init=nnx.initializers.normal(1e-6), rngs=rngs)


def check_choice(value: str, choices, key: str) -> str:
    """`value` if it is one of `choices`, else a ValueError naming the config key and the choices."""
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, implementation: str = "xla",
           softmax_dtype=jnp.float32) -> jax.Array:
    """softmax(q.k^T / sqrt(head_dim), masked) . v for q [B,T,N,H], k/v [B,S,N,H], mask broadcasting to
    [B,N,T,S] (True = attend). "xla"/"cudnn": jax.nn.dot_product_attention with that implementation (logits
    and softmax in f32); "einsum": written out, logits and softmax in `softmax_dtype`."""
    if implementation == "einsum":
        logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=softmax_dtype)
        logits = logits * jnp.asarray(q.shape[-1] ** -0.5, softmax_dtype)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(softmax_dtype).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        return jnp.einsum("bnts,bsnh->btnh", probs, v)
    if implementation == "cudnn":
        platform = jax.devices()[0].platform
        if platform != "gpu":
            raise ValueError(f"model.attention='cudnn' runs cuDNN's fused attention, which needs a CUDA GPU; "
                             f"this backend is {platform!r}: use model.attention='xla' (the same math)")
        if q.dtype not in (jnp.bfloat16, jnp.float16):
            raise ValueError(f"model.attention='cudnn' needs model.dtype bfloat16 or float16 (cuDNN's fused "
                             f"attention has no {q.dtype} kernel): use model.attention='xla'")
        if mask is not None:  # cuDNN takes the mask as a bias of [B or 1, N or 1, T, S]
            mask = jnp.broadcast_to(mask, (*mask.shape[:2], q.shape[1], k.shape[1]))
    else:
        check_choice(implementation, ATTENTION, "model.attention")
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


class MultiHeadDotProductAttention(nnx.Module):
    """Separate q/k/v/out projections with kernels [D, heads, head_dim] and [heads, head_dim, D]."""

    def __init__(self, width: int, heads: int, *, dtype, param_dtype, attention: str = "xla",
                 softmax_dtype=jnp.float32, rngs: nnx.Rngs):
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        hd = width // heads
        self.attention = check_choice(attention, ATTENTION, "model.attention")
        self.softmax_dtype = softmax_dtype
        kw = _dense_kw(dtype, param_dtype, rngs)
        self.query = nnx.LinearGeneral(width, (heads, hd), **kw)
        self.key = nnx.LinearGeneral(width, (heads, hd), **kw)
        self.value = nnx.LinearGeneral(width, (heads, hd), **kw)
        self.out = nnx.LinearGeneral((heads, hd), width, axis=(-2, -1), **kw)

    def __call__(self, q_in: jax.Array, kv_in: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """q_in [B,T,D] attends to kv_in [B,S,D]; mask broadcasts to [B,heads,T,S] (True = attend)."""
        q, k, v = self.query(q_in), self.key(kv_in), self.value(kv_in)
        return self.out(attend(q, k, v, mask, self.attention, self.softmax_dtype))


class MlpBlock(nnx.Module):
    """Dense -> GELU (tanh approximation) -> Dense."""

    def __init__(self, width: int, mlp_dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = _dense_kw(dtype, param_dtype, rngs)
        self.Dense_0 = nnx.Linear(width, mlp_dim, **kw)
        self.Dense_1 = nnx.Linear(mlp_dim, width, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.Dense_1(jax.nn.gelu(self.Dense_0(x), approximate=True))


def _layer_norm(width: int, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Statistics are f32 whatever `dtype` is (flax); `dtype` is what the normalized output is computed in.
    return nnx.LayerNorm(width, epsilon=LN_EPS, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class Encoder1DBlock(nnx.Module):
    """Pre-LN block: x + MHSA(LN(x)), then x + MLP(LN(x)). norm_dtype: LayerNorms' and the "einsum"
    attention's softmax dtype (None: the compute dtype)."""

    def __init__(self, width: int, heads: int, mlp_dim: int, *, dtype, param_dtype, attention: str = "xla",
                 norm_dtype=None, rngs: nnx.Rngs):
        norm_dtype = norm_dtype or dtype
        self.LayerNorm_0 = _layer_norm(width, norm_dtype, param_dtype, rngs)
        self.MultiHeadDotProductAttention_0 = MultiHeadDotProductAttention(
            width, heads, dtype=dtype, param_dtype=param_dtype, attention=attention, softmax_dtype=norm_dtype,
            rngs=rngs)
        self.LayerNorm_1 = _layer_norm(width, norm_dtype, param_dtype, rngs)
        self.MlpBlock_0 = MlpBlock(width, mlp_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        y = self.LayerNorm_0(x)
        x = x + self.MultiHeadDotProductAttention_0(y, y, mask)
        return x + self.MlpBlock_0(self.LayerNorm_1(x))


def _block_call(block: nnx.Module, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    return block(x, mask)


def remat_block_call(policy: str, key: str = "model.{image,text}.remat") -> Callable:
    """block(x, mask) as a function, rematerialized per block under the named policy (REMAT_POLICIES)."""
    check_choice(policy, REMAT_POLICIES, key)
    if policy == "none":
        return _block_call
    return nnx.remat(_block_call, policy=REMAT_POLICIES[policy])


class Encoder(nnx.Module):
    """`depth` blocks named encoderblock_{i} and a final LayerNorm `encoder_norm`."""

    def __init__(self, width: int, depth: int, heads: int, mlp_dim: int, *, dtype, param_dtype,
                 remat: str = "none", attention: str = "xla", norm_dtype=None, rngs: nnx.Rngs):
        self.depth = depth
        self.remat = check_choice(remat, REMAT_POLICIES, "model.{image,text}.remat")
        for i in range(depth):
            setattr(self, f"encoderblock_{i}", Encoder1DBlock(
                width, heads, mlp_dim, dtype=dtype, param_dtype=param_dtype, attention=attention,
                norm_dtype=norm_dtype, rngs=rngs))
        self.encoder_norm = _layer_norm(width, norm_dtype or dtype, param_dtype, rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """[B, L, D] -> [B, L, D] (after the final LayerNorm)."""
        # Rematerialized per block: in the backward pass one block's activations are recomputed at a time.
        call = remat_block_call(self.remat)
        for i in range(self.depth):
            x = call(getattr(self, f"encoderblock_{i}"), x, mask)
        return self.encoder_norm(x)


class MAPHead(nnx.Module):
    """Multihead attention pooling: a learned probe attends to the tokens, then a residual MLP."""

    def __init__(self, width: int, heads: int, mlp_dim: int, *, dtype, param_dtype, attention: str = "xla",
                 norm_dtype=None, rngs: nnx.Rngs):
        self.dtype = dtype
        norm_dtype = norm_dtype or dtype
        self.probe = nnx.Param(nnx.initializers.xavier_uniform()(rngs.params(), (1, 1, width), param_dtype))
        self.MultiHeadDotProductAttention_0 = MultiHeadDotProductAttention(
            width, heads, dtype=dtype, param_dtype=param_dtype, attention=attention, softmax_dtype=norm_dtype,
            rngs=rngs)
        self.LayerNorm_0 = _layer_norm(width, norm_dtype, param_dtype, rngs)
        self.MlpBlock_0 = MlpBlock(width, mlp_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, L, D] -> [B, D]."""
        probe = jnp.broadcast_to(self.probe[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        x = self.MultiHeadDotProductAttention_0(probe, x)
        x = x + self.MlpBlock_0(self.LayerNorm_0(x))
        return x[:, 0]


def normalize_uint8(images: jax.Array, mean, std, dtype) -> jax.Array:
    """uint8 [B,H,W,3] -> (x/255 - mean)/std in f32, then cast to the compute dtype."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}")
    x = images.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)


class VisionTransformer(nnx.Module):
    """ViT over uint8 crops: patch conv, learned posemb, pre-LN encoder, pool, optional Linear `head`."""

    def __init__(self, *, image_size: int, patch: int, width: int, depth: int, heads: int, mlp_dim: int,
                 pool: str = "avg", num_classes: int | None = None, head_bias: bool = True,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), dtype=jnp.bfloat16, param_dtype=jnp.float32,
                 remat: str = "none", attention: str = "xla", norm_dtype=None, rngs: nnx.Rngs):
        if pool not in POOLS:
            raise ValueError(f"ViT pool must be one of {POOLS}, got {pool!r}")
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}")
        self.image_size, self.patch, self.pool = image_size, patch, pool
        self.mean, self.std, self.dtype = tuple(mean), tuple(std), dtype
        self.embedding = nnx.Conv(3, width, (patch, patch), strides=(patch, patch), padding="VALID",
                                  dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        n = (image_size // patch) ** 2
        self.pos_embedding = nnx.Param(
            nnx.initializers.normal(1 / math.sqrt(width))(rngs.params(), (1, n, width), param_dtype))
        self.cls = nnx.Param(jnp.zeros((1, 1, width), param_dtype)) if pool == "cls" else None
        self.Transformer = Encoder(width, depth, heads, mlp_dim, dtype=dtype, param_dtype=param_dtype,
                                   remat=remat, attention=attention, norm_dtype=norm_dtype, rngs=rngs)
        self.MAPHead_0 = (MAPHead(width, heads, mlp_dim, dtype=dtype, param_dtype=param_dtype, attention=attention,
                                  norm_dtype=norm_dtype, rngs=rngs)
                          if pool == "map" else None)
        self.head = (nnx.Linear(width, num_classes, use_bias=head_bias, dtype=dtype, param_dtype=param_dtype,
                                rngs=rngs) if num_classes else None)

    def __call__(self, images: jax.Array) -> jax.Array:
        """uint8 [B, S, S, 3] -> [B, num_classes or width] in the compute dtype."""
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"ViT built for {self.image_size}x{self.image_size} crops, got {images.shape}")
        x = self.embedding(normalize_uint8(images, self.mean, self.std, self.dtype))
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c) + self.pos_embedding[...].astype(x.dtype)
        if self.cls is not None:  # Appended after the posemb, as big_vision does.
            x = jnp.concatenate([jnp.broadcast_to(self.cls[...].astype(x.dtype), (b, 1, c)), x], axis=1)
        x = self.Transformer(x)
        if self.pool == "map":
            x = self.MAPHead_0(x)
        elif self.pool == "cls":
            x = x[:, 0]
        else:
            x = jnp.mean(x, axis=1)
        return self.head(x) if self.head is not None else x


def encoder_flops(tokens: int, width: int, depth: int, mlp_dim: int, kv_tokens: int | None = None) -> float:
    """Forward matmul FLOPs of `depth` self-attention blocks over `tokens` tokens (2 per multiply-add)."""
    s = tokens if kv_tokens is None else kv_tokens
    proj = 2 * (tokens + 2 * s + tokens) * width * width  # q, k, v, out
    attn = 2 * 2 * tokens * s * width                    # q.k^T and p.v
    mlp = 2 * 2 * tokens * width * mlp_dim
    return float(depth * (proj + attn + mlp))


def vit_forward_flops(image_size: int, patch: int, width: int, depth: int, mlp_dim: int, pool: str,
                      num_classes: int | None) -> float:
    """Forward matmul FLOPs of one image through VisionTransformer (convs and attention included)."""
    n = (image_size // patch) ** 2
    flops = 2.0 * n * patch * patch * 3 * width
    flops += encoder_flops(n + (pool == "cls"), width, depth, mlp_dim)
    if pool == "map":  # one query over n keys: q/out on 1 token, k/v on n, plus the MLP on 1 token
        flops += 2 * (2 + 2 * n) * width * width + 2 * 2 * n * width + 2 * 2 * width * mlp_dim
    if num_classes:
        flops += 2.0 * width * num_classes
    return float(flops)


