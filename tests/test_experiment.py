"""The camera-held-out split: deterministic, camera-disjoint, every photo placed once."""
import json
from pathlib import Path

import pytest

from exif_jax import experiment

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
    a = experiment.split_cameras(rows)
    b = experiment.split_cameras(list(reversed(rows)))  # input order must not matter
    assert a == b
    assert not set(a["train_cameras"]) & set(a["test_cameras"])
    assert sorted(a["train_files"] + a["test_files"]) == sorted(r["file"] for r in rows)
    assert a["n_cameras"] == {"train": 30, "test": 10}
    # All photos of a camera land on the camera's side.
    side = {f: "train" for f in a["train_files"]} | {f: "test" for f in a["test_files"]}
    for c in range(40):
        assert len({side[r["file"]] for r in rows if r["model"] == f"Model {c}"}) == 1
    # Another salt gives another split (the salt is what fixes it).
    assert experiment.split_cameras(rows, salt="other")["test_cameras"] != a["test_cameras"]


def test_split_rejects_bad_input():
    with pytest.raises(ValueError, match="x.jpg"):
        experiment.split_cameras([{"file": "x.jpg", "make": "", "model": ""}])
    with pytest.raises(ValueError, match="train_fraction"):
        experiment.split_cameras(_rows(), train_fraction=1.0)


def test_committed_split_matches_the_shared_index():
    index = SHARED / "photos" / "index.jsonl"
    if not index.exists():
        pytest.skip(f"shared data not found at {index} (the split is made from it)")
    committed = json.loads((REPO / "configs" / "splits" / "camera_heldout.json").read_text())
    fresh = experiment.split_cameras(experiment.read_index(str(index)), committed["train_fraction"],
                                     committed["salt"])
    assert {k: committed[k] for k in fresh} == fresh
    assert not set(fresh["train_cameras"]) & set(fresh["test_cameras"])


def test_report_says_which_texts_the_tokenizer_saw():
    from exif_jax.experiment_report import tokenizer_line

    timings = {"stages": [
        {"name": "build-data-train", "cmd": "exif-jax build-data --list W/train.txt -o W/data_train"},
        {"name": "train-tokenizer", "cmd": "exif-jax train-tokenizer --data W/data_train --out W/tok"}]}
    assert "train cameras only" in tokenizer_line({"tokenizer": {"model": "W/tok/exif_sp.model"}}, timings)
    assert "test cameras included" in tokenizer_line({"tokenizer": {"model": ""}}, timings)
    timings["stages"][0]["cmd"] = "exif-jax build-data --list W/train.txt --out=W/data_train"
    assert "train cameras only" in tokenizer_line({"tokenizer": {"model": "W/tok/exif_sp.model"}}, timings)
    timings["stages"][1]["cmd"] = "exif-jax train-tokenizer --data W/data_all --out W/tok"  # not the train side
    assert "train cameras only" not in tokenizer_line({"tokenizer": {"model": "W/tok/exif_sp.model"}}, timings)
