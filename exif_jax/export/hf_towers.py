"""Export a ResNet image tower to transformers: one stock model per tower, plus the logit scale beside them.

No stock transformers dual encoder hosts a ResNet (SiglipModel and CLIPModel are ViT-only, and
VisionTextDualEncoderModel projects ResNetModel's [B, 2048, 1, 1] pooler output over its last axis), so a
checkpoint with model.image.kind="resnet" (configs/resnet50_paper.py, the paper's imported weights) is written as

  OUT/image/   ResNetForImageClassification   its logits are the image embedding: our `fc` is its classifier
               (config.json, model.safetensors,   (num_labels = embed_dim; head="none" -> num_labels=0, the
                preprocessor_config.json)         2048-d pooled features)
  OUT/text/    SiglipTextModel (model.text.kind="transformer") or DistilBertModel ("distilbert"), with the
               tokenizer (tokenizer.json for our SentencePiece; vocab.txt for WordPiece)
  OUT/dual_encoder.json   logit_scale, logit_bias, how the text tower is pooled, the pad id

Text pooling, as the JAX towers do it (and as `parity.towers_parity` does it with the stock models):
  pool="last" (SiglipTextModel)      pooler_output
  pool="mean" (SiglipTextModel)      model.head(mean of last_hidden_state over ids != pad_id)
  DistilBertModel (pool="mean")      mean of last_hidden_state over ids != pad_id (the paper's EXIFNet)
Both embeddings are L2-normalized; logits = exp(logit_scale) * img @ txt.T + logit_bias.
Not exportable here (refused by name): text pool "eos", causal text, a DistilBERT text tower with a head.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import ml_collections
import numpy as np

from exif_jax.export import hf
from exif_jax.export.layout import (
    NotExportable,
    flat_params,
    log_logit_scale,
    torchvision_state_dict,
    tower_state_dict,
    write_safetensors,
)
from exif_jax.models import resnet, towers

MANIFEST = "dual_encoder.json"

# torchvision ResNet state-dict keys (what layout.torch_key gives our ResNet paths) -> transformers'
# ResNetForImageClassification. Stages count from 0 there, convolutions within a block too.
_RESNET_RULES = (
    (r"conv1\.(.+)", lambda m: f"resnet.embedder.embedder.convolution.{m[1]}"),
    (r"bn1\.(.+)", lambda m: f"resnet.embedder.embedder.normalization.{m[1]}"),
    (r"layer(\d)\.(\d+)\.conv(\d)\.(.+)",
     lambda m: f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.convolution.{m[4]}"),
    (r"layer(\d)\.(\d+)\.bn(\d)\.(.+)",
     lambda m: f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.normalization.{m[4]}"),
    (r"layer(\d)\.(\d+)\.downsample\.0\.(.+)",
     lambda m: f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.convolution.{m[3]}"),
    (r"layer(\d)\.(\d+)\.downsample\.1\.(.+)",
     lambda m: f"resnet.encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.normalization.{m[3]}"),
    (r"fc\.(.+)", lambda m: f"classifier.1.{m[1]}"),
)


def check_towers_exportable(config: ml_collections.ConfigDict) -> None:
    """Raise NotExportable naming every option the per-tower export cannot express."""
    m = config.model
    txt = m.text
    problems = []
    if m.image.kind != "resnet":
        problems.append(f"model.image.kind={m.image.kind!r}: the per-tower export is for ResNet image "
                        "towers (ViT towers export as one SiglipModel)")
    kind = txt.kind
    if kind == "transformer":
        if txt.pool not in ("last", "mean"):
            problems.append(f"model.text.pool={txt.pool!r}: SiglipTextModel exports pool 'last' or 'mean'")
        if txt.causal:
            problems.append("model.text.causal=True: SiglipTextModel attends bidirectionally")
    elif kind == "distilbert":
        if txt.head != "none":
            problems.append("model.text.head='linear' with kind='distilbert': DistilBertModel has no projection")
    else:
        problems.append(f"model.text.kind={kind!r}: only 'transformer' and 'distilbert' text towers export")
    if problems:
        raise NotExportable("cannot export the towers to transformers:\n  - " + "\n  - ".join(problems))


def resnet_state_dict(model: Any) -> dict[str, np.ndarray]:
    """ResNetForImageClassification state_dict (NumPy) from the DualTower's ResNet; every variable used once."""
    out: dict[str, np.ndarray] = {}
    for tv, x in torchvision_state_dict(model).items():
        for pattern, name in _RESNET_RULES:
            m = re.fullmatch(pattern, tv)
            if m:
                out[name(m)] = x
                break
        else:
            raise NotExportable(f"{tv}: no transformers ResNet name")
    return out


def resnet_config(model: Any, config: ml_collections.ConfigDict) -> Any:
    """transformers.ResNetConfig: torchvision's v1.5 bottleneck (stride in the 3x3), our stage sizes and head."""
    # Lazy: transformers is the [torch] extra; only an export needs it.
    from transformers import ResNetConfig

    variant, width = towers.resnet_sizes(config.model.image)
    stages = resnet.stages_for(variant)
    head = model.image.fc
    num_labels = int(head.kernel.shape[1]) if head is not None else 0
    cfg = ResNetConfig(num_channels=3, embedding_size=width,
                       hidden_sizes=[width * 2**i * resnet.EXPANSION for i in range(len(stages))],
                       depths=list(stages), layer_type="bottleneck", hidden_act="relu",
                       downsample_in_first_stage=False, downsample_in_bottleneck=False,
                       num_labels=num_labels)
    cfg.architectures = ["ResNetForImageClassification"]
    return cfg


def resnet_processor_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """preprocessor_config.json: native-resolution crops (no resize, no center crop), /255, our mean/std."""
    img = config.model.image
    size = int(img.size)
    return {
        "image_processor_type": "ConvNextImageProcessor", "do_resize": False,
        "size": {"shortest_edge": size}, "crop_pct": 1.0, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [float(x) for x in img.mean],
        "image_std": [float(x) for x in img.std],
    }


# ----------------------------------------------------------------------------- text

def distilbert_state_dict(model: Any) -> dict[str, np.ndarray]:
    """DistilBertModel state_dict (NumPy) from the DualTower's DistilBERT text tower."""
    return tower_state_dict(model, "text")


def distilbert_config(model: Any, config: ml_collections.ConfigDict) -> Any:
    # Lazy: transformers is the [torch] extra; only an export needs it.
    from transformers import DistilBertConfig

    t = config.model.text
    vocab = int(model.text.embeddings.word_embeddings.embedding.shape[0])
    cfg = DistilBertConfig(vocab_size=vocab, max_position_embeddings=int(t.max_len), dim=int(t.width),
                           n_layers=int(t.depth), n_heads=int(t.heads), hidden_dim=int(t.mlp_dim),
                           activation="gelu", pad_token_id=int(t.pad_id),
                           sinusoidal_pos_embds=False)
    cfg.architectures = ["DistilBertModel"]
    return cfg


def _save_wordpiece(vocab_path: str, config: ml_collections.ConfigDict, out_dir: str) -> None:
    # Lazy: transformers is the [torch] extra. DistilBertTokenizer(vocab_file=...) ignores the file in
    # transformers 5.x: load from a directory instead.
    from transformers import DistilBertTokenizer

    shutil.copyfile(vocab_path, os.path.join(out_dir, "vocab.txt"))
    lower = bool(config.tokenizer.lowercase)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "DistilBertTokenizer", "do_lower_case": lower,
                   "model_max_length": int(config.model.text.max_len)}, f, indent=2)
    DistilBertTokenizer.from_pretrained(out_dir).save_pretrained(out_dir)


def export_towers(model: Any, config: ml_collections.ConfigDict, out_dir: str, *,
                  tokenizer_model: str) -> dict[str, Any]:
    """Write OUT/image (ResNetForImageClassification), OUT/text and OUT/dual_encoder.json."""
    # Lazy: transformers is the [torch] extra; only an export needs it.
    from transformers import SiglipTextConfig

    check_towers_exportable(config)
    image_dir, text_dir = os.path.join(out_dir, "image"), os.path.join(out_dir, "text")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(text_dir, exist_ok=True)

    img_state = resnet_state_dict(model)
    resnet_config(model, config).save_pretrained(image_dir)
    write_safetensors(img_state, os.path.join(image_dir, "model.safetensors"))
    with open(os.path.join(image_dir, "preprocessor_config.json"), "w") as f:
        json.dump(resnet_processor_config(config), f, indent=2)

    t = config.model.text
    if t.kind == "distilbert":
        txt_state, text_class, pool = distilbert_state_dict(model), "DistilBertModel", "mean"
        distilbert_config(model, config).save_pretrained(text_dir)
        _save_wordpiece(tokenizer_model, config, text_dir)
    else:
        flat = {k: v for k, v in flat_params(model).items() if k.startswith("text/")}
        # The standalone SiglipTextModel's own names: SiglipModel's without the "text_model." prefix.
        txt_state = {k.removeprefix("text_model."): v for k, v in hf.siglip_text_state_dict(model, flat).items()}
        text_class, pool = "SiglipTextModel", t.pool
        if flat:
            raise NotExportable(f"text parameters with no SiglipTextModel name: {sorted(flat)}")
        vocab = txt_state["embeddings.token_embedding.weight"].shape[0]
        cfg = SiglipTextConfig(**hf.siglip_text_config(config, vocab))
        cfg.architectures = ["SiglipTextModel"]
        cfg.save_pretrained(text_dir)
        tok = hf.hf_tokenizer(tokenizer_model, int(t.max_len), mask_pad=bool(t.mask_pad))
        if len(tok) > vocab:
            raise NotExportable(f"{tokenizer_model}: {len(tok)} pieces but the text embedding has {vocab} rows")
        tok.save_pretrained(text_dir)
    write_safetensors({k: np.ascontiguousarray(v) for k, v in txt_state.items()},
                      os.path.join(text_dir, "model.safetensors"))

    bias = model.logit_bias()
    manifest = {
        "format": "exif-jax dual encoder (one stock transformers model per tower)",
        "image": {"dir": "image", "class": "ResNetForImageClassification", "embedding": "logits",
                  "crop_size": int(config.model.image.size)},
        "text": {"dir": "text", "class": text_class, "pool": pool, "pad_id": int(t.pad_id),
                 "max_len": int(t.max_len), "padding": "max_length"},
        "logit_scale": log_logit_scale(model), "logit_bias": 0.0 if bias is None else float(bias),
        "embed_dim": int(config.model.embed_dim),
    }
    with open(os.path.join(out_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
    n = sum(int(np.size(x)) for x in img_state.values()) + sum(int(np.size(x)) for x in txt_state.values())
    return {"dir": out_dir, "parameters": n, "crop_size": int(config.model.image.size),
            "max_len": int(t.max_len), "image_class": "ResNetForImageClassification", "text_class": text_class}
