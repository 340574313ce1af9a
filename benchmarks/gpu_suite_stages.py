"""The stages of benchmarks/gpu_suite.py, one per process: `python benchmarks/gpu_suite_stages.py STAGE --result
FILE --deadline EPOCH [--dry-run]`. Each writes its rows to FILE as it goes (so a stage stopped at its budget
keeps what it finished) and stops starting new work near the deadline. Reuses benchmarks/train_step.py,
localize.py and input_pipeline.py; jax, torch and grain are imported here, inside the stage, so a missing one
fails that stage alone.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]

VOCAB = 1000
# Relative tolerance of "correct" (first loss, first gradient norm, last loss) by compute dtype: bf16 rounds
# differently under another attention kernel or fusion; f32 reorders sums only.
TOLERANCE = {"bfloat16": {"loss": 1e-2, "grad_norm": 5e-2}, "float32": {"loss": 1e-4, "grad_norm": 1e-3}}
# The knobs, in the order they are tried (the budget may end the list): the default first (the reference).
VIT_SWEEP = (
    (), ("model.attention=cudnn",), ("model.attention=einsum",),
    ("model.attention=cudnn", "model.image.remat=dots", "model.text.remat=dots"),
    ("model.attention=cudnn", "loss.impl=ring"), ("model.attention=cudnn", "model.norm_dtype=float32"),
    ("data.global_batch_size=2048",), ("data.global_batch_size=2048", "model.attention=cudnn"),
    ("model.attention=cudnn", "model.image.remat=full", "model.text.remat=full"),
)
RESNET_SWEEP = ((), ("model.attention=cudnn",), ("model.attention=cudnn", "model.norm_dtype=float32"))
# Dry run: configs/tiny.py shrunk; f32, so every variant must match the default to f32 rounding.
DRY_BASE = ("model.image.depth=1", "model.text.depth=1", "tokenizer.max_len=16", "model.dtype=float32")
# Two compiles (what a dry run can afford on 2 busy cores): the default, and every other knob at once.
DRY_SWEEP = ((), ("model.attention=einsum", "model.image.remat=dots", "model.text.remat=full",
                  "model.norm_dtype=float32", "loss.impl=ring"), ("model.attention=cudnn",))
DRY_RESNET = ("model.image.kind=resnet", "model.image.variant=tiny", "model.image.width=8")
# XLA's CPU backend at its lowest optimization level: dry-run compiles in a third of the time.
CPU_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


class Recorder:
    """The stage's result file, rewritten (atomically) after every change."""

    def __init__(self, path: str, stage: str):
        self.path, self.data = path, {"stage": stage, "rows": [], "notes": []}

    def row(self, row: dict) -> dict:
        self.data["rows"].append(row)
        self.save()
        return row

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        say(text)
        self.save()

    def save(self) -> None:
        tmp = self.path + ".tmp"
        Path(tmp).write_text(json.dumps(self.data, default=str))
        os.replace(tmp, self.path)


def say(text: str) -> None:
    """A progress line the suite echoes (it shows lines starting with 'gpu_suite')."""
    print(f"gpu_suite  {text}", flush=True)


def error_text(e: BaseException) -> str:
    """The exception's type and first line (XLA messages run to pages)."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:300]}"


# ----------------------------------------------------------------------------------------------- train steps

def train_stage(rec: Recorder, config_file: str, base: tuple, sweep: tuple, *, dry_run: bool, deadline: float,
                parallel: int, peer: bool, lower_only: bool = False) -> None:
    """Lower every setting (in order), compile them `parallel` at a time, then time each, the peer after the
    first two; rows record img/s, MFU, losses and whether they match the default at their batch size.
    lower_only: stop after lowering (status "lowered": the step traces and lowers for this config)."""
    import jax
    import train_step

    from exif_jax import config as cfg

    steps, warmup = (2, 1) if dry_run else (15, 5)
    opts = CPU_FAST_COMPILE if jax.devices()[0].platform == "cpu" else None
    path = str(ROOT / "configs" / config_file)
    rows, prepared = {}, {}
    rec.data["config"] = " ".join([f"configs/{config_file}"] + [f"--config.{o}" for o in base])
    for overrides in sweep:
        label = ", ".join(overrides) or "default"
        row = rows[label] = rec.row({"kind": "ours", "setting": label, "overrides": list(overrides),
                                     "status": "pending"})
        if time.time() > deadline - 20:
            row.update(status="skipped", error="budget")
            continue
        try:
            config = cfg.load_config(path, list(base) + list(overrides))
            row["batch"] = int(config.data.global_batch_size)
            rec.data["tolerance"] = TOLERANCE[str(config.model.dtype)]
            prepared[label] = train_step.prepare_ours(config, VOCAB)
        except Exception as e:  # noqa: BLE001  (a setting this backend cannot lower, e.g. cuDNN on a CPU)
            row.update(status="failed", error=error_text(e))
            say(f"{label}: {row['error']}")
    if lower_only:
        for label in prepared:
            rows[label].update(status="lowered", compile_s=prepared[label].lower_s)
        rec.save()
        return

    def compile_one(label):
        t = time.perf_counter()
        step = prepared[label].lowered.compile(opts) if opts else prepared[label].lowered.compile()
        return step, time.perf_counter() - t

    say(f"compiling {len(prepared)} steps, {parallel} at a time")
    compiled = {}
    with cf.ThreadPoolExecutor(max(parallel, 1)) as pool:
        futures = {label: pool.submit(compile_one, label) for label in prepared}
        for label, fut in futures.items():
            try:
                compiled[label], secs = fut.result()
                rows[label]["compile_s"] = secs + prepared[label].lower_s
            except Exception as e:  # noqa: BLE001
                rows[label].update(status="failed", error=error_text(e))
            rec.save()

    state0 = None
    order = list(compiled)
    for i, label in enumerate(order):
        if peer and i == min(2, len(order)):
            peer_row(rec, prepared[order[0]].config, deadline, dry_run)
        row = rows[label]
        if time.time() > deadline - 10:
            row.update(status="skipped", error="budget (compiled, not timed)")
            continue
        try:
            p = prepared[label]
            # The knobs change no parameter: every setting starts from a copy of one state (seeded weights).
            if state0 is None or not _same_layout(p.trainer.abstract_state, state0):
                state0 = train_step.random_state(p.trainer, seed=0)
            state = jax.tree.map(lambda x: x.copy(), state0)
            row.update(train_step.time_ours(p, compiled[label], steps, warmup, state=state), status="ok")
            say(f"{label}: {row['img_s']:,.0f} img/s, MFU {row['mfu']:.3f}, loss {row['first_loss']:.5f}")
        except Exception as e:  # noqa: BLE001  (out of memory, a kernel that fails at run time)
            row.update(status="failed", error=error_text(e))
            say(f"{label}: {row['error']}")
        mark_correct(list(rows.values()), rec.data.get("tolerance", TOLERANCE["float32"]))
        rec.save()
    if peer and len(order) <= 2:
        peer_row(rec, prepared[order[0]].config if order else None, deadline, dry_run)


def _same_layout(abstract, state) -> bool:
    import jax

    return jax.tree.structure(abstract) == jax.tree.structure(state) and all(
        a.shape == b.shape and a.dtype == b.dtype for a, b in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)))


def mark_correct(rows: list[dict], tol: dict) -> None:
    """row["correct"]: its losses and gradient norm equal those of the default (overrides only the batch size)
    at its batch size within `tol` (None: no default measured at that batch size)."""
    refs = {r["batch"]: r for r in rows if r.get("status") == "ok"
            and all(o.startswith("data.global_batch_size=") for o in r["overrides"])}
    for r in rows:
        if r.get("status") != "ok":
            continue
        ref = refs.get(r["batch"])
        if ref is None:
            r["correct"] = None
            continue
        close = lambda a, b, t: abs(a - b) <= t * max(abs(b), 1e-12)  # noqa: E731
        r["correct"] = bool(close(r["first_loss"], ref["first_loss"], tol["loss"])
                            and close(r["last_loss"], ref["last_loss"], tol["loss"])
                            and close(r["first_grad_norm"], ref["first_grad_norm"], tol["grad_norm"]))
        r["reference"] = ref["setting"]


def peer_row(rec: Recorder, config, deadline: float, dry_run: bool) -> None:
    """The PyTorch peer (benchmarks/train_step.py) at the default's batch, crop, text length and dtype."""
    import jax
    import train_step

    from exif_jax.models import towers

    row = rec.row({"kind": "peer", "setting": "PyTorch peer (timm ViT-B/16 + torch.compile)", "overrides": [],
                   "status": "pending"})
    reason = None
    try:  # first, so that a dry run checks it too: a GPU image without them still runs the rest
        import timm  # noqa: F401
        import torch  # noqa: F401
    except Exception as e:  # noqa: BLE001  (absent, or a torch/torchvision mismatch)
        reason = f"torch/timm do not import: {error_text(e)}"
    if reason is None:
        reason = ("dry run (torch.compile of ViT-B/16 takes minutes on a CPU)" if dry_run else
                  "no default setting to match" if config is None else
                  "budget (torch.compile needs ~1-2 min)" if time.time() > deadline - 100 else None)
    if reason:
        row.update(status="skipped", error=reason)
        say(f"peer: {reason}")
        rec.save()
        return
    b, crop, length = config.data.global_batch_size, config.data.crop_size, config.tokenizer.max_len
    try:
        r = train_step.bench_torch_peer(b, crop, length, 15, 5, str(config.model.dtype))
        peak = train_step.metrics_writer.peak_flops(jax.devices()[0])
        mfu = r["img_s"] * towers.flops_per_example(config) / peak if peak else float("nan")
        row.update(status="ok", batch=b, sec=r["sec"], img_s=r["img_s"], mfu=mfu, torch=r["torch"],
                   device=r["device"])
        say(f"peer: {r['img_s']:,.0f} img/s, MFU {mfu:.3f}")
    except Exception as e:  # noqa: BLE001
        row.update(status="failed", error=error_text(e))
        say(f"peer: {row['error']}")
    rec.save()


# ------------------------------------------------------------------------------------------------ localize

def localize_stage(rec: Recorder, *, dry_run: bool, deadline: float) -> None:
    """`exif-jax localize`'s work on one photo (embed every patch, consensus, maps) per image tower."""
    import jax
    import localize as bench
    import numpy as np

    from exif_jax import config as cfg
    from exif_jax.eval.embedders import random_init_model
    from exif_jax.eval.localize import localize_image
    from exif_jax.eval.patches import embed_patches, make_grid, model_embedder, replicate

    cpu = jax.devices()[0].platform == "cpu"
    # Dry run: a small photo at a coarse stride (99 patches); a GPU: 1 MP at the paper's stride (682 patches).
    h, w, p, stride = (160, 200, 32, 16) if dry_run else (bench.H, bench.W, bench.P, None)
    photo = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    for name, kind in (("ViT-B/16", "vit"), ("ResNet-50", "resnet")):
        row = rec.row({"tower": name if not dry_run else f"tiny {kind}", "photo": f"{w}x{h}", "patch": p,
                       "status": "pending"})
        if time.time() > deadline - 15:
            row.update(status="skipped", error="budget")
            continue
        try:
            if dry_run:
                c = cfg.load_config(str(ROOT / "configs" / "tiny.py"), ["model.dtype=float32"]
                                    + (list(DRY_RESNET) if kind == "resnet" else []))
            else:
                c = bench.config_for(kind)
                c.model.dtype = "float32" if cpu else "bfloat16"  # what a trained config computes in on a GPU
            emb = replicate(model_embedder(random_init_model(c, vocab_size=VOCAB), p, name))
            grid = make_grid(h, w, p, stride)
            t = time.perf_counter()
            localize_image(photo, emb, stride=stride)
            cold = time.perf_counter() - t
            warm = min(_seconds(lambda: localize_image(photo, emb, stride=stride)) for _ in range(2))
            embed = min(_seconds(lambda: jax.block_until_ready(embed_patches(emb, photo, grid))) for _ in range(2))
            row.update(status="ok", patches=grid.n, first_call_s=cold, warm_s=warm, embed_s=embed,
                       consensus_and_maps_s=max(warm - embed, 0.0), dtype=str(c.model.dtype))
            say(f"localize {row['tower']}: {warm:.2f} s warm ({embed:.2f} s embedding {grid.n} patches), "
                f"{cold:.1f} s first call")
        except Exception as e:  # noqa: BLE001
            row.update(status="failed", error=error_text(e))
            say(f"localize {row['tower']}: {row['error']}")
        rec.save()


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# -------------------------------------------------------------------------------------------- input pipeline

def input_stage(rec: Recorder, *, dry_run: bool, deadline: float) -> None:
    """Crops/s of the real loader over region-decodable records built from camera photos: one process (and
    per CPU-second), and grain workers on every core but one."""
    import input_pipeline as bench
    import numpy as np
    from PIL import Image

    from exif_jax import tokenizer as tk

    fullres = ROOT.parent / "shared" / "data" / "fullres"
    photos = sorted(fullres.glob("*.jpg")) + sorted(fullres.glob("*.JPG"))
    source = str(fullres)
    if not photos:
        source = str(ROOT / "exif_jax" / "assets" / "photos")
        photos = sorted(Path(source).glob("*.jpg"))
        rec.note(f"{fullres} is absent: the bundled photos (small, ~0.3-1 MP) stand in for camera originals")
    photos = [str(p) for p in photos[:4 if dry_run else None]]
    mp = float(np.mean([np.prod(Image.open(p).size) for p in photos]) / 1e6)
    cores = os.cpu_count() or 1
    workers = 1 if dry_run else max(cores - 1, 1)
    seconds, batch = (0.5, 16) if dry_run else (3.0, 64)
    tok = tk.Tokenizer(max_len=64)
    with tempfile.TemporaryDirectory() as tmp:
        bench.warm_numba()
        t = time.perf_counter()
        bench.timed_build(photos, os.path.join(tmp, "fast"), True, workers=1 if dry_run else cores)
        rec.row({"measure": "build-data (region-decode rewrite)", "photos": len(photos), "mean_MP": round(mp, 2),
                 "source": source, "value": round(time.perf_counter() - t, 2), "unit": "s wall",
                 "processes": 1 if dry_run else cores})
        runs = [(1, 0), (16, 0), (1, workers)]
        for k, nw in runs:
            if time.time() > deadline - seconds - 10:
                rec.note(f"k={k}, workers={nw}: skipped (budget)")
                continue
            wall, cpu = bench.loader_rate(os.path.join(tmp, "fast"), tok, k, 128 if not dry_run else 32, "auto",
                                          batch, seconds, workers=nw)
            what = "one process" if nw == 0 else f"{nw} grain workers"
            rec.row({"measure": f"loader crops/s, k={k}, {what}", "photos": len(photos), "mean_MP": round(mp, 2),
                     "source": source, "value": round(wall, 1), "unit": "crops/s wall",
                     "crops_per_cpu_s": round(cpu, 1) if nw == 0 else None,
                     "cores_per_H200": round(bench.APPETITE["H200"] / cpu, 1) if nw == 0 else None})
            say(f"input k={k} {what}: {wall:,.0f} crops/s")


# ------------------------------------------------------------------------------------------------------ main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=("vit_b16", "resnet50_paper", "localize", "input", "flags"))
    ap.add_argument("--result", required=True)
    ap.add_argument("--deadline", type=float, required=True, help="epoch seconds: start nothing new past it")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--parallel-compiles", type=int, default=4)
    args = ap.parse_args()
    rec = Recorder(args.result, args.stage)
    rec.save()
    kw = dict(dry_run=args.dry_run, deadline=args.deadline)
    try:
        if args.stage in ("vit_b16", "flags"):
            base, sweep = (DRY_BASE, DRY_SWEEP) if args.dry_run else ((), VIT_SWEEP)
            if args.stage == "flags":  # the default step only, under the XLA flags the suite put in the env
                sweep = ((),)
                rec.data["flags"] = os.environ.get("GPU_SUITE_FLAGS_LABEL", "")
            train_stage(rec, "tiny.py" if args.dry_run else "vit_b16.py", base, sweep,
                        parallel=args.parallel_compiles, peer=args.stage == "vit_b16", **kw)
        elif args.stage == "resnet50_paper":
            base, sweep = (DRY_BASE + DRY_RESNET, ((),)) if args.dry_run else ((), RESNET_SWEEP)
            if args.dry_run:
                rec.note("dry run: lowered, not compiled (a ResNet step compiles in ~25 s on a busy CPU)")
            train_stage(rec, "tiny.py" if args.dry_run else "resnet50_paper.py", base, sweep,
                        parallel=args.parallel_compiles, peer=False, lower_only=args.dry_run, **kw)
        elif args.stage == "localize":
            localize_stage(rec, **kw)
        else:
            input_stage(rec, **kw)
    except Exception as e:  # noqa: BLE001  (recorded; the suite goes on with the next stage)
        traceback.print_exc()
        rec.data.update(status="failed", error=error_text(e))
        rec.save()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
