"""Linear probes on frozen crop features: `exif-jax probe --checkpoint DIR --data RECORDS --out DIR`.

What a probe predicts, per photo (its crops inherit the label):
  make           the EXIF Make's first word, case-folded ("NIKON" and "NIKON CORPORATION" are one maker)
  model          the camera, "Make|Model" as the records store it
  iso, exposure_time, f_number, focal_length
                 the metadata-extractor description parsed to a number ("1/250 sec", "0.6 sec", "f/2.8",
                 "5.4 mm", "100"); values that do not parse or are <= 0 leave the photo out of that task.
                 Buckets: quantiles of the labelled photos' values (equal photo counts where ties allow;
                 a tie at an edge goes up), `buckets` of them; the edges are reported. The edges use the
                 labels only, never features, so computing them on all photos leaks nothing to the probe.
Split: by photo, stratified by class (every class keeps >= 1 photo on each side); a class with a single
photo cannot be on both sides and is dropped from that task (counted and named in the report). A task with
< 2 classes left is skipped with the reason. The split is asserted disjoint at the crop level.
Probe: multinomial logistic regression on features standardized with the train crops' mean/std; softmax
cross-entropy + l2 * |W|^2, full-batch Adam for a fixed number of steps (optax), zero init (convex: the
init does not matter). Accuracy per crop, and per photo from the mean of its crops' logits, against the
majority class of the train photos, for every feature source (features.SOURCES) on the same split.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from collections import Counter
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from exif_jax.eval import features as F
from exif_jax.eval.embedders import make_embedders
from exif_jax.eval.features import add_common_args
from exif_jax.workdir import default_source, model_name

NUMERIC_TAGS = {"iso": "ISO Speed Ratings", "exposure_time": "Exposure Time", "f_number": "F-Number",
                "focal_length": "Focal Length"}
TASKS = ("make", "model", *NUMERIC_TAGS)
_UNITS = {"Exposure Time": r"\s*sec", "F-Number": "", "Focal Length": r"\s*mm", "ISO Speed Ratings": ""}
_NUM = r"(\d+(?:\.\d+)?)(?:/(\d+(?:\.\d+)?))?"


def parse_number(tag: str, description: str | None) -> float | None:
    """The positive number in a metadata-extractor description of a numeric tag, else None."""
    if not description or tag not in _UNITS:
        return None
    text = description.strip()
    if tag == "F-Number":
        text = text.removeprefix("f/")
    m = re.fullmatch(_NUM + _UNITS[tag], text.split(",")[0].strip())  # ISO may be "100, 100"
    if m is None:
        return None
    value = float(m[1]) / float(m[2]) if m[2] else float(m[1])
    return value if math.isfinite(value) and value > 0 else None


def quantile_buckets(values: Sequence[float], buckets: int) -> tuple[np.ndarray, list[float]]:
    """(bucket index per value, edges): `buckets` quantile bins of the values; bucket = #edges <= value."""
    v = np.asarray(values, np.float64)
    edges = np.unique(np.quantile(v, np.arange(1, buckets) / buckets, method="higher"))
    edges = edges[edges > v.min()]  # an edge at the minimum would leave the lowest bucket empty
    return np.searchsorted(edges, v, side="right"), [float(e) for e in edges]


def _bucket_name(b: int, edges: Sequence[float]) -> str:
    lo = f"{edges[b - 1]:g}" if b > 0 else ""
    hi = f"{edges[b]:g}" if b < len(edges) else ""
    return f"[{lo}, {hi})" if lo and hi else (f"< {hi}" if hi else f">= {lo}" if lo else "all")


def photo_labels(photos: Sequence[Mapping[str, Any]], task: str, buckets: int = 3
                 ) -> tuple[list[str | None], dict[str, Any]]:
    """One class name per photo (None: no label) for a task, and how the classes were made."""
    if task == "make":
        words = [(p["tags"].get("Make") or "").split() for p in photos]
        return [w[0].casefold() if w else None for w in words], {"rule": "first word of Make, case-folded"}
    if task == "model":
        return [p["camera"] or None for p in photos], {"rule": "Make|Model"}
    if task not in NUMERIC_TAGS:
        raise ValueError(f"unknown probe task {task!r}; known: {TASKS}")
    tag = NUMERIC_TAGS[task]
    nums = [parse_number(tag, p["tags"].get(tag)) for p in photos]
    have = [i for i, x in enumerate(nums) if x is not None]
    labels: list[str | None] = [None] * len(photos)
    info: dict[str, Any] = {"rule": f"{buckets} quantile buckets of {tag!r}", "tag": tag, "edges": []}
    if have:
        idx, edges = quantile_buckets([nums[i] for i in have], buckets)
        for i, b in zip(have, idx):
            labels[i] = _bucket_name(int(b), edges)
        info["edges"] = edges
    return labels, info


def split_photos(labels: Sequence[str | None], test_fraction: float, seed: int
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(train photo ids, test photo ids, dropped single-photo classes -> 1), stratified by class."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, c in enumerate(labels):
        if c is not None:
            by_class.setdefault(c, []).append(i)
    train, test, dropped = [], [], {}
    for c in sorted(by_class):
        ids = rng.permutation(by_class[c])
        if len(ids) < 2:
            dropped[c] = len(ids)
            continue
        n_test = min(max(1, round(test_fraction * len(ids))), len(ids) - 1)
        test += ids[:n_test].tolist()
        train += ids[n_test:].tolist()
    train_a, test_a = np.sort(np.asarray(train, np.int64)), np.sort(np.asarray(test, np.int64))
    assert not set(train) & set(test), "a photo is on both sides of the split"
    return train_a, test_a, dropped


def fit_probe(x: np.ndarray, y: np.ndarray, num_classes: int, *, steps: int = 300, lr: float = 0.05,
              l2: float = 1e-3) -> dict[str, np.ndarray]:
    """Softmax regression on standardized x [N, D] -> int labels y [N]: {w, b, mean, std}."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = jnp.asarray((x - mean) / std, jnp.float32)
    onehot = jax.nn.one_hot(jnp.asarray(y), num_classes)
    tx = optax.adam(lr)

    def loss_fn(p):
        logits = xs @ p["w"] + p["b"]
        return optax.softmax_cross_entropy(logits, onehot).mean() + l2 * jnp.sum(p["w"] ** 2)

    @jax.jit
    def train(p):
        def step(carry, _):
            p, s = carry
            g = jax.grad(loss_fn)(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None
        return jax.lax.scan(step, (p, tx.init(p)), None, length=steps)[0][0]

    p = train({"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))})
    return {"w": np.asarray(p["w"]), "b": np.asarray(p["b"]), "mean": mean, "std": std}


def probe_logits(probe: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """[N, C] logits of the fitted probe."""
    return ((x - probe["mean"]) / probe["std"]) @ probe["w"] + probe["b"]


def run_task(feats: Mapping[str, np.ndarray], photo: np.ndarray, labels: Sequence[str | None], *,
             test_fraction: float = 0.3, seed: int = 0, steps: int = 300, l2: float = 1e-3) -> dict[str, Any]:
    """Probe every feature source on one split of the photos; accuracies, baselines and counts."""
    train_p, test_p, dropped = split_photos(labels, test_fraction, seed)
    classes = sorted({labels[i] for i in train_p})
    out: dict[str, Any] = {"labelled_photos": sum(c is not None for c in labels), "dropped_classes": dropped,
                           "dropped_photos": sum(dropped.values()), "classes": len(classes)}
    if len(classes) < 2:
        out["skipped"] = (f"{len(classes)} class(es) with >= 2 photos; a probe needs 2 "
                          f"({len(dropped)} single-photo classes dropped)")
        return out
    cid = {c: k for k, c in enumerate(classes)}
    y_photo = np.array([cid.get(c, -1) if c is not None else -1 for c in labels])
    tr, te = np.isin(photo, train_p), np.isin(photo, test_p)
    assert not set(photo[tr].tolist()) & set(photo[te].tolist()), "crops of one photo on both sides"
    counts = Counter(y_photo[train_p].tolist())
    majority = max(counts, key=lambda k: (counts[k], -k))
    y_test_photo = y_photo[test_p]
    out.update(train_photos=len(train_p), test_photos=len(test_p), train_crops=int(tr.sum()),
               test_crops=int(te.sum()), majority_class=classes[majority],
               class_photos={classes[k]: int(n) for k, n in sorted(counts.items())},
               majority={"patch": float(np.mean(y_photo[photo[te]] == majority)),
                         "photo": float(np.mean(y_test_photo == majority))},
               sources={})
    for name, x in feats.items():
        probe = fit_probe(x[tr], y_photo[photo[tr]], len(classes), steps=steps, l2=l2)
        logits = probe_logits(probe, x[te])
        patch_acc = float(np.mean(logits.argmax(1) == y_photo[photo[te]]))
        # Photo level: the mean of its test crops' logits.
        inv = np.searchsorted(test_p, photo[te])
        mean_logits = np.zeros((len(test_p), len(classes)))
        np.add.at(mean_logits, inv, logits)
        photo_acc = float(np.mean(mean_logits.argmax(1) == y_test_photo))
        out["sources"][name] = {"patch": patch_acc, "photo": photo_acc,
                                "train_patch": float(np.mean(probe_logits(probe, x[tr]).argmax(1)
                                                             == y_photo[photo[tr]]))}
    return out


def to_markdown(report: Mapping[str, Any]) -> str:
    """The probe results as Markdown: one row per task and feature source."""
    lines = ["| task | features | classes | photos train/test | patch acc | photo acc | majority (photo) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for task, r in report["tasks"].items():
        if "skipped" in r:
            lines.append(f"| {task} | - | {r['classes']} | - | - | - | skipped: {r['skipped']} |")
            continue
        for name, s in r["sources"].items():
            lines.append(f"| {task} | {name} | {r['classes']} | {r['train_photos']}/{r['test_photos']} | "
                         f"{s['patch']:.3f} | {s['photo']:.3f} | {r['majority']['photo']:.3f} |")
    lines += ["", f"- {report['photos']} photos, {report['crops_per_photo']} crops of {report['crop_size']} px "
              f"each; split by photo, test fraction {report['test_fraction']}, seed {report['seed']}.",
              "- Classes with a single photo are dropped from their task (counts in probes.json).",
              "- Numeric tags: quantile buckets of the labelled photos' values (edges in probes.json)."]
    return "\n".join(lines) + "\n"


def run_probes(checkpoint: str | None, data_dir: str, out_dir: str, *, crops_per_photo: int = 8,
               test_fraction: float = 0.3, seed: int = 0, buckets: int = 3, train_steps: int = 300,
               l2: float = 1e-3, limit: int | None = None, step: int | None = None,
               tasks: Sequence[str] = TASKS, progress: bool = True) -> dict[str, Any]:
    """Extract features from every source, probe every task, write probes.json and probes.md; no checkpoint:
    the bundled default model."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown probe task(s) {unknown}; known: {', '.join(TASKS)}")
    checkpoint = default_source(checkpoint, command="exif-jax probe")
    built = make_embedders(F.SOURCES, checkpoint=checkpoint, step=step, seed=seed)
    crop = built.crop_size
    cf = F.extract_features(data_dir, built.embedders, crops_per_photo=crops_per_photo, seed=seed, limit=limit,
                            progress=progress)
    report: dict[str, Any] = {"model": model_name(checkpoint), "checkpoint": checkpoint,
                              "data": data_dir, "photos": len(cf.photos),
                              "skipped_photos": cf.skipped, "crops_per_photo": crops_per_photo,
                              "crop_size": crop, "test_fraction": test_fraction, "seed": seed,
                              "steps": train_steps, "l2": l2, "tasks": {}}
    for task in tasks:
        labels, info = photo_labels(cf.photos, task, buckets)
        r = run_task(cf.feats, cf.photo, labels, test_fraction=test_fraction, seed=seed, steps=train_steps, l2=l2)
        report["tasks"][task] = {**info, **r}
    F.write_report(out_dir, "probes", report, to_markdown(report))
    return report


def add_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `exif-jax probe`."""
    add_common_args(parser, "probes.json, probes.md (also printed)")
    parser.add_argument("--test-fraction", type=float, default=0.3, metavar="F",
                        help="share of each class's photos held out")
    parser.add_argument("--buckets", type=int, default=3, metavar="N", help="quantile buckets of numeric tags")
    parser.add_argument("--train-steps", type=int, default=300, metavar="N", help="full-batch Adam steps of each probe")
    parser.add_argument("--l2", type=float, default=1e-3, help="l2 penalty on the probe's weights")
    parser.add_argument("--tasks", default=",".join(TASKS), metavar="LIST", help="comma-separated subset of the tasks")


def cli_main(args: argparse.Namespace) -> int:
    """Run `run_probes` with the parsed flags."""
    try:
        run_probes(args.checkpoint, args.data, args.out, crops_per_photo=args.crops_per_photo,
                   test_fraction=args.test_fraction, seed=args.seed, buckets=args.buckets,
                   train_steps=args.train_steps, l2=args.l2, limit=args.limit, step=args.step,
                   tasks=[t for t in args.tasks.split(",") if t], progress=not args.no_progress)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"exif-jax probe: {e}", file=sys.stderr)
        return 2
    return 0
