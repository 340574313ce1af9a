"""Frozen crop features of a dataset's photos, shared by the linear probes and crop->EXIF retrieval.

Each photo of an ArrayRecord build (`exif-jax build-data`) gives K crops of the model's training crop size,
cut at native resolution like the trainer's (uniform positions, seeded per photo, so every feature source
sees the very same pixels); every embedder in a dict embeds them. Feature sources:
  learned      the checkpoint's image tower (the unit-norm embedding the contrastive loss saw)
  random-init  the same architecture with random weights (`localize.random_init_model`): what the
               architecture alone gives
  noise        the hand-made noise-residual statistics of `baselines.noise_embedder` (28 features)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from exif_jax.eval.patches import PatchEmbedder, _embed_fn, default_mesh, replicate

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


def load_models(checkpoint: str, step: int | None = None, seed: int = 0) -> tuple[Any, Any, Any]:
    """(trained model, same architecture with random weights, config) from a trainer workdir."""
    from exif_jax.eval.localize import load_for_inference, random_init_model

    model, config = load_for_inference(checkpoint, step)
    rand = random_init_model(config, seed=seed)
    rand.eval()
    return model, rand, config


def make_embedders(model: Any, random_model: Any, crop_size: int,
                   sources: Sequence[str] = SOURCES) -> dict[str, PatchEmbedder]:
    """The PatchEmbedder of each named feature source (see the module docstring)."""
    from exif_jax.eval.baselines import noise_embedder
    from exif_jax.eval.patches import model_embedder

    out = {}
    for name in sources:
        if name == "learned":
            out[name] = model_embedder(model, crop_size, name="learned")
        elif name == "random-init":
            out[name] = model_embedder(random_model, crop_size, name="random-init")
        elif name == "noise":
            out[name] = noise_embedder(crop_size)
        else:
            raise ValueError(f"unknown feature source {name!r}; known: {SOURCES}")
    return out


def embed_crops(embedder: PatchEmbedder, crops: np.ndarray, *, batch: int = 256,
                mesh: jax.sharding.Mesh | None = None) -> np.ndarray:
    """f32 [B, D] embeddings of uint8 crops [B, p, p, 3], in fixed-size batches sharded over the mesh."""
    if crops.ndim != 4 or crops.shape[1:] != (embedder.patch_size, embedder.patch_size, 3):
        raise ValueError(f"crops must be [B, {embedder.patch_size}, {embedder.patch_size}, 3], got {crops.shape}")
    mesh = mesh or default_mesh()
    ndev = mesh.shape["data"]
    # One compiled shape per embedder: batch a multiple of the devices, the last batch padded.
    batch = max(ndev, -(-min(batch, len(crops)) // ndev) * ndev)
    fn, params = _embed_fn(embedder.apply, mesh), replicate(embedder, mesh).params
    pad = np.concatenate([crops, np.zeros((-len(crops) % batch, *crops.shape[1:]), crops.dtype)])
    data = NamedSharding(mesh, P("data"))
    outs = [np.asarray(fn(params, jax.device_put(pad[k:k + batch], data))) for k in range(0, len(pad), batch)]
    return np.concatenate(outs)[:len(crops)] if outs else np.zeros((0, 0), np.float32)


def photo_crops(image: np.ndarray, k: int, size: int, seed: int, index: int) -> np.ndarray:
    """k uniform size x size crops of one photo, drawn from (seed, index): the same for every source."""
    from exif_jax.data.pipeline import random_crops

    return random_crops(image, k, size, np.random.default_rng((seed, index)))[0]


def extract_features(data_dir: str, embedders: Mapping[str, PatchEmbedder], *, crops_per_photo: int = 8,
                     seed: int = 0, max_photos: int | None = None, batch: int = 256,
                     progress: bool = True) -> CropFeatures:
    """Crop every photo of an ArrayRecord build K times and embed the crops with every embedder."""
    from tqdm import tqdm

    from exif_jax.data.build import read_records
    from exif_jax.data.pipeline import decode_rgb

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
        if max_photos is not None and len(photos) >= max_photos:
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
    """OUT/<stem>.json and OUT/<stem>.md; the Markdown is printed too."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
        json.dump(report, f, indent=2, default=float)
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write(markdown)
    print(markdown)


def add_common_args(parser: argparse.ArgumentParser, outputs: str) -> None:
    """The flags `exif-jax probe` and `exif-jax retrieval` share."""
    parser.add_argument("--checkpoint", required=True, help="trainer workdir (config.json + ckpt/)")
    parser.add_argument("--data", required=True, help="folder of ArrayRecord shards (exif-jax build-data)")
    parser.add_argument("--out", required=True, help=f"output folder: {outputs}")
    parser.add_argument("--patches-per-photo", type=int, default=8, help="crops per photo (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-photos", type=int, help="use only the first N photos")
    parser.add_argument("--step", type=int, help="checkpoint step (default: newest)")
