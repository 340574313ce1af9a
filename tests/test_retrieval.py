"""Crop <-> EXIF retrieval: ranks with ties and shared texts, perfect vs random embeddings, the CLI."""
import json

import numpy as np
import pytest

from exif_jax import cli
from exif_jax.eval import retrieval


def test_ranks_count_ties_against_the_query():
    sim = np.array([[0.9, 0.5, 0.1], [0.2, 0.2, 0.3], [0.0, 0.0, 0.0]])
    correct = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 1]], bool)
    # row 1: the tie at 0.2 and the 0.3 both beat it -> 3; row 2: a constant row is not a free R@1.
    assert retrieval.ranks(sim, correct).tolist() == [1, 3, 2]
    with pytest.raises(ValueError, match="at least one correct"):
        retrieval.ranks(sim, np.zeros_like(correct))


def _toy(rng, photos=30, k=4, dim=32):
    photo_text = np.arange(photos)
    photo_text[7], photo_text[19] = 3, 3  # three photos share one EXIF text
    _, photo_text = np.unique(photo_text, return_inverse=True)
    text_emb = rng.normal(size=(photo_text.max() + 1, dim))
    crop_photo = np.repeat(np.arange(photos), k)
    return text_emb, photo_text, crop_photo


def test_perfect_and_random_embeddings():
    rng = np.random.default_rng(0)
    text_emb, photo_text, crop_photo = _toy(rng)
    perfect = text_emb[photo_text[crop_photo]] + rng.normal(0, 0.05, (len(crop_photo), text_emb.shape[1]))
    res = retrieval.retrieval_metrics(perfect, crop_photo, text_emb, photo_text)
    assert set(res) == {"crop->text", "image->text", "text->crop", "text->image"}
    for d, m in res.items():
        assert m["R@1"] == 1.0 and m["median_rank"] == 1.0, d
    assert res["crop->text"]["candidates"] == 28 and res["text->image"]["candidates"] == 30
    # Shared texts are correct matches: the three photos with text 3 all rank it first.
    assert res["image->text"]["queries"] == 30
    rand = retrieval.retrieval_metrics(rng.normal(size=perfect.shape), crop_photo, text_emb, photo_text)
    for d, m in rand.items():
        assert m["R@1"] < m["chance R@1"] + 0.15, (d, m)
        assert m["R@10"] < 1.0 and m["median_rank"] > 3, (d, m)
    assert rand["crop->text"]["chance R@1"] == pytest.approx(1 / 28)
    assert rand["crop->text"]["chance R@10"] == pytest.approx(10 / 28)
    # text->crop: 4 correct crops of 120 (12 for the shared text): P(one in the top 1) = 4/120 or 12/120.
    assert rand["text->crop"]["chance R@1"] == pytest.approx((27 * 4 / 120 + 12 / 120) / 28)


def test_chance_matches_simulation():
    rng = np.random.default_rng(1)
    n, c, k = 20, np.array([1, 3]), 5
    correct = np.zeros((2, n), bool)
    correct[0, :1], correct[1, :3] = True, True
    sims = [retrieval.ranks(rng.normal(size=(2, n)), correct) for _ in range(4000)]
    hit = (np.stack(sims) <= k).mean(0).mean()
    assert retrieval.rank_summary(np.ones(2), c, n)[f"chance R@{k}"] == pytest.approx(hit, abs=0.02)


@pytest.mark.slow
def test_cli_retrieval(bundled_records, tiny_workdir, tmp_path):
    wd, _ = tiny_workdir
    out = tmp_path / "ret"
    assert cli.main(["retrieval", "--checkpoint", str(wd), "--data", bundled_records, "--out", str(out),
                     "--crops-per-photo", "3"]) == 0
    rep = json.loads((out / "retrieval.json").read_text())
    assert rep["photos"] == 18 and rep["distinct_texts"] == 18 and set(rep["models"]) == {"learned", "random-init"}
    for dirs in rep["models"].values():
        assert dirs["crop->text"]["queries"] == 54 and dirs["text->crop"]["candidates"] == 54
        for m in dirs.values():
            assert 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 1 and m["median_rank"] >= 1
    assert "| learned | crop->text | 54 | 18 |" in (out / "retrieval.md").read_text()
    assert cli.main(["retrieval", "--checkpoint", str(tmp_path), "--data", bundled_records,
                     "--out", str(out)]) == 2
