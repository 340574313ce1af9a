"""Training checkpoints with orbax: async, atomic, digested, the newest `keep` kept; on a local disk, gs:// or s3://.

One checkpoint (CKPT/<step>/) holds three items and a digest file:

  model         {"params", "rest"}                   the towers (rest: BatchNorm statistics, if any)
  train         {"opt", "step", "nan_skips", "rng"}   optimizer state, counters and the trainer's RNG key
  data          one JSON file per process              the grain iterator: where the next batch comes from
  digests.json  CRC-32C and size of every file above  written inside orbax's commit, so it is complete or absent

Commit: orbax writes into a temporary name and commits (local: a rename of `<step>.orbax-checkpoint-tmp-*`;
gs://: a `commit_success.txt` written last). Our TemporaryPath subclass writes digests.json just before that
commit, on process 0 once every process's files are written: a step without one is a save that never
finished. Restores verify every file against it first (`check_step`); the trainer takes the newest step that
verifies and moves the others, byte for byte, to CKPT/quarantine/<step> (with a .txt saying why), out of orbax's
sight: never deleted, never overwritten, and `keep` counts only good steps.

Stores (`staged`):
- local path: orbax directly.
- s3://: orbax 0.12.8 cannot write it ("Checkpoint path should be absolute"), so it is staged: orbax saves
  into a local temporary directory, and each committed step is uploaded file by file with its digests.json
  last: in the bucket digests.json is the commit marker, so an upload cut short is not a step (the next
  upload of that step replaces it). A restore downloads the step and verifies the downloaded bytes before
  orbax reads them. Staging needs one process (orbax's multi-process save needs one file system all processes
  see): several processes with an s3:// directory is an error.
- gs://, one process: staged the same way (the one remote path, tested on both emulators; tensorstore's OCDBT
  writes straight to the stock GCS emulator fail now and then with "Malformed StorageGeneration").
- gs://, several processes (a pod), or EXIF_JAX_GCS_DIRECT=1: orbax writes the bucket itself (tensorstore for
  the arrays, etils.epath for metadata, commit_success.txt as the commit; no renames), digests.json written
  by process 0 through the same commit hook, reading the step back.

Eval and export read only `model` (see `load_model`), verified the same way.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint._src.path import atomicity  # the TemporaryPath classes orbax commits with

from exif_jax import digests, storage
from exif_jax.data import pipeline

MODEL_KEYS = ("params", "rest")
TRAIN_KEYS = ("opt", "step", "nan_skips", "rng")
DIGESTS = "digests.json"
QUARANTINE = "quarantine"
# orbax's own bookkeeping at the step's top level, rewritten during the commit itself (after digests.json).
UNDIGESTED = frozenset({"_CHECKPOINT_METADATA", "commit_success.txt", DIGESTS})


# Orbax splits a replicated array's write across its replicas; each slice is an eager jax op (compiled
# once per shape, dispatched per replica). Worth it for big arrays on pods, pure overhead for the
# hundreds of small ones (norms, biases, counters): only slices of at least 1 MiB are split.
MIN_REPLICA_SLICE_BYTES = 1 << 20


class NoIntactCheckpoint(RuntimeError):
    """Checkpoints exist but none verifies; the message lists each and why."""


# ----------------------------------------------------------------------------- steps and their digests

def list_steps(ckpt_dir: str) -> list[int]:
    """Step numbers with a folder in `ckpt_dir` (committed or not), oldest first; [] if there is none."""
    try:
        names = storage.listdir(ckpt_dir)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def write_step_digests(step_dir: str) -> dict[str, Any]:
    """Digest every file of a step (orbax's commit bookkeeping aside) into step_dir/digests.json."""
    names = [n for n in storage.walk_files(step_dir) if n not in UNDIGESTED]
    files = digests.digest_files(step_dir, names)
    digests.write_manifest(storage.join(step_dir, DIGESTS), files)
    return files


def staged(ckpt_dir: str) -> bool:
    """Whether checkpoints in `ckpt_dir` are saved into a local staging folder and uploaded (see the module
    doc): s3:// always; gs:// in a one-process run (EXIF_JAX_GCS_DIRECT=1: orbax writes gs:// itself, as it
    always does with several processes)."""
    scheme = storage.scheme_of(ckpt_dir)
    return scheme == "s3" or (scheme == "gs" and jax.process_count() == 1
                              and os.environ.get("EXIF_JAX_GCS_DIRECT", "") != "1")


def committed(ckpt_dir: str, step: int) -> bool:
    """Whether the store's commit of `step` happened. Local: any step folder (orbax renames a finished save
    into place); staged uploads: digests.json, uploaded last; gs:// written by orbax: its commit_success.txt.
    An uncommitted step is a save cut short: orbax's cleanup (or the next upload) removes it, nobody reads it."""
    if not storage.is_remote(ckpt_dir):
        return True
    marker = DIGESTS if staged(ckpt_dir) else "commit_success.txt"
    return storage.exists(storage.join(ckpt_dir, str(step), marker))


def check_step(ckpt_dir: str, step: int, items: Sequence[str] | None = None, *, shown_as: str | None = None
               ) -> str | None:
    """Why step `step` cannot be used (incomplete, or which files are corrupt: item, file, expected vs found
    digest), or None when every file (of `items`, if given) reads back as written. `shown_as`: the directory
    to name files under (the bucket, for a downloaded copy)."""
    step_dir = storage.join(ckpt_dir, str(step))
    named_dir = storage.join(shown_as or ckpt_dir, str(step))
    if not storage.exists(storage.join(step_dir, DIGESTS)):
        return f"incomplete: no {DIGESTS} (a save interrupted before its commit, or written without digests)"
    try:
        files = digests.read_manifest(storage.join(step_dir, DIGESTS))
    except ValueError as e:
        return f"corrupt: {e}"
    if items is not None:
        files = {k: v for k, v in files.items() if k.split("/", 1)[0] in items}
    bad = digests.verify_files(step_dir, files)
    if not bad:
        return None
    shown = "; ".join(f"item {m.name.split('/', 1)[0]!r}, file {storage.join(named_dir, m.name)}: expected "
                      f"{m.expected}, found {m.found}" for m in bad[:3])
    return f"corrupt: {shown}" + (f" (and {len(bad) - 3} more files)" if len(bad) > 3 else "")


@dataclasses.dataclass
class Selection:
    """The newest step that verifies (None: no checkpoint at all) and the newer ones that did not."""
    step: int | None
    rejected: list[tuple[int, str]]


def select(ckpt_dir: str, fetch: Any = None) -> Selection:
    """Check steps newest first and stop at the first that verifies; NoIntactCheckpoint if none does.
    `fetch(step) -> local root` first downloads a committed step, where its bytes are verified (s3:// staging)."""
    rejected: list[tuple[int, str]] = []
    for step in reversed([s for s in list_steps(ckpt_dir) if committed(ckpt_dir, s)]):
        reason = check_step(fetch(step) if fetch is not None else ckpt_dir, step, shown_as=ckpt_dir)
        if reason is None:
            return Selection(step, rejected)
        rejected.append((step, reason))
    if rejected:
        raise NoIntactCheckpoint(
            f"{ckpt_dir}: no intact checkpoint; nothing was resumed, moved or written:\n"
            + "\n".join(f"  step {s}: {why}" for s, why in rejected)
            + "\nRestore the files from a copy, or train in a new --workdir.")
    return Selection(None, [])


def quarantine(ckpt_dir: str, step: int, reason: str) -> str:
    """Move step `step` to ckpt_dir/quarantine/<step> (or <step>.N if taken), with <that>.txt saying why;
    returns where it went. Bytes are moved, not changed."""
    base = storage.join(ckpt_dir, QUARANTINE)
    taken = set(storage.listdir(base)) if storage.exists(base) else set()
    name, n = str(step), 1
    while name in taken or f"{name}.txt" in taken:
        n += 1
        name = f"{step}.{n}"
    src, dst = storage.join(ckpt_dir, str(step)), storage.join(base, name)
    if storage.is_remote(ckpt_dir):
        storage.copy_tree(src, dst)
        storage.rmtree(src)
    else:
        os.makedirs(base, exist_ok=True)
        os.rename(src, dst)
    storage.write_text(dst + ".txt", f"step {step} moved here from {src}: {reason}\n")
    return dst


# ----------------------------------------------------------------------------- the manager

def _commit_class(owner: Checkpoints) -> type:
    """orbax's TemporaryPath for this store, writing digests.json into a step just before its commit (and,
    for s3:// staging, uploading the committed step)."""
    direct_gs = owner.scheme == "gs" and not owner._staging
    base = atomicity.CommitFileTemporaryPath if direct_gs else atomicity.AtomicRenameTemporaryPath

    class DigestedCommit(base):  # type: ignore[misc, valid-type]
        async def finalize(self, *args: Any, **kwargs: Any) -> None:
            final = str(self.get_final())
            is_step = storage.normalize(storage.dirname(final)) == owner.local_root
            if is_step:  # (items' own temporary folders commit through this class too)
                await asyncio.to_thread(write_step_digests, str(self.get()))
            await super().finalize(*args, **kwargs)
            if is_step and owner._staging:
                await asyncio.to_thread(owner.upload, int(storage.basename(final)))

    DigestedCommit.__name__ = DigestedCommit.__qualname__ = f"Digested{base.__name__}"
    return DigestedCommit


class Checkpoints:
    """An orbax CheckpointManager in `directory` (local, gs:// or s3://) whose saves carry digests.

    Open with `open_for_training` (verifies, quarantines, says what it resumes) or `make_manager`."""

    def __init__(self, directory: str, keep: int, *, async_save: bool = True, resume: int | None = None):
        self.directory = storage.normalize(directory)
        self.scheme = storage.scheme_of(self.directory)
        self.keep = keep
        self.async_save = async_save
        self.resume = resume
        self._staging: str | None = None
        if staged(self.directory):
            if jax.process_count() > 1:
                raise ValueError(f"{self.directory}: an s3:// checkpoint directory is staged on a local disk, "
                                 "which needs one process; with several, use gs:// or a shared file system")
            self._staging = tempfile.mkdtemp(prefix="exif-jax-ckpt-")
        self.local_root = storage.normalize(self._staging or self.directory)
        self._mngr: ocp.CheckpointManager | None = None

    # The orbax manager is made lazily: an s3:// restore downloads its step into the staging folder first.
    def _orbax(self) -> ocp.CheckpointManager:
        if self._mngr is None:
            handler = ocp.type_handlers.get_type_handler(jax.Array)
            if getattr(handler, "_min_slice_bytes_for_replica_parallel", None) != MIN_REPLICA_SLICE_BYTES:
                ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
                    min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES), override=True)
            options = ocp.CheckpointManagerOptions(
                # s3:// staging keeps the newest step locally; the bucket keeps `keep` (see upload).
                max_to_keep=1 if self._staging else self.keep, create=True,
                enable_async_checkpointing=self.async_save,
                # A save killed before its commit leaves "<step>.orbax-checkpoint-tmp-*": never a valid step,
                # deleted at the next start.
                cleanup_tmp_directories=True, temporary_path_class=_commit_class(self))
            self._mngr = ocp.CheckpointManager(epath.Path(self.local_root), options=options)
        return self._mngr

    # -- what train_loop uses
    def all_steps(self) -> list[int]:
        """Committed steps (on s3://: uploaded with their digests.json)."""
        if self._staging:
            return [s for s in list_steps(self.directory) if committed(self.directory, s)]
        return list(self._orbax().all_steps())

    def latest_step(self) -> int | None:
        """The newest committed step, or None."""
        steps = self.all_steps()
        return max(steps) if steps else None

    def save(self, step: int, args: ocp.args.CheckpointArgs, *, force: bool = False) -> bool:
        """Start saving `args` at `step` (returns whether it started); waits for it if not async."""
        started = self._orbax().save(step, args=args, force=force)
        if not self.async_save:
            self._orbax().wait_until_finished()
        return started

    def restore(self, step: int, args: ocp.args.CheckpointArgs) -> Any:
        """orbax's restore of `step` (verified by `open_for_training` / `load_model` before)."""
        if self._staging and not os.path.isdir(os.path.join(self._staging, str(step))):
            self.fetch(step)
        return self._orbax().restore(step, args=args)

    def reached_preemption(self, step: int) -> bool:
        return self._orbax().reached_preemption(step)

    def wait_until_finished(self) -> None:
        if self._mngr is not None:
            self._mngr.wait_until_finished()

    def close(self) -> None:
        """Wait for saves (and uploads), close orbax, remove the s3:// staging folder."""
        if self._mngr is not None:
            self._mngr.close()
            self._mngr = None
        if self._staging:
            shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- s3:// staging
    def upload(self, step: int) -> None:
        """Copy committed local step `step` to the bucket, digests.json last; then prune to `keep` steps."""
        src, dst = os.path.join(self.local_root, str(step)), storage.join(self.directory, str(step))
        storage.rmtree(dst)  # the remains of an upload cut short (no digests.json: never a step)
        names = storage.walk_files(src)
        storage.copy_tree(src, dst, files=[n for n in names if n != DIGESTS])
        storage.upload_file(os.path.join(src, DIGESTS), storage.join(dst, DIGESTS))
        committed = self.all_steps()
        for old in committed[:max(len(committed) - self.keep, 0)]:
            storage.rmtree(storage.join(self.directory, str(old)))

    def fetch(self, step: int, items: Sequence[str] | None = None) -> str:
        """Download step `step` (only `items`, with orbax's top-level files, if given) into the staging folder;
        returns the staging root, where `check_step` then verifies the downloaded bytes."""
        assert self._staging is not None
        src = storage.join(self.directory, str(step))
        dst = os.path.join(self._staging, str(step))
        names = storage.walk_files(src)
        if items is not None:
            names = [n for n in names if "/" not in n or n.split("/", 1)[0] in items]
        shutil.rmtree(dst, ignore_errors=True)
        storage.copy_tree(src, dst + ".download", files=names)
        os.rename(dst + ".download", dst)
        return self._staging


def make_manager(directory: str, keep: int, *, async_save: bool = True) -> Checkpoints:
    """A digesting checkpoint manager in `directory` keeping the newest `keep` steps (no verification of what
    is there: the trainer uses `open_for_training`)."""
    return Checkpoints(directory, keep, async_save=async_save)


def open_for_training(directory: str, keep: int, log: Any = print) -> Checkpoints:
    """The trainer's checkpoints: the newest step that verifies becomes `.resume` (None: start fresh); newer
    steps that do not verify are named (step, item, file, expected vs found) and quarantined by process 0.
    NoIntactCheckpoint, with nothing moved or written, when steps exist and none verifies."""
    mngr = Checkpoints(directory, keep)
    try:
        fetch = (lambda s: mngr.fetch(s)) if mngr._staging else None
        chosen = select(mngr.directory, fetch=fetch)
    except BaseException:
        mngr.close()
        raise
    for step, why in chosen.rejected:
        log(f"checkpoint step {step} is unusable: {why}")
        if mngr._staging:  # our download of it, not the step itself
            shutil.rmtree(os.path.join(mngr._staging, str(step)), ignore_errors=True)
    # Every process has read what it verifies before process 0 moves anything, and sees the result after.
    _sync("exif_jax.checkpoint.verified")
    if chosen.rejected and jax.process_index() == 0:
        for step, why in chosen.rejected:
            where = quarantine(mngr.directory, step, why)
            log(f"moved step {step} to {where} for inspection (not deleted; not counted by train.keep)")
    _sync("exif_jax.checkpoint.quarantined")
    if chosen.rejected:
        log(f"falling back to step {chosen.step}, the newest that verifies" if chosen.step is not None
            else "no older checkpoint: starting from initialization")
    mngr.resume = chosen.step
    return mngr


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415 - only multi-process runs need it

        multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------- the trainer's items

def save(mngr: Checkpoints, step: int, state: dict[str, Any], data_iter: Any, *,
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


_DATA_STATE_RE = re.compile(r"^process_\d+-of-(\d+)\.json$")


def saved_process_count(mngr: Checkpoints, step: int) -> int | None:
    """How many processes wrote step `step`'s data-iterator state (None: no such files)."""
    try:
        names = storage.listdir(storage.join(mngr.directory, str(step), "data"))
    except FileNotFoundError:
        return None
    counts = {int(m.group(1)) for n in names if (m := _DATA_STATE_RE.match(n))}
    return counts.pop() if len(counts) == 1 else None


def restore(mngr: Checkpoints, step: int, abstract_state: dict[str, Any], data_iter: Any, config: Any = None,
            log: Any = print) -> dict[str, Any]:
    """The trainer's state at `step`, laid out as `abstract_state` (ShapeDtypeStructs with shardings: orbax
    reshards onto them, whatever mesh saved it); sets `data_iter` to continue after that step's last batch.

    A checkpoint written by another number of processes (a slice that came back another size) has no
    iterator state for this layout: the position is set from the step instead (pipeline.set_position, exact
    at one crop per photo; `config` says the data settings)."""
    saved = saved_process_count(mngr, step)
    elastic = saved is not None and saved != jax.process_count()
    items = dict(model=ocp.args.StandardRestore({k: abstract_state[k] for k in MODEL_KEYS}),
                 train=ocp.args.StandardRestore({k: abstract_state[k] for k in TRAIN_KEYS}))
    if elastic:
        if config is None:
            raise ValueError(f"step {step} was written by {saved} processes, this run has {jax.process_count()}: "
                             f"restoring the input position needs the run's config")
        pipeline.set_position(data_iter, config, step)  # one batch a step; before orbax, which is the slow part
        if jax.process_index() == 0:
            log(f"step {step} was written by {saved} process(es), this run has {jax.process_count()}: the input "
                f"continues at global batch {step} (the same examples), the state is resharded onto this mesh")
    else:
        items["data"] = pipeline.restore_args(data_iter)
    out = mngr.restore(step, args=ocp.args.Composite(**items))
    return {**out["model"], **out["train"]}


def nonfinite(state: Any) -> list[str]:
    """Paths of the floating-point arrays in `state` holding a NaN or an infinity (one reduction per array)."""
    flat = [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
            if jnp.issubdtype(x.dtype, jnp.floating)]
    ok = jax.jit(lambda xs: [jnp.all(jnp.isfinite(x)) for x in xs])([x for _, x in flat])
    return [name for (name, _), good in zip(flat, jax.device_get(ok)) if not bool(np.asarray(good))]


def abstract(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` carrying `shardings` (a restore template)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def load_model(config: Any, ckpt_dir: str, step: int | None = None, *, vocab_size: int | None = None
               ) -> tuple[Any, int]:
    """(model, step): the towers from a training checkpoint (newest if step is None), replicated; the model
    item's files are verified against the step's digests first (ValueError naming the file if not)."""
    from flax import nnx

    from exif_jax.models import towers
    from exif_jax.tokenizer import vocab_size_of

    with Checkpoints(ckpt_dir, keep=1) as mngr:
        found = [s for s in list_steps(mngr.directory) if committed(mngr.directory, s)]
        steps = [s for s in found if storage.exists(storage.join(mngr.directory, str(s), DIGESTS))]
        if step is None and not steps:
            raise FileNotFoundError(f"{ckpt_dir}: no complete checkpoint" + (
                f" (steps {found} have no {DIGESTS}: saves that never finished, or made before checkpoints "
                "carried digests)" if found else ""))
        if step is not None and step not in found:
            raise FileNotFoundError(f"{ckpt_dir}: no step {step} (complete steps: {steps})")
        step = max(steps) if step is None else step
        where = mngr.fetch(step, items=("model",)) if mngr._staging and step in steps else mngr.directory
        why = check_step(where, step, items=("model",), shown_as=mngr.directory)
        if why is not None:
            older = [s for s in steps if s < step]
            raise ValueError(f"{storage.join(mngr.directory, str(step))}: checkpoint step {step} is {why}"
                             + (f"; older steps: {older} (pick one with --step)" if older else ""))
        if vocab_size is None:
            vocab_size = vocab_size_of(config)
        model = nnx.eval_shape(lambda: towers.create_model(config, vocab_size, nnx.Rngs(0)))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                                {"params": params, "rest": rest})
        reader = ocp.CheckpointManager(epath.Path(mngr.local_root),
                                       options=ocp.CheckpointManagerOptions(read_only=True))
        out = reader.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(template)))
        reader.close()
    return nnx.merge(graphdef, out["model"]["params"], out["model"]["rest"]), step
