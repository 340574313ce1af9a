"""The training loop: steps, metric flushes, checkpoints, preemption; and the hooks a caller can inject.

`exif_jax.train.main` builds everything and calls `train_loop`; `Hooks` are the loop's only extension points
(tests/train_with_hooks.py uses them to poison steps with NaN, hang a save, slow the loop).
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_collections

from exif_jax import checkpoint, metrics_writer
from exif_jax.metrics_writer import log


class TrainingAborted(RuntimeError):
    """Training stopped on purpose (too many non-finite steps); the message says why."""


# (loss, metrics, step) -> (loss, metrics): traced inside the jitted step, once per micro-batch.
LossHook = Callable[[jax.Array, dict[str, jax.Array], jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Hooks:
    """Where a caller reaches into a run (tests/train_with_hooks.py injects faults here); None: nothing."""
    loss: LossHook | None = None                                  # e.g. a NaN loss at chosen steps
    save_items: Callable[[int], Mapping[str, Any]] | None = None  # step -> extra orbax items saved with it
    after_step: Callable[[int], None] | None = None               # host, after each step is dispatched


# ------------------------------------------------------------------------------------------------ loop

def train_loop(state: dict[str, Any], train_step: Callable[..., Any], data_iter: Any, mngr: Any,
               writer: metrics_writer.MetricsWriter, c_train: ml_collections.ConfigDict, *, start: int,
               stop_at: int, workdir: str, hooks: Hooks = Hooks(), state_note: str = "") -> None:
    """Steps start+1..stop_at: metrics flushed every log_every steps, a checkpoint every ckpt_every and at
    stop_at; on preemption (SIGTERM) a checkpoint where it is, then return. `state_note` ends the message of
    a stop for non-finite steps (whether the state was finite at restore, and so what to suspect)."""
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    max_nan = int(c_train.max_nan_skips)
    step = start
    with preemption_notice(mngr) as preempted:
        while step < stop_at:
            if preempted(step):
                flush_metrics(pending, writer, max_nan, mngr, state_note)
                save_checkpoint(mngr, step, state, data_iter, hooks, force=True)
                mngr.wait_until_finished()
                log(f"preempted: saved step {step} to {workdir}/ckpt; rerun the same command to resume")
                return
            state, metrics = train_step(state, next(data_iter))
            step += 1
            if hooks.after_step is not None:
                hooks.after_step(step)
            pending.append((step, metrics))
            if step == start + 1:  # the compile step: time throughput from its end
                jax.block_until_ready(metrics)
                writer.start_clock(step)
            is_ckpt = step % int(c_train.ckpt_every) == 0 or step == stop_at
            if step % int(c_train.log_every) == 0 or is_ckpt:
                flush_metrics(pending, writer, max_nan, mngr, state_note)
            if is_ckpt:
                save_checkpoint(mngr, step, state, data_iter, hooks)
    flush_metrics(pending, writer, max_nan, mngr, state_note)


def flush_metrics(pending: list[tuple[int, dict[str, jax.Array]]], writer: metrics_writer.MetricsWriter,
                  max_nan: int, mngr: Any, state_note: str = "") -> None:
    """Fetch the pending steps' metrics, write them (emptying `pending`); raise TrainingAborted past max_nan."""
    if not pending:
        return
    fetched = jax.device_get([m for _, m in pending])
    rows = [{"step": s, **{k: v.item() for k, v in m.items()}} for (s, _), m in zip(pending, fetched)]
    pending.clear()
    writer.write(rows)
    for row in rows:
        if row["skipped"]:
            log(f"step {row['step']}: non-finite loss or gradient, update skipped "
                f"({row['nan_skips']} of at most {max_nan})")
        if row["nan_skips"] > max_nan:
            raise TrainingAborted(
                f"stopping: {row['nan_skips']} steps with a non-finite loss or gradient "
                f"(> train.max_nan_skips={max_nan}), the last at step {row['step']}. Checkpoints are "
                f"untouched (newest: {mngr.latest_step() or 'none'}); "
                f"{state_note or 'lower optim.lr or check the data'}.")


def save_checkpoint(mngr: Any, step: int, state: dict[str, Any], data_iter: Any, hooks: Hooks = Hooks(), *,
                    force: bool = False) -> None:
    """Start saving `step` unless it is already saved (with the hooks' extra items, if any)."""
    if step in mngr.all_steps():
        return
    extra = hooks.save_items(step) if hooks.save_items is not None else {}
    checkpoint.save(mngr, step, state, data_iter, force=force, extra_items=extra)


@contextlib.contextmanager
def preemption_notice(mngr: Any) -> Iterator[Callable[[int], bool]]:
    """Yields preempted(step): whether to save and leave before this step. One process: our own SIGTERM
    handler (restored on exit). Several: jax's preemption service, so every process stops at the same step
    (a Python handler would replace its SIGTERM hook)."""
    if jax.process_count() > 1:
        yield mngr.reached_preemption
        return
    hit: list[int] = []
    old_handler = signal.signal(signal.SIGTERM, lambda signum, _frame: hit.append(signum))
    try:
        yield lambda step: bool(hit)
    finally:
        signal.signal(signal.SIGTERM, old_handler)
