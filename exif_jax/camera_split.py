"""Camera-disjoint splits: every photo goes with its camera model, so test cameras are never seen in training.

A camera key (exif.camera_key: make|model) is ranked by sha256(salt + '\\0' + key); the first ceil(f * n) cameras
are train. The salt fixes the split: the same photos and salt give the same split on any machine.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence

from exif_jax import exif

# The camera-held-out study's salt (experiments/camera_heldout).
SALT = "exif-jax/camera-heldout/v1"


def camera_rank(key: str, salt: str = SALT) -> str:
    """The hex digest that orders cameras: sha256(salt + '\\0' + camera key)."""
    return hashlib.sha256(f"{salt}\0{key}".encode("utf-8")).hexdigest()


def split_cameras(rows: Sequence[dict], train_fraction: float = 0.75, salt: str = SALT) -> dict:
    """Split index rows (file, make, model) by camera key: cameras sorted by hash, the first ceil(f*n) train."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    by_cam: dict[str, list[str]] = {}
    for r in rows:
        key = exif.camera_key({"Make": r.get("make") or "", "Model": r.get("model") or ""})
        if not key:
            raise ValueError(f"{r.get('file')}: no Make or Model, cannot place it in a camera split")
        by_cam.setdefault(key, []).append(r["file"])
    cams = sorted(by_cam, key=lambda k: (camera_rank(k, salt), k))
    n_train = math.ceil(train_fraction * len(cams))
    train_cams, test_cams = sorted(cams[:n_train]), sorted(cams[n_train:])
    return {
        "method": (f"camera key = exif.camera_key(Make, Model) from index.jsonl; cameras sorted by "
                   f"sha256(salt + '\\0' + key); the first ceil({train_fraction} * n_cameras) are train, "
                   f"the rest test; every photo goes with its camera"),
        "salt": salt, "train_fraction": train_fraction,
        "n_cameras": {"train": len(train_cams), "test": len(test_cams)},
        "n_photos": {"train": sum(len(by_cam[c]) for c in train_cams),
                     "test": sum(len(by_cam[c]) for c in test_cams)},
        "train_cameras": train_cams, "test_cameras": test_cams,
        "train_files": sorted(f for c in train_cams for f in by_cam[c]),
        "test_files": sorted(f for c in test_cams for f in by_cam[c]),
    }


def read_index(path: str) -> list[dict]:
    """Rows of an index.jsonl (one JSON object per line with file, make, model)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not JSON ({e})") from e
    return rows


def write_lists(split: dict, photos: str, out: str) -> dict[str, str]:
    """Write train.txt / test.txt (absolute photo paths) for `exif-jax build-data --list`; returns their paths."""
    os.makedirs(out, exist_ok=True)
    paths = {}
    for side in ("train", "test"):
        p = os.path.join(out, f"{side}.txt")
        with open(p, "w", encoding="utf-8") as f:
            for name in split[f"{side}_files"]:
                f.write(os.path.abspath(os.path.join(photos, name)) + "\n")
        paths[side] = p
    return paths


def link_folder(split: dict, side: str, photos: str, out: str) -> str:
    """A folder of symlinks to one side's photos (for commands that take a folder)."""
    os.makedirs(out, exist_ok=True)
    for name in split[f"{side}_files"]:
        dst = os.path.join(out, name)
        if not os.path.lexists(dst):
            os.symlink(os.path.abspath(os.path.join(photos, name)), dst)
    return out
