"""What checkpoint digests cost on a real-sized save (issue 23: <= 2% of the save or <= 1 s per GiB per host).

  python benchmarks/checkpoint_digest.py [--config configs/vit_b16.py] [--repeats 3] [--dir /tmp/ckpt_bench]

Builds the trainer's state for the config (params + AdamW moments + counters, shapes from the real init, random
values so orbax's compression does not shrink them), then saves it with plain orbax and with
exif_jax.checkpoint (digests written inside the commit), `repeats` times each, alternating, and times:
  - the whole save (start to committed) both ways, median;
  - the digest pass alone (write_step_digests on a just-written step: the part the commit adds);
  - the verification a restore does (check_step);
  - CRC-32C, BLAKE2b and SHA-256 over the same bytes in memory (why CRC-32C).
Prints a Markdown table. Local disk only (the store the number is specified for); one process.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's exif_jax, run as a script

import google_crc32c  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from etils import epath  # noqa: E402

from exif_jax import checkpoint, storage, train  # noqa: E402
from exif_jax.config import load_config  # noqa: E402
from exif_jax.tokenizer import vocab_size_of  # noqa: E402


def random_state(config_path: str) -> tuple[dict, int]:
    """The trainer's state dict for `config_path` with random float values; (state, bytes)."""
    config = load_config(config_path, [])
    tx, _ = train.make_optimizer(config)
    _, init = train.make_init(config, vocab_size_of(config), tx)
    abstract = jax.eval_shape(init)
    rng = np.random.default_rng(0)

    def fill(s: jax.ShapeDtypeStruct) -> jax.Array:
        if np.issubdtype(s.dtype, np.floating):
            x = rng.random(s.shape, dtype=np.float32).astype(s.dtype)
        else:
            x = np.zeros(s.shape, s.dtype)
        return jax.device_put(x)

    state = jax.tree.map(fill, abstract)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    return state, nbytes


def items(state: dict) -> ocp.args.Composite:
    return ocp.args.Composite(
        model=ocp.args.StandardSave({k: state[k] for k in checkpoint.MODEL_KEYS}),
        train=ocp.args.StandardSave({k: state[k] for k in checkpoint.TRAIN_KEYS}))


def timed_save(make, state: dict, step: int) -> float:
    mngr = make()
    t = time.perf_counter()
    mngr.save(step, args=items(state))
    mngr.wait_until_finished()
    dt = time.perf_counter() - t
    mngr.close()
    return dt


def step_bytes(step_dir: str) -> int:
    return sum(os.path.getsize(os.path.join(step_dir, n)) for n in storage.walk_files(step_dir))


def hash_rate(blobs: list[bytes], fn) -> float:
    t = time.perf_counter()
    for b in blobs:
        fn(b)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/vit_b16.py")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to save (default: a temporary folder, removed after)")
    a = ap.parse_args(argv)
    root = a.dir or tempfile.mkdtemp(prefix="ckpt_digest_bench-")
    plain_dir, ours_dir = os.path.join(root, "plain"), os.path.join(root, "digested")
    state, nbytes = random_state(a.config)
    print(f"{a.config}: state {nbytes / 2**30:.2f} GiB in {len(jax.tree.leaves(state))} arrays; saving to {root}",
          flush=True)

    def plain() -> ocp.CheckpointManager:
        return ocp.CheckpointManager(epath.Path(plain_dir), options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, enable_async_checkpointing=True))

    def ours() -> checkpoint.Checkpoints:
        return checkpoint.make_manager(ours_dir, keep=1)

    t_plain, t_ours, t_digest, t_verify = [], [], [], []
    for r in range(1, a.repeats + 1):
        t_plain.append(timed_save(plain, state, r))
        t_ours.append(timed_save(ours, state, r))
        step_dir = os.path.join(ours_dir, str(r))
        t = time.perf_counter()
        checkpoint.write_step_digests(step_dir)  # the pass the commit ran (file cache as warm as it was then)
        t_digest.append(time.perf_counter() - t)
        t = time.perf_counter()
        why = checkpoint.check_step(ours_dir, r)
        t_verify.append(time.perf_counter() - t)
        assert why is None, why
        print(f"repeat {r}: plain {t_plain[-1]:.2f} s, digested {t_ours[-1]:.2f} s, digest pass {t_digest[-1]:.2f} s, "
              f"verify {t_verify[-1]:.2f} s", flush=True)
    last = os.path.join(ours_dir, str(a.repeats))
    on_disk = step_bytes(last)
    gib = on_disk / 2**30
    blobs = [Path(last, n).read_bytes() for n in storage.walk_files(last)]
    algos = {"crc32c (google_crc32c, hardware)": lambda b: google_crc32c.value(b),
             "blake2b": lambda b: hashlib.blake2b(b).digest(), "sha256": lambda b: hashlib.sha256(b).digest()}
    rates = {k: hash_rate(blobs, f) for k, f in algos.items()}

    med = statistics.median
    print()
    print(f"| {a.config}: {nbytes / 2**30:.2f} GiB of state, {gib:.2f} GiB on disk, {len(blobs)} files; "
          f"median of {a.repeats} | seconds | s per GiB on disk | share of the plain save |")
    print("|---|---|---|---|")
    print(f"| plain orbax save (start to committed) | {med(t_plain):.2f} | {med(t_plain) / gib:.2f} | 100% |")
    print(f"| exif_jax.checkpoint save (digests in the commit) | {med(t_ours):.2f} | {med(t_ours) / gib:.2f} | "
          f"{100 * med(t_ours) / med(t_plain):.0f}% |")
    print(f"| digest pass alone (write_step_digests) | {med(t_digest):.2f} | {med(t_digest) / gib:.2f} | "
          f"{100 * med(t_digest) / med(t_plain):.1f}% |")
    print(f"| verify at restore (check_step) | {med(t_verify):.2f} | {med(t_verify) / gib:.2f} | - |")
    for k, dt in rates.items():
        print(f"| {k} over the bytes in memory | {dt:.2f} | {dt / gib:.2f} | - |")
    if not a.dir:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
