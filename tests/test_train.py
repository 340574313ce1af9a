"""The trainer end to end on real ArrayRecords of the bundled photos: learning, TensorBoard events, exact
resume after kill -9 mid-save and SIGTERM, two processes == one, NaN skips. Runs are real `exif-jax train`
processes (8 fake CPU devices), or tests/train_with_hooks.py (the same trainer with faults injected through
its hooks) where a test needs a fault; a shared persistent compilation cache keeps repeated compiles cheap."""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from exif_jax import losses

REPO = Path(__file__).parents[1]
CONFIG = str(REPO / "configs" / "tiny.py")
STEPS = 30
FAST_COMPILE = "--xla_backend_optimization_level=0"
EXE = [sys.executable, "-m", "exif_jax.cli", "train", "--config", CONFIG]
WITH_HOOKS = [sys.executable, str(REPO / "tests" / "train_with_hooks.py"), "--config", CONFIG]


def overrides(data_dir: str) -> list[str]:
    """The tiny run every test here shares (one compiled program for all of them)."""
    # f32 compute: runs on different process layouts then differ only by f32 reduction order. The crop spread
    # window is per process (it mixes that process's photos), so it is off where 2 processes must equal 1.
    return [f"data.train_dir={data_dir}", "data.crop_size=32", "data.global_batch_size=16", "data.spread_batches=1",
            "model.dtype=float32", "model.image.depth=1", "model.text.depth=1",
            f"train.steps={STEPS}", "train.ckpt_every=10", "train.log_every=5", "train.keep=3",
            "optim.lr=2e-3", "optim.warmup_steps=3"]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    # XLA's CPU backend at -O0 compiles ~2x faster; these runs are compile-bound, not compute-bound.
    e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    e.pop("EXIF_JAX_COORDINATOR", None)
    return e


def start(workdir: Path, args: list[str], env: dict[str, str], log_name: str = "log.txt", faults: tuple = (),
          **kw) -> subprocess.Popen:
    """`exif-jax train` with --config.`args`; with `faults` (train_with_hooks.py flags), the hooked trainer."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir.parent / f"{workdir.name}.{log_name}", "a")
    exe = WITH_HOOKS + list(faults) if faults else EXE
    cmd = exe + ["--workdir", str(workdir)] + [f"--config.{a}" for a in args]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, **kw)


def finish(p: subprocess.Popen, timeout: float = 240) -> int:
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        raise


def log_text(workdir: Path, log_name: str = "log.txt") -> str:
    return (workdir.parent / f"{workdir.name}.{log_name}").read_text()


def rows(workdir: Path) -> dict[int, dict]:
    """metrics.jsonl by step; a step run twice (before and after a restart) keeps its last row."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["step"]] = r
    return out


def complete_steps(workdir: Path) -> list[int]:
    return sorted(int(d.name) for d in (workdir / "ckpt").iterdir() if d.name.isdigit())


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    t = time.time()
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}")
        if time.time() - t > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def ref(tmp_path_factory, bundled_records, env) -> Path:
    """One uninterrupted run, the reference for every comparison."""
    wd = tmp_path_factory.mktemp("ref") / "run"
    rc = finish(start(wd, overrides(bundled_records), env))
    assert rc == 0, log_text(wd)
    return wd


@pytest.mark.subprocess
@pytest.mark.slow
def test_end_to_end_from_arrayrecords(ref):
    r = rows(ref)
    assert sorted(r) == list(range(1, STEPS + 1))
    assert complete_steps(ref) == [10, 20, 30]
    assert all(math.isfinite(x["loss"]) and x["skipped"] == 0 for x in r.values())
    # The loss module's metric names, each once (no "temperature": the logit scale is logged as such).
    assert set(losses.METRICS) <= set(r[1]) and "temperature" not in r[1], sorted(r[1])
    assert json.loads((ref / "config.json").read_text())["train"]["steps"] == STEPS
    out = log_text(ref)
    assert f"step {STEPS}/{STEPS}" in out and "img/s" in out and "ETA" in out
    assert "parameters and their layout" in out and re.search(r"^total .* [\d.]+M parameters", out, re.M), out


@pytest.mark.subprocess
@pytest.mark.slow
def test_loss_falls_on_real_photos(ref):
    loss = np.array([rows(ref)[s]["loss"] for s in range(1, STEPS + 1)])
    first, last = loss[:5].mean(), loss[-5:].mean()
    assert last < 0.8 * first, f"loss did not fall: first 5 steps {first:.3f}, last 5 {last:.3f}"


def read_events(path: str) -> list:
    """TFRecord framing (u64 length, u32 crc, payload, u32 crc) of tensorboardX Event protos."""
    from tensorboardX.proto import event_pb2

    events, data = [], Path(path).read_bytes()
    i = 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        ev = event_pb2.Event()
        ev.ParseFromString(data[i + 12:i + 12 + n])
        events.append(ev)
        i += 12 + n + 4
    return events


@pytest.mark.subprocess
@pytest.mark.slow
def test_tensorboard_events_hold_the_scalars(ref):
    files = glob.glob(str(ref / "tb" / "events.out.tfevents.*"))
    assert len(files) == 1
    scalars: dict[str, dict[int, float]] = {}
    for ev in read_events(files[0]):
        for v in ev.summary.value:
            scalars.setdefault(v.tag, {})[ev.step] = v.simple_value
    for tag in ("train/loss", "train/i2t_top1", "train/t2i_top1", "train/lr", "train/logit_scale",
                "train/grad_norm", "perf/img_per_sec"):
        assert tag in scalars, sorted(scalars)
    assert "train/temperature" not in scalars  # the logit scale is logged once, by its name
    r = rows(ref)
    assert sorted(scalars["train/loss"]) == list(range(1, STEPS + 1))
    for s in (1, 15, STEPS):
        assert scalars["train/loss"][s] == pytest.approx(r[s]["loss"], rel=1e-6)
        assert scalars["train/lr"][s] == pytest.approx(r[s]["lr"], rel=1e-6)


@pytest.mark.subprocess
@pytest.mark.slow
def test_kill9_mid_save_and_sigterm_resume_exactly(ref, tmp_path, bundled_records, env):
    wd = tmp_path / "run"
    base = overrides(bundled_records)
    # 1. The save at step 20 hangs inside orbax (temporary directory written, not renamed): kill -9 there.
    p = start(wd, base, env, faults=("--slow-save-step", "20", "--slow-save-s", "600"))
    wait_for(lambda: (wd / "slow_save_marker.txt").exists(), 200, "the save at step 20", p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert complete_steps(wd) == [10], "a killed save must not count as a checkpoint"
    assert [d for d in os.listdir(wd / "ckpt") if d.startswith("20.")], "expected the killed save's leftovers"
    # 2. Restart: resumes from 10. SIGTERM it mid-loop: it saves where it is and exits cleanly.
    n_before = len((wd / "metrics.jsonl").read_text().splitlines())
    p = start(wd, base, env, faults=("--step-sleep-s", "0.3"))
    wait_for(lambda: len((wd / "metrics.jsonl").read_text().splitlines()) >= n_before + 5, 200,
             "steps after the restart", p)
    p.send_signal(signal.SIGTERM)
    assert finish(p) == 0, log_text(wd)
    out = log_text(wd)
    assert "resumed from" in out and "step 10" in out
    saved = int(out.split("preempted: saved step ")[1].split()[0])
    assert 15 <= saved < STEPS and saved in complete_steps(wd)
    # 3. Restart again: runs to the end.
    assert finish(start(wd, base, env)) == 0, log_text(wd)
    got, want = rows(wd), rows(ref)
    assert sorted(got) == sorted(want)
    for s in sorted(want):
        assert got[s]["fingerprint"] == want[s]["fingerprint"], f"step {s}: a different batch"
        assert got[s]["loss"] == want[s]["loss"], f"step {s}: loss {got[s]['loss']} != {want[s]['loss']}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_job_id() -> int:
    """A SLURM job id whose derived coordinator port is free: jax uses job_id % 4096 + 61440 (slurm_cluster.py)."""
    for port in range(61440 + os.getpid() % 4096, 65536):
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return 4096 * 1000 + port - 61440
    raise RuntimeError("no free port in 61440-65535")


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize("launch", ["coordinator", "slurm"])
def test_two_processes_match_one(launch, ref, tmp_path, bundled_records, env):
    """2 processes x 4 CPU devices == 1 x 8: started with explicit coordinator flags, or the way `srun` starts
    them (SLURM variables only; the trainer detects the job and jax.distributed reads the rest)."""
    wd = tmp_path / "run"
    e = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count=4 {FAST_COMPILE}")
    port, n, job = free_port(), 3, slurm_job_id()
    procs = []
    for i in range(2):
        args = overrides(bundled_records) + [f"train.max_steps_per_run={n}"]
        cmd = EXE + ["--workdir", str(wd)] + [f"--config.{a}" for a in args]
        pe = dict(e)
        if launch == "coordinator":
            cmd += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]
        else:
            pe.update(SLURM_JOB_ID=str(job), SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
                      SLURM_PROCID=str(i), SLURM_LOCALID=str(i), SLURM_STEP_NUM_NODES="1")
        log = open(tmp_path / f"proc{i}.txt", "w")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=pe, cwd=REPO))
    codes = [finish(p, 300) for p in procs]
    assert codes == [0, 0], (tmp_path / "proc0.txt").read_text()[-3000:] + (tmp_path / "proc1.txt").read_text()[-3000:]
    assert "2 process(es), 8 cpu device(s)" in (tmp_path / "proc0.txt").read_text()
    got, want = rows(wd), rows(ref)
    assert sorted(got) == list(range(1, n + 1))
    for s in got:
        assert got[s]["fingerprint"] == want[s]["fingerprint"], f"step {s}: different examples"
        assert got[s]["loss"] == pytest.approx(want[s]["loss"], rel=1e-5, abs=1e-6), f"step {s}"
    # Each process saved its own data-iterator position.
    saved = os.listdir(wd / "ckpt" / str(n) / "data")
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(saved), saved


@pytest.mark.subprocess
@pytest.mark.slow
def test_nan_steps_are_skipped_then_training_stops(tmp_path, bundled_records, env):
    wd = tmp_path / "run"
    args = overrides(bundled_records) + ["train.max_nan_skips=1", "train.log_every=1"]
    assert finish(start(wd, args, env, faults=("--poison-steps", "3,5"))) == 3, log_text(wd)
    assert re.search(r"exif-jax train: stopping: 2 steps .*train.max_nan_skips=1.*step 5", log_text(wd))
    r = rows(wd)
    assert sorted(r) == [1, 2, 3, 4, 5]
    assert [r[s]["skipped"] for s in range(1, 6)] == [0, 0, 1, 0, 1]
    assert r[3]["loss"] == "nan" and r[5]["loss"] == "nan"
    # Had the NaN update at step 3 gone through, every later loss would be NaN.
    assert math.isfinite(r[4]["loss"]) and r[4]["nan_skips"] == 1


def test_config_overrides_take_the_existing_type():
    from exif_jax import train

    c = train.load_config(CONFIG, ["data.crop_size=16", "model.learn_logit_scale=false", "optim.lr=3e-4",
                                   "model.image.mean=0.25,0.5,0.75", "train.steps=7"])
    assert (c.data.crop_size, c.model.image.size) == (16, 16)  # references in the config follow
    assert c.model.learn_logit_scale is False and c.optim.lr == 3e-4 and c.model.image.mean == (0.25, 0.5, 0.75)
    with pytest.raises(KeyError, match="no section 'debug'"):  # test hooks are not config keys
        train.load_config(CONFIG, ["debug.poison_steps=3"])
    with pytest.raises(KeyError, match="no such key"):
        train.load_config(CONFIG, ["data.crop=3"])
    with pytest.raises(ValueError, match="cannot parse as int"):
        train.load_config(CONFIG, ["data.crop_size=big"])
    parser = argparse.ArgumentParser()
    train.add_args(parser)
    ns = parser.parse_args(["--config", CONFIG, "--workdir", "w", "--config.a.b=1", "--config.c", "x y"])
    assert ns.config_overrides == ["a.b=1", "c=x y"]
