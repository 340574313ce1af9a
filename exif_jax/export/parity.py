"""Check an `hf` export against the JAX towers: the same crops and EXIF texts through both, max |diff|."""
from __future__ import annotations

from typing import Any

import numpy as np


def hf_parity(model: Any, config: Any, export_dir: str, crops: np.ndarray, texts: list[str]) -> dict[str, Any]:
    """Embed uint8 crops [N,S,S,3] and texts with our model and with the stock transformers export."""
    import torch
    import transformers
    from flax import nnx

    from exif_jax.tokenizer import make_tokenizer

    max_len = int(config.model.text.max_len)
    hf_model, info = transformers.SiglipModel.from_pretrained(export_dir, output_loading_info=True)
    hf_model.eval()
    tok = transformers.AutoTokenizer.from_pretrained(export_dir)
    proc = transformers.AutoImageProcessor.from_pretrained(export_dir)
    enc = tok(texts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    pixels = proc(list(crops), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = hf_model(**enc, pixel_values=pixels)

    ids, n_truncated = make_tokenizer(config).encode_batch(texts)
    # The processor's pixels must be the model's in-graph normalization of the uint8 crop.
    mean, std = np.asarray(config.model.image.mean), np.asarray(config.model.image.std)
    ours_px = ((crops.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)
    img = np.asarray(nnx.jit(lambda m, x: m.embed_image(x))(model, crops))
    txt = np.asarray(nnx.jit(lambda m, x: m.embed_text(x))(model, ids))
    bias = model.logit_bias()
    logits = float(model.logit_scale()) * img @ txt.T + (0.0 if bias is None else float(bias))
    return {
        "loading_info": {k: list(v) for k, v in info.items()},
        "ids_identical": bool(np.array_equal(enc["input_ids"].numpy(), ids)),
        "attention_mask": "attention_mask" in enc,
        "n_crops": len(crops), "n_texts": len(texts), "n_truncated": int(n_truncated),
        "pixels_max_abs": float(np.abs(pixels.numpy() - ours_px).max()),
        "image_max_abs": float(np.abs(out.image_embeds.numpy() - img).max()),
        "text_max_abs": float(np.abs(out.text_embeds.numpy() - txt).max()),
        "logits_max_abs": float(np.abs(out.logits_per_image.numpy() - logits).max()),
        # A constant output would match trivially: report the spread across inputs too.
        "image_spread": float(img.std(axis=0).mean()), "text_spread": float(txt.std(axis=0).mean()),
        "logit_std": float(logits.std()),
    }
