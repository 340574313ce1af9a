"""The trainer: `exif-jax train --config configs/X.py --workdir DIR [--config.a.b=v ...]`.

`main` reads top to bottom: config -> multi-host init -> mesh -> data -> model, optimizer and train step ->
checkpoints (resume) -> metrics -> the loop (`exif_jax.train_loop`: preemption, NaN skips, logging, saving).
Nothing here is a test hook: tests inject faults through `train_loop.Hooks` (tests/train_with_hooks.py).

Choices, so they are not rediscovered:
- State is a plain dict {"params", "rest", "opt", "step", "nan_skips", "rng"} made by nnx.split + optax,
  and the step is a plain `jax.jit` with in/out shardings from the partition rules and the state donated:
  every array's layout is explicit at the boundary (nnx.jit would hide it behind graph updates).
- Gradient accumulation is an explicit lax.scan over micro-batches inside the step (not optax.MultiSteps):
  one optimizer update per call, so `step`, the schedule, checkpoints and the data position stay in
  lock-step. Each micro-batch is spread over every device; the contrastive negatives come from the
  micro-batch, as with any accumulation that does not cache embeddings.
- A non-finite loss or gradient norm leaves params, optimizer state and BatchNorm statistics unchanged
  (jnp.where inside the step); the count rides in the state and is checked when metrics reach the host.
- The step's metrics are the loss's own (`losses.METRICS`: loss, i2t_top1, t2i_top1, logit_scale) plus the
  step's (grad_norm, lr, skipped, nan_skips, fingerprint).
- Metrics stay on the device until a flush (every log_every steps, before a save, at the end), so the
  host never waits on a step just to log it; every step still gets its row in metrics.jsonl.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from exif_jax import checkpoint, cli_args, losses, metrics_writer, sharding, storage
from exif_jax.config import load_config
from exif_jax.data import pipeline
from exif_jax.metrics_writer import log
from exif_jax.models import towers
from exif_jax.tokenizer import make_tokenizer
from exif_jax.train_loop import Hooks, LossHook, TrainingAborted, train_loop

# Parameters that get weight decay: matrices and embedding tables. Not biases, norm scales, the
# logit scale, position embeddings, cls tokens or MAP probes.
DECAY_RE = r"(^|/)(kernel|embedding)$"
ENV_PREFIX = "EXIF_JAX_"


# ------------------------------------------------------------------------------------------ multi-host

def init_distributed(mode: str = "auto", coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> None:
    """jax.distributed.initialize from explicit arguments / EXIF_JAX_* env vars, or auto-detected (TPU, SLURM)."""
    coordinator = coordinator or os.environ.get(ENV_PREFIX + "COORDINATOR")
    num_processes = num_processes or _env_int("NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("PROCESS_ID")
    if mode == "off":
        return
    # CPU processes talk through gloo (the default CPU client has no cross-process collectives).
    # The setting only concerns the CPU backend, so GPU and TPU runs are unaffected.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator:
        if num_processes is None or process_id is None:
            raise ValueError("--coordinator needs --num-processes and --process-id (or EXIF_JAX_NUM_PROCESSES "
                             "and EXIF_JAX_PROCESS_ID)")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    elif mode == "on" or _cluster_detected():
        jax.distributed.initialize()  # jax reads the TPU metadata / SLURM variables itself


def _env_int(name: str) -> int | None:
    v = os.environ.get(ENV_PREFIX + name)
    return int(v) if v not in (None, "") else None


def _cluster_detected() -> bool:
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
    tpu_pod = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ
    return slurm or tpu_pod


# ---------------------------------------------------------------------------------- model and optimizer

def decay_mask(params: Any) -> Any:
    """True for the parameters that get weight decay (see DECAY_RE)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: bool(re.search(DECAY_RE, sharding.path_str(p))) and "pos_embedding" not in sharding.path_str(p),
        params)


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(global-norm clipping -> AdamW with decay mask, the lr schedule: linear warmup then cosine to 0)."""
    o = config.optim
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, o.lr, max(int(o.warmup_steps), 1), max(int(config.train.steps), int(o.warmup_steps) + 1),
        end_value=float(o.end_lr))
    tx = optax.chain(
        optax.clip_by_global_norm(o.clip_norm) if o.clip_norm else optax.identity(),
        optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=float(o.eps),
                    weight_decay=o.weight_decay, mask=decay_mask))
    return tx, schedule


def make_init(config: ml_collections.ConfigDict, vocab_size: int, tx: optax.GradientTransformation):
    """(graphdef, init) where init() -> the trainer's state dict (jit it with out_shardings)."""
    graphdef = nnx.split(nnx.eval_shape(lambda: towers.create_model(config, vocab_size, nnx.Rngs(0))),
                         nnx.Param, ...)[0]

    def init() -> dict[str, Any]:
        model = towers.create_model(config, vocab_size, nnx.Rngs(config.seed))
        _, params, rest = nnx.split(model, nnx.Param, ...)
        return {"params": params, "rest": rest, "opt": tx.init(params),
                "step": jnp.zeros((), jnp.int32), "nan_skips": jnp.zeros((), jnp.int32),
                # Raw key data (not a typed key) so orbax stores it like any array.
                "rng": jax.random.key_data(jax.random.key(config.seed + 1))}

    return graphdef, init


# ------------------------------------------------------------------------------------------ train step

def make_train_step(graphdef: Any, loss_fn: Any, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    config: ml_collections.ConfigDict, state_shardings: Any, mesh: jax.sharding.Mesh,
                    loss_hook: LossHook | None = None):
    """jit(state, batch) -> (state, metrics), state donated, shardings pinned at the boundary."""
    accum = int(config.optim.grad_accum)

    def loss_of(params, rest, batch, step):
        # copy=True: fresh Variables in this trace. Without it the BatchStats in `rest` (not differentiated,
        # so value_and_grad passes them through as they are) keep the outer trace, and BatchNorm's update of
        # its running statistics raises TraceContextError: a ResNet tower could not train.
        model = nnx.merge(graphdef, params, rest, copy=True)
        img, txt, scale, bias = model(batch["image"], batch["tokens"])
        loss, metrics = loss_fn(img, txt, scale, bias, batch["image_id"], batch["text_id"])
        if loss_hook is not None:
            loss, metrics = loss_hook(loss, metrics, step)
        return loss, (metrics, nnx.split(model, nnx.Param, ...)[2])

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    def step_fn(state, batch):
        step = state["step"] + 1
        if accum == 1:
            (loss, (metrics, rest)), grads = grad_fn(state["params"], state["rest"], batch, step)
        else:
            # [B, ...] -> [accum, B/accum, ...] taking every accum-th row: each micro-batch keeps rows on
            # every device, so the split is a local transpose, not a reshuffle.
            micro = jax.tree.map(
                lambda x: jnp.moveaxis(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 1, 0), batch)

            def body(carry, mb):
                g_sum, rest = carry
                (l, (m, rest)), g = grad_fn(state["params"], rest, mb, step)
                return (jax.tree.map(jnp.add, g_sum, g), rest), (l, m)

            zeros = jax.tree.map(jnp.zeros_like, state["params"])
            (grads, rest), (ls, ms) = jax.lax.scan(body, (zeros, state["rest"]), micro)
            grads = jax.tree.map(lambda g: g / accum, grads)
            loss, metrics = ls.mean(), jax.tree.map(jnp.mean, ms)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)

        def keep_if_ok(new, old):
            return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)

        nan_skips = state["nan_skips"] + (~ok).astype(jnp.int32)
        rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state["rng"]))[0])
        new_state = {"params": keep_if_ok(params, state["params"]), "rest": keep_if_ok(rest, state["rest"]),
                     "opt": keep_if_ok(opt, state["opt"]), "step": step, "nan_skips": nan_skips, "rng": rng}
        # The loss's own metrics (losses.METRICS, named there), then the step's.
        metrics = {**metrics, "grad_norm": grad_norm, "lr": schedule(state["step"] - state["nan_skips"]),
                   "skipped": (~ok).astype(jnp.int32), "nan_skips": nan_skips,
                   # Which examples this step saw (sum of global image ids): equal runs see equal batches.
                   "fingerprint": jnp.sum(batch["image_id"])}
        return new_state, metrics

    batch_sh = sharding.batch_sharding(mesh)
    return jax.jit(step_fn, in_shardings=(state_shardings, batch_sh),
                   out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


def resume_or_init(mngr: checkpoint.Checkpoints, start: int, trainer: Trainer, data_iter: Any, workdir: str,
                   config: Any = None) -> tuple[dict[str, Any], str]:
    """(state, note): the state restored from step `start` (0: initialized), checked for NaN/Inf, and the
    sentence a stop for non-finite steps ends with (what to suspect, given how the state looked at restore)."""
    if not start:
        return trainer.init(), "the state was initialized, not restored: lower optim.lr or check the data"
    state = checkpoint.restore(mngr, start, checkpoint.abstract(trainer.abstract_state, trainer.state_shardings),
                               data_iter, config, log=log)
    log(f"resumed from {workdir}/ckpt step {start}")
    bad = checkpoint.nonfinite(state)
    if not bad:
        return state, (f"the state restored from step {start} was finite (checked at restore), so the non-finite "
                       "values arose in training: lower optim.lr or check the data")
    named = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
    log(f"warning: the state restored from step {start} holds NaN or infinity in {len(bad)} arrays ({named}); "
        "its digests verify, so it was saved so")
    return state, (f"the state restored from step {start} already held non-finite values ({named}): the "
                   "checkpoint, not optim.lr or the data, is the first suspect; resume from an older step")


class Trainer(NamedTuple):
    """What main needs to train: a sharded init, the state's layout, and the step."""
    init: Callable[[], dict[str, Any]]          # () -> state, created sharded on the mesh
    abstract_state: dict[str, Any]              # ShapeDtypeStructs (restore templates, parameter count)
    state_shardings: dict[str, Any]             # NamedShardings from the partition rules
    train_step: Callable[..., Any]              # jit(state, batch) -> (state, metrics), state donated
    schedule: optax.Schedule


def make_trainer(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, vocab_size: int,
                 loss_hook: LossHook | None = None) -> Trainer:
    """Optimizer, sharded init and train step for `config` on `mesh` (shared by main, tests, benchmarks)."""
    tx, schedule = make_optimizer(config)
    graphdef, init = make_init(config, vocab_size, tx)
    abstract_state = jax.eval_shape(init)
    state_sh = sharding.state_shardings(abstract_state, mesh,
                                        fsdp_min_size=int(config.mesh.fsdp_min_size))
    loss_fn = losses.make_loss_fn(config.loss.kind, config.loss.impl, mesh, batch_axes=sharding.BATCH_AXES)
    train_step = make_train_step(graphdef, loss_fn, tx, schedule, config, state_sh, mesh, loss_hook)
    return Trainer(jax.jit(init, out_shardings=state_sh), abstract_state, state_sh, train_step, schedule)


# ------------------------------------------------------------------------------------------------ main

def main(config_path: str, workdir: str, overrides: Sequence[str] = (), *, distributed: str = "auto",
         coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
         hooks: Hooks = Hooks()) -> int:
    """Train (or resume) the two towers as the config says; checkpoints, events and metrics.jsonl in workdir."""
    # 1. Config. ----------------------------------------------------------------------------------------
    workdir = storage.normalize(workdir)  # a local path, gs://… or s3://…
    config = load_config(config_path, overrides)
    c_train = config.train
    if not config.data.train_dir:
        raise ValueError("config.data.train_dir is empty: build ArrayRecords with `exif-jax build-data "
                         "--images DIR --out DATA` and pass --config.data.train_dir=DATA")

    # 2. Multi-host init (before anything touches a device). -------------------------------------------
    init_distributed(distributed, coordinator, num_processes, process_id)
    is_main = jax.process_index() == 0

    # 3. Mesh. ---------------------------------------------------------------------------------------
    mesh = sharding.make_mesh(config.mesh)
    log(f"{jax.process_count()} process(es), {jax.device_count()} {jax.devices()[0].device_kind} device(s), "
        f"mesh {dict(mesh.shape)}")

    # 4. Data. -----------------------------------------------------------------------------------------
    tokenizer = make_tokenizer(config)
    data_iter = pipeline.make_global_iterator(config, tokenizer, mesh, seed=config.seed,
                                              batch_axes=sharding.BATCH_AXES)

    vocab_size = int(config.model.text.vocab_size) or tokenizer.vocab_size
    config.model.text.vocab_size = vocab_size  # config.json records what is built

    # 5. Model, optimizer (abstract: nothing allocated yet) and the jitted train step. ----------------
    trainer = make_trainer(config, mesh, vocab_size, hooks.loss)
    abstract_state, state_sh = trainer.abstract_state, trainer.state_shardings
    # Once, on process 0: what each tower holds and how the rules laid it out on this mesh.
    log(sharding.overview(abstract_state["params"], state_sh["params"], abstract_state["opt"], state_sh["opt"]))

    # 6. Checkpoints: resume from the newest step whose digests verify (newer, corrupt ones are named and
    # moved aside), else initialize. No step verifies: NoIntactCheckpoint before anything is written.
    mngr = checkpoint.open_for_training(storage.join(workdir, "ckpt"), int(c_train.keep), log=log)
    try:
        if is_main:
            storage.write_text(storage.join(workdir, "config.json"), config.to_json(indent=2))
        start = mngr.resume or 0
        state, state_note = resume_or_init(mngr, start, trainer, data_iter, workdir, config)
    except BaseException:
        mngr.close()
        raise
    total = int(c_train.steps)

    # 7. Metrics. --------------------------------------------------------------------------------------
    writer = metrics_writer.MetricsWriter(
        workdir, total_steps=total, global_batch=int(config.data.global_batch_size),
        flops_per_example=towers.flops_per_example(config), num_devices=jax.device_count(),
        peak_per_device=metrics_writer.peak_flops(), enabled=is_main)

    # 8. The loop, to train.steps or this run's max_steps_per_run (time-limited jobs). ------------------
    stop_at = total if int(c_train.max_steps_per_run) <= 0 else min(total, start + int(c_train.max_steps_per_run))
    if start >= total:
        log(f"nothing to do: checkpoint step {start} >= train.steps {total}")
    aborted = False
    try:
        train_loop(state, trainer.train_step, data_iter, mngr, writer, c_train, start=start, stop_at=stop_at,
                   workdir=workdir, hooks=hooks, state_note=state_note)
    except TrainingAborted as e:
        log(str(e))
        aborted = True
        raise
    finally:
        if not aborted:  # an aborted run leaves its checkpoints as they were
            mngr.wait_until_finished()
        mngr.close()
        writer.close()
        data_iter.close()
    return 0


# ------------------------------------------------------------------------------------------------- CLI

def add_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `exif-jax train`; any --config.a.b=v (or --config.a.b v) overrides a config value."""
    parser.add_argument("--config", required=True, metavar="FILE", help="a Python config file (configs/*.py)")
    parser.add_argument("--workdir", required=True, metavar="WORKDIR",
                        help="config.json, checkpoints (ckpt/), TensorBoard events (tb/), metrics.jsonl; a local "
                             "path, gs://bucket/run or s3://bucket/run; rerun the same command to resume (from the "
                             "newest checkpoint whose digests verify)")
    parser.add_argument("--distributed", choices=("auto", "on", "off"), default="auto",
                        help="auto: explicit coordinator if given, else detect a TPU pod / SLURM job")
    parser.add_argument("--coordinator", metavar="HOST:PORT",
                        help="process 0's address (env EXIF_JAX_COORDINATOR); needs --num-processes, --process-id")
    parser.add_argument("--num-processes", type=int, metavar="N",
                        help="processes in the job, with --coordinator (env EXIF_JAX_NUM_PROCESSES)")
    parser.add_argument("--process-id", type=int, metavar="I",
                        help="this process's index, with --coordinator (env EXIF_JAX_PROCESS_ID)")
    cli_args.add_note(parser, "--config.KEY=VALUE (or --config.KEY VALUE), any number of them: override a value "
                              "of the config file, e.g. --config.train.steps=100 --config.data.train_dir=DATA")
    parser.set_defaults(config_overrides=[])
    original = parser.parse_known_args

    # argparse cannot declare a family of "--config.*" flags: take them out before it parses the rest.
    def parse_known_args(args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        rest, overrides, i = [], [], 0
        while i < len(args):
            a = args[i]
            if a.startswith("--config."):
                if "=" in a:
                    overrides.append(a[len("--config."):])
                elif i + 1 < len(args):
                    overrides.append(f"{a[len('--config.'):]}={args[i + 1]}")
                    i += 1
                else:
                    parser.error(f"{a}: missing value")
            else:
                rest.append(a)
            i += 1
        ns, extra = original(rest, namespace)
        ns.config_overrides = list(getattr(ns, "config_overrides", []) or []) + overrides
        return ns, extra

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]


def cli_main(args: argparse.Namespace, hooks: Hooks = Hooks()) -> int:
    """Run `main` with the parsed flags."""
    given = [f for f, v in (("--coordinator", args.coordinator), ("--num-processes", args.num_processes),
                            ("--process-id", args.process_id)) if v is not None]
    if given and args.distributed == "off":  # flags that cannot apply are errors, not ignored
        print(f"exif-jax train: {', '.join(given)} set up a multi-process job; --distributed off runs one "
              "process: drop one or the other", file=sys.stderr)
        return 2
    if given and not (args.coordinator or os.environ.get(ENV_PREFIX + "COORDINATOR")):
        print(f"exif-jax train: {', '.join(given)} only apply with --coordinator (or {ENV_PREFIX}COORDINATOR)",
              file=sys.stderr)
        return 2
    try:
        return main(args.config, args.workdir, args.config_overrides, distributed=args.distributed,
                    coordinator=args.coordinator, num_processes=args.num_processes, process_id=args.process_id,
                    hooks=hooks)
    except TrainingAborted as e:
        print(f"exif-jax train: {e}", file=sys.stderr)
        return 3
    except checkpoint.NoIntactCheckpoint as e:
        print(f"exif-jax train: {e}", file=sys.stderr)
        return 4
