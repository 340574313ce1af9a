"""`exif-jax train --workdir gs://… | s3://…` on real emulators on 127.0.0.1 (tests/object_store.py): checkpoints,
config.json, metrics.jsonl and TensorBoard events land in the bucket; kill -9 during a save, rerun, and the run
resumes from the bucket and matches an uninterrupted local run exactly; `--checkpoint gs://…` loads the towers
(the one loader of localize, eval-localize, probe and export) verified against their digests; a flipped byte
in the bucket is named, and the trainer falls back past it (the step moved to ckpt/quarantine in the bucket).

One process, both stores: orbax saves into a local staging folder and each committed step is uploaded with its
digests.json last (exif_jax/checkpoint.py: orbax cannot write s3://, and its direct gs:// writes fail now and
then on the stock GCS emulator). The emulator is single-threaded with a listen backlog of 5, so the digest
reads (8 in flight) reach it through the proxy, one request upstream at a time."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
from pathlib import Path

import numpy as np
import object_store
import pytest
from test_train import EXE, WITH_HOOKS, env, finish, overrides, wait_for  # noqa: F401 - env is a fixture

from exif_jax import checkpoint, digests, storage

STEPS = 12
BUCKET = "train-remote"
pytestmark = [pytest.mark.slow, pytest.mark.subprocess]  # real `exif-jax train` runs against emulators


def args(records: str) -> list[str]:
    return overrides(records) + [f"train.steps={STEPS}", "train.ckpt_every=4", "train.log_every=4", "train.keep=3"]


@pytest.fixture(scope="module")
def stores(s3_server, gcs_server) -> dict[str, dict[str, str]]:
    """scheme -> the client environment of its server (gcs through a one-request-at-a-time proxy)."""
    proxy = object_store.start_proxy(gcs_server, max_upstream=1)
    for server in (s3_server, gcs_server):
        server.make_bucket(BUCKET)
    yield {"s3": s3_server.env, "gs": proxy.env}
    proxy.stop()


def launch(workdir: str, cfg: list[str], environ: dict[str, str], log: Path, faults: tuple = ()) -> subprocess.Popen:
    exe = WITH_HOOKS + list(faults) if faults else EXE
    cmd = exe + ["--workdir", workdir] + [f"--config.{a}" for a in cfg]
    return subprocess.Popen(cmd, stdout=open(log, "a"), stderr=subprocess.STDOUT, env=environ,
                            cwd=Path(__file__).parents[1])


@pytest.fixture(scope="module")
def ref(tmp_path_factory, bundled_records, env) -> dict[int, dict]:  # noqa: F811
    """An uninterrupted local run: its metrics by step, and its workdir."""
    wd = tmp_path_factory.mktemp("remote_ref") / "run"
    log = wd.parent / "log.txt"
    assert finish(launch(str(wd), args(bundled_records), env, log)) == 0, log.read_text()[-3000:]
    return wd


def metrics(workdir: str) -> dict[int, dict]:
    out = {}
    for line in storage.read_text(storage.join(workdir, "metrics.jsonl")).splitlines():
        r = json.loads(line)
        out[r["step"]] = r
    return out


def scalars(data: bytes) -> dict[str, dict[int, float]]:
    """TFRecord-framed tensorboardX events -> tag -> step -> value."""
    from tensorboardX.proto import event_pb2

    got: dict[str, dict[int, float]] = {}
    i = 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        ev = event_pb2.Event()
        ev.ParseFromString(data[i + 12:i + 12 + n])
        for v in ev.summary.value:
            got.setdefault(v.tag, {})[ev.step] = v.simple_value
        i += 12 + n + 4
    return got


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_kill9_mid_save_then_resume_exactly_from_the_bucket(scheme, stores, ref, tmp_path, bundled_records,  # noqa: F811
                                                            env, monkeypatch):  # noqa: F811
    for k, v in stores[scheme].items():
        monkeypatch.setenv(k, v)
    e = dict(env, **stores[scheme])
    uri = f"{scheme}://{BUCKET}/run-{os.getpid()}"
    ckpt, log, marker = storage.join(uri, "ckpt"), tmp_path / "log.txt", tmp_path / "marker.txt"
    cfg = args(bundled_records)
    # 1. The save at step 8 hangs inside orbax (its files partly written, not committed): kill -9 there.
    p = launch(uri, cfg, e, log, faults=("--slow-save-step", "8", "--slow-save-s", "600", "--marker", str(marker)))
    wait_for(marker.exists, 400, "the save at step 8", p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert [s for s in checkpoint.list_steps(ckpt) if checkpoint.committed(ckpt, s)] == [4], log.read_text()[-3000:]
    # 2. Rerun: resumes from the bucket's step 4, runs to the end.
    assert finish(launch(uri, cfg, e, log), 400) == 0, log.read_text()[-3000:]
    out = log.read_text()
    assert f"resumed from {uri}/ckpt step 4" in out, out[-3000:]
    got, want = metrics(uri), metrics(str(ref))
    assert sorted(got) == list(range(1, STEPS + 1))
    for s in want:
        assert got[s]["fingerprint"] == want[s]["fingerprint"], f"step {s}: a different batch"
        assert got[s]["loss"] == want[s]["loss"], f"step {s}: loss {got[s]['loss']} != {want[s]['loss']}"
    # Everything a run writes is in the bucket, nothing in a local folder named after the URI.
    assert json.loads(storage.read_text(storage.join(uri, "config.json")))["train"]["steps"] == STEPS
    events = [n for n in storage.listdir(storage.join(uri, "tb")) if n.startswith("events.out.tfevents.")]
    assert events, "no TensorBoard events in the bucket"
    loss = {}
    for name in events:
        loss.update(scalars(storage.read_bytes(storage.join(uri, "tb", name))).get("train/loss", {}))
    assert sorted(loss) == list(range(1, STEPS + 1))
    assert not Path(f"{scheme}:").exists() and not (Path(__file__).parents[1] / f"{scheme}:").exists()
    # Committed steps carry digests that verify, read back from the bucket.
    assert [s for s in checkpoint.list_steps(ckpt) if checkpoint.committed(ckpt, s)] == [4, 8, 12]
    assert checkpoint.check_step(ckpt, 12) is None
    # --checkpoint URI: the towers of step 12, equal to the local run's.
    from flax import nnx

    from exif_jax import workdir

    remote_model, _, step = workdir.load_model(uri)
    local_model, _, _ = workdir.load_model(str(ref))
    assert step == 12
    for a, b in zip(jax_leaves(nnx.state(remote_model)), jax_leaves(nnx.state(local_model))):
        np.testing.assert_array_equal(a, b)
    # A flipped byte in the bucket is caught at load, naming the object.
    files = digests.read_manifest(storage.join(ckpt, "12", checkpoint.DIGESTS))
    name = max((n for n in files if n.startswith("model/")), key=lambda n: files[n]["bytes"])
    obj = storage.join(ckpt, "12", name)
    data = bytearray(storage.read_bytes(obj))
    data[len(data) // 2] ^= 0xFF
    storage.write_bytes(obj, bytes(data))
    with pytest.raises(ValueError, match=rf"step 12 is corrupt: item 'model', file {obj}: expected crc32c"):
        workdir.load_model(uri)
    # The trainer falls back to step 8 (verified as read from the bucket), moves step 12 aside in the bucket,
    # and trains 9-12 again exactly.
    n_rows = len(storage.read_text(storage.join(uri, "metrics.jsonl")).splitlines())
    assert finish(launch(uri, cfg, e, log), 400) == 0, log.read_text()[-3000:]
    out = log.read_text()
    assert f"checkpoint step 12 is unusable: corrupt: item 'model', file {obj}: expected crc32c" in out, out[-3000:]
    assert f"moved step 12 to {ckpt}/quarantine/12" in out and "falling back to step 8" in out
    assert storage.read_bytes(storage.join(ckpt, "quarantine", "12", name)) == bytes(data)
    lines = storage.read_text(storage.join(uri, "metrics.jsonl")).splitlines()[n_rows:]
    again = {r["step"]: r for r in map(json.loads, lines)}
    assert sorted(again) == [9, 10, 11, 12]
    for s in again:
        assert again[s]["loss"] == want[s]["loss"] and again[s]["fingerprint"] == want[s]["fingerprint"], s
    assert checkpoint.check_step(ckpt, 12) is None


def jax_leaves(state) -> list[np.ndarray]:
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(state)]
