"""The `exif-jax` command: subcommands only. Each parses its flags and calls one function."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

from exif_jax import storage
from exif_jax.cli_args import HelpFormatter

# name -> (module, function, help). The module defines `add_args(parser)`; the function takes the
# parsed argparse.Namespace and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "exif": ("exif_jax.exif", "cli_main", "print EXIF text and tags as JSON lines"),
    "train-tokenizer": ("exif_jax.tokenizer", "cli_main", "train the sentencepiece model on EXIF texts"),
    "build-data": ("exif_jax.data.build", "cli_main", "photos -> ArrayRecord shards + summary.json"),
    "train": ("exif_jax.train", "cli_main", "pretrain the two towers"),
    "make-splices": ("exif_jax.eval.splices", "cli_main",
                     "synthetic splice benchmark: host + donor photos from different cameras"),
    "localize": ("exif_jax.eval.localize", "cli_main", "zero-shot splice maps + detection scores of photos"),
    "eval-localize": ("exif_jax.eval.evaluate", "cli_main",
                      "splice benchmark metrics: learned vs classical vs random, tables + heatmaps"),
    "probe": ("exif_jax.eval.probes", "cli_main", "linear probes (camera, EXIF buckets) on frozen crop features"),
    "retrieval": ("exif_jax.eval.retrieval", "cli_main", "crop <-> EXIF text retrieval R@k vs random init"),
    "export": ("exif_jax.export.cli", "cli_main", "checkpoint -> transformers SiglipModel dir / timm .npz"),
    "import-official": ("exif_jax.export.official", "cli_main",
                        "the paper's released PyTorch weights -> an exif-jax checkpoint + config"),
    "package": ("exif_jax.packaging", "cli_main", "a training run -> a packaged model folder (small, bfloat16)"),
}


def add_command(sub: argparse._SubParsersAction, name: str) -> tuple[argparse.ArgumentParser, object]:
    """Import command `name`'s module (only it: jax and friends are slow to import) and add its parser, flags
    included; returns (parser, module)."""
    mod_name, _, help_ = COMMANDS[name]
    mod = importlib.import_module(mod_name)
    p = sub.add_parser(name, help=help_, description=f"exif-jax {name}: {help_}.", formatter_class=HelpFormatter)
    mod.add_args(p)
    return p, mod


# Subcommands that read and write gs:// and s3:// themselves (the rest see local copies, below).
NATIVE_URIS = ("build-data", "train")
# Read through the model loader itself (exif_jax.workdir), which takes URIs.
LOADER_ARGS = ("checkpoint",)


@contextlib.contextmanager
def staged(args: argparse.Namespace) -> Iterator[None]:
    """Object-storage paths for subcommands that work on local files: each gs:// / s3:// input is copied to a
    local folder first, and `--out` is written locally and uploaded when the command ends (also when it
    fails, so nothing it wrote is lost)."""
    tmp = None
    out_uri = None
    try:
        for name, value in vars(args).items():
            values = value if isinstance(value, list) else [value]
            if name in LOADER_ARGS or not any(isinstance(v, str) and storage.is_remote(v) for v in values):
                continue
            tmp = tmp or tempfile.mkdtemp(prefix="exif-jax-stage-")
            if name == "out":
                out_uri = value
                setattr(args, name, os.path.join(tmp, "out"))
                os.makedirs(args.out)
                continue
            local = []
            for i, v in enumerate(values):
                if not (isinstance(v, str) and storage.is_remote(v)):
                    local.append(v)
                    continue
                dst = os.path.join(tmp, f"{name}-{i}", storage.basename(v))
                if storage.isdir(v):
                    storage.copy_tree(v, dst)
                else:
                    storage.download_file(v, dst)
                local.append(dst)
            setattr(args, name, local if isinstance(value, list) else local[0])
        yield
    finally:
        if out_uri is not None:
            storage.copy_tree(args.out, out_uri)
            args.out = out_uri
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="exif-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    if argv and argv[0] in COMMANDS:
        _, mod = add_command(sub, argv[0])
        args = parser.parse_args(argv)
        run = getattr(mod, COMMANDS[argv[0]][1])
        if argv[0] in NATIVE_URIS:
            return int(run(args) or 0)
        with staged(args):
            return int(run(args) or 0)
    for name, (_, _, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_)
    parser.parse_args(argv)
    return 2


if __name__ == "__main__":
    sys.exit(main())
