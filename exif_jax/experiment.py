"""The camera-held-out experiment: split photos by camera model, then report every stage's JSON as markdown.

  python -m exif_jax.experiment split --index ../shared/data/photos/index.jsonl --out configs/splits/camera_heldout.json
  python -m exif_jax.experiment lists --split configs/splits/camera_heldout.json --photos ../shared/data/photos --out DIR
  python -m exif_jax.experiment report --workdir DIR --out docs/experiments/camera_heldout

No camera model is on both sides: a model that is only ever seen at test time is the point of the split
(the learned features must tell cameras apart that training never showed).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from exif_jax import exif

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


def main(argv: list[str] | None = None) -> int:
    """`python -m exif_jax.experiment split|lists|report ...`."""
    p = argparse.ArgumentParser(prog="python -m exif_jax.experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="camera-disjoint split of an index.jsonl")
    s.add_argument("--index", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--train-fraction", type=float, default=0.75)
    s.add_argument("--salt", default=SALT)
    li = sub.add_parser("lists", help="photo lists and a folder of test-camera symlinks from a split")
    li.add_argument("--split", required=True)
    li.add_argument("--photos", required=True)
    li.add_argument("--out", required=True)
    r = sub.add_parser("report", help="README.md, tables and curves from the stages' JSON outputs")
    r.add_argument("--workdir", required=True)
    r.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.cmd == "split":
        split = split_cameras(read_index(args.index), args.train_fraction, args.salt)
        split["index"] = os.path.basename(args.index)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")
        print(f"{args.out}: {split['n_cameras']} cameras, {split['n_photos']} photos")
    elif args.cmd == "lists":
        split = json.loads(Path(args.split).read_text(encoding="utf-8"))
        paths = write_lists(split, args.photos, args.out)
        link_folder(split, "test", args.photos, os.path.join(args.out, "test_photos"))
        print(json.dumps(paths))
    else:
        from exif_jax import experiment_report
        experiment_report.write_report(args.workdir, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
