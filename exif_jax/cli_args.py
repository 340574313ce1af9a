"""Flag groups the `exif-jax` subcommands share: one spelling and one help text for one thing.

  model source  --checkpoint WORKDIR, --step N, and --baseline noise|random where a baseline can stand in
  output        -o/--out OUT
  progress      --no-progress
  limit         --limit N (use at most N photos)
  crop size     --crop-size PX (a baseline's crop; a checkpoint fixes its own)
  crop grid     --consensus, --stride, --num-per-dim, --batch (localize and eval-localize)

A flag's help text is the same in every command; what a command writes to OUT, or how it picks its N
photos, goes into that command's notes (`add_note`, shown under the flags by `--help`). "Patch" is the ViT's
patch only; eval cuts crops. This module imports nothing of exif_jax (every command imports it): values the
flags need (baseline names, default sizes) are passed in by the command.
"""
from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence

CHECKPOINT_HELP = ("training workdir (config.json + ckpt/, as `exif-jax train` writes it), its ckpt/ folder, or a "
                   "packaged model folder (default: the bundled default model, a small CPU model trained on the "
                   "shared corpus, not the paper's)")
STEP_HELP = "checkpoint step to load from --checkpoint (default: the newest)"
BASELINE_HELP = ("a non-learned embedder: noise (noise-residual statistics) or random (random features, the "
                 "chance level); without --checkpoint no learned model runs")
OUT_HELP = "output folder (what it holds: see the notes below)"
NO_PROGRESS_HELP = "no progress bars"
LIMIT_HELP = "use at most N photos (default: all; which ones: see the notes below)"
CROP_SIZE_HELP = "crop size in px of a --baseline (default: {}); a --checkpoint fixes its own"
CONSENSUS_HELP = "consensus map to write: meanshift (the paper's) or ncut (normalized cut)"
STRIDE_HELP = "px between neighbouring crops of the grid (default: the paper's, (max(H, W) - crop) // K)"
NUM_PER_DIM_HELP = "crops along the long side for the paper's stride (default: {}); not with --stride"
BATCH_HELP = "crops per embedding batch, over all devices"
# Spellings no subcommand may use any more (tests/test_cli_args.py checks every --help).
RETIRED = ("--quiet", "--max-images", "--max-photos", "--n", "--patch", "--patches-per-photo")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Notes kept as written; every flag with a default that is not None/False shows it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and "%(default)" not in text and "(default" not in text
                and action.default is not None and action.default is not False
                and action.default is not argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def add_note(parser: argparse.ArgumentParser, note: str) -> None:
    """One paragraph under the flags in `--help` (what OUT holds, how photos are picked, ...)."""
    para = textwrap.fill(note, width=100, subsequent_indent="  ")
    parser.epilog = f"{parser.epilog}\n{para}" if parser.epilog else para
    parser.formatter_class = HelpFormatter


def add_model_source(parser: argparse.ArgumentParser, baselines: Sequence[str] = (), *,
                     exclusive: bool = False) -> None:
    """--checkpoint and --step, plus --baseline (choices `baselines`) where a baseline can stand in (exclusive:
    not both). Without --checkpoint (and without --baseline) the command uses the bundled default model
    (workdir.default_source)."""
    if not baselines:
        parser.add_argument("--checkpoint", metavar="WORKDIR", help=CHECKPOINT_HELP)
    else:
        group = parser.add_mutually_exclusive_group() if exclusive else parser
        group.add_argument("--checkpoint", metavar="WORKDIR", help=CHECKPOINT_HELP)
        group.add_argument("--baseline", choices=tuple(baselines), help=BASELINE_HELP)
    parser.add_argument("--step", type=int, metavar="N", help=STEP_HELP)


def add_out(parser: argparse.ArgumentParser, holds: str) -> None:
    """-o/--out OUT (required); `holds` (what the command writes there) becomes a note."""
    parser.add_argument("-o", "--out", required=True, metavar="OUT", help=OUT_HELP)
    add_note(parser, f"OUT: {holds}")


def add_progress(parser: argparse.ArgumentParser) -> None:
    """--no-progress."""
    parser.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)


def add_limit(parser: argparse.ArgumentParser, which: str) -> None:
    """--limit N; `which` (how the N photos are picked) becomes a note."""
    parser.add_argument("--limit", type=int, metavar="N", help=LIMIT_HELP)
    add_note(parser, f"--limit N: {which}")


def add_crop_size(parser: argparse.ArgumentParser, default: int) -> None:
    """--crop-size PX: a baseline's crop size; the flag's value stays None when not given (the library then
    uses `default`, shown in the help, or the checkpoint's)."""
    parser.add_argument("--crop-size", type=int, metavar="PX", help=CROP_SIZE_HELP.format(default))


def add_grid(parser: argparse.ArgumentParser, consensus: Sequence[str], num_per_dim: int) -> None:
    """The crop grid and consensus of zero-shot localization: --consensus (choices `consensus`), --stride,
    --num-per-dim (None when not given; the library then uses `num_per_dim`), --batch."""
    parser.add_argument("--consensus", choices=tuple(consensus), default="meanshift", help=CONSENSUS_HELP)
    parser.add_argument("--stride", type=int, metavar="PX", help=STRIDE_HELP)
    parser.add_argument("--num-per-dim", type=int, metavar="K", help=NUM_PER_DIM_HELP.format(num_per_dim))
    parser.add_argument("--batch", type=int, default=256, metavar="N", help=BATCH_HELP)


def check_grid(stride: int | None, num_per_dim: int | None) -> None:
    """--num-per-dim only sets the paper's stride: with --stride it cannot apply."""
    if stride is not None and num_per_dim is not None:
        raise ValueError(f"--num-per-dim {num_per_dim} only sets the paper's stride; --stride {stride} replaces "
                         "it: give one of them")
