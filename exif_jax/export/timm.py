"""The ViT image tower as a big_vision-layout .npz that timm's `VisionTransformer.load_pretrained` reads.

The file holds big_vision's SigLIP parameter tree flattened with '/': `params/img/...` (the image tower,
exactly the names timm's `_load_weights` reads for big_vision checkpoints), plus `params/txt/...`, `params/t`
and `params/b` for completeness (timm ignores them). Plain float32 arrays: `np.load(allow_pickle=False)`.

Which timm model reproduces our image tower (computation as in vit.py):
  pool="map"  VisionTransformer(class_token=False, global_pool='map')                  (SigLIP)
  pool="avg"  VisionTransformer(class_token=False, global_pool='avg', fc_norm=False)   (norm before the pool)
  pool="cls"  VisionTransformer(class_token=True, no_embed_class=True, global_pool='token')
always with act_layer='gelu_tanh' (timm's SigLIP entries default to exact GELU; ours is the tanh form),
qkv_bias=True, LayerNorm eps 1e-6 (timm's default) and num_classes = embed_dim when model.image.head='linear'
(else 0). timm takes float input: normalize uint8 crops with the exported mean/std first.

A ResNet image tower is written as OUT/resnet_timm.safetensors under torchvision's names, which are timm's:
`timm.create_model('resnet50', num_classes=E)` (or `ResNet(block=Bottleneck, layers=..., channels=...,
stem_width=...)` for other widths) then `timm.models.load_checkpoint(model, path)`.
"""
from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np

from exif_jax.export.layout import (
    NotExportable,
    flat_params,
    log_logit_scale,
    record_digest,
    torchvision_state_dict,
    write_safetensors,
)
from exif_jax.models import resnet, towers, vit

NPZ_NAME = "vit_big_vision.npz"
RESNET_NAME = "resnet_timm.safetensors"
TIMM_JSON = "timm_config.json"
# Registered timm SigLIP names per (variant, patch): their default resolution is overridden with img_size.
_TIMM_SIGLIP = {("B", 16): ("base", 224), ("B", 32): ("base", 256), ("L", 16): ("large", 256),
                ("So400m", 14): ("so400m", 224), ("So400m", 16): ("so400m", 256)}


def big_vision_tree(model: Any) -> dict[str, np.ndarray]:
    """big_vision SigLIP names: params/img/..., params/txt/..., params/t (the clip folded in), params/b."""
    flat = flat_params(model)
    out = {}
    for key, value in flat.items():
        tower, _, rest = key.partition("/")
        if tower == "image":
            out[f"params/img/{rest}"] = value
        elif tower == "text":
            out[f"params/txt/{rest}"] = value
    out["params/t"] = np.asarray([log_logit_scale(model)], np.float32)
    bias = model.logit_bias()
    out["params/b"] = np.asarray([0.0 if bias is None else float(bias)], np.float32)
    return out


def _named_variant(img: ml_collections.ConfigDict) -> str | None:
    sizes = towers.vit_sizes(img)
    for name, (width, depth, heads, mlp_dim) in vit.VARIANTS.items():
        if (width, depth, heads, mlp_dim) == (sizes["width"], sizes["depth"], sizes["heads"], sizes["mlp_dim"]):
            return name
    return None


def mlp_ratio_for(width: int, mlp_dim: int) -> float:
    """A ratio r with int(width * r) == mlp_dim (timm builds the MLP hidden size that way)."""
    r = mlp_dim / width
    if int(width * r) != mlp_dim:  # float rounding below the integer, e.g. So400m's 4304 / 1152
        r = (mlp_dim + 0.5) / width
    return r


def timm_spec(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """{"kwargs": VisionTransformer kwargs, "model_name": a registered timm name or None, "mean", "std"}."""
    m = config.model
    img = m.image
    if img.kind == "resnet":
        return _resnet_spec(config)
    if img.kind != "vit":
        raise NotExportable(f"--format timm exports a ViT or ResNet image tower; model.image.kind={img.kind!r}")
    pool = img.pool
    s = towers.vit_sizes(img)
    head = img.head
    kwargs: dict[str, Any] = dict(
        img_size=int(img.size), patch_size=int(s["patch"]), embed_dim=int(s["width"]), depth=int(s["depth"]),
        num_heads=int(s["heads"]), mlp_ratio=mlp_ratio_for(int(s["width"]), int(s["mlp_dim"])), qkv_bias=True,
        act_layer="gelu_tanh", num_classes=int(m.embed_dim) if head == "linear" else 0)
    if pool == "map":
        kwargs.update(class_token=False, global_pool="map")
    elif pool == "avg":
        kwargs.update(class_token=False, global_pool="avg", fc_norm=False)
    elif pool == "cls":
        kwargs.update(class_token=True, no_embed_class=True, global_pool="token")
    else:
        raise NotExportable(f"model.image.pool={pool!r} has no timm equivalent")
    name = None
    variant = _named_variant(img)
    if variant and (variant, kwargs["patch_size"]) in _TIMM_SIGLIP and pool in ("map", "avg"):
        size_name, res = _TIMM_SIGLIP[(variant, kwargs["patch_size"])]
        name = f"vit_{size_name}_patch{kwargs['patch_size']}_siglip{'_gap' if pool == 'avg' else ''}_{res}"
    return {"model_name": name, "kwargs": kwargs,
            "mean": [float(v) for v in img.mean],
            "std": [float(v) for v in img.std]}


def _resnet_spec(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """timm.models.resnet.ResNet kwargs (block=Bottleneck) of our torchvision-layout ResNet."""
    img = config.model.image
    variant, width = towers.resnet_sizes(img)
    if width != 64:  # timm's plain stem is 64 channels whatever `channels` says
        raise NotExportable(f"model.image.width={width}: timm's ResNet has a 64-channel stem, so only width 64 "
                         "exports to timm")
    head = img.head == "linear"
    kwargs = dict(layers=list(resnet.stages_for(variant)), num_classes=int(config.model.embed_dim) if head else 0)
    return {"model_name": f"resnet{variant}" if variant != "tiny" else None, "kwargs": kwargs,
            "block": "Bottleneck",
            "mean": [float(v) for v in img.mean],
            "std": [float(v) for v in img.std]}


def usage(spec: dict[str, Any], npz_path: str) -> str:
    """The Python lines that build the timm model and load the exported file."""
    if spec.get("block") == "Bottleneck":
        kw = ", ".join(f"{k}={v!r}" for k, v in spec["kwargs"].items())
        lines = ["import timm", "from timm.models.resnet import Bottleneck, ResNet",
                 f"model = ResNet(block=Bottleneck, {kw})"]
        if spec["model_name"]:
            lines.append(f"# or: timm.create_model({spec['model_name']!r}, "
                         f"num_classes={spec['kwargs']['num_classes']})")
        lines.append(f"timm.models.load_checkpoint(model, {npz_path!r})")
        lines.append(f"# input: float NCHW, (uint8 / 255 - mean) / std with mean={spec['mean']} std={spec['std']}")
        return "\n".join(lines)
    kw = ", ".join(f"{k}={v!r}" for k, v in spec["kwargs"].items())
    lines = ["import timm", "from timm.models.vision_transformer import VisionTransformer",
             f"model = VisionTransformer({kw})"]
    if spec["model_name"]:
        over = {k: v for k, v in spec["kwargs"].items()
                if k in ("img_size", "mlp_ratio", "act_layer", "num_classes")}
        lines.append(f"# or: timm.create_model({spec['model_name']!r}, pretrained=False, "
                     + ", ".join(f"{k}={v!r}" for k, v in over.items()) + ")")
    lines.append(f"model.load_pretrained({npz_path!r})  # or timm.models.load_checkpoint(model, path)")
    lines.append(f"# input: float NCHW, (uint8 / 255 - mean) / std with mean={spec['mean']} std={spec['std']}")
    return "\n".join(lines)


def export_timm(model: Any, config: ml_collections.ConfigDict, out_dir: str) -> dict[str, Any]:
    """Write OUT/vit_big_vision.npz (ViT) or OUT/resnet_timm.safetensors (ResNet) and OUT/timm_config.json;
    returns the spec plus the weights' path ("weights"; "npz" too for a ViT)."""
    spec = timm_spec(config)
    if spec.get("block") == "Bottleneck":
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, RESNET_NAME)
        write_safetensors(torchvision_state_dict(model), path)
        spec = dict(spec, weights=RESNET_NAME)
        with open(os.path.join(out_dir, TIMM_JSON), "w") as f:
            json.dump(spec, f, indent=2)
        return dict(spec, weights=path, usage=usage(spec, path))
    tree = big_vision_tree(model)
    if spec["kwargs"]["num_classes"] and "params/img/head/bias" not in tree:
        # timm loads the head only when head/bias exists; a bias-free head is a zero bias.
        tree["params/img/head/bias"] = np.zeros((spec["kwargs"]["num_classes"],), np.float32)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, NPZ_NAME)
    np.savez(path, **tree)
    record_digest(path)
    spec = dict(spec, npz=NPZ_NAME, weights=NPZ_NAME, prefix="params/img/")
    with open(os.path.join(out_dir, TIMM_JSON), "w") as f:
        json.dump(spec, f, indent=2)
    return dict(spec, npz=path, weights=path, usage=usage(spec, path))
