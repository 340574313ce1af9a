r"""The camera-held-out experiment: split photos by camera model, then report every stage's JSON as markdown.

  python -m exif_jax.experiment split --index ../shared/data/photos/index.jsonl --out configs/splits/camera_heldout.json
  python -m exif_jax.experiment lists --split configs/splits/camera_heldout.json --photos ../shared/data/photos \
      --out DIR
  python -m exif_jax.experiment stage --timings DIR/timings.json --name NAME -- CMD ...   (runs CMD, times it)
  python -m exif_jax.experiment report --workdir DIR --split configs/splits/camera_heldout.json \
      --out docs/experiments/camera_heldout
  python -m exif_jax.experiment package --run DIR/run --out exif_jax/assets/default_model --name NAME
      (the bundled default model: the run's parameters in bfloat16, its config and tokenizer)

No camera model is on both sides: a model that is only ever seen at test time is the point of the split
(the learned features must tell cameras apart that training never showed).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import subprocess
import sys
import time
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


# ------------------------------------------------------------------------------------ stage timings

def record_stage(timings: str, name: str, cmd: Sequence[str], wall_s: float, rc: int, note: str = "") -> None:
    """Add (or replace) one stage's command and wall time in a timings JSON file."""
    data = json.loads(Path(timings).read_text(encoding="utf-8")) if os.path.exists(timings) else {"stages": []}
    data["stages"] = [s for s in data["stages"] if s["name"] != name]
    data["stages"].append({"name": name, "cmd": shlex.join(cmd), "wall_s": round(wall_s, 1), "rc": rc,
                           "note": note})
    Path(timings).parent.mkdir(parents=True, exist_ok=True)
    Path(timings).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def run_stage(timings: str, name: str, cmd: Sequence[str]) -> int:
    """Run a command, record its wall time under `name`; returns its exit code."""
    if not cmd:
        raise ValueError(f"stage {name!r}: no command given (put it after --)")
    t0 = time.monotonic()
    rc = subprocess.call(list(cmd))
    record_stage(timings, name, cmd, time.monotonic() - t0, rc)
    return rc


# ------------------------------------------------------------------------------------------ CLI

def main(argv: list[str] | None = None) -> int:
    """`python -m exif_jax.experiment split|lists|stage|report|package ...`."""
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
    st = sub.add_parser("stage", help="run a command after --, record its wall time")
    st.add_argument("--timings", required=True)
    st.add_argument("--name", required=True)
    st.add_argument("--wall-s", type=float, help="record this wall time instead of running the command")
    st.add_argument("--note", default="")
    st.add_argument("command", nargs=argparse.REMAINDER)
    r = sub.add_parser("report", help="README.md, tables and curves from the stages' JSON outputs")
    r.add_argument("--workdir", required=True)
    r.add_argument("--split", required=True)
    r.add_argument("--out", required=True)
    pk = sub.add_parser("package", help="a training run as a packaged model (what exif_jax/assets/default_model is)")
    pk.add_argument("--run", required=True, help="training workdir")
    pk.add_argument("--out", required=True, help="package directory (created)")
    pk.add_argument("--name", required=True, help="the name every output will show")
    pk.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="stored parameter dtype")
    pk.add_argument("--about", default="", help="a JSON object of facts to record in model.json")
    args = p.parse_args(argv)
    if args.cmd == "package":
        from exif_jax import workdir

        out = workdir.package(args.run, args.out, name=args.name, dtype=args.dtype,
                              about=json.loads(args.about) if args.about else None)
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"{out}: {size / 1e6:.2f} MB ({', '.join(sorted(f.name for f in out.iterdir()))})")
    elif args.cmd == "split":
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
    elif args.cmd == "stage":
        cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
        if args.wall_s is not None:
            record_stage(args.timings, args.name, cmd, args.wall_s, 0, args.note)
            return 0
        return run_stage(args.timings, args.name, cmd)
    else:
        from exif_jax.experiment_report import write_report

        write_report(args.workdir, args.split, args.out)
        print(f"{args.out}/README.md written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
