"""A training workdir, as `exif-jax train` and `exif-jax import-official` leave it: WORKDIR/config.json and
orbax checkpoints in WORKDIR/ckpt/<step>. The one loader eval, export and the benchmarks use."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_collections

from exif_jax.config import upgrade


def locate(path: str) -> tuple[Path, Path]:
    """(config.json, checkpoint directory) of a workdir given as WORKDIR or WORKDIR/ckpt."""
    p = Path(path).resolve()
    for config_json, ckpt in ((p / "config.json", p / "ckpt"), (p.parent / "config.json", p)):
        if config_json.is_file() and ckpt.is_dir():
            return config_json, ckpt
    raise FileNotFoundError(f"{path}: not a training workdir (expected config.json and a ckpt/ folder, as "
                            "`exif-jax train` writes them)")


def read_config(path: str) -> ml_collections.ConfigDict:
    """The workdir's config, upgraded to the current schema (what the checkpoint was trained with)."""
    config_json, _ = locate(path)
    try:
        raw = json.loads(config_json.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_json}: not valid JSON ({e})") from e
    return upgrade(raw, source=str(config_json))


def load_model(path: str, step: int | None = None, *, float32: bool = False) -> tuple[Any, ml_collections.ConfigDict, int]:
    """(model in eval mode, config, step) from a workdir's newest checkpoint (or `step`); float32 computes in
    f32 whatever the run trained with (parameters are loaded as stored)."""
    from exif_jax import checkpoint

    import jax

    config = read_config(path)
    if float32:
        config.model.dtype = "float32"
    if config.model.attention == "cudnn" and (float32 or jax.devices()[0].platform != "gpu"):
        config.model.attention = "xla"  # the same attention math; cuDNN's kernel needs a GPU and bf16/fp16
    _, ckpt = locate(path)
    model, got = checkpoint.load_model(config, str(ckpt), step)
    model.eval()
    return model, config, got
