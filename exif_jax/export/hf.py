"""Export to a transformers `SiglipModel` directory: config.json, model.safetensors, tokenizer, image processor.

What maps onto SiglipModel (anything else is refused with the option named):
  model.image.kind="vit", pool="map", head="none"   SiglipVisionModel (MAP head, no projection)
  model.text.pool="last", causal=False               SiglipTextModel (last position, then its Linear head)
  model.text.head="linear" | "none"                   head, or an identity head (width == embed_dim)
  model.text.mask_pad=False                          the tokenizer returns input_ids only (pads attended, SigLIP)
  model.text.mask_pad=True                           the tokenizer also returns attention_mask (pads masked)
  loss.kind="sigmoid" | "infonce"                    logit_bias = b, or 0 (InfoNCE logits have no bias)
  model.logit_scale_max / learn_logit_scale           logit_scale = log(the scale the model used), clip folded in
Not exportable here: pool "avg"/"cls" or an image projection (SiglipModel has neither; --format timm takes
them), text pool "eos"/"mean" and causal text (SiglipTextModel reads the last position, bidirectionally), and
ResNet image towers (transformers' ResNetModel would need a model of its own beside a text model).

The tokenizer is our SentencePiece model converted to a `tokenizers` BPE (tokenizer.json, loaded by
AutoTokenizer / SiglipProcessor). Not `SiglipTokenizer`: it lowercases and strips punctuation before
encoding ("1/250 sec" -> "1250 sec"), which would change every EXIF text's ids.
Images: crops at model.image.size, native resolution (no resizing): preprocessor_config.json has
do_resize=False, rescale 1/255 and our mean/std, so a uint8 crop gives the numbers the JAX model sees.
"""
from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np

from exif_jax.export.layout import NotExportable, flat_params, log_logit_scale, to_torch, write_safetensors
from exif_jax.models import towers
from exif_jax.tokenizer import EOS_ID, PAD_ID, UNK_ID

HIDDEN_ACT = "gelu_pytorch_tanh"
LN_EPS = 1e-6


def check_siglip_exportable(config: ml_collections.ConfigDict) -> None:
    """Raise NotExportable naming every config option SiglipModel cannot express."""
    m = config.model
    img, txt = m.image, m.text
    problems = []
    if img.kind != "vit":
        problems.append(f"model.image.kind={img.kind!r}: only a ViT image tower maps to SiglipVisionModel "
                        "(ResNet towers are not exported to transformers)")
    else:
        if img.pool != "map":
            problems.append(f"model.image.pool={img.pool!r}: SiglipVisionModel pools with a MAP "
                            "head only (use --format timm for avg/cls pooling)")
        if img.head != "none":
            problems.append(f"model.image.head={img.head!r}: SiglipModel has no image "
                            "projection (train with model.image.head='none', width == embed_dim)")
    if txt.kind != "transformer":
        problems.append(f"model.text.kind={txt.kind!r}: only the transformer text tower is exportable")
    if txt.pool != "last":
        problems.append(f"model.text.pool={txt.pool!r}: SiglipTextModel pools the last "
                        "position only (train with model.text.pool='last')")
    if txt.causal:
        problems.append("model.text.causal=True: SiglipTextModel attends bidirectionally")
    if problems:
        raise NotExportable("cannot export as transformers SiglipModel:\n  - " + "\n  - ".join(problems))


# ----------------------------------------------------------------------------- weights

def _linear(flat: dict[str, np.ndarray], src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    """flax kernel [in..., out...] -> torch weight [out, in]; LinearGeneral kernels are flattened first."""
    k = flat.pop(f"{src}/kernel")
    b = flat.pop(f"{src}/bias")
    if src.endswith("/out"):
        k = k.reshape(-1, k.shape[-1])  # [H, d, D] -> [H*d, D]
    else:
        k = k.reshape(k.shape[0], -1)   # [D, H, d] -> [D, H*d]
    out[f"{dst}.weight"] = to_torch((*src.split("/"), "kernel"), k)
    out[f"{dst}.bias"] = b.reshape(-1)


def _norm(flat: dict[str, np.ndarray], src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    out[f"{dst}.weight"] = flat.pop(f"{src}/scale")
    out[f"{dst}.bias"] = flat.pop(f"{src}/bias")


def _encoder(flat: dict[str, np.ndarray], src: str, dst: str, depth: int, out: dict[str, np.ndarray]) -> None:
    for i in range(depth):
        s, d = f"{src}/encoderblock_{i}", f"{dst}.layers.{i}"
        _norm(flat, f"{s}/LayerNorm_0", f"{d}.layer_norm1", out)
        for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"), ("out", "out_proj")):
            _linear(flat, f"{s}/MultiHeadDotProductAttention_0/{ours}", f"{d}.self_attn.{theirs}", out)
        _norm(flat, f"{s}/LayerNorm_1", f"{d}.layer_norm2", out)
        _linear(flat, f"{s}/MlpBlock_0/Dense_0", f"{d}.mlp.fc1", out)
        _linear(flat, f"{s}/MlpBlock_0/Dense_1", f"{d}.mlp.fc2", out)


def _map_head(flat: dict[str, np.ndarray], src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    out[f"{dst}.probe"] = flat.pop(f"{src}/probe")
    qkv: dict[str, dict[str, np.ndarray]] = {}
    for n in ("query", "key", "value"):
        _linear(flat, f"{src}/MultiHeadDotProductAttention_0/{n}", n, qkv)  # type: ignore[arg-type]
    # torch.nn.MultiheadAttention packs q, k, v into one in_proj.
    out[f"{dst}.attention.in_proj_weight"] = np.concatenate([qkv[f"{n}.weight"] for n in ("query", "key", "value")])
    out[f"{dst}.attention.in_proj_bias"] = np.concatenate([qkv[f"{n}.bias"] for n in ("query", "key", "value")])
    _linear(flat, f"{src}/MultiHeadDotProductAttention_0/out", f"{dst}.attention.out_proj", out)
    _norm(flat, f"{src}/LayerNorm_0", f"{dst}.layernorm", out)
    _linear(flat, f"{src}/MlpBlock_0/Dense_0", f"{dst}.mlp.fc1", out)
    _linear(flat, f"{src}/MlpBlock_0/Dense_1", f"{dst}.mlp.fc2", out)


def siglip_text_state_dict(model: Any, flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """SiglipTextModel's `text_model.*` tensors, popped from `flat` (our '/'-joined text/... parameters)."""
    out: dict[str, np.ndarray] = {}
    t = "text_model"
    out[f"{t}.embeddings.token_embedding.weight"] = flat.pop("text/Embed_0/embedding")
    out[f"{t}.embeddings.position_embedding.weight"] = flat.pop("text/pos_embedding")[0]
    _encoder(flat, "text/Encoder_0", f"{t}.encoder", model.text.Encoder_0.depth, out)
    _norm(flat, "text/Encoder_0/encoder_norm", f"{t}.final_layer_norm", out)
    width = out[f"{t}.final_layer_norm.weight"].shape[0]
    if "text/head/kernel" in flat:
        kernel = flat.pop("text/head/kernel")
        out[f"{t}.head.weight"] = to_torch(("text", "head", "kernel"), kernel)
        out[f"{t}.head.bias"] = flat.pop("text/head/bias", np.zeros((kernel.shape[1],), np.float32))
    else:  # head="none": SiglipTextModel always has a head, so an exact identity
        out[f"{t}.head.weight"] = np.eye(width, dtype=np.float32)
        out[f"{t}.head.bias"] = np.zeros((width,), np.float32)
    return out


def siglip_state_dict(model: Any, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """SiglipModel state_dict (NumPy float32) from the DualTower; every parameter is used exactly once."""
    check_siglip_exportable(config)
    flat = flat_params(model)
    out: dict[str, np.ndarray] = {}
    v = "vision_model"
    out[f"{v}.embeddings.patch_embedding.weight"] = to_torch(("image", "embedding", "kernel"),
                                                             flat.pop("image/embedding/kernel"))
    out[f"{v}.embeddings.patch_embedding.bias"] = flat.pop("image/embedding/bias")
    out[f"{v}.embeddings.position_embedding.weight"] = flat.pop("image/pos_embedding")[0]
    _encoder(flat, "image/Transformer", f"{v}.encoder", model.image.Transformer.depth, out)
    _norm(flat, "image/Transformer/encoder_norm", f"{v}.post_layernorm", out)
    _map_head(flat, "image/MAPHead_0", f"{v}.head", out)

    out.update(siglip_text_state_dict(model, flat))

    out["logit_scale"] = np.asarray([log_logit_scale(model)], np.float32)
    bias = model.logit_bias()
    out["logit_bias"] = np.asarray([0.0 if bias is None else float(bias)], np.float32)
    flat.pop("t", None)
    flat.pop("b", None)
    if flat:
        raise NotExportable(f"parameters with no SiglipModel name: {sorted(flat)}")
    return {k: np.ascontiguousarray(x, dtype=np.float32) for k, x in out.items()}


# ----------------------------------------------------------------------------- config, tokenizer, processor

def siglip_text_config(config: ml_collections.ConfigDict, vocab_size: int) -> dict[str, Any]:
    """SiglipTextConfig fields of our text transformer (the head maps width -> embed_dim, or is the identity)."""
    txt = config.model.text
    head = txt.head == "linear"
    return dict(vocab_size=int(vocab_size), hidden_size=int(txt.width), intermediate_size=int(txt.mlp_dim),
                num_hidden_layers=int(txt.depth), num_attention_heads=int(txt.heads),
                max_position_embeddings=int(txt.max_len), hidden_act=HIDDEN_ACT, layer_norm_eps=LN_EPS,
                pad_token_id=int(txt.pad_id), eos_token_id=int(txt.eos_id),
                bos_token_id=None, projection_size=int(config.model.embed_dim) if head else int(txt.width))


def siglip_config(model: Any, config: ml_collections.ConfigDict, vocab_size: int) -> Any:
    """transformers.SiglipConfig describing the two towers (sizes read from the config and the model)."""
    # Lazy: transformers is the [torch] extra; only an export needs it.
    from transformers import SiglipConfig

    m = config.model
    s = towers.vit_sizes(m.image)
    cfg = SiglipConfig(
        text_config=siglip_text_config(config, vocab_size),
        vision_config=dict(hidden_size=int(s["width"]), intermediate_size=int(s["mlp_dim"]),
                           num_hidden_layers=int(s["depth"]), num_attention_heads=int(s["heads"]), num_channels=3,
                           image_size=int(m.image.size), patch_size=int(s["patch"]), hidden_act=HIDDEN_ACT,
                           layer_norm_eps=LN_EPS, vision_use_head=True))
    cfg.architectures = ["SiglipModel"]
    return cfg


def hf_tokenizer(sp_model_path: str, max_len: int, *, mask_pad: bool) -> Any:
    """A transformers fast tokenizer that encodes exactly as exif_jax.tokenizer.Tokenizer (ids, eos, pad 0)."""
    # Lazy: tokenizers and transformers are the [torch] extra; protobuf's schema only for this conversion.
    import sentencepiece.sentencepiece_model_pb2 as sp_pb2
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = sp_pb2.ModelProto()
    with open(sp_model_path, "rb") as f:
        proto.ParseFromString(f.read())
    pieces = [p.piece for p in proto.pieces]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    # legacy=True: SentencePiece's dummy prefix exactly (a text starting with a space keeps both "▁").
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
    if tok is None:
        raise NotExportable(f"{sp_model_path}: sentencepiece model type not convertible to a tokenizers model")
    eos = pieces[EOS_ID]
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, EOS_ID)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, pad_token=pieces[PAD_ID], unk_token=pieces[UNK_ID],
        padding_side="right", truncation_side="right", model_max_length=int(max_len),
        # "</s>" typed in an EXIF text is text to SentencePiece, not an eos: match that.
        split_special_tokens=True,
        model_input_names=["input_ids", "attention_mask"] if mask_pad else ["input_ids"])


def image_processor_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """preprocessor_config.json: no resize, uint8/255, then (x - mean) / std as the JAX model does."""
    img = config.model.image
    size = int(img.size)
    return {
        "image_processor_type": "SiglipImageProcessor", "processor_class": "SiglipProcessor",
        "do_resize": False, "size": {"height": size, "width": size}, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [float(x) for x in img.mean],
        "image_std": [float(x) for x in img.std], "do_convert_rgb": True,
    }


def export_hf(model: Any, config: ml_collections.ConfigDict, out_dir: str, *, tokenizer_model: str) -> dict[str, Any]:
    """Write a SiglipModel directory (config.json, model.safetensors, tokenizer, preprocessor) to out_dir."""
    state = siglip_state_dict(model, config)
    vocab_size = state["text_model.embeddings.token_embedding.weight"].shape[0]
    os.makedirs(out_dir, exist_ok=True)
    siglip_config(model, config, vocab_size).save_pretrained(out_dir)
    weights = os.path.join(out_dir, "model.safetensors")
    write_safetensors(state, weights)
    tok = hf_tokenizer(tokenizer_model, int(config.model.text.max_len),
                       mask_pad=bool(config.model.text.mask_pad))
    if len(tok) > vocab_size:
        raise NotExportable(f"{tokenizer_model}: {len(tok)} pieces but the text embedding has {vocab_size} rows")
    tok.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(image_processor_config(config), f, indent=2)
    with open(os.path.join(out_dir, "processor_config.json"), "w") as f:
        json.dump({"processor_class": "SiglipProcessor"}, f, indent=2)
    return {"dir": out_dir, "parameters": int(sum(x.size for x in state.values())),
            "crop_size": int(config.model.image.size), "max_len": int(config.model.text.max_len)}
