"""Splice benchmark evaluation: `exif-jax eval-localize --dataset KIND:PATH --checkpoint DIR --out DIR`.

Every method runs in the same harness over every image: the same crop size (the checkpoint's; --crop-size
without a checkpoint), grid, consensus and metrics, so their rows compare like with like (embedders.py).
  learned    the checkpoint's image tower
  classical  hand-made noise-residual statistics (baselines.noise_embedder)
  random     random features per crop: the chance level of every metric
Outputs in OUT: metrics.md / metrics.json (rows method x {spliced only, all images}; localization columns
from metrics.summarize, detection AP / ROC-AUC for each detection score the localizer emits: score_mean is
the paper's, score_ms and score_ncut the consensus alternatives), per_image.csv (one row per method and
image: the per-image numbers every table cell is the mean of), heatmaps/ (image, mask, map) of the best
and worst spliced images by per-image AP, and report.html (report.py: every image's thumbnail, mask and
map overlays side by side with its scores, sortable and filterable, under the same table; thumbnails in
report_files/). Images that cannot be read or are too small are counted, listed with the reason, and left
out of every method's rows; they never stop the run.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from exif_jax import cli_args, workdir
from exif_jax.cli_args import check_grid
from exif_jax.data.crops import read_rgb
from exif_jax.eval import metrics as M
from exif_jax.eval import report as html_report
from exif_jax.eval.baselines import BASELINE_METHOD
from exif_jax.eval.consensus import CONSENSUS
from exif_jax.eval.datasets import LOADERS, load_dataset, load_mask
from exif_jax.eval.embedders import DEFAULT_CROP_SIZE, check_sources, make_embedders
from exif_jax.eval.features import write_report
from exif_jax.eval.localize import REPORT_COLUMNS as SCORE_COLUMNS
from exif_jax.eval.localize import localize_image
from exif_jax.eval.patches import NUM_PER_DIM, PAPER_COLOR_BUG_HELP, PatchEmbedder

SCORES = ("score_mean", "score_ms", "score_ncut")
CSV_FIELDS = ("method", "name", "label", "path", "height", "width", *SCORES, *M.LOCALIZATION_KEYS)
# Per method in report.html: (record key, header, tooltip).
REPORT_COLUMNS = (("ap", "p-mAP", "this image's pixel AP (max over map and inverse); undefined for authentic images, "
                   "which the 'all images' row counts as 0"), *SCORE_COLUMNS)
_LOC_COLUMNS = (("ap", "p-mAP"), ("ciou", "cIoU"), ("mcc", "MCC"), ("f1", "F1"), ("ciou@0.5", "cIoU@0.5"),
                ("mcc@0.5", "MCC@0.5"), ("f1@0.5", "F1@0.5"))


def method_kinds(checkpoint: str | None, baseline: str | None = None, all_methods: bool = False,
                 crop_size: int | None = None, step: int | None = None, paper_color_bug: bool = False) -> list[str]:
    """The embedder kinds (embedders.KINDS) these flags ask for; flags that cannot apply are a ValueError."""
    check_sources(checkpoint=checkpoint, step=step, crop_size=crop_size, paper_color_bug=paper_color_bug)
    if all_methods and not checkpoint:
        raise ValueError("--all-methods needs --checkpoint (the learned row)")
    if baseline not in (None, *BASELINE_METHOD):
        raise ValueError(f"baseline must be one of {tuple(BASELINE_METHOD)}, got {baseline!r}")
    kinds = (["learned"] if checkpoint else []) + [b for b in BASELINE_METHOD if all_methods or b == baseline]
    if not kinds:
        raise ValueError("nothing to evaluate: give --checkpoint WORKDIR and/or --baseline noise|random")
    return kinds


def build_embedders(checkpoint: str | None, baseline: str | None = None, all_methods: bool = False,
                    crop_size: int | None = None, step: int | None = None,
                    paper_color_bug: bool = False) -> dict[str, PatchEmbedder]:
    """method name -> embedder: learned (given a checkpoint), the --baseline one, or all three, all on the
    learned model's crop size (else crop_size); paper_color_bug: the learned one is fed the paper evaluator's
    colour-wrapped crops (the baselines see the true pixels)."""
    kinds = method_kinds(checkpoint, baseline, all_methods, crop_size, step, paper_color_bug)
    built = make_embedders(kinds, checkpoint=checkpoint, step=step, crop_size=crop_size,
                           paper_color_bug=paper_color_bug)
    return {BASELINE_METHOD.get(k, k): e for k, e in built.embedders.items()}


def pick(samples: Sequence[Any], limit: int | None) -> list[Any]:
    """At most `limit` samples, evenly spaced (benchmarks list authentic and spliced in blocks)."""
    if limit is None or limit >= len(samples):
        return list(samples)
    if limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    return [samples[i] for i in np.unique(np.linspace(0, len(samples) - 1, limit).round().astype(int))]


class _Extremes:
    """The `k` best and `k` worst items by a key, holding at most 2k + 1 items at any time."""

    def __init__(self, k: int):
        self.k, self.seen, self.items = k, 0, []

    def add(self, key: float, item: Any) -> None:
        self.seen += 1
        self.items.append((key, self.seen, item))  # the counter breaks ties: items themselves never compare
        self.items.sort(key=lambda t: t[:2])
        if len(self.items) > 2 * self.k:
            del self.items[self.k]  # the middle one is neither among the k lowest nor the k highest

    def best(self) -> list[tuple[float, Any]]:
        n = min(self.k, -(-len(self.items) // 2))  # with fewer than 2k items, best and worst do not overlap
        return [(a, c) for a, _, c in reversed(self.items[len(self.items) - n:])]

    def worst(self) -> list[tuple[float, Any]]:
        n = min(self.k, len(self.items) - len(self.best()))
        return [(a, c) for a, _, c in self.items[:n]]


def _plot(path: str, image: np.ndarray, mask: np.ndarray, score_map: np.ndarray, title: str) -> None:
    # Lazy: matplotlib is slow to import and only drawing a figure needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = score_map.shape
    fig, axes = plt.subplots(1, 3, figsize=(12.0, 4.0 * h / w + 0.6), dpi=90)
    for ax, (im, kw, name) in zip(axes, ((image, {}, "image"), (mask, {"cmap": "gray"}, "ground truth"),
                                         (score_map, {"cmap": "jet"}, "map"))):
        ax.imshow(im, **kw)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def _csv_value(v: Any) -> Any:
    return repr(float(v)) if isinstance(v, (float, np.floating)) else v  # repr: exact round trip


def evaluate(samples: Sequence[Any], embedders: Mapping[str, PatchEmbedder], out_dir: str, *,
             consensus: str = "meanshift", stride: int | None = None, num_per_dim: int = NUM_PER_DIM,
             batch: int = 256, show: int = 3, progress: bool = True, dataset: str = "") -> dict[str, Any]:
    """Localize every sample with every method; write per_image.csv, metrics.json/.md, heatmaps/, report.html."""
    os.makedirs(os.path.join(out_dir, "heatmaps"), exist_ok=True)
    records: dict[str, list[dict[str, Any]]] = {m: [] for m in embedders}
    extremes = {m: _Extremes(show) for m in embedders}
    failed: list[dict[str, str]] = []
    rows: list[dict[str, Any]] = []  # report.html
    with open(os.path.join(out_dir, "per_image.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, restval="")
        writer.writeheader()
        bar = tqdm(samples, desc="eval-localize", unit="img", disable=not progress, file=sys.stderr)
        for sample in bar:
            path = str(sample.image_path)
            try:
                image = read_rgb(path)
                mask = load_mask(sample, image.shape[:2]) if sample.mask_path or not sample.label else None
                locs = {m: localize_image(image, e, consensus=consensus, stride=stride, num_per_dim=num_per_dim,
                                          batch=batch) for m, e in embedders.items()}
            except ValueError as e:  # unreadable photo or mask, PhotoTooSmall, too many cells
                failed.append({"name": sample.name, "path": path, "reason": str(e).removeprefix(f"{path}: ")})
                bar.set_postfix(failed=len(failed))
                continue
            values: dict[str, dict[str, Any]] = {}
            for m, loc in locs.items():
                if mask is not None and loc.map.shape != mask.shape:
                    raise AssertionError(f"{path}: {m} map {loc.map.shape} != mask {mask.shape}")
                rec = M.image_record(sample.name, sample.label, score=loc.scores["score_mean"],
                                     score_map=loc.map, mask=mask)
                rec.update(method=m, path=path, height=image.shape[0], width=image.shape[1],
                           **{s: loc.scores[s] for s in SCORES})
                records[m].append(rec)
                values[m] = {k: rec.get(k) for k, _, _ in REPORT_COLUMNS}
                writer.writerow({k: _csv_value(rec[k]) for k in CSV_FIELDS if k in rec})
                if sample.label == 1 and np.isfinite(rec.get("ap", math.nan)):
                    extremes[m].add(rec["ap"], (sample, loc.map.astype(np.float32), mask))
            thumbs = html_report.write_thumbnails(out_dir, f"{len(rows) + 1:05d}", image,
                                                  {m: loc.map for m, loc in locs.items()}, mask)
            rows.append({"name": sample.name, "label": int(sample.label), **thumbs,
                         "href": html_report.relative_href(path, out_dir), "values": values})
    heatmaps = _write_heatmaps(extremes, out_dir, {m: e.name for m, e in embedders.items()})
    report = {"dataset": dataset, "consensus": consensus, "n_samples": len(samples),
              "n_failed": len(failed), "failed": failed, "heatmaps": heatmaps,
              "models": {m: e.name for m, e in embedders.items()},
              "methods": {m: summarize_method(recs) for m, recs in records.items()}}
    report["report_html"] = _write_html(report, rows, embedders, out_dir)
    write_report(out_dir, "metrics", report, to_markdown(report))
    print(f"exif-jax eval-localize: wrote {report['report_html']}", file=sys.stderr)
    return report


def _write_html(report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                embedders: Mapping[str, PatchEmbedder], out_dir: str) -> str:
    n_ok = report["n_samples"] - report["n_failed"]
    meta = [("dataset", report["dataset"]), ("consensus", report["consensus"]),
            ("crop size", f"{next(iter(embedders.values())).patch_size} px"),
            ("images", f"{n_ok} evaluated ({sum(r['label'] for r in rows)} spliced), {report['n_failed']} failed")]
    return html_report.write_html(
        os.path.join(out_dir, "report.html"), title=f"exif-jax eval-localize: {report['dataset']}",
        models={m: e.name for m, e in embedders.items()}, rows=rows, columns=REPORT_COLUMNS, meta=meta,
        summary=summary_table(report), notes=(*_NOTES, *M.CONVENTIONS), failed=report["failed"])


def _write_heatmaps(extremes: Mapping[str, _Extremes], out_dir: str, names: Mapping[str, str]) -> list[str]:
    written = []
    for m, ex in extremes.items():
        for kind, items in (("best", ex.best()), ("worst", ex.worst())):
            for rank, (ap, (sample, score_map, mask)) in enumerate(items, 1):
                path = os.path.join(out_dir, "heatmaps", f"{m}_{kind}{rank}_{Path(sample.name).name}.png")
                _plot(path, read_rgb(sample.image_path), mask, score_map,
                      f"{m} ({names[m]}): {sample.name} ({kind} {rank}), per-image AP {ap:.3f}")
                written.append(path)
    return written


def summarize_method(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """metrics.summarize of one method's records plus detection for every score and the best score."""
    table = M.summarize(records)
    det = {}
    for s in SCORES:
        scored = [r for r in records if r.get(s) is not None]
        det[s] = (M.detection_scores([r[s] for r in scored], [r["label"] for r in scored]) if scored
                  else {"ap": math.nan, "auc": math.nan, "n": 0, "n_spliced": 0})
    ranked = [s for s in SCORES if not math.isnan(det[s]["ap"])]
    # Ties on AP go to AUC, then to the order of SCORES (the paper's score first).
    best = max(ranked, key=lambda s: (det[s]["ap"], -1 if math.isnan(det[s]["auc"]) else det[s]["auc"],
                                      -SCORES.index(s))) if ranked else None
    return {**table, "detection_by_score": det, "best_detection_score": best}


def _fmt(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def summary_table(report: Mapping[str, Any]) -> dict[str, list]:
    """{"head", "rows"}: the metrics table's cells (rows method x images), shared by metrics.md and report.html."""
    det_cols = [f"det {k} {s}" for s in SCORES for k in ("AP", "AUC")]
    head = ["method", "images", "n", *(h for _, h in _LOC_COLUMNS), *det_cols, "best det score"]
    rows = []
    for m, t in report["methods"].items():
        for key, label in (("spliced_only", "spliced only"), ("all_images", "all images")):
            row = t["localization"][key]
            cells = [m, label, str(row["n"]), *(_fmt(row[k]) for k, _ in _LOC_COLUMNS)]
            if key == "all_images":
                cells += [_fmt(t["detection_by_score"][s][k]) for s in SCORES for k in ("ap", "auc")]
                cells.append(t["best_detection_score"] or "n/a")
            else:  # no authentic images: detection is undefined
                cells += ["-"] * (len(det_cols) + 1)
            rows.append(cells)
    return {"head": head, "rows": rows}


_NOTES = ("Detection scores: score_mean = the paper's (mean patch consistency), score_ms = mean-shift consensus, "
          "score_ncut = normalized-cut; 'best det score' = highest detection AP (ties: AUC).",
          "Localization uses the chosen consensus map; per-image numbers are in per_image.csv.")


def to_markdown(report: Mapping[str, Any]) -> str:
    """The metrics table: rows method x images, localization and per-score detection columns."""
    table = summary_table(report)
    lines = [f"### eval-localize: {report['dataset']} (consensus {report['consensus']})", "",
             "| " + " | ".join(table["head"]) + " |", "|---|---|" + "---:|" * (len(table["head"]) - 2)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table["rows"]]
    lines += ["", f"- Images: {report['n_samples']}, failed (left out of every row): {report['n_failed']}."]
    lines += [f"  - {f['name']}: {f['reason']}" for f in report["failed"][:20]]
    lines += [f"- {n}" for n in _NOTES]
    lines += [f"- {c}" for c in M.CONVENTIONS]
    return "\n".join(lines) + "\n"


def run(dataset: str, out_dir: str, *, checkpoint: str | None = None, baseline: str | None = None,
        all_methods: bool = False, limit: int | None = None, crop_size: int | None = None, step: int | None = None,
        paper_color_bug: bool = False, stride: int | None = None, num_per_dim: int | None = None,
        **kwargs: Any) -> dict[str, Any]:
    """Load the benchmark and the methods, then `evaluate`."""
    check_grid(stride, num_per_dim)
    checkpoint = workdir.default_source(checkpoint, baseline, command="exif-jax eval-localize")
    method_kinds(checkpoint, baseline, all_methods, crop_size, step, paper_color_bug)  # flags before files
    samples = pick(load_dataset(dataset), limit)
    embedders = build_embedders(checkpoint, baseline, all_methods, crop_size, step, paper_color_bug)
    return evaluate(samples, embedders, out_dir, dataset=dataset, stride=stride,
                    num_per_dim=NUM_PER_DIM if num_per_dim is None else num_per_dim, **kwargs)


def add_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `exif-jax eval-localize`."""
    parser.add_argument("--dataset", required=True, metavar="KIND:PATH",
                        help=f"the benchmark; KIND: {', '.join(LOADERS)} (folder: what `exif-jax make-splices` "
                             "writes)")
    cli_args.add_model_source(parser, tuple(BASELINE_METHOD))
    parser.add_argument("--all-methods", action="store_true",
                        help="learned (--checkpoint) + classical (noise) + random, one row each")
    cli_args.add_crop_size(parser, DEFAULT_CROP_SIZE)
    cli_args.add_out(parser, "metrics.md / metrics.json (rows method x {spliced only, all images}), per_image.csv, "
                             "heatmaps/ (best and worst images), report.html (every image, sortable) + report_files/")
    cli_args.add_limit(parser, "evenly spaced over the benchmark's list (it lists authentic and spliced images "
                               "in blocks)")
    cli_args.add_grid(parser, CONSENSUS, NUM_PER_DIM)
    parser.add_argument("--show", type=int, default=3, metavar="N",
                        help="heatmaps of this many best and worst images per method")
    parser.add_argument("--paper-color-bug", action="store_true", help=PAPER_COLOR_BUG_HELP)
    cli_args.add_progress(parser)
    cli_args.add_note(parser, "Methods: --checkpoint gives the learned row (without --checkpoint and --baseline: "
                              "the bundled default model's), --baseline adds (or alone is) one baseline row, "
                              "--all-methods all three; every method runs on the same crop grid.")


def cli_main(args: argparse.Namespace) -> int:
    """Run `run` with the parsed flags."""
    try:
        run(args.dataset, args.out, checkpoint=args.checkpoint, baseline=args.baseline,
            all_methods=args.all_methods, limit=args.limit, crop_size=args.crop_size, step=args.step,
            consensus=args.consensus, stride=args.stride, num_per_dim=args.num_per_dim, batch=args.batch,
            show=args.show, progress=not args.no_progress, paper_color_bug=args.paper_color_bug)
    except (FileNotFoundError, ValueError) as e:
        print(f"exif-jax eval-localize: {e}", file=sys.stderr)
        return 2
    return 0
