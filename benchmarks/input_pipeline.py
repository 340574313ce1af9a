"""Input at camera resolution: crops per CPU-second on one pinned core, region decode vs whole-photo decode,
both through the real grain loader, measured in the same run.

Builds two datasets from --images (default ../shared/data/fullres: 21 whole camera originals, 8-16 MP):
  * `build-data` as it is: small records + pixel files holding each JPEG rewritten with a restart marker
    after every MCU; the loader region-decodes only the MCUs a crop covers (data.decode="auto");
  * `build-data --no-fast-path`: the original files; the loader decodes each photo whole and crops it
    (data.decode="whole"; the peer: what every crop cost before, minus the full-size array copy).
Each build is timed (CPU seconds per photo and per 12 MP, fast path on vs off) and its size reported.
Then the process pins itself to one core and, for k = 1, 4, 16 crops per photo, runs make_loader
(worker_count 0; its read threads share the core) for --seconds after a warm-up batch, in --rounds
interleaved rounds; medians are reported. Crops per CPU-second count this process's CPU time, so they
stay put when other jobs load the machine. Cores needed per accelerator = its appetite / that figure:
one H200 eats ~8,000 crops/s (ViT-B/16 at 128 px, the PyTorch peer), a TPU v5e chip ~1,500.

Run (about 5 minutes with the defaults):
  .venv/bin/python benchmarks/input_pipeline.py [--images ../shared/data/fullres]
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import io
import os
import sys
import tempfile
import time

import ml_collections
import numpy as np
from PIL import Image

from exif_jax.data import build, pipeline

APPETITE = {"H200": 8000.0, "v5e chip": 1500.0}  # crops/s one accelerator consumes (docs/paper_scale.md §3)


def timed_build(photos: list[str], out: str, fast: bool, workers: int = 1) -> dict:
    """build-data (1 worker: in this process); returns the summary plus this process's CPU seconds."""
    settings = dataclasses.replace(build.settings_from_config(None), fast_path=fast)
    c0 = time.process_time()
    s = build.build_dataset(build.items_from_paths(photos), out, settings, num_shards=2, workers=workers,
                            progress=False)
    s["cpu_seconds"] = time.process_time() - c0
    return s


def loader_rate(data_dir: str, tok, k: int, size: int, decode: str, batch: int, seconds: float, workers: int = 0
                ) -> tuple[float, float]:
    """(crops per wall second, crops per CPU second of this process) of make_loader with `workers` grain worker
    processes (0: all in this process; their CPU time is not counted), measured after its first batch."""
    cfg = ml_collections.ConfigDict(dict(seed=0, data=dict(
        train_dir=data_dir, crop_size=size, crops_per_image=k, global_batch_size=batch, worker_count=workers,
        prefetch_buffer=2 if workers else 0, num_epochs=0, shuffle=True, read_threads=0, decode=decode,
        spread_batches=0)))
    it = iter(pipeline.make_loader(cfg, tok, seed=k, process_index=0, process_count=1))
    try:
        next(it)
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            n += len(next(it)["image"])
        return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)
    finally:
        it.close()


def warm_numba() -> None:
    """Compile (or load from cache) the rewrite once, so the build timing is the steady state."""
    from exif_jax.data import jpeg_restart

    buf = io.BytesIO()
    Image.effect_noise((64, 64), 30).convert("RGB").save(buf, "JPEG")
    jpeg_restart.rewrite(buf.getvalue())


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=os.path.join(here, "..", "..", "shared", "data", "fullres"),
                    help="folder of camera JPEGs (default: the shared whole camera originals)")
    ap.add_argument("--crop-size", type=int, default=128)
    ap.add_argument("--ks", default="1,4,16", help="crops per photo, comma-separated")
    ap.add_argument("--batch", type=int, default=64, help="crops per batch")
    ap.add_argument("--seconds", type=float, default=6.0, help="measuring time per row and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    ap.add_argument("--core", type=int, default=None, help="core to pin to (default: the last one allowed)")
    args = ap.parse_args()

    photos = sorted(glob.glob(os.path.join(args.images, "*.jpg")) + glob.glob(os.path.join(args.images, "*.JPG")))
    if not photos:
        print(f"no photos in {args.images}", file=sys.stderr)
        return 1
    ks = [int(k) for k in args.ks.split(",")]
    sizes = [Image.open(p).size for p in photos]
    mp = np.mean([w * h for w, h in sizes]) / 1e6
    from exif_jax import tokenizer as tk

    tok = tk.Tokenizer(max_len=64)
    with tempfile.TemporaryDirectory() as tmp:
        warm_numba()
        fast_dir, whole_dir = os.path.join(tmp, "fast"), os.path.join(tmp, "whole")
        s_fast, s_whole = timed_build(photos, fast_dir, True), timed_build(photos, whole_dir, False)
        core = args.core if args.core is not None else max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})  # this process and every thread it starts from here on
        print(f"{len(photos)} photos, {mp:.1f} MP mean, from {args.images}; crop {args.crop_size}, batch "
              f"{args.batch}; pinned to core {core}; load average {os.getloadavg()[0]:.1f} at start")
        print(f"region decode for {s_fast['fast_path']['records']} of {s_fast['kept']} photos "
              f"(decoded whole: {s_fast['fast_path']['decoded_whole'] or 'none'})")
        rows = [("whole-photo decode (--no-fast-path build)", whole_dir, "whole"),
                ("region decode (build-data default)", fast_dir, "auto")]
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for r in range(args.rounds):
            for k in ks:
                for name, d, decode in rows:
                    results.setdefault((name, k), []).append(
                        loader_rate(d, tok, k, args.crop_size, decode, args.batch, args.seconds))
            print(f"  round {r + 1}/{args.rounds} done (load average {os.getloadavg()[0]:.1f})", file=sys.stderr)
    med = {key: (float(np.median([v[0] for v in vals])), float(np.median([v[1] for v in vals])))
           for key, vals in results.items()}

    print()
    print("| loader path | k | crops/s (wall, 1 core) | crops per CPU-second | cores per H200 (8,000/s) "
          "| cores per v5e chip (1,500/s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for k in ks:
        for name, _, _ in rows:
            wall, cpu = med[(name, k)]
            print(f"| {name} | {k} | {wall:,.0f} | {cpu:,.0f} | {APPETITE['H200'] / cpu:,.1f} "
                  f"| {APPETITE['v5e chip'] / cpu:,.2f} |")
    print()
    for k in ks:
        print(f"ratio region / whole-photo at k={k}: {med[(rows[1][0], k)][1] / med[(rows[0][0], k)][1]:.1f}x "
              f"per CPU-second")
    per_photo = (s_fast["cpu_seconds"] - s_whole["cpu_seconds"]) / len(photos)
    print()
    print(f"build-data, 1 process: {s_whole['cpu_seconds'] / len(photos):.2f} CPU s/photo with --no-fast-path, "
          f"{s_fast['cpu_seconds'] / len(photos):.2f} with the rewrite: +{per_photo:.2f} s/photo, "
          f"+{per_photo * 12 / mp:.2f} s per 12 MP")
    print(f"stored vs original files: {100 * s_fast['stored_vs_original']:+.1f}% (fast path), "
          f"{100 * s_whole['stored_vs_original']:+.1f}% (--no-fast-path)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
