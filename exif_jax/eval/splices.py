"""A synthetic splice benchmark from camera photos: host crop + a region copied pixel-for-pixel from a
photo taken by a different camera.

Design choices (each is what makes the benchmark measure camera inconsistency and nothing else):
- Camera = EXIF Make|Model (`exif.camera_key`). Host and donor always come from different cameras;
  photos without a camera (or unreadable) are skipped and counted by reason.
- No resampling anywhere: the host crop is a window of the decoded host photo, the spliced region is the
  same-size window of the donor photo at its own offset, copied where the mask is set. Host windows start
  on the 16-px grid so the host keeps its JPEG block alignment (it looks like an uncropped photo); donor
  windows start anywhere, as a pasted region would.
- Regions are smooth random blobs (low-resolution Gaussian noise upsampled bicubically, the top-k pixels
  kept, so the area is exact) or axis-aligned rectangles, covering 5-30% of the crop.
- A fraction of the samples are authentic controls (a host crop, nothing pasted, an all-zero mask).
- Output is lossless PNG (images/ + masks/ + manifest.jsonl, loadable with `datasets.load_dataset(
  "folder:OUT")`); optionally a second copy JPEG-recompressed at one quality under OUT/jpeg_qQ/.
- Deterministic: sample i draws from numpy's Generator seeded with (seed, i).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from exif_jax import cli_args, exif
from exif_jax.data.crops import read_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp")
MIN_FRACTION, MAX_FRACTION = 0.05, 0.30
HOST_GRID = 16  # JPEG MCU size with 4:2:0 chroma subsampling


class Photo(NamedTuple):
    """A usable photo: file, manifest path, camera key, pixel size."""
    path: Path
    rel: str  # path relative to the images folder, as written to the manifest
    camera: str
    width: int
    height: int


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like 512x384, got {text!r}") from None
    if w < 16 or h < 16:
        raise ValueError(f"size {text!r} is too small (at least 16x16)")
    return w, h


def scan_photos(images_dir: str | Path) -> tuple[list[Photo], Counter]:
    """Photos under `images_dir` with a camera (EXIF Make/Model), and the count of skips by reason."""
    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder of photos")
    photos: list[Photo] = []
    skipped: Counter = Counter()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            camera = exif.camera_key(exif.read_tags(path))
        except exif.ExifError:
            skipped["unreadable EXIF"] += 1
            continue
        if not camera:
            skipped["no camera (EXIF Make/Model)"] += 1
            continue
        try:
            with Image.open(path) as im:
                width, height = im.size
        except (OSError, Image.DecompressionBombError):
            skipped["unreadable image"] += 1
            continue
        photos.append(Photo(path, path.relative_to(root).as_posix(), camera, width, height))
    return photos, skipped


@functools.lru_cache(maxsize=16)
def _pixels(path: Path) -> np.ndarray:
    return read_rgb(path)


def _rectangle(rng: np.random.Generator, h: int, w: int, target: float) -> np.ndarray:
    area = target * h * w
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))  # height / width
    rh = min(h, max(1, round(math.sqrt(area * aspect))))
    rw = min(w, max(1, round(area / rh)))
    rh = min(h, max(1, round(area / rw)))  # re-fit when the width was clipped
    y, x = rng.integers(0, h - rh + 1), rng.integers(0, w - rw + 1)
    mask = np.zeros((h, w), dtype=bool)
    mask[y:y + rh, x:x + rw] = True
    return mask


def _blob(rng: np.random.Generator, h: int, w: int, target: float) -> np.ndarray:
    gh, gw = (int(v) for v in rng.integers(3, 8, size=2))
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)).ravel()
    k = round(target * h * w)
    mask = np.zeros(h * w, dtype=bool)
    mask[np.argpartition(-field, k - 1)[:k]] = True
    return mask.reshape(h, w)


def random_region(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, str]:
    """A blob or rectangle mask covering 5-30% of an h x w crop, and its kind."""
    while True:
        target = rng.uniform(MIN_FRACTION + 0.005, MAX_FRACTION - 0.005)
        kind = "blob" if rng.random() < 0.5 else "rectangle"
        mask = (_blob if kind == "blob" else _rectangle)(rng, h, w, target)
        if MIN_FRACTION <= mask.mean() <= MAX_FRACTION:  # a clipped rectangle can miss; draw again
            return mask, kind


def _grid_offset(rng: np.random.Generator, slack: int, step: int) -> int:
    return int(rng.integers(0, slack // step + 1)) * step


def make_sample(photos: list[Photo], index: int, seed: int, size: tuple[int, int],
                authentic: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Sample `index`: (RGB image, bool mask, manifest fields), drawn from Generator((seed, index))."""
    w, h = size
    rng = np.random.default_rng([seed, index])
    host = photos[int(rng.integers(len(photos)))]
    hx, hy = _grid_offset(rng, host.width - w, HOST_GRID), _grid_offset(rng, host.height - h, HOST_GRID)
    image = _pixels(host.path)[hy:hy + h, hx:hx + w]
    info: dict[str, Any] = {"host_file": host.rel, "host_camera": host.camera, "host_xy": [hx, hy],
                            "donor_file": None, "donor_camera": None, "donor_xy": None,
                            "region": None, "region_fraction": 0.0}
    mask = np.zeros((h, w), dtype=bool)
    if not authentic:
        donors = [p for p in photos if p.camera != host.camera]
        donor = donors[int(rng.integers(len(donors)))]
        dx, dy = int(rng.integers(0, donor.width - w + 1)), int(rng.integers(0, donor.height - h + 1))
        mask, kind = random_region(rng, h, w)
        patch = _pixels(donor.path)[dy:dy + h, dx:dx + w]
        image = np.where(mask[..., None], patch, image)
        info.update(donor_file=donor.rel, donor_camera=donor.camera, donor_xy=[dx, dy], region=kind,
                    region_fraction=float(mask.mean()))
    return np.ascontiguousarray(image), mask, info


def _clear(out: Path, overwrite: bool) -> None:
    if (out / "manifest.jsonl").exists():
        if not overwrite:
            raise FileExistsError(f"{out}/manifest.jsonl exists: a benchmark is already there "
                                  "(pass overwrite=True / --overwrite to replace it)")
        for d in [out / "images", out / "masks", *out.glob("jpeg_q*")]:
            shutil.rmtree(d, ignore_errors=True)
        (out / "manifest.jsonl").unlink()


def make_splices(images_dir: str | Path, out_dir: str | Path, n: int, seed: int = 0, *,
                 jpeg_quality: int | None = None, size: tuple[int, int] | None = None,
                 authentic_fraction: float = 0.5, overwrite: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Write an n-image splice benchmark (and its JPEG copy) under out_dir; returns the summary."""
    if n < 1:
        raise ValueError(f"the image count (--count) must be >= 1, got {n}")
    if not 0.0 <= authentic_fraction <= 1.0:
        raise ValueError(f"authentic_fraction must be in [0, 1], got {authentic_fraction}")
    if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    photos, skipped = scan_photos(images_dir)
    if not photos:
        raise ValueError(f"{images_dir}: no photo with a camera (EXIF Make/Model); skipped: {dict(skipped)}")
    if size is None:  # the largest window every photo can give
        size = (min(p.width for p in photos), min(p.height for p in photos))
    w, h = size
    small = [p for p in photos if p.width < w or p.height < h]
    if small:
        skipped[f"smaller than {w}x{h}"] += len(small)
    photos = [p for p in photos if p.width >= w and p.height >= h]
    cameras = sorted({p.camera for p in photos})
    if len(cameras) < 2:
        raise ValueError(f"{images_dir}: splices need photos from >= 2 cameras of at least {w}x{h}, "
                         f"found {len(cameras)} ({cameras}); skipped: {dict(skipped)}")

    out = Path(out_dir)
    _clear(out, overwrite)
    copies = [(out, ".png", {})]
    if jpeg_quality is not None:
        copies.append((out / f"jpeg_q{jpeg_quality}", ".jpg", {"quality": jpeg_quality}))
    for root, _, _ in copies:
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)

    n_auth = round(n * authentic_fraction)
    authentic = np.random.default_rng(seed).permutation(n) < n_auth  # exactly n_auth controls
    manifests: list[list[str]] = [[] for _ in copies]
    fractions = []
    _pixels.cache_clear()
    for i in tqdm(range(n), desc="splices", unit="img", disable=not progress):
        image, mask, info = make_sample(photos, i, seed, size, bool(authentic[i]))
        name = f"{i:05d}_{'authentic' if authentic[i] else 'spliced'}"
        if not authentic[i]:
            fractions.append(info["region_fraction"])
        mask_im = Image.fromarray(mask.astype(np.uint8) * 255)
        for (root, suffix, save_kw), lines in zip(copies, manifests):
            Image.fromarray(image).save(root / "images" / f"{name}{suffix}", **save_kw)
            mask_im.save(root / "masks" / f"{name}.png")
            rec = {"image": f"images/{name}{suffix}", "mask": f"masks/{name}.png",
                   "label": int(not authentic[i]), "name": name, **info, "seed": seed, "index": i,
                   "size": [w, h], "jpeg_quality": save_kw.get("quality")}
            lines.append(json.dumps(rec, sort_keys=True))
    for (root, _, _), lines in zip(copies, manifests):
        (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")

    summary = {
        "out": str(out), "copies": [str(root) for root, _, _ in copies], "n": n,
        "n_spliced": n - n_auth, "n_authentic": n_auth, "size": [w, h], "seed": seed,
        "jpeg_quality": jpeg_quality, "photos_used": len(photos), "cameras": len(cameras),
        "skipped": dict(sorted(skipped.items())),
        "region_fraction": ({"min": min(fractions), "mean": float(np.mean(fractions)), "max": max(fractions)}
                            if fractions else None),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def add_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `exif-jax make-splices`."""
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of camera photos (searched recursively)")
    cli_args.add_out(parser, "images/, masks/, manifest.jsonl, summary.json (eval-localize --dataset folder:OUT); "
                             "with --jpeg-quality Q also a recompressed copy in OUT/jpeg_qQ")
    parser.add_argument("--count", type=int, default=100, metavar="N", help="images to make (spliced + authentic)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the photo pairs, regions and positions")
    parser.add_argument("--jpeg-quality", type=int, default=None, metavar="Q",
                        help="also write a copy recompressed at this JPEG quality under OUT/jpeg_qQ")
    parser.add_argument("--size", type=parse_size, default=None, metavar="WxH",
                        help="size of each image, cut from its host photo (default: the largest every photo can "
                             "give)")
    parser.add_argument("--authentic-fraction", type=float, default=0.5, metavar="F",
                        help="fraction of authentic controls (host crop, nothing pasted)")
    parser.add_argument("--overwrite", action="store_true", help="replace a benchmark already in OUT")
    cli_args.add_progress(parser)


def cli_main(args: argparse.Namespace) -> int:
    """Write the benchmark and print its summary as JSON."""
    try:
        summary = make_splices(args.images, args.out, args.count, args.seed, jpeg_quality=args.jpeg_quality,
                               size=args.size, authentic_fraction=args.authentic_fraction,
                               overwrite=args.overwrite, progress=not args.no_progress)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"exif-jax make-splices: {e}", file=sys.stderr)
        return 2
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
