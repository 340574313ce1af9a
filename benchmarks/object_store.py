"""Crops from object storage: the real grain loader on a build in S3 (moto's server on 127.0.0.1, behind a proxy
that adds latency to every request and counts what the server sees) against the same build on local disk,
and the previous layout on local disk, all in one run.

For k = 1, 4, 16 crops per photo (128 px) on --images (default ../shared/data/fullres: 21 whole camera
originals, 8-16 MP):
  * local, layout 2: the previous layout (records + restart-rewritten streams read by memory map) — the peer;
  * local, layout 3: today's range-read layout (layout.py) read with os.pread;
  * s3 + 0 / 10 / 50 ms added to every request: the same build in a bucket, read with tensorstore.
Each row: crops per loader CPU-second (this process's CPU: the loader, its read threads and tensorstore's
threads; the server and the proxy are other processes), crops per wall-second, requests, bytes and retries per
crop as the proxy counts them, and at k = 1 the bytes read over the bytes of the MCUs the crops cover. The
ratios printed: remote vs local (CPU), 50 ms vs 0 ms (wall), layout 3 vs 2 (CPU).

Run (about 4 minutes): .venv/bin/python benchmarks/object_store.py [--images DIR] [-o docs/measurements]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import ml_collections
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the emulator and proxy helpers live with the tests

import object_store  # noqa: E402

from exif_jax import tokenizer  # noqa: E402
from exif_jax.data import build, jpeg_restart, pipeline, reader  # noqa: E402
from exif_jax.data.crops import FastIndex  # noqa: E402
from exif_jax.data.pixel_store import PixelWriter, pixels_path  # noqa: E402
from exif_jax.data.records import encode_record  # noqa: E402


def legacy_build(photos: list[str], out: str) -> None:
    """The previous layout (2): each shard's records in ArrayRecord and its rewritten streams with MCU tables in
    the pixel file, as build-data wrote them before the range-read layout (the loader still reads them)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    from exif_jax.data.photo_check import make_record

    settings = build.settings_from_config(None)
    os.makedirs(out, exist_ok=True)
    shard = os.path.join(out, build.shard_name(0, 1))
    writer, pixels = ArrayRecordWriter(shard, build.WRITER_OPTIONS), PixelWriter(pixels_path(shard))
    for p in photos:
        data = Path(p).read_bytes()
        rec, reason, rw = make_record(data, p, settings)
        if rec is None or rw is None:
            continue
        starts, lengths = rw.tables()
        rec["jpeg"], table_at = pixels.add_indexed(rw.data, starts, lengths)
        rec["fast"] = FastIndex(header_len=rw.header_len, sof_hw_at=rw.sof_hw_at, mcu_h=rw.mcu_h, mcu_w=rw.mcu_w,
                                mcus_y=rw.mcus_y, mcus_x=rw.mcus_x, table_at=table_at,
                                length_bytes=lengths.itemsize)
        writer.write(encode_record(rec))
    writer.close()
    pixels.commit()


def covered_tables(data_dir: str) -> list[tuple[np.ndarray, int, int]]:
    """Per record: (MCU byte lengths [mcus_y, mcus_x], mcu_h, mcu_w) of its restart-per-MCU stream."""
    out = []
    for rec in reader.read_records(data_dir):
        rw = jpeg_restart.rewrite(Path(rec["path"]).read_bytes())
        out.append((np.diff(rw.offsets.astype(np.int64)).reshape(rw.mcus_y, rw.mcus_x), rw.mcu_h, rw.mcu_w))
    return out


def covered(tables, batch: dict, size: int) -> int:
    """Bytes of the MCUs the batch's crops cover."""
    total = 0
    for i, (y, x) in zip(batch["image_id"].reshape(-1).tolist(), batch["offset"].reshape(-1, 2).tolist()):
        lengths, mh, mw = tables[i]
        total += int(lengths[y // mh:-(-(y + size) // mh), x // mw:-(-(x + size) // mw)].sum())
    return total


def run_loader(data_dir: str, tok, k: int, size: int, batch: int, seconds: float, threads: int, proxy=None,
               tables=None) -> dict:
    """Loader figures after a warm-up batch (see the module docstring)."""
    cfg = ml_collections.ConfigDict(dict(seed=0, data=dict(
        train_dir=data_dir, crop_size=size, crops_per_image=k, global_batch_size=batch, worker_count=0,
        prefetch_buffer=2, num_epochs=0, shuffle=True, read_threads=threads, decode="auto", spread_batches=0)))
    it = iter(pipeline.make_loader(cfg, tok, seed=k, process_index=0, process_count=1))
    try:
        next(it)
        if proxy is not None:
            proxy.reset()
        n, cov, t0, c0 = 0, 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            b = next(it)
            n += len(b["image_id"])
            if tables is not None:
                cov += covered(tables, b, size)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        st = proxy.stats() if proxy is not None else None
    finally:
        it.close()
    row = {"crops": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "crops_per_cpu_s": round(n / cpu, 1),
           "crops_per_wall_s": round(n / wall, 1)}
    if st is not None:
        gets = st["requests"].get("GET", 0)
        row.update(requests_per_crop=round(gets / n, 3), kb_per_crop=round(st["bytes_out"].get("GET", 0) / n / 1e3, 2),
                   faults=sum(st["faults"].values()))
        if cov:
            row["bytes_vs_covered"] = round(st["bytes_out"].get("GET", 0) / cov, 3)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(REPO.parent / "shared" / "data" / "fullres"))
    ap.add_argument("--ks", default="1,4,16")
    ap.add_argument("--latencies-ms", default="0,10,50")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row")
    ap.add_argument("--batch", type=int, default=64, help="global batch (crops)")
    ap.add_argument("--read-threads", type=int, default=8, help="data.read_threads (batches or photos in flight)")
    ap.add_argument("-o", "--out", default=str(REPO / "docs" / "measurements"))
    args = ap.parse_args()
    photos = sorted(glob.glob(os.path.join(args.images, "*.jpg")))
    if not photos:
        print(f"no photos in {args.images}", file=sys.stderr)
        return 2
    tok = tokenizer.Tokenizer(max_len=64)  # the bundled EXIF tokenizer, as benchmarks/input_pipeline.py uses
    ks = [int(k) for k in args.ks.split(",")]
    lat = [float(v) / 1e3 for v in args.latencies_ms.split(",")]
    size = 128
    work = tempfile.mkdtemp(prefix="bench-object-store-")
    server = object_store.start_s3()
    proxy = object_store.start_proxy(server, max_upstream=16)
    rows = []
    try:
        os.environ.update(server.env)
        server.make_bucket("bench")
        v2, v3 = os.path.join(work, "v2"), os.path.join(work, "v3")
        legacy_build(photos, v2)
        settings = build.settings_from_config(None)
        # One photo a shard: moto reads a whole object to answer a range request (16 ms of server CPU a request
        # at 35 MB, 2 ms at 1-3 MB), which real object stores do not; small objects keep the emulator out of the way.
        build.build_dataset(build.items_from_paths(photos), v3, settings, num_shards=len(photos), workers=1,
                            progress=False)
        build.build_dataset(build.items_from_paths(photos), "s3://bench/rec", settings, num_shards=len(photos),
                            workers=1, progress=False)
        tables = covered_tables(v3)
        os.environ.update(proxy.env)
        for k in ks:
            for name, where, ms in ([("local, layout 2 (peer)", v2, None), ("local, layout 3", v3, None)]
                                    + [(f"s3 + {v * 1e3:.0f} ms", "s3://bench/rec", v) for v in lat]):
                if ms is not None:
                    proxy.configure(latency_s=ms)
                row = run_loader(where, tok, k, size, args.batch, args.seconds, args.read_threads,
                                 proxy if ms is not None else None, tables if k == 1 and ms is not None else None)
                row.update(k=k, source=name)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        proxy.stop()
        server.stop()
    # table
    head = "| k | source | crops / loader CPU-s | crops / wall-s | requests / crop | KB / crop | bytes / covered MCUs |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        extra = " | ".join(str(r.get(f, "")) for f in ("requests_per_crop", "kb_per_crop", "bytes_vs_covered"))
        lines.append(f"| {r['k']} | {r['source']} | {r['crops_per_cpu_s']:,.0f} | {r['crops_per_wall_s']:,.0f} | "
                     f"{extra} |")
    ratios = []
    for k in ks:
        by = {r["source"]: r for r in rows if r["k"] == k}
        loc, old = by["local, layout 3"], by["local, layout 2 (peer)"]
        far = by.get(f"s3 + {lat[-1] * 1e3:.0f} ms")
        zero = by.get(f"s3 + {lat[0] * 1e3:.0f} ms")
        cpu = {name: r["crops_per_cpu_s"] for name, r in (("new", loc), ("old", old), ("far", far))}
        ratios.append(f"k={k}: layout 3 / layout 2 (local CPU) {cpu['new'] / cpu['old']:.2f}; "
                      f"s3 + {lat[-1] * 1e3:.0f} ms / local (CPU) {cpu['far'] / cpu['new']:.2f}; "
                      f"wall at {lat[-1] * 1e3:.0f} ms / at {lat[0] * 1e3:.0f} ms "
                      f"{far['crops_per_wall_s'] / zero['crops_per_wall_s']:.2f}")
    text = "\n".join(lines + [""] + ratios)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    meta = {"images": os.path.basename(os.path.normpath(args.images)), "photos": len(photos), "crop_size": size,
            "batch": args.batch, "read_threads": args.read_threads, "seconds_per_row": args.seconds,
            "cores": os.cpu_count(), "server": "moto_server (S3) behind the counting proxy, same machine"}
    Path(args.out, "object_store.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    Path(args.out, "object_store.md").write_text(
        "# Crops from object storage (benchmarks/object_store.py)\n\n"
        f"{meta['photos']} camera originals ({meta['images']}), {size}-px crops, global batch {args.batch}, "
        f"read_threads {args.read_threads}, {meta['cores']} cores shared with the S3 server and the proxy; "
        f"{args.seconds:.0f} s per row.\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
