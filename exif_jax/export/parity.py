"""Check an `hf` export against the JAX towers: the same crops and EXIF texts through both, max |diff|."""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from flax import nnx

from exif_jax import digests
from exif_jax.tokenizer import make_tokenizer


def _jax_side(model: Any, config: Any, crops: np.ndarray, texts: list[str]) -> dict[str, Any]:
    """Our ids, normalized pixels, embeddings and logits for the crops and texts (eval mode: BN running stats)."""
    model.eval()
    ids, n_truncated = make_tokenizer(config).encode_batch(texts)
    # The processor's pixels must be the model's in-graph normalization of the uint8 crop.
    mean, std = np.asarray(config.model.image.mean), np.asarray(config.model.image.std)
    px = ((crops.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)
    img = np.asarray(nnx.jit(lambda m, x: m.embed_image(x))(model, crops))
    txt = np.asarray(nnx.jit(lambda m, x: m.embed_text(x))(model, ids))
    bias = model.logit_bias()
    logits = float(model.logit_scale()) * img @ txt.T + (0.0 if bias is None else float(bias))
    return dict(ids=ids, n_truncated=int(n_truncated), px=px, img=img, txt=txt, logits=logits)


def _report(ours: dict[str, Any], info: dict, ids, has_mask: bool, pixels, img, txt, logits) -> dict[str, Any]:
    return {
        "loading_info": info,
        "ids_identical": bool(np.array_equal(ids, ours["ids"])),
        "attention_mask": has_mask,
        "n_crops": len(img), "n_texts": len(txt), "n_truncated": ours["n_truncated"],
        "pixels_max_abs": float(np.abs(pixels - ours["px"]).max()),
        "image_max_abs": float(np.abs(img - ours["img"]).max()),
        "text_max_abs": float(np.abs(txt - ours["txt"]).max()),
        "logits_max_abs": float(np.abs(logits - ours["logits"]).max()),
        # A constant output would match trivially: report the spread across inputs too.
        "image_spread": float(ours["img"].std(axis=0).mean()), "text_spread": float(ours["txt"].std(axis=0).mean()),
        "logit_std": float(ours["logits"].std()),
    }


def hf_parity(model: Any, config: Any, export_dir: str, crops: np.ndarray, texts: list[str]) -> dict[str, Any]:
    """Embed uint8 crops [N,S,S,3] and texts with our model and with the stock transformers export
    (SiglipModel for ViT towers; the per-tower export of hf_towers when OUT/dual_encoder.json exists)."""
    if os.path.isfile(os.path.join(export_dir, "dual_encoder.json")):
        return towers_parity(model, config, export_dir, crops, texts)
    # Lazy: torch and transformers are the [torch] extra; only a parity check needs them.
    import torch
    import transformers

    verified = digests.verify_recorded(export_dir)  # before transformers reads the weights
    max_len = int(config.model.text.max_len)
    hf_model, info = transformers.SiglipModel.from_pretrained(export_dir, output_loading_info=True)
    hf_model.eval()
    tok = transformers.AutoTokenizer.from_pretrained(export_dir)
    proc = transformers.AutoImageProcessor.from_pretrained(export_dir)
    enc = tok(texts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    pixels = proc(list(crops), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = hf_model(**enc, pixel_values=pixels)
    ours = _jax_side(model, config, crops, texts)
    return {**_report(ours, {k: list(v) for k, v in info.items()}, enc["input_ids"].numpy(), "attention_mask" in enc,
                      pixels.numpy(), out.image_embeds.numpy(), out.text_embeds.numpy(),
                      out.logits_per_image.numpy()), "digests_verified": verified}


def towers_parity(model: Any, config: Any, export_dir: str, crops: np.ndarray, texts: list[str]) -> dict[str, Any]:
    """hf_parity for a per-tower export: ResNetForImageClassification + SiglipTextModel / DistilBertModel,
    pooled and scaled as OUT/dual_encoder.json says (the recipe a user follows)."""
    # Lazy: torch and transformers are the [torch] extra; only a parity check needs them.
    import torch
    import transformers

    with open(os.path.join(export_dir, "dual_encoder.json")) as f:
        man = json.load(f)
    image_dir, text_dir = (os.path.join(export_dir, man[k]["dir"]) for k in ("image", "text"))
    verified = [f"{man[k]['dir']}/{n}" for k, d in (("image", image_dir), ("text", text_dir))
                for n in digests.verify_recorded(d)]  # before transformers reads the weights
    image_model, image_info = transformers.ResNetForImageClassification.from_pretrained(
        image_dir, output_loading_info=True)
    text_model, text_info = getattr(transformers, man["text"]["class"]).from_pretrained(
        text_dir, output_loading_info=True)
    image_model.eval()
    text_model.eval()
    tok = transformers.AutoTokenizer.from_pretrained(text_dir)
    proc = transformers.AutoImageProcessor.from_pretrained(image_dir)
    enc = tok(texts, padding="max_length", max_length=man["text"]["max_len"], truncation=True, return_tensors="pt")
    pixels = proc(list(crops), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        img = image_model(pixel_values=pixels).logits
        hidden = text_model(**enc)
        if man["text"]["pool"] == "last":
            txt = hidden.pooler_output
        else:  # masked mean over the non-pad tokens, then SiglipTextModel's head (DistilBERT has none)
            w = (enc["input_ids"] != man["text"]["pad_id"]).float()[..., None]
            txt = (hidden.last_hidden_state * w).sum(1) / w.sum(1).clamp(min=1e-9)
            if man["text"]["class"] == "SiglipTextModel":
                txt = text_model.head(txt)
        img = torch.nn.functional.normalize(img, dim=-1)
        txt = torch.nn.functional.normalize(txt, dim=-1)
        logits = float(np.exp(man["logit_scale"])) * img @ txt.T + man["logit_bias"]
    ours = _jax_side(model, config, crops, texts)
    info = {f"{tower}_{k}": list(v) for tower, i in (("image", image_info), ("text", text_info)) for k, v in i.items()}
    return {**_report(ours, info, enc["input_ids"].numpy(), "attention_mask" in enc, pixels.numpy(),
                      img.numpy(), txt.numpy(), logits.numpy()), "digests_verified": verified}
