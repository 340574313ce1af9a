"""A corrupt checkpoint is caught, named and skipped (issue 23): digests written inside every save's commit,
verified at every restore. Real `exif-jax train` runs on the bundled photos (the machinery of test_train.py):
bytes flipped in the newest step's model, train and data items, a truncated file, a missing digest file ->
the trainer names the file, moves the step to ckpt/quarantine and resumes from the previous step exactly;
every step corrupt -> rc 4 with nothing written; a state saved with a NaN is named at restore and in the
NaN stop; a corrupt packaged model or export is an error naming the file."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_train import env, finish, log_text, overrides, start  # noqa: F401 - env is a fixture

from exif_jax import checkpoint, digests

STEPS = 12


def args(records: str, *extra: str) -> list[str]:
    return overrides(records) + [f"train.steps={STEPS}", "train.ckpt_every=4", "train.log_every=4",
                                 "train.keep=3", *extra]


def lines(wd: Path) -> list[dict]:
    return [json.loads(s) for s in (wd / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ref(tmp_path_factory, bundled_records, env) -> Path:  # noqa: F811
    """One uninterrupted run: checkpoints at 4, 8, 12; every step's row."""
    wd = tmp_path_factory.mktemp("digest_ref") / "run"
    assert finish(start(wd, args(bundled_records), env)) == 0, log_text(wd)
    return wd


def copy_run(ref: Path, tmp_path: Path) -> Path:
    wd = tmp_path / "run"
    shutil.copytree(ref, wd)
    return wd


def largest(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def flip(path: Path, n: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    mid, n = len(data) // 2, min(n, len(data))
    lo = max(0, mid - n // 2)
    data[lo:lo + n] = bytes(b ^ 0xFF for b in data[lo:lo + n])
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.subprocess
def test_every_step_is_committed_with_digests(ref):
    for step in (4, 8, 12):
        step_dir = ref / "ckpt" / str(step)
        files = digests.read_manifest(str(step_dir / checkpoint.DIGESTS))
        on_disk = {str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file()}
        assert set(files) == on_disk - checkpoint.UNDIGESTED
        assert {n.split("/")[0] for n in files} == {"model", "train", "data"}
        assert checkpoint.check_step(str(ref / "ckpt"), step) is None


def corrupt_model(step_dir: Path) -> str:
    f = largest(step_dir / "model")
    flip(f)
    return str(f.relative_to(step_dir))


def corrupt_train(step_dir: Path) -> str:
    f = largest(step_dir / "train")
    flip(f)
    return str(f.relative_to(step_dir))


def corrupt_data(step_dir: Path) -> str:
    f = next((step_dir / "data").glob("process_*.json"))
    flip(f, 16)
    return str(f.relative_to(step_dir))


def truncate_train(step_dir: Path) -> str:
    f = step_dir / "train" / "_METADATA"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) * 4 // 5])
    return str(f.relative_to(step_dir))


def drop_digests(step_dir: Path) -> str:
    (step_dir / checkpoint.DIGESTS).unlink()  # what a save killed before its commit leaves
    return checkpoint.DIGESTS


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("damage,item,expect", [
    (corrupt_model, "model", "corrupt"), (corrupt_train, "train", "corrupt"), (corrupt_data, "data", "corrupt"),
    (truncate_train, "train", "corrupt"), (drop_digests, None, "incomplete")])
def test_damaged_newest_step_falls_back_and_resumes_exactly(damage, item, expect, ref, tmp_path, bundled_records,
                                                            env):  # noqa: F811
    wd = copy_run(ref, tmp_path)
    bad = wd / "ckpt" / "12"
    name = damage(bad)
    before = {p.relative_to(bad): p.read_bytes() for p in bad.rglob("*") if p.is_file()}
    n_rows = len(lines(wd))
    assert finish(start(wd, args(bundled_records), env)) == 0, log_text(wd)
    out = log_text(wd)
    assert f"checkpoint step 12 is unusable: {expect}" in out, out
    if item is not None:  # names the step, the item, the file, the expected and the found digest
        assert f"item '{item}', file {bad / name}: expected crc32c " in out and ", found crc32c " in out, out
    assert "falling back to step 8, the newest that verifies" in out and "resumed from" in out
    # Kept for inspection, byte for byte; the new step 12 verifies; keep=3 counts good steps only.
    moved = wd / "ckpt" / "quarantine" / "12"
    assert {p.relative_to(moved): p.read_bytes() for p in moved.rglob("*") if p.is_file()} == before
    assert "step 12 moved here" in (wd / "ckpt" / "quarantine" / "12.txt").read_text()
    assert checkpoint.list_steps(str(wd / "ckpt")) == [4, 8, 12]
    assert checkpoint.check_step(str(wd / "ckpt"), 12) is None
    # Steps 9-12 again, exactly as the uninterrupted run had them.
    again = {r["step"]: r for r in lines(wd)[n_rows:]}
    want = {r["step"]: r for r in lines(ref)}
    assert sorted(again) == [9, 10, 11, 12]
    for s in again:
        assert again[s]["fingerprint"] == want[s]["fingerprint"] and again[s]["loss"] == want[s]["loss"], s


@pytest.mark.slow
@pytest.mark.subprocess
def test_no_intact_step_is_an_error_and_writes_nothing(ref, tmp_path, bundled_records, env):  # noqa: F811
    wd = copy_run(ref, tmp_path)
    for step in (4, 8, 12):
        corrupt_model(wd / "ckpt" / str(step))
    before = {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()}
    assert finish(start(wd, args(bundled_records), env)) == 4
    out = log_text(wd)
    assert "no intact checkpoint; nothing was resumed, moved or written" in out, out
    for step in (4, 8, 12):
        assert f"step {step}: corrupt: item 'model', file {wd / 'ckpt' / str(step) / 'model'}" in out
    assert {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()} == before


def save_with_nan(step_dir: Path) -> None:
    """Rewrite the step's model item with one NaN, digests recomputed: a state saved non-finite."""
    import jax
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as c:
        tree = c.restore(step_dir / "model")
    leaves = [np.array(x) for x in jax.tree.leaves(tree)]
    leaves[0].flat[0] = np.nan
    shutil.rmtree(step_dir / "model")
    with ocp.StandardCheckpointer() as c:
        c.save(step_dir / "model", jax.tree.unflatten(jax.tree.structure(tree), leaves))
    checkpoint.write_step_digests(str(step_dir))


@pytest.mark.slow
@pytest.mark.subprocess
def test_nan_stop_says_whether_the_restored_state_was_finite(ref, tmp_path, bundled_records, env):  # noqa: F811
    stop = ["train.max_nan_skips=0", "train.log_every=1"]
    # Finite at restore: a NaN step after it is blamed on training.
    wd = copy_run(ref, tmp_path / "a")
    shutil.rmtree(wd / "ckpt" / "12")
    assert finish(start(wd, args(bundled_records, *stop), env, faults=("--poison-steps", "9"))) == 3, log_text(wd)
    assert "the state restored from step 8 was finite (checked at restore)" in log_text(wd)
    # Saved with a NaN (digests verify): named at restore, and the stop blames the checkpoint.
    wd = copy_run(ref, tmp_path / "b")
    save_with_nan(wd / "ckpt" / "12")
    assert finish(start(wd, args(bundled_records, "train.steps=16", *stop), env)) == 3, log_text(wd)
    out = log_text(wd)
    assert "warning: the state restored from step 12 holds NaN or infinity in 1 arrays" in out, out
    assert "the state restored from step 12 already held non-finite values" in out
    assert "lower optim.lr" not in out.split("already held non-finite values")[1]


# ----------------------------------------------------------------------------- what leaves the trainer

@pytest.mark.slow
@pytest.mark.subprocess
def test_eval_loading_verifies_the_model_item(ref, tmp_path):
    from exif_jax import workdir

    wd = copy_run(ref, tmp_path)
    _, _, step = workdir.load_model(str(wd))
    assert step == 12
    name = corrupt_model(wd / "ckpt" / "12")
    with pytest.raises(ValueError, match=rf"step 12 is corrupt: item 'model', file .*{name}: expected crc32c"
                                         r".*older steps: \[4, 8\] \(pick one with --step\)"):
        workdir.load_model(str(wd))
    assert workdir.load_model(str(wd), 8)[2] == 8
    corrupt_train(wd / "ckpt" / "8")  # eval reads only the model item
    assert workdir.load_model(str(wd), 8)[2] == 8


@pytest.mark.slow
@pytest.mark.subprocess
def test_corrupt_packaged_model_is_an_error_naming_the_file(ref, tmp_path):
    from exif_jax import workdir

    pkg = workdir.package(str(ref), str(tmp_path / "pkg"), name="p", dtype="float32")
    meta = json.loads((pkg / workdir.MODEL_JSON).read_text())
    assert meta[workdir.PARAMS_DIGEST] == digests.crc32c((pkg / workdir.PARAMS_FILE).read_bytes())
    workdir.load_model(str(pkg))
    flip(pkg / workdir.PARAMS_FILE, 64)
    with pytest.raises(ValueError, match=rf"{pkg / workdir.PARAMS_FILE}: corrupt: crc32c expected "
                                         rf"{meta[workdir.PARAMS_DIGEST]}"):
        workdir.load_model(str(pkg))


def test_bundled_default_model_carries_its_digest():
    from exif_jax import workdir

    meta = workdir.packaged_meta(workdir.DEFAULT_MODEL)
    assert meta[workdir.PARAMS_DIGEST] == digests.crc32c((workdir.DEFAULT_MODEL / workdir.PARAMS_FILE).read_bytes())


def test_recorded_digests_catch_a_changed_file(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"x" * 1000)
    digests.record(str(tmp_path), "w.safetensors")
    assert digests.verify_recorded(str(tmp_path)) == ["w.safetensors"]
    (tmp_path / "w.safetensors").write_bytes(b"x" * 999)
    with pytest.raises(ValueError, match=r"w\.safetensors: corrupt: .*expected crc32c [0-9a-f]{8}, 1000 bytes, "
                                         r"found crc32c [0-9a-f]{8}, 999 bytes"):
        digests.verify_recorded(str(tmp_path))
