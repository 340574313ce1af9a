"""Linear probes: EXIF parsing and buckets, the by-photo split, the probe on features that do / do not carry
the label, and `exif-jax probe` on the bundled photos."""
import json

import numpy as np
import pytest

from exif_jax import cli
from exif_jax.eval import probes


def test_parse_number():
    cases = {("Exposure Time", "1/250 sec"): 0.004, ("Exposure Time", "0.6 sec"): 0.6,
             ("Exposure Time", "2 sec"): 2.0, ("Exposure Time", "901/200000 sec"): 901 / 200000,
             ("F-Number", "f/2.8"): 2.8, ("F-Number", "f/14.0"): 14.0, ("Focal Length", "5.4 mm"): 5.4,
             ("Focal Length", "770 mm"): 770.0, ("ISO Speed Ratings", "100"): 100.0,
             ("ISO Speed Ratings", "200, 200"): 200.0}
    for (tag, text), want in cases.items():
        assert probes.parse_number(tag, text) == pytest.approx(want), (tag, text)
    # No unit (a maker-note style raw value), zero, garbage, missing: no label.
    for tag, text in (("Exposure Time", "96"), ("Exposure Time", "0"), ("Focal Length", "0 mm"),
                      ("F-Number", "f/0.0"), ("ISO Speed Ratings", "Unknown"), ("Focal Length", None),
                      ("Make", "Canon")):
        assert probes.parse_number(tag, text) is None, (tag, text)


def test_quantile_buckets_and_labels():
    idx, edges = probes.quantile_buckets(np.arange(1, 10), 3)
    assert np.bincount(idx).tolist() == [3, 3, 3] and edges == [4.0, 7.0]
    idx, edges = probes.quantile_buckets([100] * 6 + [200, 400], 3)  # ties: no empty bucket
    assert np.bincount(idx).min() > 0 and len(set(idx.tolist())) == len(edges) + 1
    photos = [{"camera": f"C|{i}", "tags": {"Make": m, "ISO Speed Ratings": iso}}
              for i, (m, iso) in enumerate([("NIKON CORPORATION", "100"), ("NIKON", "200"), ("Canon", None),
                                            ("", "400")])]
    assert probes.photo_labels(photos, "make")[0] == ["nikon", "nikon", "canon", None]
    labels, info = probes.photo_labels(photos, "iso", buckets=3)
    assert labels[2] is None and len(set(labels) - {None}) == 3 and info["edges"] == [200.0, 400.0]
    with pytest.raises(ValueError, match="unknown probe task"):
        probes.photo_labels(photos, "shutter")


def test_split_is_by_photo_and_stratified():
    labels = ["a"] * 5 + ["b"] * 4 + ["c"] + [None] * 2 + ["d"] * 2
    train, test, dropped = probes.split_photos(labels, 0.3, seed=3)
    assert not set(train) & set(test)
    assert dropped == {"c": 1} and 9 not in train and 9 not in test and 10 not in train
    for c in "abd":
        assert any(labels[i] == c for i in train) and any(labels[i] == c for i in test)
    assert len(train) + len(test) == 11
    again = probes.split_photos(labels, 0.3, seed=3)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)


def _synthetic(classes=8, photos_per_class=5, k=4):
    photo_class = np.repeat(np.arange(classes), photos_per_class)
    photo = np.repeat(np.arange(len(photo_class)), k)
    return photo_class, photo


@pytest.mark.slow
def test_probe_learns_the_label_and_nothing_more():
    rng = np.random.default_rng(0)
    photo_class, photo = _synthetic()
    n, c = len(photo), photo_class.max() + 1
    onehot = np.eye(16)[photo_class[photo]] + rng.normal(0, 0.1, (n, 16))  # the label is in the features
    feats = {"label": onehot,
             "random": rng.normal(size=(n, 16)),
             # Photo identity only: perfect on the train photos, useless on unseen ones if the split is
             # truly by photo. A split that leaked crops of a test photo into training would score ~1 here.
             "photo_id": np.eye(len(photo_class))[photo] + rng.normal(0, 0.05, (n, len(photo_class)))}
    labels = [f"class{k}" for k in photo_class]
    r = probes.run_task(feats, photo, labels, test_fraction=0.4, seed=1, steps=200)
    assert r["classes"] == c and r["test_photos"] == 2 * c and r["train_photos"] == 3 * c
    assert r["sources"]["label"]["patch"] >= 0.95 and r["sources"]["label"]["photo"] == 1.0
    chance = 1 / c
    for name in ("random", "photo_id"):
        assert r["sources"][name]["photo"] < chance + 0.3, (name, r["sources"][name])
        assert r["sources"][name]["patch"] < chance + 0.3, (name, r["sources"][name])
    assert r["sources"]["photo_id"]["train_patch"] == 1.0  # it did fit: the features just do not generalize
    assert r["majority"]["photo"] == pytest.approx(1 / c)  # balanced classes: majority = chance


def test_single_class_task_is_skipped():
    photo = np.repeat(np.arange(4), 2)
    r = probes.run_task({"x": np.ones((8, 3))}, photo, ["a", "a", "b", "c"], seed=0)
    assert "skipped" in r and r["dropped_classes"] == {"b": 1, "c": 1} and "sources" not in r


@pytest.mark.slow
def test_cli_probe(bundled_records, tiny_workdir, tmp_path):
    wd, _ = tiny_workdir
    out = tmp_path / "probe"
    rc = cli.main(["probe", "--checkpoint", str(wd), "--data", bundled_records, "--out", str(out),
                   "--crops-per-photo", "4", "--train-steps", "50", "--no-progress"])
    assert rc == 0
    rep = json.loads((out / "probes.json").read_text())
    assert rep["photos"] == 18 and set(rep["tasks"]) == set(probes.TASKS)
    # 17 cameras in 18 photos: only "Canon EOS 20D" has two photos, so the model probe cannot run.
    assert "skipped" in rep["tasks"]["model"] and rep["tasks"]["model"]["dropped_photos"] == 16
    make = rep["tasks"]["make"]  # canon x3, nikon x2 (NIKON + NIKON CORPORATION) survive
    assert make["class_photos"] == {"canon": 2, "nikon": 1} and make["test_photos"] == 2
    for task in ("make", "iso", "f_number"):
        assert set(rep["tasks"][task]["sources"]) == {"learned", "random-init", "noise"}
        for s in rep["tasks"][task]["sources"].values():
            assert 0 <= s["patch"] <= 1 and 0 <= s["photo"] <= 1
    assert "| iso | noise |" in (out / "probes.md").read_text()
    assert cli.main(["probe", "--checkpoint", str(wd), "--data", bundled_records, "--out", str(out),
                     "--tasks", "make,shutter"]) == 2
