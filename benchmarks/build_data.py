"""build-data: the local process pool vs Ray tasks on the same photos and the same cores, and what the Ray
driver itself costs.

Builds --images (default ../shared/data/fullres: 21 whole camera originals, 8-16 MP) twice, into temporary
folders, with --shards shards and --cores cores each:
  * pool: build.build_dataset(workers=cores): pass 1 in threads, pass 2 in `cores` spawned processes;
  * ray:  the same call with engine=RayEngine() on a local Ray started with num_cpus=cores (ray.init is
    timed apart: a cluster starts once, not per build).
and checks that the two outputs are the same files byte for byte. Reported per engine: wall seconds,
photos per core-second (kept photos / (wall x cores): the target compares these), photos per CPU-second of
the worker processes (steadier on a shared machine), and the driver's own CPU seconds and RSS; for Ray also
the CPU of its daemons (gcs_server, raylet, agents) during the build.

Driver memory per photo: tracemalloc over --plan-photos listed webdataset members (build.Item +
inputs.TarMember, 10,000 per tar as img2dataset writes them) through build.plan_inputs and the shard plan.
The hashing there is a stand-in (sha256 of the name, no file reads): only the driver's bookkeeping is measured.

Run (about 2 minutes on 2 cores):
  nice -n 19 .venv/bin/python benchmarks/build_data.py [--images ../shared/data/fullres] [--cores 2]
Writes docs/measurements/build_data.json and .md (--out-prefix to change).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import psutil

from exif_jax import exif
from exif_jax.data import build, inputs

REPO = Path(__file__).resolve().parents[1]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped children: the pool's spawned processes
    return r.ru_utime + r.ru_stime


def _tree_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's live descendants: Ray workers ("ray::<task>" / "ray::IDLE") and
    Ray's daemons (everything else)."""
    out = {"workers": 0.0, "daemons": 0.0}
    for p in psutil.Process().children(recursive=True):
        try:
            cmd, t = p.cmdline(), p.cpu_times()
        except psutil.Error:
            continue
        title = cmd[0] if cmd else ""
        worker = title.startswith("ray::") and title not in ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
        out["workers" if worker else "daemons"] += t.user + t.system
    return out


def _self_cpu() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def snapshot() -> dict[str, float]:
    """Wall clock and CPU seconds so far: this process (the driver), its reaped children (the pool's
    processes), its live Ray workers and Ray daemons."""
    return {"wall": time.perf_counter(), "driver": _self_cpu(), "reaped": _children_cpu(), **_tree_cpu()}


def measure(start: dict, end: dict, photos: int, cores: int) -> dict:
    d = {k: end[k] - start[k] for k in start}
    worker = d["reaped"] + d["workers"]
    total = worker + d["driver"] + d["daemons"]
    return {"photos": photos, "wall_s": d["wall"], "photos_per_core_s": photos / (d["wall"] * cores),
            "cpu_s": total, "photos_per_cpu_s": photos / total, "worker_cpu_s": worker, "driver_cpu_s": d["driver"],
            "daemon_cpu_s": d["daemons"], "driver_rss_mb": psutil.Process().memory_info().rss / 2**20}


def run_build(photos: list[str], out: str, shards: int, cores: int, engine) -> tuple[dict, dict, dict]:
    """(snapshot before, snapshot after, summary) of one build."""
    items = build.items_from_paths(photos)
    settings = build.settings_from_config(None)
    before = snapshot()
    s = build.build_dataset(items, out, settings, num_shards=shards, workers=cores, progress=False, engine=engine)
    return before, snapshot(), s


class _NameHash:
    """build.Engine stand-in for the memory measurement: pass 1 answers sha256 of the name (no file is read)."""

    def run(self, fn, calls):
        assert fn is build._hash_chunk, "only pass 1 runs here"
        for key, (chunk,) in calls:
            yield key, [(hashlib.sha256(it.name.encode()).hexdigest(), "") for it in chunk]


def driver_bytes_per_photo(n: int, yfcc_line: str | None = None, per_shard: int = 64) -> dict:
    """Bytes the driver holds per input photo: the listing (Items), and at the peak of planning. With
    `yfcc_line`, each Item also carries its own parse of that EXIF line (--yfcc-exif: the tags travel)."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tars = [f"/data/yfcc100m/webdataset/{t:05d}.tar" for t in range(math.ceil(n / 10000))]
    items = [build.Item(src=tars[i // 10000], name=f"{tars[i // 10000]}/{i:09d}.jpg",
                        part=inputs.TarMember(1536 * i + 512, 3_000_000),
                        tags=exif.parse_yfcc_line(yfcc_line)[1] if yfcc_line else None) for i in range(n)]
    listed = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.reset_peak()
    unique, _ = build.plan_inputs(items, progress=False, engine=_NameHash())
    k = math.ceil(len(unique) / per_shard)
    plan = [unique[i * len(unique) // k:(i + 1) * len(unique) // k] for i in range(k)]
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    del plan
    return {"photos": n, "listed_bytes_per_photo": round(listed / n), "peak_bytes_per_photo": round(peak / n)}


ROWS = {"pool": "pool (spawns its processes)", "ray": "ray (cluster already up)",
        "ray_cold": "ray incl. ray.init (cold cluster)"}


def to_markdown(res: dict) -> str:
    rows = ["| engine | photos | wall s | photos / core-s | CPU s (all processes) | photos / CPU-s | worker CPU s | "
            "driver CPU s | Ray daemons CPU s | driver RSS MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, label in ROWS.items():
        r = res[key]
        rows.append(f"| {label} | {r['photos']} | {r['wall_s']:.1f} | {r['photos_per_core_s']:.3f} | "
                    f"{r['cpu_s']:.1f} | {r['photos_per_cpu_s']:.3f} | {r['worker_cpu_s']:.1f} | "
                    f"{r['driver_cpu_s']:.2f} | {r['daemon_cpu_s']:.2f} | {r['driver_rss_mb']:.0f} |")
    m, y = res["driver_memory"], res["driver_memory_yfcc"]
    return "\n".join([
        f"build-data on {os.path.basename(os.path.normpath(res['images']))} ({res['photos']} photos, "
        f"{res['shards']} shards, {res['cores']} cores, "
        f"{res['date']}; `{res['command']}`)", "",
        *rows, "",
        f"Ray / pool: photos per core-second (wall x cores) {res['ray_vs_pool']['core_s']:.3f}, photos per "
        f"CPU-second of all processes {res['ray_vs_pool']['cpu_s']:.3f} (cold cluster: "
        f"{res['ray_cold_vs_pool']['core_s']:.3f} / {res['ray_cold_vs_pool']['cpu_s']:.3f}); target >= 0.85. "
        f"Outputs byte-identical: {res['identical']}. ray.init {res['ray_init_s']:.1f} s wall.",
        f"Driver memory: {m['listed_bytes_per_photo']} bytes per listed photo, {m['peak_bytes_per_photo']} at the "
        f"peak of planning (tracemalloc, {m['photos']:,} webdataset members); photo bytes never reach the driver. "
        f"With --yfcc-exif each Item also holds its photo's tags: {y['listed_bytes_per_photo']} / "
        f"{y['peak_bytes_per_photo']} bytes per photo ({y['tags']} tags, a {y['line_bytes']}-byte EXIF line, "
        f"{y['photos']:,} photos).",
        ""])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", default=str(REPO.parent / "shared" / "data" / "fullres"))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--shards", type=int, default=7)
    ap.add_argument("--plan-photos", type=int, default=50_000)
    ap.add_argument("--out-prefix", default=str(REPO / "docs" / "measurements" / "build_data"))
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray on the loopback interface only
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray  # lazy: an optional dependency (the `ray` extra); after the environment above

    from exif_jax.data.build_ray import RayEngine

    photos = build.list_images(args.images)
    res = {"images": args.images, "photos": len(photos), "cores": args.cores, "shards": args.shards,
           "date": time.strftime("%Y-%m-%d"), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    with tempfile.TemporaryDirectory() as tmp:
        before, after, summary = run_build(photos, f"{tmp}/pool", args.shards, args.cores, None)
        res["pool"] = measure(before, after, summary["kept"], args.cores)
        cold = snapshot()
        ray.init(num_cpus=args.cores, include_dashboard=False, log_to_driver=False)
        res["ray_init_s"] = time.perf_counter() - cold["wall"]
        try:
            before, after, summary = run_build(photos, f"{tmp}/ray", args.shards, args.cores, RayEngine())
            res["ray"] = measure(before, after, summary["kept"], args.cores)
            res["ray_cold"] = measure(cold, after, summary["kept"], args.cores)
        finally:
            ray.shutdown()
        names = sorted(os.listdir(f"{tmp}/pool"))
        res["identical"] = names == sorted(os.listdir(f"{tmp}/ray")) and all(
            Path(tmp, "pool", n).read_bytes() == Path(tmp, "ray", n).read_bytes() for n in names)
    for key in ("ray", "ray_cold"):
        res[f"{key}_vs_pool"] = {m: res[key][f"photos_per_{m}"] / res["pool"][f"photos_per_{m}"]
                                 for m in ("core_s", "cpu_s")}
    res["driver_memory"] = driver_bytes_per_photo(args.plan_photos)
    # A YFCC100M EXIF line as the dump has it (every entry metadata-extractor lists for a photo): the shared
    # photo whose line has the median length.
    dump = (REPO.parent / "shared" / "data" / "photos" / "metadata-extractor").glob("*.txt")
    lines = sorted((exif.to_yfcc_line(1, exif.metadata_extractor_entries(p)) for p in dump), key=len)
    line = lines[len(lines) // 2]
    res["driver_memory_yfcc"] = {**driver_bytes_per_photo(args.plan_photos // 5, line),
                                 "tags": len(exif.parse_yfcc_line(line)[1]), "line_bytes": len(line)}
    md = to_markdown(res)
    print(md)
    Path(args.out_prefix).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out_prefix}.json").write_text(json.dumps(res, indent=1) + "\n")
    Path(f"{args.out_prefix}.md").write_text(md)
    return 0 if res["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
