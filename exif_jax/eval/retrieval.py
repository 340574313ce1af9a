"""Crop <-> EXIF retrieval: `exif-jax retrieval --checkpoint DIR --data RECORDS --out DIR`.

K crops per photo (features.extract_features) go through the image tower, each photo's EXIF text (the
record's text, as the trainer read it) through the text tower; cosine similarity ranks the candidates.
Directions: crop->text, image->text (a photo's crop embeddings averaged, then unit-normed), text->crop and
text->image. The same run with the architecture's random weights is the floor; `chance` is the expected
R@k of a random ranking.

Identical EXIF texts: photos that share a text (same camera, same settings) cannot be told apart by it, so
the candidate texts are the distinct texts and any photo with the query's text is a correct match
(text->crop: any crop of any such photo). Rank = 1 + the number of wrong candidates scoring at least as
high as the best correct one (ties count against the query: a constant embedding does not score R@1 = 1).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Mapping, Sequence

import numpy as np
from flax import nnx

from exif_jax.eval import features as F
from exif_jax.eval.embedders import make_embedders
from exif_jax.eval.features import add_common_args
from exif_jax.tokenizer import make_tokenizer
from exif_jax.workdir import default_source, model_name

KS = (1, 5, 10)


def ranks(sim: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """int [Q] rank of each query's best correct candidate: 1 + wrong candidates scoring >= it."""
    sim, correct = np.asarray(sim, np.float64), np.asarray(correct, bool)
    if sim.shape != correct.shape:
        raise ValueError(f"similarity {sim.shape} and correct {correct.shape} differ")
    if not correct.any(1).all():
        raise ValueError("every query needs at least one correct candidate")
    best = np.where(correct, sim, -np.inf).max(1, keepdims=True)
    return 1 + np.sum(~correct & (sim >= best), axis=1)


def rank_summary(r: np.ndarray, n_correct: np.ndarray, n_candidates: int) -> dict[str, Any]:
    """R@k, median and mean rank of ranks `r`, with the chance R@k of a random order."""
    r, n_correct = np.asarray(r), np.asarray(n_correct, np.float64)
    out: dict[str, Any] = {"queries": int(r.size), "candidates": int(n_candidates)}
    n_wrong = n_candidates - n_correct
    for k in KS:
        out[f"R@{k}"] = float(np.mean(r <= k))
        # A random order puts a correct candidate in the top k with P = 1 - C(wrong, k) / C(total, k).
        chance = np.ones_like(n_correct)
        for j in range(min(k, n_candidates)):
            chance *= np.clip((n_wrong - j) / (n_candidates - j), 0, 1)
        out[f"chance R@{k}"] = float(np.mean(1 - chance))
    out["median_rank"] = float(np.median(r))
    out["mean_rank"] = float(np.mean(r))
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def retrieval_metrics(crop_emb: np.ndarray, crop_photo: np.ndarray, text_emb: np.ndarray,
                      photo_text: np.ndarray) -> dict[str, dict[str, Any]]:
    """Every direction's ranks summary. crop_emb [N, D], crop_photo [N] -> photo id; text_emb [U, D] of the
    distinct texts; photo_text [P] -> its text id."""
    crop_emb, text_emb = _unit(np.asarray(crop_emb, np.float64)), _unit(np.asarray(text_emb, np.float64))
    crop_photo, photo_text = np.asarray(crop_photo), np.asarray(photo_text)
    n_photos, n_texts = len(photo_text), len(text_emb)
    photo_emb = np.zeros((n_photos, crop_emb.shape[1]))
    np.add.at(photo_emb, crop_photo, crop_emb)
    photo_emb = _unit(photo_emb)
    crop_text = photo_text[crop_photo]
    out = {}
    for name, q_emb, q_text in (("crop->text", crop_emb, crop_text), ("image->text", photo_emb, photo_text)):
        correct = q_text[:, None] == np.arange(n_texts)[None, :]
        out[name] = rank_summary(ranks(q_emb @ text_emb.T, correct), np.ones(len(q_emb)), n_texts)
    for name, c_emb, c_text in (("text->crop", crop_emb, crop_text), ("text->image", photo_emb, photo_text)):
        correct = np.arange(n_texts)[:, None] == c_text[None, :]
        out[name] = rank_summary(ranks(text_emb @ c_emb.T, correct), correct.sum(1), len(c_emb))
    return out


def embed_texts(model: Any, tokenizer: Any, texts: Sequence[str], batch: int = 64) -> np.ndarray:
    """f32 [len(texts), D] text-tower embeddings, fixed-size padded batches (one compile)."""
    tokens = np.stack([tokenizer.encode(t) for t in texts]).astype(np.int32)
    batch = min(batch, len(tokens))
    pad = np.concatenate([tokens, np.repeat(tokens[:1], -len(tokens) % batch, 0)])
    fn = nnx.jit(lambda m, t: m.embed_text(t))
    return np.concatenate([np.asarray(fn(model, pad[k:k + batch])) for k in range(0, len(pad), batch)])[:len(texts)]


def to_markdown(report: Mapping[str, Any]) -> str:
    """The retrieval results as Markdown: a row per model and direction."""
    cols = [f"R@{k}" for k in KS]
    lines = ["| model | direction | queries | candidates | " + " | ".join(cols) + " | median rank | chance R@1 |",
             "|---|---|---:|---:|" + "---:|" * (len(cols) + 2)]
    for model, dirs in report["models"].items():
        for d, m in dirs.items():
            lines.append(f"| {model} | {d} | {m['queries']} | {m['candidates']} | "
                         + " | ".join(f"{m[c]:.3f}" for c in cols)
                         + f" | {m['median_rank']:g} | {m['chance R@1']:.3f} |")
    lines += ["", f"- {report['photos']} photos, {report['distinct_texts']} distinct EXIF texts, "
              f"{report['crops_per_photo']} crops of {report['crop_size']} px per photo.",
              "- Photos with identical EXIF texts count as correct matches of each other (candidates are "
              "the distinct texts).",
              "- random-init: the same architecture with random weights (the floor)."]
    return "\n".join(lines) + "\n"


def run_retrieval(checkpoint: str | None, data_dir: str, out_dir: str, *, crops_per_photo: int = 8, seed: int = 0,
                  limit: int | None = None, step: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Embed crops and texts with the trained and the random-init model (no checkpoint: the bundled default
    model); write retrieval.json / .md."""
    checkpoint = default_source(checkpoint, command="exif-jax retrieval")
    built = make_embedders(("learned", "random-init"), checkpoint=checkpoint, step=step, seed=seed)
    crop, config, models = built.crop_size, built.config, built.models
    cf = F.extract_features(data_dir, built.embedders, crops_per_photo=crops_per_photo, seed=seed, limit=limit,
                            progress=progress)
    texts = sorted({p["text"] for p in cf.photos})
    text_id = {t: i for i, t in enumerate(texts)}
    photo_text = np.array([text_id[p["text"]] for p in cf.photos])
    tokenizer = make_tokenizer(config)
    report: dict[str, Any] = {"model": model_name(checkpoint), "checkpoint": checkpoint,
                              "data": data_dir, "photos": len(cf.photos),
                              "distinct_texts": len(texts), "skipped_photos": cf.skipped,
                              "crops_per_photo": crops_per_photo, "crop_size": crop, "seed": seed, "models": {}}
    for name, m in models.items():
        text_emb = embed_texts(m, tokenizer, texts)
        report["models"][name] = retrieval_metrics(cf.feats[name], cf.photo, text_emb, photo_text)
    F.write_report(out_dir, "retrieval", report, to_markdown(report))
    return report


def add_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `exif-jax retrieval`."""
    add_common_args(parser, "retrieval.json, retrieval.md (also printed)")


def cli_main(args: argparse.Namespace) -> int:
    """Run `run_retrieval` with the parsed flags."""
    try:
        run_retrieval(args.checkpoint, args.data, args.out, crops_per_photo=args.crops_per_photo,
                      seed=args.seed, limit=args.limit, step=args.step, progress=not args.no_progress)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"exif-jax retrieval: {e}", file=sys.stderr)
        return 2
    return 0
