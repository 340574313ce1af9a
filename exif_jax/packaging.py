"""`exif-jax package`: a training run as a packaged model folder (what exif_jax/assets/default_model is).

The folder holds config.json, params.msgpack (parameters, in bfloat16 by default), the tokenizer file and
model.json (its name and where it came from); every command that takes --checkpoint reads it.
"""
from __future__ import annotations

import argparse
import json
import sys

from exif_jax import cli_args, workdir


def add_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `exif-jax package`."""
    parser.add_argument("--run", required=True, metavar="WORKDIR", help="training workdir (as `exif-jax train` "
                        "writes it); its newest checkpoint is packaged")
    cli_args.add_out(parser, "config.json, params.msgpack, the tokenizer file, model.json (name, source run, step, "
                             "stored dtype); pass OUT as --checkpoint to any command")
    parser.add_argument("--name", required=True, help="the name every output of the model shows")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="stored parameter dtype (they compute in float32)")
    parser.add_argument("--about", default="", help="a JSON object of facts to record in model.json")


def cli_main(args: argparse.Namespace) -> int:
    """Run `exif-jax package`."""
    try:
        about = json.loads(args.about) if args.about else None
    except json.JSONDecodeError as e:
        print(f"exif-jax package: --about is not a JSON object ({e})", file=sys.stderr)
        return 2
    try:
        out = workdir.package(args.run, args.out, name=args.name, dtype=args.dtype, about=about)
    except (FileNotFoundError, ValueError) as e:
        print(f"exif-jax package: {e}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{out}: {size / 1e6:.2f} MB ({', '.join(sorted(f.name for f in out.iterdir()))})")
    return 0
