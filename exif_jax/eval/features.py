"""Frozen crop features of a dataset's photos, shared by the linear probes and crop->EXIF retrieval.

Each photo of an ArrayRecord build (`exif-jax build-data`) gives K crops of the model's training crop size,
cut at native resolution like the trainer's (uniform positions, seeded per photo, so every feature source
sees the very same pixels); every embedder in a dict embeds them. Feature sources (embedders.py):
  learned      the checkpoint's image tower (the unit-norm embedding the contrastive loss saw)
  random-init  the same architecture with random weights: what the architecture alone gives
  noise        the hand-made noise-residual statistics of `baselines.noise_embedder` (28 features)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Mapping

import numpy as np
from tqdm import tqdm

from exif_jax import cli_args
from exif_jax.data.crops import decode_rgb
from exif_jax.data.pipeline import random_crops
from exif_jax.data.reader import read_records
from exif_jax.eval.patches import PatchEmbedder, default_mesh, embed_crops, replicate

SOURCES = ("learned", "random-init", "noise")


@dataclasses.dataclass
class CropFeatures:
    """Features of K crops per photo: feats[source] f32 [N, D]; photo int32 [N] indexes `photos`."""
    feats: dict[str, np.ndarray]
    photo: np.ndarray
    photos: list[dict[str, Any]]  # per photo: path, camera, tags, text, sha256, width, height
    skipped: list[dict[str, str]]  # photos that could not be used: path and reason
    crop_size: int
    crops_per_photo: int


def photo_crops(image: np.ndarray, k: int, size: int, seed: int, index: int) -> np.ndarray:
    """k uniform size x size crops of one photo, drawn from (seed, index): the same for every source."""
    return random_crops(image, k, size, np.random.default_rng((seed, index)))[0]


def extract_features(data_dir: str, embedders: Mapping[str, PatchEmbedder], *, crops_per_photo: int = 8,
                     seed: int = 0, limit: int | None = None, batch: int = 256,
                     progress: bool = True) -> CropFeatures:
    """Crop every photo of an ArrayRecord build K times and embed the crops with every embedder."""

    if crops_per_photo < 1:
        raise ValueError(f"crops_per_photo must be >= 1, got {crops_per_photo}")
    sizes = {e.patch_size for e in embedders.values()}
    if len(sizes) != 1:
        raise ValueError(f"embedders disagree on the crop size: {sorted(sizes)}")
    size = sizes.pop()
    mesh = default_mesh()
    embedders = {name: replicate(e, mesh) for name, e in embedders.items()}
    feats: dict[str, list[np.ndarray]] = {name: [] for name in embedders}
    photos, owner, skipped, pending = [], [], [], []

    def flush() -> None:
        if pending:
            crops = np.concatenate(pending)
            for name, e in embedders.items():
                feats[name].append(embed_crops(e, crops, batch=batch, mesh=mesh))
            pending.clear()

    bar = tqdm(read_records(data_dir, with_image=True), desc="features", unit="photo", disable=not progress,
               file=sys.stderr)
    for i, rec in enumerate(bar):
        if limit is not None and len(photos) >= limit:
            break
        try:
            crops = photo_crops(decode_rgb(rec["image"], rec["path"]), crops_per_photo, size, seed, i)
        except ValueError as e:  # undecodable, or smaller than one crop
            skipped.append({"path": rec["path"], "reason": str(e)})
            continue
        owner.append(np.full(crops_per_photo, len(photos), np.int32))
        photos.append({k: rec[k] for k in ("path", "camera", "tags", "text", "sha256", "width", "height")})
        pending.append(crops)
        if sum(len(c) for c in pending) >= 4 * batch:
            flush()
    flush()
    if not photos:
        raise ValueError(f"{data_dir}: no usable photo (skipped {len(skipped)})")
    return CropFeatures({n: np.concatenate(v).astype(np.float32) for n, v in feats.items()},
                        np.concatenate(owner), photos, skipped, size, crops_per_photo)


def write_report(out_dir: str, stem: str, report: Mapping[str, Any], markdown: str) -> None:
    """OUT/<stem>.json and OUT/<stem>.md; the Markdown is printed too, headed by the learned model's name when
    the report has one."""
    if report.get("model"):
        markdown = f"learned = {report['model']}\n\n{markdown}"
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
        json.dump(report, f, indent=2, default=float)
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write(markdown)
    print(markdown)


def add_common_args(parser: argparse.ArgumentParser, outputs: str) -> None:
    """The flags `exif-jax probe` and `exif-jax retrieval` share."""
    cli_args.add_model_source(parser)
    parser.add_argument("--data", required=True, metavar="RECORDS",
                        help="folder of ArrayRecord shards (`exif-jax build-data` output)")
    cli_args.add_out(parser, outputs)
    parser.add_argument("--crops-per-photo", type=int, default=8, metavar="K",
                        help="crops of the checkpoint's crop size cut from each photo")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the crop positions and random-init weights")
    cli_args.add_limit(parser, "the first N usable photos of the records (build-data orders them by content "
                               "hash, so that is an arbitrary but fixed sample)")
    cli_args.add_progress(parser)
