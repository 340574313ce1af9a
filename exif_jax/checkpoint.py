"""Training checkpoints with orbax: async, atomic (written to a temporary directory, renamed when complete),
the newest `keep` kept. One checkpoint holds three items:

  model  {"params", "rest"}                      the towers (rest: BatchNorm statistics, if any)
  train  {"opt", "step", "nan_skips", "rng"}      optimizer state, counters and the trainer's RNG key
  data   one JSON file per process                 the grain iterator: where the next batch comes from

Eval and export read only `model` (see `load_model`).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from exif_jax.data import pipeline

MODEL_KEYS = ("params", "rest")
TRAIN_KEYS = ("opt", "step", "nan_skips", "rng")


# Orbax splits a replicated array's write across its replicas; each slice is an eager jax op (compiled
# once per shape, dispatched per replica). Worth it for big arrays on pods, pure overhead for the
# hundreds of small ones (norms, biases, counters): only slices of at least 1 MiB are split.
MIN_REPLICA_SLICE_BYTES = 1 << 20


def make_manager(directory: str, keep: int, *, async_save: bool = True) -> ocp.CheckpointManager:
    """A CheckpointManager in `directory` keeping the newest `keep` steps; leftovers of killed saves are removed."""
    handler = ocp.type_handlers.get_type_handler(jax.Array)
    if getattr(handler, "_min_slice_bytes_for_replica_parallel", None) != MIN_REPLICA_SLICE_BYTES:
        ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
            min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES), override=True)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
        # A save killed before its rename leaves "<step>.orbax-checkpoint-tmp-*": never a valid step,
        # deleted at the next start.
        cleanup_tmp_directories=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: dict[str, Any], data_iter: Any, *,
         force: bool = False, extra_items: Mapping[str, ocp.args.CheckpointArgs] | None = None) -> bool:
    """Start saving `state` (the trainer's dict) and the data iterator at `step`, plus a caller's own
    `extra_items` (name -> orbax args; `restore` reads only the three above); returns whether it started."""
    items = dict(
        model=ocp.args.StandardSave({k: state[k] for k in MODEL_KEYS}),
        train=ocp.args.StandardSave({k: state[k] for k in TRAIN_KEYS}),
        data=pipeline.checkpoint_args(data_iter),
    )
    clash = sorted(set(items) & set(extra_items or {}))
    if clash:
        raise ValueError(f"extra checkpoint items {clash} would replace the trainer's own")
    items.update(extra_items or {})
    return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: dict[str, Any], data_iter: Any
            ) -> dict[str, Any]:
    """The trainer's state at `step`, laid out as `abstract_state` (ShapeDtypeStructs with shardings);
    sets `data_iter` to continue after that step's last batch."""
    out = mngr.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore({k: abstract_state[k] for k in MODEL_KEYS}),
        train=ocp.args.StandardRestore({k: abstract_state[k] for k in TRAIN_KEYS}),
        data=pipeline.restore_args(data_iter),
    ))
    return {**out["model"], **out["train"]}


def abstract(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` carrying `shardings` (a restore template)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def load_model(config: Any, ckpt_dir: str, step: int | None = None, *, vocab_size: int | None = None
               ) -> tuple[Any, int]:
    """(model, step): the towers from a training checkpoint (newest if step is None), replicated."""
    from flax import nnx

    from exif_jax.models import towers
    from exif_jax.tokenizer import vocab_size_of

    mngr = ocp.CheckpointManager(os.path.abspath(ckpt_dir), options=ocp.CheckpointManagerOptions(read_only=True))
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{ckpt_dir}: no complete checkpoint")
    if vocab_size is None:
        vocab_size = vocab_size_of(config)
    model = nnx.eval_shape(lambda: towers.create_model(config, vocab_size, nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            {"params": params, "rest": rest})
    out = mngr.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(template)))
    mngr.close()
    return nnx.merge(graphdef, out["model"]["params"], out["model"]["rest"]), step
