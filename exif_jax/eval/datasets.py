"""Splice benchmarks as their archives unpack: `load_dataset("KIND:PATH")` -> samples, `load_mask` -> bool.

What each loader relies on (checked against the datasets' own readmes where public, the EXIF-as-Language
evaluation code (hellomuffin/exif-as-language, datasets/*.py) and other public loaders (photoholmes,
fake-detection-lab, the CASIA ground-truth repos); the archives themselves cannot be fetched here):

- ``columbia`` (Columbia Uncompressed Image Splicing Detection, Hsu & Chang 2006): ``4cam_auth/*.tif``
  (183 authentic) and ``4cam_splc/*.tif`` (180 spliced), masks ``4cam_splc/edgemask/<stem>_edgemask.jpg``.
  The edge masks are coloured: red = the region from the host camera, green = the region spliced in from the
  second camera, a darker shade of each near the splice boundary. The spliced region is the green one (the
  paper's loader keeps (0,255,0) and (0,200,0); photoholmes uses the green channel). Because the masks are
  JPEG, exact colour matches drop pixels; we take pixels where green dominates red (G > R and G >= 100).
  Some copies unpack one level deeper (``4cam_auth/4cam_auth``); both are accepted.
- ``dso1`` (DSO-1, Carvalho et al. 2013, ``tifs-database``): ``DSO-1/normal-*.png`` (100 authentic) and
  ``DSO-1/splicing-*.png`` (100 spliced), masks ``DSO-1-Fake-Images-Masks/<same name>``. Polarity is
  inverted: BLACK = spliced, white = authentic (the paper's loader and others invert the mask).
- ``korus`` (Realistic Tampering, Korus & Huang 2016/17, ``data-images``): per-camera folders
  (Canon_60D, Nikon_D90, Nikon_D7000, Sony_A57), each with ``pristine/*.TIF``, ``tampered-realistic/*.TIF``
  and ``ground-truth/<stem>.PNG``. The maps have 3 levels: black authentic, white semantic change, gray
  "collateral damage"; the readme says both gray and white count as tampered for standard evaluation (> 0).
- ``inthewild`` (Huh et al. 2018, ``label_in_wild``): ``images/*.jpg`` + ``masks/<stem>.png``, all 201
  spliced, mask > 0 = spliced.
- ``hays`` (Hays & Efros 2007 scene completion, ``test_set.zip`` as used by Huh et al. and the paper):
  images and their masks side by side, ``<stem>.<ext>`` + ``<stem>_mask.<ext>`` (some masks are .jpg),
  all manipulated, mask > 0 = completed region (JPEG masks: > 127, so compression noise is not region).
- ``casia1`` (CASIA v1.0 + Pham et al.'s ``CASIA 1.0 groundtruth``): ``Au/*.jpg`` authentic,
  ``Tp/Sp/*.jpg`` spliced (also found under ``Modified Tp/Tp/Sp``), masks
  ``CASIA 1.0 groundtruth/Sp/<stem>_gt.png`` (inside the dataset folder or beside it), white = tampered.
  Copy-move (``Tp/CM``) is left out: it is single-camera by construction (the paper used Sp only).
- ``casia2`` (CASIA v2.0 + Pham et al.'s ``CASIA 2 Groundtruth``): ``Au/*`` authentic, ``Tp/*`` tampered
  (Tp_D_* spliced and Tp_S_* copy-move, both kept as the paper's detection eval did; filter on the name),
  masks ``<groundtruth>/<stem>_gt.png``, white = tampered. A few masks are missing or of another size.
- ``folder``: ``images/`` + ``masks/<same stem>.png`` (white = spliced) + optional ``manifest.jsonl``
  (lines with ``image``, ``label``, optional ``mask``, ``name``; paths relative to the folder). Without a
  manifest an image is spliced iff its mask exists and has a white pixel. `splices.make_splices` writes it.

A spliced sample whose mask is missing keeps ``mask_path=None`` (usable for detection; `load_mask` raises).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})
JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})


@dataclass(frozen=True)
class Sample:
    """One benchmark image: its file, its mask file (None: none), label (1 = spliced), name, dataset kind."""
    image_path: Path
    mask_path: Path | None
    label: int
    name: str
    kind: str = "folder"


# ----------------------------------------------------------------------------------------------------
# Helpers

def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: missing folder (expected {what})")
    return path


def _locate(root: Path, wrappers: tuple[str, ...], marker: str, what: str) -> Path:
    """The folder holding `marker`: root itself, or root/<wrapper>[/<wrapper>] as archives unpack."""
    candidates = [root] + [root / w for w in wrappers] + [root / w / w for w in wrappers]
    for c in candidates:
        if (c / marker).is_dir():
            return c
    raise FileNotFoundError(f"{root}: no {marker}/ folder here (expected {what})")


def _find_file(folder: Path, stem: str) -> Path | None:
    """folder/stem.<any image suffix, any case>."""
    if not folder.is_dir():
        return None
    for p in folder.iterdir():
        if p.stem == stem and p.suffix.lower() in IMAGE_SUFFIXES:
            return p
    return None


def _warn_missing(kind: str, root: Path, missing: list[str]) -> None:
    if missing:
        warnings.warn(f"{kind} {root}: {len(missing)} spliced images have no mask (detection only), "
                      f"e.g. {missing[:3]}", stacklevel=3)


def _sample(kind: str, image: Path, mask: Path | None, label: int, name: str) -> Sample:
    return Sample(image, mask, label, name, kind)


# ----------------------------------------------------------------------------------------------------
# Loaders: root -> samples

def _columbia(root: Path) -> list[Sample]:
    out, missing = [], []
    what = "4cam_auth/ and 4cam_splc/ with .tif images (Columbia Uncompressed)"
    auth_dir = _need_dir(root / "4cam_auth", what)
    splc_dir = _need_dir(root / "4cam_splc", what)
    # Some copies unpack each archive one level deeper (4cam_auth/4cam_auth).
    auth_dir = auth_dir / "4cam_auth" if (auth_dir / "4cam_auth").is_dir() else auth_dir
    splc_dir = splc_dir / "4cam_splc" if (splc_dir / "4cam_splc").is_dir() else splc_dir
    for p in _images(auth_dir):
        out.append(_sample("columbia", p, None, 0, p.stem))
    edge = _need_dir(splc_dir / "edgemask", "4cam_splc/edgemask/<stem>_edgemask.jpg colored masks")
    for p in _images(splc_dir):
        m = edge / f"{p.stem}_edgemask.jpg"
        if not m.is_file():
            missing.append(p.name)
        out.append(_sample("columbia", p, m if m.is_file() else None, 1, p.stem))
    _warn_missing("columbia", root, missing)
    return out


def _dso1(root: Path) -> list[Sample]:
    what = "DSO-1/ (normal-*.png, splicing-*.png) and DSO-1-Fake-Images-Masks/ (tifs-database)"
    base = _locate(root, ("tifs-database",), "DSO-1", what)
    masks = _need_dir(base / "DSO-1-Fake-Images-Masks", what)
    out, missing = [], []
    for p in _images(base / "DSO-1"):
        if p.name.startswith("normal"):
            out.append(_sample("dso1", p, None, 0, p.stem))
        elif p.name.startswith("splicing"):
            m = _find_file(masks, p.stem)
            if m is None:
                missing.append(p.name)
            out.append(_sample("dso1", p, m, 1, p.stem))
    _warn_missing("dso1", root, missing)
    return out


def _korus(root: Path) -> list[Sample]:
    what = "per-camera folders with pristine/, tampered-realistic/ and ground-truth/ (Realistic Tampering)"
    base = root / "data-images" if (root / "data-images").is_dir() else root
    cameras = sorted(d for d in base.iterdir() if d.is_dir() and (d / "tampered-realistic").is_dir())
    if not cameras:
        raise FileNotFoundError(f"{root}: no camera folder with tampered-realistic/ (expected {what})")
    out, missing = [], []
    for cam in cameras:
        gt = _need_dir(cam / "ground-truth", what)
        if (cam / "pristine").is_dir():
            out += [_sample("korus", p, None, 0, f"{cam.name}/pristine/{p.stem}") for p in _images(cam / "pristine")]
        for p in _images(cam / "tampered-realistic"):
            m = _find_file(gt, p.stem)
            if m is None:
                missing.append(f"{cam.name}/{p.name}")
            out.append(_sample("korus", p, m, 1, f"{cam.name}/tampered-realistic/{p.stem}"))
    _warn_missing("korus", root, missing)
    return out


def _inthewild(root: Path) -> list[Sample]:
    what = "images/*.jpg and masks/<stem>.png (label_in_wild)"
    base = _locate(root, ("label_in_wild",), "images", what)
    masks = _need_dir(base / "masks", what)
    out, missing = [], []
    for p in _images(base / "images"):
        m = _find_file(masks, p.stem)
        if m is None:
            missing.append(p.name)
        out.append(_sample("inthewild", p, m, 1, p.stem))
    _warn_missing("inthewild", root, missing)
    return out


def _hays(root: Path) -> list[Sample]:
    what = "images with <stem>_mask.<ext> beside them (scene completion test_set)"
    _need_dir(root, what)
    mask_files = sorted(p for p in root.rglob("*_mask.*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not mask_files:
        raise FileNotFoundError(f"{root}: no *_mask.* file (expected {what})")
    out = []
    for m in mask_files:
        img = _find_file(m.parent, m.stem[: -len("_mask")])
        if img is None:
            raise FileNotFoundError(f"{m}: mask without its image {m.stem[:-5]}.* beside it")
        out.append(_sample("hays", img, m, 1, img.relative_to(root).with_suffix("").as_posix()))
    return out


_CASIA1_GT = ("CASIA 1.0 groundtruth",)
_CASIA2_GT = ("CASIA 2 Groundtruth", "CASIA 2.0 Groundtruth", "CASIA2.0_Groundtruth", "CASIA2 Groundtruth",
              "groundtruth", "Groundtruth", "GT")


def _gt_dir(root: Path, names: tuple[str, ...], what: str) -> Path:
    for base in (root, root.parent):
        for n in names:
            if (base / n).is_dir():
                return base / n
    raise FileNotFoundError(f"{root}: no ground-truth folder {list(names)} in it or beside it (expected {what})")


def _casia(kind: str, root: Path, tp: Path, gt: Path) -> list[Sample]:
    out = [_sample(kind, p, None, 0, p.stem) for p in _images(root / "Au")]
    missing = []
    for p in _images(tp):
        m = gt / f"{p.stem}_gt.png"
        if not m.is_file():
            missing.append(p.name)
        out.append(_sample(kind, p, m if m.is_file() else None, 1, p.stem))
    _warn_missing(kind, root, missing)
    return out


def _casia1(root: Path) -> list[Sample]:
    what = "Au/, Tp/Sp/ and 'CASIA 1.0 groundtruth/Sp/<stem>_gt.png' (CASIA v1.0)"
    _need_dir(root / "Au", what)
    tp = next((d for d in (root / "Tp" / "Sp", root / "Modified Tp" / "Tp" / "Sp") if d.is_dir()), None)
    if tp is None:
        raise FileNotFoundError(f"{root}: missing folder Tp/Sp (expected {what})")
    gt = _need_dir(_gt_dir(root, _CASIA1_GT, what) / "Sp", what)
    return _casia("casia1", root, tp, gt)


def _casia2(root: Path) -> list[Sample]:
    what = "Au/, Tp/ and a ground-truth folder of <stem>_gt.png ('CASIA 2 Groundtruth', CASIA v2.0)"
    _need_dir(root / "Au", what)
    tp = _need_dir(root / "Tp", what)
    return _casia("casia2", root, tp, _gt_dir(root, _CASIA2_GT, what))


def _folder(root: Path) -> list[Sample]:
    what = "images/ + masks/<stem>.png (+ optional manifest.jsonl)"
    images = _need_dir(root / "images", what)
    masks = root / "masks"
    manifest = root / "manifest.jsonl"
    if manifest.is_file():
        out = []
        for i, line in enumerate(manifest.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                image, label = root / rec["image"], int(rec["label"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{manifest}:{i}: bad line ({e}); need 'image' and 'label'") from e
            if label not in (0, 1):
                raise ValueError(f"{manifest}:{i}: label must be 0 or 1, got {label}")
            if not image.is_file():
                raise FileNotFoundError(f"{manifest}:{i}: image {image} does not exist")
            mask = root / rec["mask"] if rec.get("mask") else _find_file(masks, image.stem)
            if mask is not None and not mask.is_file():
                raise FileNotFoundError(f"{manifest}:{i}: mask {mask} does not exist")
            out.append(_sample("folder", image, mask, label, rec.get("name") or image.stem))
        return out
    out = []
    for p in _images(images):
        m = _find_file(masks, p.stem)
        label = int(m is not None and bool(_read_gray(m).max() > 127))
        out.append(_sample("folder", p, m, label, p.stem))
    return out


LOADERS: dict[str, Callable[[Path], list[Sample]]] = {
    "columbia": _columbia, "dso1": _dso1, "korus": _korus, "inthewild": _inthewild, "hays": _hays,
    "casia1": _casia1, "casia2": _casia2, "folder": _folder,
}


def load_dataset(spec: str) -> list[Sample]:
    """Samples of the benchmark `spec` = "KIND:PATH" (kinds: see LOADERS), in a fixed order."""
    kind, sep, path = spec.partition(":")
    if not sep or not path:
        raise ValueError(f"dataset spec must be KIND:PATH, got {spec!r} (kinds: {', '.join(LOADERS)})")
    if kind not in LOADERS:
        raise ValueError(f"unknown dataset kind {kind!r} in {spec!r} (kinds: {', '.join(LOADERS)})")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder ({kind} dataset root expected)")
    samples = LOADERS[kind](root)
    if not samples:
        raise FileNotFoundError(f"{root}: no images found for dataset kind {kind!r}")
    return samples


# ----------------------------------------------------------------------------------------------------
# Masks

def _read_gray(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def _white(path: Path) -> np.ndarray:
    return _read_gray(path) > 127


def _nonzero(path: Path) -> np.ndarray:
    # JPEG-coded masks carry compression noise around 0: threshold at mid-gray there.
    return _read_gray(path) > (127 if path.suffix.lower() in JPEG_SUFFIXES else 0)


def _columbia_mask(path: Path) -> np.ndarray:
    rgb = _read_rgb(path)
    return (rgb[..., 1] > rgb[..., 0]) & (rgb[..., 1] >= 100)


MASK_RULES: dict[str, Callable[[Path], np.ndarray]] = {
    "columbia": _columbia_mask,
    "dso1": lambda p: _read_gray(p) < 128,  # black = spliced
    "korus": lambda p: _read_gray(p) > 0,  # white and gray (collateral damage) = tampered
    "inthewild": _nonzero, "hays": _nonzero,
    "casia1": _white, "casia2": _white, "folder": _white,
}


def load_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """The sample's spliced-region mask as bool (H, W) = `shape`, by its dataset's conventions.

    Authentic samples without a mask give all False. A mask of another size is resized (nearest) with a
    warning naming the file (a few CASIA2/DSO-1 masks differ from their image).
    """
    shape = tuple(int(v) for v in shape[:2])
    if sample.mask_path is None:
        if sample.label == 1:
            raise ValueError(f"{sample.image_path}: spliced image without a ground-truth mask "
                             f"({sample.kind}); it can only be used for detection")
        return np.zeros(shape, dtype=bool)
    try:
        mask = MASK_RULES[sample.kind](Path(sample.mask_path))
    except OSError as e:
        raise ValueError(f"{sample.mask_path}: cannot read mask ({e})") from e
    if mask.shape != shape:
        warnings.warn(f"{sample.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, image is "
                      f"{shape[1]}x{shape[0]}; resized (nearest)", stacklevel=2)
        im = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
        mask = np.asarray(im) > 127
    return mask
