"""`make demo`: the whole pipeline end to end on the photos bundled in exif_jax/assets/photos.

Stages (each prints what it did): build ArrayRecords -> tokenize -> a grain batch on the device mesh ->
train a tiny model -> write the output folder. Later stages (splices, localization, export) join as they land.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from exif_jax import exif

ASSETS = Path(__file__).resolve().parent / "assets"
PHOTOS = ASSETS / "photos"
REPO = Path(__file__).resolve().parents[1]


def _stage(n: int, title: str) -> float:
    print(f"\n=== [{n}] {title}", flush=True)
    return time.time()


def _done(t0: float) -> None:
    print(f"    ({time.time() - t0:.1f} s)", flush=True)


def build(out: Path) -> Path:
    """Photos -> ArrayRecord shards; returns the data directory."""
    from exif_jax.data import build as build_lib
    data_dir = out / "data"
    items, skipped = build_lib.items_from_folder(str(PHOTOS))
    settings = build_lib.Settings(tag_order=tuple(exif.DEFAULT_TAGS), min_size=128)
    summary = build_lib.build_dataset(items, str(data_dir), settings, records_per_shard=8, workers=2,
                                      pre_skipped=skipped)
    print(f"    {summary['kept']} photos kept, {sum(len(v) for v in summary['skipped'].values())} skipped, "
          f"{len(summary['cameras'])} cameras, {len(build_lib.shard_paths(str(data_dir)))} shards -> {data_dir}")
    first = next(build_lib.read_records(str(data_dir)))
    print(f"    e.g. {first['path'].split('/')[-1]}: {first['text'][:110]}...")
    return data_dir


def batch_summary(config, data_dir: Path) -> None:
    """One global batch from the grain pipeline, sharded over the devices."""
    import jax

    from exif_jax import sharding
    from exif_jax.data import pipeline
    from exif_jax.tokenizer import make_tokenizer
    tok = make_tokenizer(config)
    config.data.train_dir = str(data_dir)
    mesh = sharding.make_mesh(config.mesh)
    it = pipeline.make_global_iterator(config, tok, mesh, seed=config.seed)
    batch = next(it)
    it.close()
    for k, v in batch.items():
        print(f"    {k:9s} {str(v.dtype):6s} {tuple(v.shape)!s:18s} sharding {v.sharding.spec} over "
              f"{len(v.sharding.device_set)} {jax.devices()[0].platform} devices")
    ids = np.asarray(batch["image_id"])
    print(f"    {len(np.unique(ids))} distinct photos in the batch; tokens/text (non-pad): "
          f"{float(np.mean(np.sum(np.asarray(batch['tokens']) != tok.pad_id, axis=1))):.1f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="demo_out", help="output folder (created)")
    p.add_argument("--config", default=str(REPO / "configs" / "tiny.py"))
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from exif_jax.config import load_config
    config = load_config(args.config)

    t = _stage(1, f"EXIF -> text for {len(list(PHOTOS.glob('*.jpg')))} bundled photos")
    data_dir = build(out)
    _done(t)
    t = _stage(2, "grain pipeline -> one global batch on the mesh")
    batch_summary(config, data_dir)
    _done(t)
    print(f"\nDemo finished. Output folder: {out}")
    json.dump({"data": str(data_dir)}, open(out / "demo.json", "w"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
