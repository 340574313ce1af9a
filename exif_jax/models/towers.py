"""The two towers (image: ViT or ResNet; text: transformer or DistilBERT) and the logit scale/bias, from config.model.

Top-level parameter paths: image/..., text/..., t (log of the logit scale, big_vision's `t`, SiglipModel's
`logit_scale`), b (logit bias, big_vision's `b`, SiglipModel's `logit_bias`; sigmoid loss only).
Each tower's projection to embed_dim is its own Linear (`image/head`, `image/fc` for ResNet, `text/head`);
model.{image,text}.head = "none" drops it (then the tower width must equal embed_dim), which is how
SiglipModel's vision side (MAP output, no projection) is expressed.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from exif_jax.models import distilbert, resnet, text, vit


def _dtype(name: str):
    return jnp.dtype(name)


def _norm_dtype(m: ml_collections.ConfigDict):
    """model.norm_dtype as a dtype; "" -> None (the towers then use the compute dtype)."""
    return _dtype(m.norm_dtype) if m.norm_dtype else None


def _remat(cfg: ml_collections.ConfigDict, tower: str) -> str:
    """model.<tower>.remat, checked against vit.REMAT_POLICIES (a clear error for the old true/false)."""
    if isinstance(cfg.remat, bool) or str(cfg.remat).lower() in ("true", "false"):
        raise ValueError(f"model.{tower}.remat is a policy now, one of {', '.join(vit.REMAT_POLICIES)} "
                         f"(the old boolean: true -> 'full', false -> 'none'), got {cfg.remat!r}")
    return vit.check_choice(cfg.remat, vit.REMAT_POLICIES, f"model.{tower}.remat")


def _knobs(m: ml_collections.ConfigDict) -> dict:
    """The step's speed knobs both transformer towers take (exif_jax/schema.py: model.attention, norm_dtype)."""
    return dict(attention=vit.check_choice(m.attention, vit.ATTENTION, "model.attention"),
                norm_dtype=_norm_dtype(m))


def _head_classes(cfg: ml_collections.ConfigDict, width: int, embed_dim: int, tower: str) -> int | None:
    kind = cfg.head
    if kind == "linear":
        return embed_dim
    if kind == "none":
        if width != embed_dim:
            raise ValueError(f"model.{tower}.head='none' needs the tower width ({width}) == embed_dim ({embed_dim})")
        return None
    raise ValueError(f"model.{tower}.head must be 'linear' or 'none', got {kind!r}")


def vit_sizes(img: ml_collections.ConfigDict) -> dict[str, int]:
    """width/depth/heads/mlp_dim/patch of the image ViT (load_config resolved the variant into them)."""
    return {k: int(img[k]) for k in ("width", "depth", "heads", "mlp_dim", "patch")}


def resnet_sizes(img: ml_collections.ConfigDict) -> tuple[str, int]:
    """(variant, base width): torchvision's "50"/"101"/"152" (base width 64) or "tiny" (one block a stage)."""
    return str(img.variant), int(img.width)


def _image_tower(m: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    img = m.image
    common = dict(mean=tuple(img.mean), std=tuple(img.std), head_bias=img.head_bias, dtype=_dtype(m.dtype),
                  param_dtype=_dtype(m.param_dtype), rngs=rngs)
    if img.kind == "vit":
        s = vit_sizes(img)
        return vit.VisionTransformer(image_size=int(img.size), pool=img.pool,
                                     num_classes=_head_classes(img, s["width"], m.embed_dim, "image"),
                                     remat=_remat(img, "image"), **_knobs(m), **s, **common)
    if img.kind == "resnet":
        variant, width = resnet_sizes(img)
        return resnet.ResNet(variant=variant, width=width, bn_frozen=img.bn_frozen, norm_dtype=_norm_dtype(m),
                             num_classes=_head_classes(img, width * 32, m.embed_dim, "image"), **common)
    raise ValueError(f"model.image.kind must be 'vit' or 'resnet', got {img.kind!r}")


def _text_tower(m: ml_collections.ConfigDict, vocab_size: int, rngs: nnx.Rngs) -> nnx.Module:
    t = m.text
    if t.kind == "distilbert":  # the paper's tower (models/distilbert.py)
        return distilbert.DistilBert(
            vocab_size=vocab_size, max_len=int(t.max_len), width=t.width, depth=t.depth, heads=t.heads,
            mlp_dim=t.mlp_dim, pad_id=t.pad_id, num_classes=_head_classes(t, t.width, m.embed_dim, "text"),
            head_bias=t.head_bias, dtype=_dtype(m.dtype), param_dtype=_dtype(m.param_dtype),
            remat=_remat(t, "text"), rngs=rngs)
    if t.kind != "transformer":
        raise ValueError(f"model.text.kind must be 'transformer' or 'distilbert', got {t.kind!r}")
    return text.TextTransformer(
        vocab_size=vocab_size, max_len=int(t.max_len), width=t.width, depth=t.depth, heads=t.heads,
        mlp_dim=t.mlp_dim, pool=t.pool, pad_id=t.pad_id, eos_id=t.eos_id, mask_pad=t.mask_pad, causal=t.causal,
        num_classes=_head_classes(t, t.width, m.embed_dim, "text"), head_bias=t.head_bias,
        dtype=_dtype(m.dtype), param_dtype=_dtype(m.param_dtype), remat=_remat(t, "text"), **_knobs(m), rngs=rngs)


def l2_normalize(x: jax.Array) -> jax.Array:
    """Unit rows, in f32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


class DualTower(nnx.Module):
    """Image and text towers mapping to one embed_dim sphere, plus the contrastive logit scale and bias."""

    def __init__(self, config_model: ml_collections.ConfigDict, vocab_size: int, *, rngs: nnx.Rngs,
                 logit_bias: bool = False):
        m = config_model
        self.embed_dim = int(m.embed_dim)
        self.image = _image_tower(m, rngs)
        self.text = _text_tower(m, vocab_size, rngs)
        if m.logit_scale_init <= 0 or m.logit_scale_max <= 0:
            raise ValueError("model.logit_scale_init and model.logit_scale_max must be positive")
        self.logit_scale_max = float(m.logit_scale_max)
        log_init = math.log(m.logit_scale_init)
        # A fixed scale is a constant of the graph, not state: the optimizer never sees it.
        self.t = nnx.Param(jnp.full((1,), log_init, jnp.float32)) if m.learn_logit_scale else None
        self.fixed_log_scale = log_init
        self.b = nnx.Param(jnp.full((1,), float(m.logit_bias_init), jnp.float32)) if logit_bias else None

    def embed_image(self, images: jax.Array) -> jax.Array:
        """uint8 crops [B, S, S, 3] -> [B, embed_dim] f32, unit norm."""
        return l2_normalize(self.image(images))

    def embed_text(self, tokens: jax.Array) -> jax.Array:
        """int32 ids [B, L] -> [B, embed_dim] f32, unit norm."""
        return l2_normalize(self.text(tokens))

    def logit_scale(self) -> jax.Array:
        """exp(t) clipped at logit_scale_max (a constant when the scale is not learned)."""
        t = self.t[0] if self.t is not None else jnp.float32(self.fixed_log_scale)
        return jnp.minimum(jnp.exp(t), self.logit_scale_max)

    def logit_bias(self) -> jax.Array | None:
        """The sigmoid loss's learned bias (None when the model has none)."""
        return self.b[0] if self.b is not None else None

    def __call__(self, images: jax.Array, tokens: jax.Array):
        """(img_emb [B,E], txt_emb [B,E], logit_scale [], logit_bias [] or None)."""
        return self.embed_image(images), self.embed_text(tokens), self.logit_scale(), self.logit_bias()


def create_model(config: ml_collections.ConfigDict, vocab_size: int, rngs: nnx.Rngs) -> DualTower:
    """DualTower from the full config (model.*, plus loss.kind: 'sigmoid' adds the logit bias)."""
    cfg_vocab = int(config.model.text.vocab_size)
    if cfg_vocab and cfg_vocab < vocab_size:
        raise ValueError(f"model.text.vocab_size={cfg_vocab} is smaller than the tokenizer's {vocab_size}")
    return DualTower(config.model, cfg_vocab or vocab_size, rngs=rngs,
                     logit_bias=config.loss.kind == "sigmoid")


def flops_per_example(config: ml_collections.ConfigDict) -> float:
    """Training FLOPs for one (image, text) pair: 3x the forward matmul/conv FLOPs of both towers."""
    m = config.model
    img = m.image
    if img.kind == "vit":
        s = vit_sizes(img)
        fwd = vit.vit_forward_flops(int(img.size), s["patch"], s["width"], s["depth"], s["mlp_dim"],
                                    img.pool, _head_classes(img, s["width"], m.embed_dim, "image"))
    else:
        variant, width = resnet_sizes(img)
        fwd = resnet.resnet_forward_flops(int(img.size), variant, width,
                                          _head_classes(img, width * 32, m.embed_dim, "image"))
    t = m.text
    fwd += text.text_forward_flops(int(t.max_len), t.width, t.depth, t.mlp_dim,
                                   _head_classes(t, t.width, m.embed_dim, "text"))
    return 3.0 * fwd
