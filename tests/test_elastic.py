"""Elastic resume of the input: at one crop per photo, a loader set to batch j in any process count yields the
examples an uninterrupted run's batch j holds (image_id and offset), with or without grain worker processes."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_pipeline import ByteTokenizer, make_config
from test_train import EXE, FAST_COMPILE, REPO, free_port, overrides, rows
from test_train import env as train_env  # noqa: F401,F811 - the trainer tests' environment fixture, shared

from exif_jax.data import pipeline

pytestmark = pytest.mark.slow  # loaders in several process layouts (~30 s)

G = 8  # global batch


def _take(data_dir: str, p: int, count: int, start: int, n: int, workers: int = 0, k: int = 1) -> list[dict]:
    cfg = make_config(data_dir, crop_size=32, crops_per_image=k, global_batch_size=G, worker_count=workers)
    it = iter(pipeline.make_loader(cfg, ByteTokenizer(), seed=5, process_index=p, process_count=count))
    try:
        if start:
            pipeline.set_position(it, cfg, start)
        return [next(it) for _ in range(n)]
    finally:
        it.close()


def _global(parts: list[list[dict]], j: int) -> list[tuple[int, int, int]]:
    """Examples of global batch j assembled from each process's local batch j (order within it aside)."""
    rows = []
    for local in parts:
        b = local[j]
        rows += [(int(i), int(y), int(x)) for i, (y, x) in zip(b["image_id"], b["offset"])]
    return sorted(rows)


@pytest.fixture(scope="module")
def data_dir(bundled_records) -> str:
    return bundled_records


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("before,after", [(1, 2), (2, 1), (1, 4)])
def test_resume_on_another_process_count_gives_the_same_batches(data_dir, before, after, workers):
    start, n = 5, 3
    ref = [_take(data_dir, p, before, 0, start + n) for p in range(before)]
    got = [_take(data_dir, p, after, start, n, workers) for p in range(after)]
    for j in range(n):
        assert _global(got, j) == _global(ref, start + j), f"batch {start + j}"


def test_k_above_one_is_refused_with_the_reason(data_dir):
    with pytest.raises(ValueError, match="exact only at data.crops_per_image=1"):
        _take(data_dir, 0, 1, 3, 1, k=2)


# ----------------------------------------------------------------------------- the trainer, end to end

def _train(workdir, data_dir, environ, procs: int, steps: int, extra: list[str], log) -> str:
    """`exif-jax train` with `procs` processes (8 CPU devices in all) for `steps` steps; returns process 0's log."""
    port = free_port()
    running = []
    for i in range(procs):
        args = overrides(data_dir) + ["data.crops_per_image=1", f"train.max_steps_per_run={steps}"] + extra
        cmd = EXE + ["--workdir", str(workdir)] + [f"--config.{a}" for a in args]
        e = dict(environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // procs} {FAST_COMPILE}")
        if procs > 1:
            cmd += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(procs), "--process-id", str(i)]
        running.append(subprocess.Popen(cmd, stdout=open(f"{log}.{i}", "a"), stderr=subprocess.STDOUT, env=e,
                                        cwd=REPO))
    codes = [p.wait(timeout=400) for p in running]
    text = Path(f"{log}.0").read_text()
    assert codes == [0] * procs, text[-3000:]
    return text


@pytest.fixture(scope="module")
def ref_k1(tmp_path_factory, bundled_records, train_env):  # noqa: F811 - the fixture
    """An uninterrupted 20-step run at one crop per photo."""
    wd = tmp_path_factory.mktemp("ref_k1") / "run"
    _train(wd, bundled_records, train_env, 1, 20, [], wd.parent / "log")
    return wd


@pytest.mark.subprocess
@pytest.mark.parametrize("first,then", [((2, []), (1, [])), ((1, []), (2, [])),
                                        ((1, []), (1, ["mesh.data=4", "mesh.fsdp=2"]))],
                         ids=["2to1", "1to2", "data8_to_data4xfsdp2"])
def test_trainer_resumes_on_another_slice(ref_k1, bundled_records, train_env, tmp_path, first, then):  # noqa: F811
    """Checkpointed at step 10 with one process layout and mesh, resumed with another: steps 11-20 see the
    uninterrupted run's examples and give its loss (f32: reduction order is all that differs)."""
    wd = tmp_path / "run"
    _train(wd, bundled_records, train_env, first[0], 10, first[1], tmp_path / "a")
    text = _train(wd, bundled_records, train_env, then[0], 10, then[1], tmp_path / "b")
    if first[0] != then[0]:
        assert f"step 10 was written by {first[0]} process(es), this run has {then[0]}" in text, text[-2000:]
    got, want = rows(wd), rows(ref_k1)
    assert sorted(got) == list(range(1, 21))
    for s in range(11, 21):
        assert got[s]["fingerprint"] == want[s]["fingerprint"], f"step {s}: different examples"
        assert got[s]["loss"] == pytest.approx(want[s]["loss"], rel=1e-4, abs=1e-6), f"step {s}"
