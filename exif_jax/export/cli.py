"""`exif-jax export`: a training workdir's checkpoint -> transformers SiglipModel and/or a timm .npz.

  exif-jax export --checkpoint WORKDIR -o DIR [--format hf|timm|all] [--step N]

WORKDIR is what `exif-jax train` wrote: WORKDIR/config.json and the orbax checkpoints in WORKDIR/ckpt.
Every format writes into DIR; nothing is pickled (safetensors, tokenizer JSON, an .npz of plain arrays).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import ml_collections

from exif_jax import cli_args, workdir
from exif_jax.export import NotExportable, hf, hf_towers, timm
from exif_jax.tokenizer import BUNDLED_MODEL

FORMATS = ("hf", "timm", "all")


def tokenizer_path(config: ml_collections.ConfigDict) -> str:
    """The sentencepiece model the run trained with (the bundled one when config.tokenizer.model is empty)."""
    path = config.tokenizer.model or str(BUNDLED_MODEL)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer model {path} (config.tokenizer.model) not found")
    return path


def export(checkpoint: str | None, out_dir: str, fmt: str | None = "all", *,
           step: int | None = None) -> dict[str, Any]:
    """Export a workdir's checkpoint (newest, or `step`; none: the bundled default model) in `fmt` (None: every
    format the model fits, the others listed under "skipped" with the reason); returns what was written."""
    checkpoint = workdir.default_source(checkpoint, command="exif-jax export")
    if fmt not in (*FORMATS, None):
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    config = workdir.read_config(checkpoint)
    per_tower = config.model.image.kind == "resnet"  # no stock dual encoder hosts a ResNet
    checks = {"hf": lambda: (hf_towers.check_towers_exportable if per_tower else hf.check_siglip_exportable)(config),
              "timm": lambda: timm.timm_spec(config)}
    skipped: dict[str, str] = {}
    for name, check in checks.items():  # fail before the restore
        if fmt in (name, "all"):
            check()
        elif fmt is None:
            try:
                check()
            except NotExportable as e:
                skipped[name] = str(e)
    if fmt is None:
        if len(skipped) == len(checks):
            raise NotExportable("the model fits no export format:\n" + "\n".join(skipped.values()))
        fmt = "all" if not skipped else next(n for n in checks if n not in skipped)
    tok_path = tokenizer_path(config)
    # Parameters are exported as stored; f32 compute keeps the parity checks exact.
    model, config, got_step = workdir.load_model(checkpoint, step, float32=True)
    result: dict[str, Any] = {"model": workdir.model_name(checkpoint), "step": got_step,
                              "out": os.path.abspath(out_dir), "skipped": skipped}
    if fmt in ("hf", "all"):
        write = hf_towers.export_towers if per_tower else hf.export_hf
        result["hf"] = write(model, config, out_dir, tokenizer_model=tok_path)
    if fmt in ("timm", "all"):
        result["timm"] = timm.export_timm(model, config, out_dir)
    return result


def add_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `exif-jax export`."""
    cli_args.add_model_source(parser)
    cli_args.add_out(parser, "hf: a transformers SiglipModel folder (config.json, model.safetensors, tokenizer, "
                             "preprocessor; ResNet towers: image/ and text/ models + dual_encoder.json); timm: "
                             "vit_big_vision.npz or resnet_timm.safetensors + timm_config.json")
    parser.add_argument("--format", choices=FORMATS,
                        help="hf: transformers SiglipModel dir (ResNet towers: ResNetForImageClassification + a "
                             "text model); timm: big_vision .npz of the ViT (ResNet: timm .safetensors); all: both "
                             "(default: every format the model fits; the others are named with the reason)")


def cli_main(args: argparse.Namespace) -> int:
    """Run `exif-jax export`."""
    try:
        result = export(args.checkpoint, args.out, args.format, step=args.step)
    except (NotExportable, FileNotFoundError, ValueError) as e:
        print(f"exif-jax export: {e}", file=sys.stderr)
        return 2
    print(f"exported {result['model']} (step {result['step']}) to {result['out']}")
    for name, why in result["skipped"].items():
        print(f"exif-jax export: skipped --format {name}: {why}", file=sys.stderr)
    if "hf" in result and "image_class" in result["hf"]:
        h, out = result["hf"], result["out"]
        print(f"transformers: {h['image_class']}.from_pretrained({out + '/image'!r}) (logits = image embedding), "
              f"{h['text_class']}.from_pretrained({out + '/text'!r}) + AutoTokenizer from it; pooling and "
              f"logit scale in {out + '/dual_encoder.json'!r}; crops {h['crop_size']}px at native resolution")
    elif "hf" in result:
        print(f"transformers: SiglipModel.from_pretrained({result['out']!r}), "
              f"AutoTokenizer / SiglipProcessor from the same dir; crops {result['hf']['crop_size']}px "
              "at native resolution (no resizing), texts padded to max_length")
    if "timm" in result:
        t = result["timm"]
        print(f"timm: {t['model_name'] or ('ResNet' if t.get('block') else 'VisionTransformer')} <- {t['weights']}")
        print(t["usage"])
    return 0
