"""Zero-shot splice localization and detection: `exif-jax localize PHOTO|FOLDER... --checkpoint DIR -o OUT`.

A folder stands for the photos in it (not its subfolders). For each photo: embed every grid patch
(patches.py), compare all patch pairs, spread the votes and find the consensus (consensus.py), then write
OUT/<stem>.png (the map over the photo, with a colorbar), OUT/<stem>.npy (the raw [H, W] f32 map: high =
inconsistent with most of the photo) and one JSON line of scores (stdout and OUT/scores.jsonl). Given a
folder or several photos, OUT/report.html shows them all on one page (report.py: thumbnails, map overlays
and scores, sortable). `localize_image` is the reusable part: one decoded photo in, maps and scores out.
A photo that cannot be read or holds fewer than two patches is reported by name and skipped; the exit code
is then 1.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from tqdm import tqdm

from exif_jax import cli_args, workdir
from exif_jax.cli_args import check_grid
from exif_jax.data.crops import read_rgb
from exif_jax.eval import consensus as cons
from exif_jax.eval import report as html_report
from exif_jax.eval.baselines import BASELINE_METHOD
from exif_jax.eval.datasets import IMAGE_SUFFIXES
from exif_jax.eval.embedders import DEFAULT_CROP_SIZE, make_embedders
from exif_jax.eval.patches import NUM_PER_DIM, PAPER_COLOR_BUG_HELP, Grid, PatchEmbedder, embed_patches, make_grid

# Per photo in report.html: (score key, header, tooltip); higher = more likely spliced.
REPORT_COLUMNS = (("score_mean", "mean", "detection score_mean (the paper's): higher = more likely spliced"),
                  ("score_ms", "ms", "detection score_ms (mean-shift consensus)"),
                  ("score_ncut", "ncut", "detection score_ncut (normalized cut)"))
MAX_CELLS = 4096  # the (cells x cells) vote table and mean shift are O(cells^2) memory, O(cells^3) time


@dataclasses.dataclass
class Localization:
    """One photo's result: `map` [H, W] f32 is the chosen consensus map (high = suspect)."""
    map: np.ndarray
    maps: dict[str, np.ndarray]  # meanshift, ncut [H, W]; ncut_labels [H, W] bool; pca [H, W, 3] in [0, 1]
    scores: dict[str, float]     # score (= score_mean, the paper's), score_mean, score_ms, score_ncut
    grid: Grid
    consensus: str


@functools.lru_cache(maxsize=64)
def _interp(length: int, cells: int, stride: int) -> np.ndarray:
    m = cons.interp_matrix(length, cells, stride)
    m.flags.writeable = False
    return m


def cells_to_pixels(cell_map: np.ndarray, grid: Grid) -> np.ndarray:
    """A cell map [gh, gw] at pixel resolution [H, W], on the host (numpy): a jitted version recompiles for every
    photo size."""
    gh, gw = grid.cells
    wh, ww = _interp(grid.height, gh, grid.stride), _interp(grid.width, gw, grid.stride)
    return wh @ np.asarray(cell_map, np.float32) @ ww.T


def localize_image(image: np.ndarray, embedder: PatchEmbedder, *, consensus: str = "meanshift",
                   stride: int | None = None, num_per_dim: int = NUM_PER_DIM, batch: int = 256,
                   mesh: Any = None, window: float = 10.0, iters: int = 5) -> Localization:
    """Maps and detection scores for one decoded photo uint8 [H, W, 3] under any PatchEmbedder."""
    if consensus not in cons.CONSENSUS:
        raise ValueError(f"consensus must be one of {cons.CONSENSUS}, got {consensus!r}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3], got shape {image.shape}")
    grid = make_grid(image.shape[0], image.shape[1], embedder.patch_size, stride, num_per_dim)
    gh, gw = grid.cells
    if gh * gw > MAX_CELLS:
        raise ValueError(f"{gh}x{gw} cells at stride {grid.stride} exceed {MAX_CELLS}: use a larger stride")
    emb = embed_patches(embedder, image, grid, batch=batch, mesh=mesh)
    # The consensus is small next to the embedding: run it on one device, unsharded.
    emb = jax.device_put(emb, jax.devices()[0])
    out = jax.device_get(cons.consensus(emb, grid, embedder.standardize, float(window), int(iters)))
    up = functools.partial(cells_to_pixels, grid=grid)
    pca = np.stack([up(out["pca"][..., k]) for k in range(3)], -1)
    lo, hi = np.percentile(pca, 0.5), np.percentile(pca, 99.5)  # the paper's display range
    maps = dict(meanshift=up(out["meanshift"]), ncut=up(out["ncut"]), ncut_labels=up(out["ncut_labels"]) >= 0.5,
                pca=np.clip((pca - lo) / max(hi - lo, 1e-12), 0, 1).astype(np.float32))
    scores = {k: float(out[k]) for k in ("score_mean", "score_ms", "score_ncut")}
    scores = {"score": scores["score_mean"], **scores}
    return Localization(maps[consensus], maps, scores, grid, consensus)


def save_outputs(image: np.ndarray, loc: Localization, out_dir: str, stem: str, model: str = "") -> tuple[str, str]:
    """(png, npy): the map over the photo with a colorbar (titled with `model`, the embedder's name), and the
    raw [H, W] f32 map."""
    # Lazy: matplotlib is slow to import and only drawing a figure needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    npy = os.path.join(out_dir, f"{stem}.npy")
    np.save(npy, loc.map.astype(np.float32))
    h, w = loc.map.shape
    fig, ax = plt.subplots(figsize=(7.0, 7.0 * h / w + 0.4), dpi=100)
    ax.imshow(image)
    im = ax.imshow(loc.map, cmap="jet", alpha=0.5)
    ax.set_axis_off()
    by = "\n" + textwrap.fill(model, 64) if model else ""  # long model names would run past the axes
    ax.set_title(f"{stem}: {loc.consensus}, score {loc.scores['score']:.3f}{by}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    png = os.path.join(out_dir, f"{stem}.png")
    fig.savefig(png, bbox_inches="tight")
    plt.close(fig)
    return png, npy


def expand_photos(paths: Sequence[str]) -> list[str]:
    """The photos named: a folder stands for its image files (sorted, not recursive); files pass as given."""
    out = []
    for path in paths:
        p = Path(path)
        if not p.is_dir():
            out.append(str(path))  # a missing or unreadable file is reported by localize_files
            continue
        found = sorted(str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                       and not f.name.startswith("."))
        if not found:
            raise FileNotFoundError(f"{path}: folder holds no photos ({' '.join(sorted(IMAGE_SUFFIXES))})")
        out += found
    return out


def localize_files(paths: Sequence[str], embedder: PatchEmbedder, out_dir: str, *, consensus: str = "meanshift",
                   stride: int | None = None, num_per_dim: int = NUM_PER_DIM, batch: int = 256,
                   report: bool | None = None, progress: bool = True) -> int:
    """Localize each photo into out_dir (PNG, .npy, a scores.jsonl line) and, with report (default: more
    than one photo), out_dir/report.html; 1 if any photo failed, else 0."""
    os.makedirs(out_dir, exist_ok=True)
    report = len(paths) > 1 if report is None else report
    method = BASELINE_METHOD.get(embedder.name, "learned")  # the embedder's name says which kind it is
    failed, stems, rows = [], set(), []
    with open(os.path.join(out_dir, "scores.jsonl"), "a") as jf:
        for path in tqdm(paths, desc="localize", unit="photo", file=sys.stderr, disable=not progress):
            try:
                image = read_rgb(path)  # its errors name the photo
                loc = localize_image(image, embedder, consensus=consensus, stride=stride,
                                     num_per_dim=num_per_dim, batch=batch)
            except ValueError as e:  # unreadable, PhotoTooSmall, too many cells
                reason = str(e).removeprefix(f"{path}: ")
                tqdm.write(f"exif-jax localize: {path}: {reason}", file=sys.stderr)
                failed.append((path, reason))
                continue
            stem, k = Path(path).stem, 1
            while stem in stems:  # same name from two folders
                k += 1
                stem = f"{Path(path).stem}_{k}"
            stems.add(stem)
            png, npy = save_outputs(image, loc, out_dir, stem, embedder.name)
            g = loc.grid
            line = json.dumps(dict(photo=str(path), embedder=embedder.name, consensus=consensus,
                                   height=g.height, width=g.width, patch=g.patch, stride=g.stride,
                                   patches=g.n, **loc.scores, png=png, npy=npy))
            tqdm.write(line)
            jf.write(line + "\n")
            jf.flush()
            if report:
                thumbs = html_report.write_thumbnails(out_dir, f"{len(rows) + 1:05d}", image, {method: loc.map})
                rows.append({"name": str(path), "label": None, **thumbs,
                             "href": html_report.relative_href(str(path), out_dir),
                             "map_hrefs": {method: html_report.relative_href(png, out_dir)},
                             "values": {method: {k: loc.scores[k] for k, _, _ in REPORT_COLUMNS}}})
    if report:
        meta = [("consensus", consensus), ("crop size", f"{embedder.patch_size} px"),
                ("photos", f"{len(rows)} localized, {len(failed)} failed"),
                ("per photo", "full-size map PNG, raw .npy map and a scores.jsonl line in this folder")]
        html = html_report.write_html(
            os.path.join(out_dir, "report.html"), title=f"exif-jax localize: {len(paths)} photos",
            models={method: embedder.name}, rows=rows, columns=REPORT_COLUMNS, meta=meta,
            failed=[{"name": f, "reason": r} for f, r in failed])
        print(f"exif-jax localize: wrote {html}", file=sys.stderr)
    if failed:
        print(f"exif-jax localize: {len(failed)} of {len(paths)} photos failed", file=sys.stderr)
    return 1 if failed else 0


def run(photos: Sequence[str], out_dir: str, *, checkpoint: str | None = None, baseline: str | None = None,
        crop_size: int | None = None, step: int | None = None, paper_color_bug: bool = False,
        stride: int | None = None, num_per_dim: int | None = None, **kwargs: Any) -> int:
    """Build the embedder (a trained checkpoint, a baseline at `crop_size`, or else the bundled default model)
    and localize the photos;
    paper_color_bug: feed the checkpoint's image tower the paper evaluator's colour-wrapped crops."""
    if checkpoint is not None and baseline is not None:
        raise ValueError("give --checkpoint WORKDIR or --baseline noise|random, not both")
    checkpoint = workdir.default_source(checkpoint, baseline, command="exif-jax localize")
    check_grid(stride, num_per_dim)
    kind = baseline or "learned"
    embedder = make_embedders([kind], checkpoint=checkpoint, step=step, crop_size=crop_size,
                              paper_color_bug=paper_color_bug).embedders[kind]
    files = expand_photos(photos)
    report = len(files) > 1 or any(Path(p).is_dir() for p in photos)
    return localize_files(files, embedder, out_dir, report=report, stride=stride,
                          num_per_dim=NUM_PER_DIM if num_per_dim is None else num_per_dim, **kwargs)


def add_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `exif-jax localize`."""
    parser.add_argument("photos", nargs="+", help="photos or folders of photos (not their subfolders)")
    cli_args.add_model_source(parser, tuple(BASELINE_METHOD), exclusive=True)
    cli_args.add_crop_size(parser, DEFAULT_CROP_SIZE)
    cli_args.add_out(parser, "per photo <stem>.png (the map over the photo), <stem>.npy (the raw [H, W] map: "
                             "high = inconsistent with most of the photo) and a line of scores.jsonl (also on "
                             "stdout); report.html for a folder or several photos")
    cli_args.add_grid(parser, cons.CONSENSUS, NUM_PER_DIM)
    parser.add_argument("--paper-color-bug", action="store_true", help=PAPER_COLOR_BUG_HELP)
    cli_args.add_progress(parser)


def cli_main(args: argparse.Namespace) -> int:
    """Run `run` with the parsed flags."""
    try:
        return run(args.photos, args.out, checkpoint=args.checkpoint, baseline=args.baseline,
                   crop_size=args.crop_size, step=args.step, consensus=args.consensus, stride=args.stride,
                   num_per_dim=args.num_per_dim, batch=args.batch, paper_color_bug=args.paper_color_bug,
                   progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as e:
        print(f"exif-jax localize: {e}", file=sys.stderr)
        return 2
