r"""The camera-held-out experiment: split photos by camera model, then report every stage's JSON as markdown.

  python -m experiments.camera_heldout.experiment split --index PHOTOS/index.jsonl \
      --out configs/splits/camera_heldout.json
  python -m experiments.camera_heldout.experiment lists --split configs/splits/camera_heldout.json \
      --photos PHOTOS --out DIR
  python -m experiments.camera_heldout.experiment stage --timings DIR/timings.json --name NAME -- CMD ...
      (runs CMD, times it)
  python -m experiments.camera_heldout.experiment report --workdir DIR --split configs/splits/camera_heldout.json \
      --out docs/experiments/camera_heldout

The split itself is the library's (exif_jax.camera_split); packaging the run as a model is `exif-jax package`.

No camera model is on both sides: a model that is only ever seen at test time is the point of the split
(the learned features must tell cameras apart that training never showed).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from exif_jax.camera_split import SALT, link_folder, read_index, split_cameras, write_lists
from experiments.camera_heldout.report import write_report

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
    """`python -m experiments.camera_heldout.experiment split|lists|stage|report ...`."""
    p = argparse.ArgumentParser(prog="python -m experiments.camera_heldout.experiment", description=__doc__,
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
    elif args.cmd == "stage":
        cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
        if args.wall_s is not None:
            record_stage(args.timings, args.name, cmd, args.wall_s, 0, args.note)
            return 0
        return run_stage(args.timings, args.name, cmd)
    else:
        write_report(args.workdir, args.split, args.out)
        print(f"{args.out}/README.md written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
