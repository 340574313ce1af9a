"""launch/tpu_pod.sh and launch/slurm_gpu.sbatch against stand-in `gcloud` / `sbatch` / `srun` / `scontrol`
(tests/fake_cluster/, put first on PATH) that record their calls and act them out on local folders, with the
real trainer on CPU devices: TPU hosts' trainers start detached and outlive the ssh session, a re-run leaves
running hosts alone and resumes stopped ones, a fresh host gets the setup; a SLURM job SIGTERMed saves,
requeues itself and resumes. gs:// / s3:// paths reach the trainer unchanged."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_train import free_port, slurm_job_id  # ports on 127.0.0.1; a job id whose coordinator port is free

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]  # real trainers behind fake gcloud / SLURM commands

REPO = Path(__file__).parents[1]
FAKE = REPO / "tests" / "fake_cluster"
CONFIG = str(REPO / "configs" / "tiny.py")
FAST_COMPILE = "--xla_backend_optimization_level=0"


def overrides(data_dir: str, steps: int = 100_000) -> list[str]:
    """The tiny run of tests/test_train.py, long enough that only a signal ends it."""
    return [f"--config.{a}" for a in (
        f"data.train_dir={data_dir}", "data.crop_size=32", "data.global_batch_size=16", "data.spread_batches=1",
        "model.dtype=float32", "model.image.depth=1", "model.text.depth=1", f"train.steps={steps}",
        "train.ckpt_every=50", "train.log_every=5", "train.keep=2", "optim.lr=2e-3", "optim.warmup_steps=3")]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture
def env(tmp_path, cache) -> Iterator[dict[str, str]]:
    e = dict(os.environ, PATH=f"{FAKE}{os.pathsep}{os.environ['PATH']}", FAKE_CALLS=str(tmp_path / "calls.jsonl"),
             FAKE_TPU_HOSTS=str(tmp_path / "hosts"), FAKE_BUCKETS=str(tmp_path / "buckets"),
             JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path),
             XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}", JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    for k in ("EXIF_JAX_COORDINATOR", "EXIF_JAX_NUM_PROCESSES", "EXIF_JAX_PROCESS_ID", "SLURM_JOB_ID",
              "SLURM_RESTART_COUNT"):
        e.pop(k, None)
    yield e
    # Detached trainers and log copiers of a failed test must not outlive it.
    for pid_file in (tmp_path / "hosts").glob("*/exif-jax-run/*pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def calls(env: dict[str, str], cmd: str | None = None) -> list[list[str]]:
    path = Path(env["FAKE_CALLS"])
    rows = [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []
    return [r["argv"] for r in rows if cmd is None or r["cmd"] == cmd]


def wait_for(pred, timeout: float, what: str) -> None:
    t = time.time()
    while not pred():
        if time.time() - t > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead: it only waits for its parent to reap it.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def metric_steps(workdir: Path) -> list[int]:
    path = workdir / "metrics.jsonl"
    return [json.loads(ln)["step"] for ln in path.read_text().splitlines()] if path.exists() else []


# ------------------------------------------------------------------------------------------- TPU pod

def provision(host: Path) -> None:
    """A host whose venv was set up before (a slice re-run, not recreated): the stamp tpu_host.sh writes after
    `pip install`, and an exif-jax that runs the copied code with this interpreter."""
    venv = host / "exif-jax" / ".venv"
    (venv / "bin").mkdir(parents=True)
    for name, run in (("python", ""), ("exif-jax", " -m exif_jax.cli")):
        exe = venv / "bin" / name
        exe.write_text(f'#!/bin/bash\nexport PYTHONPATH="$(cd "$(dirname "$0")/../.." && pwd)"\n'
                       f'exec {sys.executable}{run} "$@"\n')
        exe.chmod(0o755)
    sha = hashlib.sha1((REPO / "setup.py").read_bytes()).hexdigest()[:12]
    (venv / f".installed-{sha}-tpu,cloud").touch()


def tpu_pod(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "launch" / "tpu_pod.sh"), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def host_pid(host: Path) -> int:
    return int((host / "exif-jax-run" / "pid").read_text())


def test_tpu_pod_dry_run_prints_every_command_and_runs_none(env, tmp_path):
    args = ["my-v5e-64", "us-west4-a", "configs/vit_b16.py", "gs://bkt/runs/vit b16", "s3://bkt/yfcc_records",
            "--config.optim.lr=2e-3"]
    r = tpu_pod(env, "--dry-run", *args)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert calls(env) == [] and not list(tmp_path.glob("exif-jax-*.tar.gz")), "a dry run ran something"
    assert len(lines) == 3 and "git ls-files" in lines[0] and "tar czf" in lines[0]
    assert lines[1].startswith("gcloud compute tpus tpu-vm scp ") and "--worker=all" in lines[1]
    assert lines[2].startswith("gcloud compute tpus tpu-vm ssh my-v5e-64 --zone us-west4-a --worker=all --command ")
    # The URIs travel as written (quoted for the remote shell), never made local paths.
    assert r"gs://bkt/runs/vit\ b16" in lines[2] and "s3://bkt/yfcc_records" in lines[2], lines[2]
    for action in ("status", "stop"):
        r = tpu_pod(env, "--dry-run", action, "my-v5e-64", "us-west4-a")
        assert r.returncode == 0 and f"tpu_host.sh {action}" in r.stdout and "--worker=all" in r.stdout, r
    assert calls(env) == []
    for script in ("tpu_pod.sh", "tpu_host.sh", "slurm_gpu.sbatch"):
        assert "gcsfuse" not in (REPO / "launch" / script).read_text()


def test_tpu_pod_trainers_outlive_ssh_rerun_leaves_them_and_resumes_after_stop(env, tmp_path, bundled_records):
    hosts = [tmp_path / "hosts" / f"worker{i}" for i in range(2)]
    port = free_port()
    for i, h in enumerate(hosts):
        provision(h)
        # What the TPU metadata gives jax.distributed on a slice: here, a coordinator on loopback.
        env[f"FAKE_HOST_ENV_{i}"] = json.dumps({
            "EXIF_JAX_COORDINATOR": f"127.0.0.1:{port}", "EXIF_JAX_NUM_PROCESSES": "2", "EXIF_JAX_PROCESS_ID": str(i),
            "XLA_FLAGS": f"--xla_force_host_platform_device_count=4 {FAST_COMPILE}"})
    wd = tmp_path / "run"
    args = ["my-tpu", "zone-a", "configs/tiny.py", str(wd), bundled_records, *overrides(bundled_records)]
    t = time.time()
    r = tpu_pod(env, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.time() - t < 60, "the launcher waited for training"
    pids = [host_pid(h) for h in hosts]
    # The fake ssh killed each session's process group when its command returned: the trainers run on.
    assert all(alive(p) for p in pids), "a trainer died with its ssh session"
    wait_for(lambda: len(metric_steps(wd)) >= 2, 400, "steps from the detached trainers")
    assert all(alive(p) for p in pids)
    logs = [wd / "logs" / f"train.worker{i}.log" for i in range(2)]
    assert all(log.exists() for log in logs)
    assert "2 process(es), 8 cpu device(s)" in logs[0].read_text()
    # Every host got the code and one ssh command; the trainer was told --distributed=on and the data dir.
    ssh, scp = calls(env, "gcloud")[1], calls(env, "gcloud")[0]
    assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"] and ssh[:4] == ["compute", "tpus", "tpu-vm", "ssh"]
    assert all((h / "exif-jax" / "launch" / "tpu_host.sh").exists() for h in hosts)
    started = logs[1].read_text().splitlines()[0]
    assert "starting:" in started and f"--config.data.train_dir={bundled_records}" in started, started
    assert "--distributed=on" in started and f"--workdir {wd}" in started, started

    # 2. The same command again: running hosts are left alone.
    r = tpu_pod(env, *args)
    assert r.returncode == 0 and r.stdout.count("still running") == 2, r.stdout + r.stderr
    assert [host_pid(h) for h in hosts] == pids and all(alive(p) for p in pids)

    # 3. stop: SIGTERM on every host; they save the same step and exit.
    r = tpu_pod(env, "stop", "my-tpu", "zone-a")
    assert r.returncode == 0 and r.stdout.count("SIGTERM sent") == 2, r.stdout + r.stderr
    wait_for(lambda: not any(alive(p) for p in pids), 200, "the trainers to save and exit")
    saved = {int(m) for log in logs for m in re.findall(r"preempted: saved step (\d+)", log.read_text())}
    assert len(saved) == 1, [log.read_text()[-2000:] for log in logs]
    step = saved.pop()

    # 4. Again (as after recreating a preempted slice on the same disks): the venv is kept, the run resumes.
    r = tpu_pod(env, *args)
    assert r.returncode == 0 and r.stdout.count("venv already set up") == 2, r.stdout + r.stderr
    pids = [host_pid(h) for h in hosts]
    wait_for(lambda: f"resumed from {wd}/ckpt step {step}" in logs[0].read_text(), 300, "the resumed run")
    wait_for(lambda: max(metric_steps(wd)) > step, 300, "steps after the resume")
    r = tpu_pod(env, "status", "my-tpu", "zone-a")
    assert r.stdout.count("running (pid") == 2, r.stdout
    tpu_pod(env, "stop", "my-tpu", "zone-a")
    wait_for(lambda: not any(alive(p) for p in pids), 200, "the resumed trainers to exit")


def test_tpu_pod_sets_up_a_fresh_host_and_stops_when_setup_fails(env, tmp_path):
    host = tmp_path / "hosts" / "worker0"
    host.mkdir(parents=True)
    # No package index here: pip fails at once, which is the point (the setup ran; nothing started after it).
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path))
    r = tpu_pod(env, "my-tpu", "zone-a", "configs/tiny.py", str(tmp_path / "run"), "gs://bkt/data", timeout=300)
    assert r.returncode != 0, r.stdout
    assert "worker0: setting up" in r.stdout and (host / "exif-jax" / ".venv" / "bin" / "pip").exists(), r.stdout
    assert (host / "exif-jax" / "setup.py").exists()  # the code is in place
    assert not (host / "exif-jax-run" / "pid").exists() and not list((host / "exif-jax" / ".venv").glob(".installed-*"))


def test_tpu_host_copies_the_log_to_an_object_store_workdir(env, tmp_path):
    host = tmp_path / "hosts" / "worker0"
    provision(host)
    # A config that does not exist: the trainer stops at once, and its last words must reach the bucket.
    r = tpu_pod(env, "my-tpu", "zone-a", "configs/no_such_config.py", "gs://bkt/runs/a", "s3://bkt/data")
    assert r.returncode == 0, r.stdout + r.stderr
    logs = tmp_path / "buckets" / "bkt" / "runs" / "a" / "logs"
    wait_for(lambda: any("no_such_config.py: no such config file" in f.read_text()
                         for f in logs.glob("train.worker0.*.log")), 120, "the trainer's error in the bucket's log")
    (remote,) = logs.glob("train.worker0.*.log")  # one per start, named by its time
    wait_for(lambda: not alive(int((host / "exif-jax-run" / "sync.pid").read_text())), 30, "the copy loop's end")
    text = remote.read_text()
    # The trainer was given the URIs as written; nothing made them local folders.
    assert "--workdir gs://bkt/runs/a" in text and "--config.data.train_dir=s3://bkt/data" in text, text
    assert not list(host.rglob("gs:")) and not list(host.rglob("s3:"))
    local_log = str(host / "exif-jax-logs" / remote.name.replace("worker0.", ""))
    assert ["storage", "cp", "-q", local_log, f"gs://bkt/runs/a/logs/{remote.name}"] in calls(env, "gcloud")


# ------------------------------------------------------------------------------------------------ SLURM

@pytest.fixture
def submit_dir(tmp_path, env) -> Path:
    """Where `sbatch` is run: the script finds launch/xla_gpu_flags.txt there; exif-jax is this checkout's."""
    d = tmp_path / "submit"
    (d / "launch").mkdir(parents=True)
    shutil.copy(REPO / "launch" / "xla_gpu_flags.txt", d / "launch")
    exe = tmp_path / "exif-jax"
    exe.write_text(f'#!/bin/bash\nexport PYTHONPATH={REPO}\nexec {sys.executable} -m exif_jax.cli "$@"\n')
    exe.chmod(0o755)
    env.update(EXIF_JAX=str(exe), FAKE_JOB_ID=str(slurm_job_id()), FAKE_OUT=str(tmp_path / "job.out"))
    return d


def sbatch(env: dict[str, str], submit_dir: Path, *args: str, restart: int = 0) -> subprocess.Popen:
    return subprocess.Popen(["sbatch", "--nodes=1", str(REPO / "launch" / "slurm_gpu.sbatch"), *args],
                            env=dict(env, SLURM_RESTART_COUNT=str(restart)), cwd=submit_dir)


def test_slurm_job_saves_requeues_itself_on_sigterm_and_resumes(env, submit_dir, tmp_path, bundled_records):
    wd, out = tmp_path / "run", tmp_path / "job.out"
    args = [CONFIG, str(wd), bundled_records, *overrides(bundled_records)]
    job = sbatch(env, submit_dir, *args)
    wait_for(lambda: len(metric_steps(wd)) >= 2, 400, "steps of the first run")
    job.send_signal(signal.SIGTERM)  # what SLURM does 5 minutes before the limit (--signal=B:TERM@300)
    assert job.wait(timeout=200) == 0, out.read_text()[-3000:]
    text = out.read_text()
    step = int(re.search(r"preempted: saved step (\d+)", text).group(1))
    assert calls(env, "scontrol") == [["requeue", env["FAKE_JOB_ID"]]], text[-2000:]
    srun = calls(env, "srun")[0]
    assert srun[srun.index("--workdir") + 1] == str(wd) and "--distributed=on" in srun

    # SLURM runs the requeued job again (SLURM_RESTART_COUNT=1); past EXIF_JAX_MAX_REQUEUES it is not requeued.
    job = sbatch(dict(env, EXIF_JAX_MAX_REQUEUES="1"), submit_dir, *args, restart=1)
    wait_for(lambda: f"resumed from {wd}/ckpt step {step}" in out.read_text(), 300, "the requeued run's resume")
    wait_for(lambda: max(metric_steps(wd)) > step, 300, "steps after the resume")
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=200) == 0, out.read_text()[-3000:]
    assert "not requeued: 1 restarts already" in out.read_text()
    assert len(calls(env, "scontrol")) == 1 and len(calls(env, "sbatch")) == 2


def test_slurm_job_that_fails_is_not_requeued_and_uris_pass_through(env, submit_dir):
    job = sbatch(env, submit_dir, str(REPO / "configs" / "no_such_config.py"), "gs://bkt/runs/a", "s3://bkt/data")
    assert job.wait(timeout=120) != 0
    srun = calls(env, "srun")[0]
    assert srun[srun.index("--workdir") + 1] == "gs://bkt/runs/a" and "--config.data.train_dir=s3://bkt/data" in srun
    assert calls(env, "scontrol") == [] and not list(submit_dir.rglob("gs:")) and not list(submit_dir.rglob("s3:"))
