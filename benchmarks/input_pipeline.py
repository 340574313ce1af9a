"""Input pipeline throughput: our grain loader vs a plain PIL "open + decode + crop" loop, in one run.

Builds ArrayRecord shards from a photo folder into a temporary directory (with `exif-jax build-data`'s
library when it is importable, else a direct writer with a fixed text), then measures crops/s for
k crops per decoded photo: wall-clock crops/s, and crops per CPU-second (this process's threads plus
grain's worker processes), which is what one dedicated core would deliver and moves less with other jobs'
load. Rows are interleaved over rounds and the median reported. Prints a markdown table and the ratios.

Run (about 5 minutes with the defaults):
  .venv/bin/python benchmarks/input_pipeline.py --photos ../shared/data/photos
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import io
import itertools
import multiprocessing
import os
import sys
import tempfile
import time

import ml_collections
import numpy as np
from PIL import Image

from exif_jax.data import pipeline, records

# Roughly the length of a rendered EXIF text, so tokenization costs what it will in training.
FALLBACK_TEXT = ("Make: Canon Model: Canon EOS 20D Exposure Time: 1/250 sec F-Number: f/8.0 ISO Speed Ratings: "
                 "100 Focal Length: 35 mm Flash: Flash did not fire White Balance Mode: Auto Exposure Program: "
                 "Program normal Metering Mode: Multi-segment Date/Time Original: 2005:06:12 14:31:07")


def build_records(photos: list[str], out: str) -> str:
    """Shards for `photos` in `out`; returns how they were built."""
    try:
        from exif_jax.data import build

        items = build.items_from_paths(photos)
        summary = build.build_dataset(items, out, build.settings_from_config(None), num_shards=4, workers=2,
                                      progress=False)
        return f"build.build_dataset ({summary['kept']} kept of {summary['inputs']})"
    except ImportError as e:  # build-data or its EXIF reader not there yet
        from array_record.python.array_record_module import ArrayRecordWriter

        for s in range(4):
            w = ArrayRecordWriter(os.path.join(out, f"records-{s:05d}-of-00004.array_record"), "group_size:1")
            for p in photos[s::4]:
                data = open(p, "rb").read()
                with Image.open(io.BytesIO(data)) as im:
                    width, height = im.size
                w.write(records.encode_record(dict(
                    image=data, text=FALLBACK_TEXT, tags={}, width=width, height=height, camera="?|?", path=p,
                    sha256=hashlib.sha256(data).hexdigest())))
            w.close()
        return f"direct ArrayRecordWriter, fixed text ({e})"


def make_tokenizer(texts: list[str], tmp: str):
    """The bundled tokenizer, else one trained on these texts, else None (reported)."""
    from exif_jax import tokenizer as tk

    try:
        return tk.Tokenizer(max_len=64), "bundled sentencepiece model"
    except (FileNotFoundError, OSError, ValueError):
        model = tk.train_tokenizer(texts, os.path.join(tmp, "sp"), vocab_size=1000, tag_names=["Make", "Model"])
        return tk.Tokenizer(model, max_len=64), "sentencepiece trained on the benchmark texts"


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its live multiprocessing children (grain workers)."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for child in multiprocessing.active_children():
        try:
            with open(f"/proc/{child.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        except (OSError, IndexError, ValueError):  # not Linux, or the worker just exited
            pass
    return total


def measure(step, seconds: float) -> tuple[float, float]:
    """Call step() (returns crops made) for `seconds`; returns (crops per wall second, per CPU second)."""
    n, t0, c0 = 0, time.perf_counter(), cpu_seconds()
    while time.perf_counter() - t0 < seconds:
        n += step()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return n / wall, n / max(cpu, 1e-9)


def pil_loop(photos: list[str], k: int, size: int, seconds: float) -> tuple[float, float]:
    """Single-threaded open + decode + k crops over the files."""
    rng = np.random.default_rng(0)
    files = itertools.cycle(photos)

    def step() -> int:
        with Image.open(next(files)) as im:
            if im.mode != "RGB":
                im = im.convert("RGB")
            return len(pipeline.random_crops(np.asarray(im), k, size, rng)[0])

    return measure(step, seconds)


def grain_rate(data_dir: str, tok, k: int, size: int, workers: int, threads: int, batch: int,
               seconds: float) -> tuple[float, float]:
    """make_loader measured after its first batch (worker start-up excluded)."""
    cfg = ml_collections.ConfigDict(dict(seed=0, data=dict(
        train_dir=data_dir, crop_size=size, crops_per_image=k, global_batch_size=batch, worker_count=workers,
        prefetch_buffer=2, num_epochs=0, shuffle=True, read_threads=threads)))
    it = iter(pipeline.make_loader(cfg, tok, seed=0, process_index=0, process_count=1))
    try:
        next(it)
        return measure(lambda: len(next(it)["image"]), seconds)
    finally:
        it.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--photos", default=os.path.join(here, "..", "..", "shared", "data", "photos"))
    ap.add_argument("--crop-size", type=int, default=128)
    ap.add_argument("--ks", default="1,4,8", help="crops per decoded photo, comma-separated")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="grain worker processes for the N row")
    ap.add_argument("--threads", type=int, default=2, help="decode threads per grain process (read_threads)")
    ap.add_argument("--batch", type=int, default=64, help="crops per batch")
    ap.add_argument("--seconds", type=float, default=5.0, help="measuring time per row and round")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds over all rows; the median is reported (other jobs' load drifts over time)")
    args = ap.parse_args()

    photos = sorted(glob.glob(os.path.join(args.photos, "*.jpg")) + glob.glob(os.path.join(args.photos, "*.JPG")))
    if not photos:
        print(f"no photos in {args.photos}", file=sys.stderr)
        return 1
    ks = [int(k) for k in args.ks.split(",")]
    ncpu = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "records")
        os.makedirs(data_dir)
        how = build_records(photos, data_dir)
        src = pipeline.make_source(data_dir)
        texts = [records.decode_record(src[i])["text"] for i in range(len(src))]
        tok, tok_how = make_tokenizer(texts, tmp)
        mp = sum(Image.open(p).size[0] * Image.open(p).size[1] for p in photos) / len(photos) / 1e6
        print(f"{len(photos)} photos ({mp:.2f} MP mean) from {args.photos}; records via {how}; tokenizer: "
              f"{tok_how}; crop {args.crop_size}; {ncpu} cores, load average {os.getloadavg()[0]:.1f} at start")
        configs = [("PIL open+decode+crop loop", None)] + [
            (f"grain, {w} workers x {args.threads} threads", w) for w in sorted({0, args.workers})]
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for r in range(args.rounds):  # rounds interleave the rows, so load drift hits them alike
            for k in ks:
                for name, w in configs:
                    results.setdefault((name, k), []).append(
                        pil_loop(photos, k, args.crop_size, args.seconds) if w is None else
                        grain_rate(data_dir, tok, k, args.crop_size, w, args.threads, args.batch, args.seconds))
            print(f"  round {r + 1}/{args.rounds} done (load average {os.getloadavg()[0]:.1f})", file=sys.stderr)
    med = {key: (float(np.median([v[0] for v in vals])), float(np.median([v[1] for v in vals])))
           for key, vals in results.items()}
    print()
    print("| pipeline | k (crops/decode) | crops/s (wall) | crops per CPU-second (per core) |")
    print("|---|---:|---:|---:|")
    for k in ks:
        for name, _ in configs:
            wall, cpu = med[(name, k)]
            print(f"| {name} | {k} | {wall:.1f} | {cpu:.1f} |")
    print()
    loop = configs[0][0]
    for k in ks:
        for name, _ in configs[1:]:
            print(f"ratio {name} / PIL loop at k={k}: {med[(name, k)][0] / med[(loop, k)][0]:.2f}x wall, "
                  f"{med[(name, k)][1] / med[(loop, k)][1]:.2f}x per CPU-second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
