"""`exif-jax train` with faults injected through `exif_jax.train_loop.Hooks`, for tests/test_train.py:

  python tests/train_with_hooks.py [--poison-steps 3,5] [--slow-save-step 20 --slow-save-s 600]
      [--step-sleep-s 0.3] --config configs/tiny.py --workdir DIR [--config.a.b=v ...]

--poison-steps      these steps' loss (1-based) is multiplied by NaN inside the jitted step
--slow-save-step    the checkpoint save at this step sleeps --slow-save-s inside orbax (temporary directory
                    written, not yet renamed) after appending its directory to WORKDIR/slow_save_marker.txt
                    (or --marker FILE: a local file, for a gs:// or s3:// workdir), so a test can kill the
                    trainer mid-save
--step-sleep-s      host sleep after each step, so a test can signal a run mid-loop
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's exif_jax, run as a script

import jax.numpy as jnp  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from etils import epath  # noqa: E402

from exif_jax import train  # noqa: E402
from exif_jax.train_loop import Hooks  # noqa: E402


class SlowSaveHandler:
    """An orbax item whose save writes `marker`, then sleeps in the blocking part of the save."""

    def save(self, directory: epath.Path, item: Any = None, args: Any = None) -> None:
        args = args or item
        with open(args.marker, "a") as f:
            f.write(f"{directory}\n")
        time.sleep(args.seconds)
        (directory / "slow_save.txt").write_text("done\n")

    def restore(self, directory: epath.Path, item: Any = None, args: Any = None) -> None:
        return None

    def structure(self, directory: epath.Path) -> None:
        return None

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass

    @classmethod
    def typestr(cls) -> str:
        return f"{cls.__module__}.{cls.__qualname__}"


@ocp.args.register_with_handler(SlowSaveHandler, for_save=True)
@dataclasses.dataclass
class SlowSave(ocp.args.CheckpointArgs):
    seconds: float
    marker: str


@ocp.args.register_with_handler(SlowSaveHandler, for_restore=True)
@dataclasses.dataclass
class SlowRestore(ocp.args.CheckpointArgs):
    """Never used to restore; orbax wants a restore pairing for every handler."""


def make_hooks(poison_steps: tuple[int, ...] = (), slow_save_step: int = 0, slow_save_s: float = 0.0,
               step_sleep_s: float = 0.0, workdir: str = ".", marker: str = "") -> Hooks:
    """The Hooks for these faults (none given: Hooks() and the production step)."""
    loss = save_items = after_step = None
    if poison_steps:
        steps = jnp.asarray(poison_steps, jnp.int32)

        def loss(value, metrics, step):
            bad = jnp.where(jnp.isin(step, steps), jnp.nan, 1.0)
            return value * bad, {**metrics, "loss": metrics["loss"] * bad}
    if slow_save_step and slow_save_s > 0:
        marker = marker or os.path.join(workdir, "slow_save_marker.txt")

        def save_items(step):
            return {"slow": SlowSave(slow_save_s, marker)} if step == slow_save_step else {}
    if step_sleep_s > 0:
        def after_step(step):
            time.sleep(step_sleep_s)
    return Hooks(loss=loss, save_items=save_items, after_step=after_step)


def main(argv: list[str] | None = None) -> int:
    """Parse the fault flags, then run `exif-jax train` with the rest."""
    faults = argparse.ArgumentParser(add_help=False)
    faults.add_argument("--poison-steps", default="", help="comma-separated steps")
    faults.add_argument("--slow-save-step", type=int, default=0)
    faults.add_argument("--slow-save-s", type=float, default=0.0)
    faults.add_argument("--step-sleep-s", type=float, default=0.0)
    faults.add_argument("--marker", default="")
    f, rest = faults.parse_known_args(argv)
    parser = argparse.ArgumentParser(prog="train_with_hooks.py")
    train.add_args(parser)
    args = parser.parse_args(rest)
    hooks = make_hooks(tuple(int(s) for s in f.poison_steps.split(",") if s), f.slow_save_step, f.slow_save_s,
                       f.step_sleep_s, args.workdir, f.marker)
    return train.cli_main(args, hooks)


if __name__ == "__main__":
    sys.exit(main())
