"""`make demo`: the whole job end to end on the 18 photos bundled in exif_jax/assets/photos (CPU, no downloads).

  EXIF -> text -> camera-held-out split -> ArrayRecords -> grain batch on the mesh -> train a tiny model
  -> export to transformers (SiglipModel) -> parity check against JAX -> Columbia-style splices from the
  held-out cameras -> localize -> learned / classical / random table, heatmap PNGs and report.html.

Each stage prints what it did; the report's path is the last line. `--quick` is the CI form.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np

from exif_jax import exif, sharding
from exif_jax import train as train_lib
from exif_jax import workdir as workdir_lib
from exif_jax.camera_split import link_folder, split_cameras
from exif_jax.config import load_config
from exif_jax.data import build as build_lib
from exif_jax.data import pipeline
from exif_jax.data.crops import read_rgb
from exif_jax.eval import evaluate as ev
from exif_jax.eval.splices import make_splices
from exif_jax.export import cli as export_cli
from exif_jax.export.parity import hf_parity
from exif_jax.tokenizer import make_tokenizer

ASSETS = Path(__file__).resolve().parent / "assets"
PHOTOS = ASSETS / "photos"
REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.py"


class Stages:
    """Numbered stage banners with wall times."""

    def __init__(self, total: int):
        self.n, self.total, self.t0, self.times = 0, total, time.time(), {}

    def start(self, title: str) -> None:
        self.n += 1
        self.title, self.t = title, time.time()
        print(f"\n=== [{self.n}/{self.total}] {title}", flush=True)

    def done(self) -> None:
        dt = time.time() - self.t
        self.times[self.title] = round(dt, 1)
        print(f"    ({dt:.1f} s; {time.time() - self.t0:.0f} s so far)", flush=True)


def split_bundled(out: Path) -> dict:
    """Camera-disjoint split of the bundled photos (the camera-held-out study's split, its own salt)."""
    rows = []
    for p in sorted(PHOTOS.glob("*.jpg")):
        tags = exif.read_tags(p)
        rows.append({"file": p.name, "make": tags.get("Make", ""), "model": tags.get("Model", "")})
    split = split_cameras(rows, train_fraction=0.6, salt="exif-jax/demo/v1")
    for side in ("train", "test"):
        link_folder(split, side, str(PHOTOS), str(out / f"photos_{side}"))
    print(f"    train: {split['n_photos']['train']} photos / {split['n_cameras']['train']} cameras; "
          f"held out: {split['n_photos']['test']} photos / {split['n_cameras']['test']} cameras "
          f"({', '.join(split['test_cameras'])})")
    first = PHOTOS / split["train_files"][0]
    print(f"    e.g. {first.name}: {exif.render_text(exif.read_tags(first))[:120]}...")
    return split


def build(photos: Path, data_dir: Path) -> None:
    """Photos -> ArrayRecord shards (original bytes, EXIF text, camera) + summary.json."""
    items, skipped = build_lib.items_from_folder(str(photos))
    settings = build_lib.Settings(tag_order=tuple(exif.DEFAULT_TAGS), min_size=128)
    s = build_lib.build_dataset(items, str(data_dir), settings, records_per_shard=4, workers=2,
                                pre_skipped=skipped, progress=False)
    print(f"    {s['kept']} photos kept, {sum(len(v) for v in s['skipped'].values())} skipped, "
          f"{len(s['cameras'])} cameras, {len(build_lib.shard_paths(str(data_dir)))} shards -> {data_dir}")


def batch_summary(config) -> None:
    """One global batch from the grain pipeline, sharded over the devices."""
    tok = make_tokenizer(config)
    it = pipeline.make_global_iterator(config, tok, sharding.make_mesh(config.mesh), seed=config.seed)
    batch = next(it)
    it.close()
    for k, v in batch.items():
        print(f"    {k:9s} {str(v.dtype):6s} {tuple(v.shape)!s:18s} sharded {v.sharding.spec} over "
              f"{len(v.sharding.device_set)} {jax.devices()[0].platform} devices")
    ntok = np.sum(np.asarray(batch["tokens"]) != tok.pad_id, axis=1)
    print(f"    {len(np.unique(np.asarray(batch['image_id'])))} distinct photos in the batch; "
          f"tokens per text {ntok.mean():.0f} (of {config.tokenizer.max_len})")


def train(workdir: Path, data_dir: Path, steps: int) -> dict:
    """Train the demo config; returns first/last logged metrics."""
    rc = train_lib.main(str(DEMO_CONFIG), str(workdir),
                        [f"data.train_dir={data_dir}", f"train.steps={steps}"], distributed="off")
    if rc:
        raise SystemExit(f"training failed with exit code {rc}")
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    first, last = rows[0], rows[-1]
    print(f"    loss {first['loss']:.3f} -> {last['loss']:.3f}; in-batch crop->EXIF top-1 "
          f"{first['i2t_top1']:.2f} -> {last['i2t_top1']:.2f} "
          f"over {len(rows)} steps; TensorBoard events in {workdir / 'tb'}")
    return {"first": first, "last": last}


def splices(photos: Path, out: Path, n: int) -> None:
    """A Columbia-style benchmark from the held-out cameras only."""
    s = make_splices(photos, out, n, seed=0, size=(256, 256), progress=False)
    print(f"    {json.dumps({k: v for k, v in s.items() if isinstance(v, (int, float, str))})[:200]} -> {out}")


def evaluate(bench: Path, workdir: Path, out: Path) -> dict:
    """Learned vs classical vs random on the benchmark, same harness (the checkpoint's crop size)."""
    return ev.run(f"folder:{bench}", str(out), checkpoint=str(workdir), all_methods=True,
                  progress=False)  # prints the table


def export_and_check(workdir: Path, out: Path) -> dict:
    """Export to transformers, reload with SiglipModel, compare embeddings on real crops and EXIF texts."""
    export_cli.export(str(workdir), str(out), "hf")
    model, config, _ = workdir_lib.load_model(str(workdir))
    rng = np.random.default_rng(0)
    files = sorted(PHOTOS.glob("*.jpg"))[:6]
    crops = np.concatenate([pipeline.random_crops(read_rgb(p), 2,
                                                  int(config.data.crop_size), rng)[0] for p in files])
    texts = [exif.render_text(exif.read_tags(p), tag_order=tuple(config.exif.tags)) for p in files]
    r = hf_parity(model, config, str(out), crops, texts)
    ok = r["ids_identical"] and max(r["image_max_abs"], r["text_max_abs"], r["logits_max_abs"]) <= 1e-4
    print(f"    transformers.SiglipModel.from_pretrained({out.name}): token ids identical: {r['ids_identical']}; "
          f"max |diff| image {r['image_max_abs']:.1e}, text {r['text_max_abs']:.1e}, logits "
          f"{r['logits_max_abs']:.1e} on {r['n_crops']} real crops / {r['n_texts']} EXIF texts -> "
          f"{'PASS' if ok else 'FAIL'}")
    if not ok:
        raise SystemExit("export parity check failed")
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder (replaced)")
    p.add_argument("--quick", action="store_true", help="CI form: fewer steps and splices")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config = load_config(str(DEMO_CONFIG))
    steps, n_splices = (60, 4) if args.quick else (int(config.train.steps), 24)

    st = Stages(7)
    st.start(f"EXIF -> text for {len(list(PHOTOS.glob('*.jpg')))} bundled photos; camera-held-out split")
    split_bundled(out)
    st.done()
    st.start("build ArrayRecords from the train cameras")
    build(out / "photos_train", out / "data")
    st.done()
    st.start("grain pipeline -> one global batch on the device mesh")
    config.data.train_dir = str(out / "data")
    batch_summary(config)
    st.done()
    st.start(f"train {DEMO_CONFIG.name} for {steps} steps")
    trained = train(out / "run", out / "data", steps)
    st.done()
    st.start("export to PyTorch (transformers SiglipModel) and check parity")
    parity = export_and_check(out / "run", out / "export_hf")
    st.done()
    st.start(f"{n_splices} splices (half authentic) from the held-out cameras")
    splices(out / "photos_test", out / "splices", n_splices)
    st.done()
    st.start("localize: learned vs classical (noise residuals) vs random, same consensus -> report.html")
    report = evaluate(out / "splices", out / "run", out / "eval")
    print(f"    heatmaps: {out / 'eval' / 'heatmaps'}")
    st.done()
    (out / "demo.json").write_text(json.dumps({"stages_s": st.times, "train": trained, "parity": parity,
                                               "report_html": report["report_html"]}, indent=2, default=str))
    print(f"\nDemo finished in {time.time() - st.t0:.0f} s. Output folder: {out}")
    print(f"Report (open in a browser): {report['report_html']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
