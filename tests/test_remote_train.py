"""Training from a build in object storage: 2 `exif-jax train` processes read data.train_dir=s3://… (moto on
127.0.0.1, behind the counting proxy) and match one process on the same build on local disk; together they make
about the requests one process makes (each reads only its slice of every batch)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import object_store  # tests/ is on sys.path (conftest's folder)
import pytest
from test_train import EXE, FAST_COMPILE, free_port, overrides, rows

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]  # real training runs from a bucket

REPO = Path(__file__).parents[1]
PHOTOS = REPO / "exif_jax" / "assets" / "photos"
STEPS = 4


@pytest.fixture(scope="module")
def remote_build(s3_server):
    s3_server.make_bucket("trainset")
    env = s3_server.env
    rc = subprocess.run([sys.executable, "-m", "exif_jax.cli", "build-data", "--images", str(PHOTOS), "--out",
                         "s3://trainset/rec", "--workers", "1", "--no-progress"], env={**_base_env(), **env},
                        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr[-2000:]
    return "s3://trainset/rec"


def _base_env() -> dict[str, str]:
    import os

    e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}")
    e.pop("EXIF_JAX_COORDINATOR", None)
    return e


def _args(data_dir: str) -> list[str]:
    return overrides(data_dir) + [f"train.max_steps_per_run={STEPS}"]


def _run(workdir: Path, data_dir: str, env: dict, procs: int, log: Path, extra: list[str] = ()) -> None:
    port = free_port()
    running = []
    for i in range(procs):
        cmd = EXE + ["--workdir", str(workdir)] + [f"--config.{a}" for a in _args(data_dir) + list(extra)]
        e = dict(env)
        if procs > 1:
            cmd += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(procs), "--process-id", str(i)]
            e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // procs} {FAST_COMPILE}"
        running.append(subprocess.Popen(cmd, stdout=open(f"{log}.{i}", "w"), stderr=subprocess.STDOUT, env=e,
                                        cwd=REPO))
    codes = [p.wait(timeout=400) for p in running]
    assert codes == [0] * procs, "".join(Path(f"{log}.{i}").read_text()[-3000:] for i in range(procs))


@pytest.fixture(scope="module")
def ref_run(bundled_records, tmp_path_factory) -> Path:
    """One process training on the same photos built on local disk: what every remote run must equal."""
    wd = tmp_path_factory.mktemp("remote_train_ref") / "ref"
    _run(wd, bundled_records, _base_env(), 1, wd.parent / "ref.log")
    return wd


def test_two_processes_train_from_s3_like_one_from_disk(remote_build, s3_server, tmp_path, ref_run):
    proxy = object_store.start_proxy(s3_server, max_upstream=8)
    try:
        env = {**_base_env(), **proxy.env}
        proxy.reset()
        _run(tmp_path / "one", remote_build, env, 1, tmp_path / "one.log")
        one = proxy.stats()["requests"].get("GET", 0)
        proxy.reset()
        _run(tmp_path / "two", remote_build, env, 2, tmp_path / "two.log")
        two = proxy.stats()["requests"].get("GET", 0)
    finally:
        proxy.stop()
    want = rows(ref_run)
    for name in ("one", "two"):
        got = rows(tmp_path / name)
        assert sorted(got) == list(range(1, STEPS + 1))
        for s in got:
            assert got[s]["fingerprint"] == want[s]["fingerprint"], f"{name}: step {s}: different examples"
            assert got[s]["loss"] == pytest.approx(want[s]["loss"], rel=1e-5, abs=1e-6), f"{name}: step {s}"
    # Each of the two processes reads only its half of every batch: together about what one process reads
    # (plus one index read and listing per process).
    assert one > 0 and two <= 1.25 * one + 10, (one, two)


def test_training_goes_on_through_5_percent_failed_requests(remote_build, s3_server, tmp_path, ref_run):
    """503s, 429s, resets, timeouts and truncated bodies on 5% of reads: the run is the same run, and the
    loader's log line counts the retries."""
    proxy = object_store.start_proxy(s3_server, fault_rate=0.05, seed=7, timeout_hold_s=2.0, max_upstream=8)
    try:
        _run(tmp_path / "faulty", remote_build, {**_base_env(), **proxy.env}, 1, tmp_path / "faulty.log",
             ["data.log_every_s=0"])
        faults = proxy.stats()["faults"]
    finally:
        proxy.stop()
    got, want = rows(tmp_path / "faulty"), rows(ref_run)
    assert sorted(got) == sorted(want)
    for s in got:
        assert got[s]["fingerprint"] == want[s]["fingerprint"] and got[s]["loss"] == want[s]["loss"], s
    assert sum(faults.values()) > 0, faults
    log = Path(f"{tmp_path / 'faulty.log'}.0").read_text()
    retried = [int(ln.split(" requests, ")[1].split(" retried")[0]) for ln in log.splitlines()
               if ln.startswith("loader (pid")]
    assert retried and max(retried) > 0, log[-2000:]
