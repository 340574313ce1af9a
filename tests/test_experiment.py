"""The camera-held-out study: its split (exif_jax.camera_split) is deterministic, camera-disjoint, every photo
placed once; its report (experiments/camera_heldout) reads what the stages wrote."""
import json
from pathlib import Path

import numpy as np
import pytest

from exif_jax import camera_split
from experiments.camera_heldout import report as er

SHARED = Path(__file__).parents[1].parent / "shared" / "data"
REPO = Path(__file__).parents[1]


def _rows(n_cams: int = 40) -> list[dict]:
    rows = []
    for c in range(n_cams):
        for k in range(1 + c % 3):  # some cameras have several photos
            rows.append({"file": f"cam{c}_{k}.jpg", "make": f"Make{c % 5}", "model": f"Model {c}"})
    return rows


def test_split_is_deterministic_and_camera_disjoint():
    rows = _rows()
    a = camera_split.split_cameras(rows)
    b = camera_split.split_cameras(list(reversed(rows)))  # input order must not matter
    assert a == b
    assert not set(a["train_cameras"]) & set(a["test_cameras"])
    assert sorted(a["train_files"] + a["test_files"]) == sorted(r["file"] for r in rows)
    assert a["n_cameras"] == {"train": 30, "test": 10}
    # All photos of a camera land on the camera's side.
    side = {f: "train" for f in a["train_files"]} | {f: "test" for f in a["test_files"]}
    for c in range(40):
        assert len({side[r["file"]] for r in rows if r["model"] == f"Model {c}"}) == 1
    # Another salt gives another split (the salt is what fixes it).
    assert camera_split.split_cameras(rows, salt="other")["test_cameras"] != a["test_cameras"]


def test_split_rejects_bad_input():
    with pytest.raises(ValueError, match="x.jpg"):
        camera_split.split_cameras([{"file": "x.jpg", "make": "", "model": ""}])
    with pytest.raises(ValueError, match="train_fraction"):
        camera_split.split_cameras(_rows(), train_fraction=1.0)


def test_committed_split_matches_the_shared_index():
    index = SHARED / "photos" / "index.jsonl"
    if not index.exists():
        pytest.skip(f"shared data not found at {index} (the split is made from it)")
    committed = json.loads((REPO / "configs" / "splits" / "camera_heldout.json").read_text())
    fresh = camera_split.split_cameras(camera_split.read_index(str(index)), committed["train_fraction"],
                                     committed["salt"])
    assert {k: committed[k] for k in fresh} == fresh
    assert not set(fresh["train_cameras"]) & set(fresh["test_cameras"])


def test_report_says_which_texts_the_tokenizer_saw():
    timings = {"stages": [
        {"name": "build-data-train", "cmd": "exif-jax build-data --list W/train.txt -o W/data_train"},
        {"name": "train-tokenizer", "cmd": "exif-jax train-tokenizer --data W/data_train --out W/tok"}]}
    assert "train cameras only" in er.tokenizer_line({"tokenizer": {"model": "W/tok/exif_sp.model"}}, timings)
    assert "test cameras included" in er.tokenizer_line({"tokenizer": {"model": ""}}, timings)
    timings["stages"][0]["cmd"] = "exif-jax build-data --list W/train.txt --out=W/data_train"
    assert "train cameras only" in er.tokenizer_line({"tokenizer": {"model": "W/tok/exif_sp.model"}}, timings)
    timings["stages"][1]["cmd"] = "exif-jax train-tokenizer --data W/data_all --out W/tok"  # not the train side
    assert "train cameras only" not in er.tokenizer_line({"tokenizer": {"model": "W/tok/exif_sp.model"}}, timings)


def test_report_reads_old_metrics_files_that_logged_temperature(tmp_path):
    """metrics.jsonl from before the loss named its metrics: "temperature" (1 / logit scale), some rows
    without "logit_scale"; the report reads them as logit scales, like new files."""
    old = [{"step": s, "loss": 4.0 - s / 100, "i2t_top1": 0.1, "t2i_top1": 0.2, "lr": 1e-3, "temperature": 0.05}
           for s in range(1, 61)]
    old[-1]["logit_scale"] = 20.0  # files that logged both
    new = [{"step": 61, "loss": 3.3, "i2t_top1": 0.1, "t2i_top1": 0.2, "lr": 1e-3, "logit_scale": 20.0}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in old + new))
    rows = er.read_metrics(path)
    assert [r["logit_scale"] for r in rows] == pytest.approx([20.0] * 61)
    config = {"data": {"global_batch_size": 64, "crops_per_image": 2, "crop_size": 64}}
    assert er._train_summary(rows, config)["last50"]["logit_scale"] == pytest.approx(20.0)
    er.plot_curves(rows, str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_paired_difference_cancels_the_images_difficulty(tmp_path):
    """Images of very different difficulty, learned always 0.05 above classical: the paired interval is that
    difference exactly, though the methods' own intervals overlap."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 0.9, 30)
    rows = ["method,name,label,ap"]
    for i, b in enumerate(base):
        rows += [f"learned,im{i},1,{b + 0.05}", f"classical,im{i},1,{b}", f"learned,au{i},0,nan"]
    csv_path = tmp_path / "per_image.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    d = er.paired_diff_ci(csv_path)
    assert d["images"] == 30 and d["mean"] == pytest.approx(0.05)
    assert d["ci"] == pytest.approx((0.05, 0.05))
    ci = er.bootstrap_ci(csv_path)
    assert ci["learned"][0] < ci["classical"][1]  # unpaired, the intervals overlap
    assert er.paired_diff_ci(csv_path, b="random") == {}


def test_reproduce_section_spells_commands_as_they_are_today():
    """timings.json records the commands as they ran; the report prints ones that still run."""
    timings = json.loads((REPO / "docs" / "experiments" / "camera_heldout" / "timings.json").read_text())
    cmds = [er.respell(s["cmd"]) for s in timings["stages"]]
    assert not [c for c in cmds if "exif_jax.experiment" in c or " --quiet" in c]
    assert any(c.startswith(".venv/bin/exif-jax package --run") for c in cmds)
    assert any("python -m experiments.camera_heldout.experiment split" in c for c in cmds)
    assert er.respell("exif-jax train --config c.py") == "exif-jax train --config c.py"
