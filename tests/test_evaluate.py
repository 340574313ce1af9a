"""`exif-jax eval-localize` end to end on a generated splice benchmark: tables, CSV, heatmaps, bad images."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exif_jax import cli
from exif_jax.eval import evaluate, metrics
from exif_jax.eval.splices import make_splices

PHOTOS = Path(__file__).resolve().parents[1] / "exif_jax" / "assets" / "photos"
METHODS = ("learned", "classical", "random")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """6 generated images (3 spliced, 3 authentic) + one broken file listed in the manifest."""
    out = tmp_path_factory.mktemp("bench")
    make_splices(PHOTOS, out, 6, seed=0, size=(160, 128), progress=False)
    (out / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with open(out / "manifest.jsonl", "a") as f:
        f.write(json.dumps({"image": "images/broken.png", "label": 0, "name": "broken"}) + "\n")
    return out


def _float(x: str) -> float | None:
    return None if x == "" else float(x)


def _md_row(md: str, method: str, images: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:2] == [method, images]:
            return cells
    raise AssertionError(f"no row {method} / {images} in metrics.md")


@pytest.mark.slow
def test_eval_localize_all_methods(bench, tiny_workdir, tmp_path, capsys):
    wd, _ = tiny_workdir
    out = tmp_path / "out"
    rc = cli.main(["eval-localize", "--dataset", f"folder:{bench}", "--checkpoint", str(wd), "--out", str(out),
                   "--all-methods", "--stride", "16", "--show", "1", "--no-progress"])
    assert rc == 0
    report = json.loads((out / "metrics.json").read_text())
    md = (out / "metrics.md").read_text()
    assert md in capsys.readouterr().out  # the table is printed too
    assert tuple(report["methods"]) == METHODS
    # The broken file is counted and named, not a crash, and left out of every row.
    assert report["n_samples"] == 7 and report["n_failed"] == 1
    assert report["failed"][0]["name"] == "broken" and "cannot decode" in report["failed"][0]["reason"]
    assert "broken: " in md

    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 * len(METHODS)
    for m in METHODS:
        recs = []
        for r in (r for r in rows if r["method"] == m):
            assert (int(r["height"]), int(r["width"])) == (128, 160)
            rec = {"name": r["name"], "label": int(r["label"]), "score": float(r["score_mean"])}
            rec.update({k: _float(r[k]) for k in metrics.LOCALIZATION_KEYS if _float(r[k]) is not None})
            rec.update({s: float(r[s]) for s in evaluate.SCORES})
            recs.append(rec)
        assert sum(r["label"] for r in recs) == 3
        # Every number of the table is the mean (or detection score) recomputed from the CSV.
        want, got = metrics.summarize(recs), report["methods"][m]
        for key in ("spliced_only", "all_images"):
            assert got["localization"][key]["n"] == want["localization"][key]["n"]
            for k in metrics.LOCALIZATION_KEYS:
                assert got["localization"][key][k] == pytest.approx(want["localization"][key][k], abs=1e-12)
        for s in evaluate.SCORES:
            det = metrics.detection_scores([r[s] for r in recs], [r["label"] for r in recs])
            assert got["detection_by_score"][s]["ap"] == pytest.approx(det["ap"], abs=1e-12)
            assert got["detection_by_score"][s]["auc"] == pytest.approx(det["auc"], abs=1e-12)
        best = max(evaluate.SCORES, key=lambda s: got["detection_by_score"][s]["ap"])
        assert got["detection_by_score"][got["best_detection_score"]]["ap"] == got["detection_by_score"][best]["ap"]
        # ... and the Markdown cells are those numbers.
        row = _md_row(md, m, "all images")
        assert row[3] == f"{want['localization']['all_images']['ap']:.3f}"
        assert row[4] == f"{want['localization']['all_images']['ciou']:.3f}"
        assert row[-1] == got["best_detection_score"]
        assert _md_row(md, m, "spliced only")[3] == f"{want['localization']['spliced_only']['ap']:.3f}"
        # Heatmaps of the best and the worst spliced image.
        for kind in ("best1", "worst1"):
            (png,) = (out / "heatmaps").glob(f"{m}_{kind}_*.png")
            assert Image.open(png).size[0] > 300
    assert len(list((out / "heatmaps").glob("*.png"))) == 2 * len(METHODS)
    # The noise-residual cue finds real camera splices better than random features (deterministic data).
    loc = {m: report["methods"][m]["localization"]["spliced_only"]["ap"] for m in METHODS}
    assert loc["classical"] > loc["random"] + 0.2, loc


def test_baseline_only_and_errors(bench, tmp_path):
    rep = evaluate.run(f"folder:{bench}", str(tmp_path / "o"), baseline="random", crop_size=32, stride=16,
                       limit=3, show=0, progress=False)
    assert tuple(rep["methods"]) == ("random",)
    assert rep["n_samples"] == 3 and not list((tmp_path / "o" / "heatmaps").iterdir())
    with pytest.raises(ValueError, match="needs --checkpoint"):
        evaluate.build_embedders(None, all_methods=True)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate.build_embedders(None)
    assert cli.main(["eval-localize", "--dataset", f"nope:{bench}", "--out", str(tmp_path / "x"),
                     "--baseline", "noise"]) == 2


def test_pick_and_extremes():
    assert evaluate.pick(list(range(10)), 3) == [0, 4, 9]  # spread over blocks of authentic / spliced
    assert evaluate.pick(list(range(4)), None) == [0, 1, 2, 3]
    ex = evaluate._Extremes(2)
    for i, ap in enumerate([0.5, 0.9, 0.1, 0.7, 0.3, 0.8]):
        ex.add(ap, f"img{i}")
    assert [n for _, n in ex.best()] == ["img1", "img5"] and [n for _, n in ex.worst()] == ["img2", "img4"]
    few = evaluate._Extremes(3)
    for i, ap in enumerate([0.2, 0.6, 0.4]):
        few.add(ap, i)
    assert [n for _, n in few.best()] == [1, 2] and [n for _, n in few.worst()] == [0]  # no overlap


def test_best_detection_score_is_named():
    recs = [{"name": str(i), "label": y, "score": 0.5, "score_mean": 0.5, "score_ms": float(y) + 0.1 * i,
             "score_ncut": -float(y)} for i, y in enumerate([0, 1, 0, 1])]
    t = evaluate.summarize_method(recs)
    assert t["best_detection_score"] == "score_ms" and t["detection_by_score"]["score_ms"]["ap"] == 1.0
    assert math.isclose(t["detection_by_score"]["score_ncut"]["auc"], 0.0)
    assert np.isnan(t["localization"]["all_images"]["ap"])  # no maps were given


@pytest.mark.slow
def test_paper_color_bug_wraps_the_learned_method_only(bench, tiny_workdir, tmp_path, capsys):
    from exif_jax.eval.patches import embed_patches, make_grid

    wd, _ = tiny_workdir
    embs = evaluate.build_embedders(str(wd), all_methods=True, paper_color_bug=True)
    plain = evaluate.build_embedders(str(wd), all_methods=True)
    assert embs["learned"].name.endswith("(paper color bug)")
    photo = np.asarray(Image.open(sorted(PHOTOS.glob("*.jpg"))[2]).convert("RGB"))[:64, :96]
    wrapped = ((256 - photo.astype(np.int64)) % 256).astype(np.uint8)  # the paper's pixels, in numpy
    g = make_grid(64, 96, 32, stride=16)
    emb = lambda e, img: np.asarray(embed_patches(e, img, g, batch=8))  # noqa: E731
    np.testing.assert_allclose(emb(embs["learned"], photo), emb(plain["learned"], wrapped), atol=1e-6)
    assert np.abs(emb(embs["learned"], photo) - emb(plain["learned"], photo)).max() > 1e-3
    # The baselines keep the true pixels (a wrapped embedder says so in its name).
    assert [embs[m].name for m in ("classical", "random")] == [plain[m].name for m in ("classical", "random")]
    with pytest.raises(ValueError, match="--paper-color-bug .* give --checkpoint"):
        evaluate.build_embedders(None, baseline="noise", paper_color_bug=True)
    capsys.readouterr()
    assert cli.main(["eval-localize", "--dataset", f"folder:{bench}", "--out", str(tmp_path / "x"),
                     "--baseline", "noise", "--paper-color-bug", "--no-progress"]) == 2
    assert "--paper-color-bug" in capsys.readouterr().err
