"""The camera-held-out experiment's report: README.md, tables, curves and heatmaps from the stages' JSON outputs.

  python -m experiments.camera_heldout.experiment report --workdir DIR --split configs/splits/camera_heldout.json \
      --out docs/experiments/camera_heldout

Every number in the report is read from a file a stage wrote (metrics.json, per_image.csv, probes.json, ...),
never typed in; the commands in its Reproduce section are the stage commands from timings.json, in today's
spelling (RESPELLED: the study's commands left the package after they ran).
"""
from __future__ import annotations

import json
import math
import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from exif_jax import workdir as workdir_lib

# The paper's setting, for the comparison paragraph (Zheng et al. 2023: YFCC100M training set, Columbia
# spliced-only p-mAP of the released checkpoint, 124-px crops as in configs/official.py).
PAPER_TRAIN_PHOTOS = 1_500_000
PAPER_COLUMBIA_PMAP = 0.94
PAPER_CROP = 124
EVAL_COPIES = (("png", "eval_png", "lossless PNG"), ("jpeg_q90", "eval_jpeg_q90", "recompressed at JPEG quality 90"))
# Old spelling -> today's, for the stage commands timings.json recorded (applied in order).
RESPELLED = (("python -m exif_jax.experiment package", "exif-jax package"),
             ("python -m exif_jax.experiment", "python -m experiments.camera_heldout.experiment"),
             (" --quiet", " --no-progress"))
LOC_COLS = (("ap", "p-mAP"), ("ciou", "cIoU"), ("mcc", "MCC"), ("f1", "F1"), ("ciou@0.5", "cIoU@0.5"),
            ("mcc@0.5", "MCC@0.5"), ("f1@0.5", "F1@0.5"))


def _load(path: str | Path) -> dict | None:
    return json.loads(Path(path).read_text(encoding="utf-8")) if os.path.exists(path) else None


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a trainer metrics.jsonl, one per step (a resumed run's repeated steps: the last row wins).
    Older files logged "temperature" (1 / logit scale) beside or instead of "logit_scale": rows get
    "logit_scale" either way."""
    rows: dict[int, dict] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if "logit_scale" not in r and "temperature" in r:
                    r["logit_scale"] = 1.0 / float(r["temperature"])
                rows[int(r["step"])] = r
    return [rows[k] for k in sorted(rows)]


def _smooth(y: Sequence[float], k: int = 25) -> list[float]:
    out, acc = [], []
    for v in y:
        acc.append(v)
        acc = acc[-k:]
        out.append(sum(acc) / len(acc))
    return out


def plot_curves(rows: Sequence[dict], out_png: str) -> None:
    """Loss, in-batch top-1 (i2t, t2i), learning rate and logit scale against step, as one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = [r["step"] for r in rows]
    fig, ax = plt.subplots(2, 2, figsize=(10, 6.5), dpi=80)
    ax[0, 0].plot(step, [r["loss"] for r in rows], lw=0.5, alpha=0.4, color="C0")
    ax[0, 0].plot(step, _smooth([r["loss"] for r in rows]), color="C0", label="25-step mean")
    ax[0, 0].set_title("contrastive loss (train)")
    ax[0, 0].legend()
    for key, c in (("i2t_top1", "C1"), ("t2i_top1", "C2")):
        ax[0, 1].plot(step, _smooth([r[key] for r in rows]), color=c, label=f"{key} (25-step mean)")
    ax[0, 1].set_title("in-batch top-1 (train batches)")
    ax[0, 1].legend()
    ax[1, 0].plot(step, [r["lr"] for r in rows], color="C3")
    ax[1, 0].set_title("learning rate")
    ax[1, 1].plot(step, [r["logit_scale"] for r in rows], color="C4")
    ax[1, 1].set_title("logit scale (1 / temperature)")
    for a in ax.flat:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)


def _f(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def eval_table(m: dict) -> list[str]:
    """Markdown rows: method x (spliced only, all images) of eval-localize's metrics.json."""
    lines = ["| method | images | n | " + " | ".join(c for _, c in LOC_COLS) + " | det AP | det ROC-AUC |",
             "|---|---|---:|" + "---:|" * (len(LOC_COLS) + 2)]
    for method, r in m["methods"].items():
        for side, label in (("spliced_only", "spliced only"), ("all_images", "all images")):
            loc = r["localization"][side]
            det = (_f(r["detection"]["ap"]), _f(r["detection"]["auc"])) if side == "all_images" else ("-", "-")
            lines.append(f"| {method} | {label} | {loc['n']} | " + " | ".join(_f(loc[k]) for k, _ in LOC_COLS)
                         + f" | {det[0]} | {det[1]} |")
    return lines


def probe_table(p: dict) -> list[str]:
    """Markdown rows of probes.json: task x feature source."""
    lines = ["| task | rule | classes | photos train/test | features | crop acc | photo acc | majority (photo) |",
             "|---|---|---:|---:|---|---:|---:|---:|"]
    for task, r in p["tasks"].items():
        if "skipped" in r:
            lines.append(f"| {task} | {r.get('rule', '')} | {r['classes']} | - | - | - | - | skipped: {r['skipped']} |")
            continue
        for name, s in r["sources"].items():
            lines.append(f"| {task} | {r.get('rule', '')} | {r['classes']} | {r['train_photos']}/{r['test_photos']} "
                         f"| {name} | {_f(s['patch'])} | {_f(s['photo'])} | {_f(r['majority']['photo'])} |")
    return lines


def retrieval_table(rj: dict) -> list[str]:
    """Markdown rows of retrieval.json: model x direction."""
    lines = ["| model | direction | queries | candidates | R@1 | R@5 | R@10 | median rank | chance R@1 | chance R@5 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, dirs in rj["models"].items():
        for d, r in dirs.items():
            lines.append(f"| {model} | {d} | {r['queries']} | {r['candidates']} | {_f(r['R@1'])} | {_f(r['R@5'])} "
                         f"| {_f(r['R@10'])} | {_f(r['median_rank'], 1)} | {_f(r['chance R@1'])} | "
                         f"{_f(r['chance R@5'])} |")
    return lines


def _train_summary(rows: Sequence[dict], config: dict, last: int = 50) -> dict:
    tail, head = rows[-last:], rows[:25]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    return {"steps": rows[-1]["step"], "batch": config["data"]["global_batch_size"],
            "crops_per_image": config["data"]["crops_per_image"], "crop_size": config["data"]["crop_size"],
            "first25": {k: mean(head, k) for k in ("loss", "i2t_top1", "t2i_top1")},
            f"last{last}": {k: mean(tail, k) for k in ("loss", "i2t_top1", "t2i_top1", "logit_scale")},
            "nan_skips": rows[-1].get("nan_skips", 0)}


def tokenizer_line(config: dict, timings: dict) -> str:
    """Which sentencepiece model the run used and which texts it saw (the bundled one saw every shared photo)."""
    path = config["tokenizer"]["model"]
    if not path:
        return ("Tokenizer: the bundled sentencepiece model, trained on the texts of all shared photos, test "
                "cameras included (a vocabulary-level leak: pieces only, no labels).")
    stages = {s["name"]: shlex.split(s["cmd"]) for s in timings.get("stages", [])}

    def flag(name: str, f: str) -> str | None:
        names = (f, "-o") if f == "--out" else (f,)  # -o/--out: one flag, two spellings
        cmd = stages.get(name, [])
        for i, a in enumerate(cmd):
            if a in names and i + 1 < len(cmd):
                return cmd[i + 1]
            if a.startswith(f + "="):
                return a[len(f) + 1:]
        return None

    if flag("train-tokenizer", "--data") and flag("train-tokenizer", "--data") == flag("build-data-train", "--out"):
        return (f"Tokenizer: `{path}`, a sentencepiece model trained (stage train-tokenizer) on the records of "
                "the train cameras only: the test cameras' texts were never seen, not even as vocabulary.")
    return f"Tokenizer: `{path}` (config.tokenizer.model)."


def write_report(workdir: str, split_path: str, out: str, n_heatmaps: int = 4) -> str:
    """README.md + small JSON tables + curves + heatmaps in `out`, every number read from the stages' outputs."""
    wd, o = Path(workdir), Path(out)
    o.mkdir(parents=True, exist_ok=True)
    split = _load(split_path)
    if split is None:
        raise FileNotFoundError(f"{split_path}: split file not found (run the split step)")
    # The one workdir reader: the config upgraded to the current schema, presets resolved (what was built).
    config = workdir_lib.read_config(str(wd / "run")).to_dict()
    rows = read_metrics(wd / "run" / "metrics.jsonl")
    plot_curves(rows, str(o / "training_curves.png"))
    summary = _train_summary(rows, config)
    timings = _load(wd / "timings.json") or {"stages": []}
    splices = _load(wd / "splices" / "summary.json")
    evals = {k: _load(wd / d / "metrics.json") for k, d, _ in EVAL_COPIES}
    probes, retr = _load(wd / "probes" / "probes.json"), _load(wd / "retrieval" / "retrieval.json")
    for name, obj in (("train_summary", summary), ("timings", timings), ("probes", probes), ("retrieval", retr),
                      *((f"eval_{k}", v) for k, v in evals.items())):
        if obj is not None:
            (o / f"{name}.json").write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    heat = []
    if evals.get("png"):
        src = [h for h in evals["png"].get("heatmaps", []) if os.path.exists(h)]
        # The learned model's best and worst image, then the classical baseline's: same ranking rule for both.
        want = ("learned_best1_", "learned_worst1_", "classical_best1_", "classical_worst1_", "random_best1_")
        order = [h for w in want for h in src if os.path.basename(h).startswith(w)]
        for h in order[:n_heatmaps]:
            shutil.copyfile(h, o / os.path.basename(h))
            heat.append(os.path.basename(h))

    L = ["# Camera-held-out experiment", "",
         "Train the two towers on photos from some camera models, then test everything (splice localization, "
         "linear probes, crop->EXIF retrieval) on photos from camera models training never saw. This file is "
         "written by `python -m experiments.camera_heldout.experiment report`; every number below is read from "
         "the JSON outputs "         "listed with it (copies in this folder).", "",
         "## Split", "",
         f"- Source: `../shared/data/photos` ({split['n_photos']['train'] + split['n_photos']['test']} photos, "
         f"{split['n_cameras']['train'] + split['n_cameras']['test']} camera models).",
         f"- Method: {split['method']} (salt `{split['salt']}`).",
         f"- Train: {split['n_cameras']['train']} cameras, {split['n_photos']['train']} photos. "
         f"Test: {split['n_cameras']['test']} cameras, {split['n_photos']['test']} photos. "
         f"Cameras on both sides: {len(set(split['train_cameras']) & set(split['test_cameras']))}.",
         "- Lists: `configs/splits/camera_heldout.json`.", ""]
    L += ["## Training", "",
          f"`configs/cpu_small.py`: ViT width {config['model']['image']['width']}, depth "
          f"{config['model']['image']['depth']}, patch {config['model']['image']['patch']}, on "
          f"{summary['crop_size']}-px native crops ({summary['crops_per_image']} per photo per visit); text "
          f"transformer width {config['model']['text']['width']}, depth {config['model']['text']['depth']}, "
          f"max {config['tokenizer']['max_len']} tokens; embed {config['model']['embed_dim']}; "
          f"{config['loss']['kind']} loss; batch {summary['batch']}; {summary['steps']} steps; "
          f"lr {config['optim']['lr']} (warmup {config['optim']['warmup_steps']}, cosine to 0); float32 on CPU.", "",
          tokenizer_line(config, timings), "",
          "![training curves](training_curves.png)", "",
          f"Train-batch numbers (in-batch, {summary['batch']} crops, {summary['batch'] // summary['crops_per_image']}"
          f" photos; other crops of the same photo are not counted as negatives): first 25 steps mean loss "
          f"{_f(summary['first25']['loss'])}, i2t top-1 {_f(summary['first25']['i2t_top1'])}, t2i top-1 "
          f"{_f(summary['first25']['t2i_top1'])}; last 50 steps mean loss {_f(summary['last50']['loss'])}, "
          f"i2t top-1 {_f(summary['last50']['i2t_top1'])}, t2i top-1 {_f(summary['last50']['t2i_top1'])}, "
          f"logit scale {_f(summary['last50']['logit_scale'], 2)}. Non-finite steps skipped: {summary['nan_skips']}. "
          "(`train_summary.json`; every step in `run/metrics.jsonl` of the work dir.)", ""]
    L += ["## Wall time (2 shared CPU cores)", "", "| stage | wall s | note |", "|---|---:|---|"]
    L += [f"| {s['name']} | {s['wall_s']} | {s.get('note', '')} |" for s in timings["stages"]]
    L += ["", "(`timings.json`; 2 CPU cores that other work may have shared, so these are upper bounds.)", ""]
    if splices:
        L += ["## Splice benchmark (test cameras only)", "",
              f"`exif-jax make-splices` on the {splices['photos_used']} test-camera photos large enough for "
              f"{splices['size'][0]}x{splices['size'][1]} ({splices['cameras']} cameras): {splices['n']} images, "
              f"{splices['n_spliced']} spliced (host and donor from different test cameras, region "
              f"{_f(splices['region_fraction']['mean'])} of the image on average) and {splices['n_authentic']} "
              f"authentic controls; seed {splices['seed']}; lossless PNG and a copy recompressed at JPEG quality "
              f"{splices['jpeg_quality']}.", ""]
    for key, d, label in EVAL_COPIES:
        m = evals.get(key)
        if m is None:
            continue
        L += [f"### Localization and detection, {label} (`eval_{key}.json`)", "",
              f"{m['n_samples']} images, {m['n_failed']} failed; consensus {m['consensus']}; patch = the "
              f"training crop ({summary['crop_size']} px) for every method.", ""]
        L += eval_table(m)
        L += [""]
    if evals.get("png"):
        L += ["Conventions (from eval-localize):", ""] + [
            f"- {c}" for c in next(iter(evals["png"]["methods"].values()))["conventions"]]
        L += ["- det AP / ROC-AUC: the paper's detection score (mean patch consistency), all images.", ""]
    if heat:
        L += ["### Heatmaps (PNG copy; each method's best and worst spliced image by per-image AP)", ""]
        L += [f"![{h}]({h})" for h in heat] + [""]
    if probes:
        L += ["## Linear probes on frozen crop features, test cameras (`probes.json`)", "",
              f"{probes['photos']} test-camera photos, {probes['crops_per_photo']} crops of {probes['crop_size']} px "
              f"each, split by photo (test fraction {probes['test_fraction']}, seed {probes['seed']}); classes "
              "with a single photo are dropped from their task.", ""]
        L += probe_table(probes) + [""]
    if retr:
        L += ["## Crop -> EXIF retrieval, test cameras (`retrieval.json`)", "",
              f"{retr['photos']} photos, {retr['distinct_texts']} distinct EXIF texts, {retr['crops_per_photo']} "
              f"crops of {retr['crop_size']} px per photo; 'image' = the mean of a photo's crop embeddings.", ""]
        L += retrieval_table(retr) + [""]
    cis = {k: bootstrap_ci(wd / d / "per_image.csv") for k, d, _ in EVAL_COPIES}
    for k, d, _ in EVAL_COPIES:
        diff = paired_diff_ci(wd / d / "per_image.csv")
        if diff and cis.get(k):
            cis[k]["learned-classical"] = diff
    (o / "bootstrap_ci.json").write_text(json.dumps(cis, indent=1) + "\n", encoding="utf-8")
    L += reading(evals, cis, probes, retr, split, summary) + [""]
    L += ["## Reproduce", "", "From the repo root (the stage commands as they ran, from `timings.json`, in today's "
          "spelling; "
          "wrap each in `python -m experiments.camera_heldout.experiment stage --timings W/timings.json --name N --` "
          "to time it):",
          "", "```"]
    L += ["export JAX_PLATFORMS=cpu"] + [respell(s["cmd"]) for s in timings["stages"]]
    L += [f"python -m experiments.camera_heldout.experiment report --workdir {workdir} --split {split_path} "
          f"--out {out}", "```", ""]
    text = "\n".join(L)
    (o / "README.md").write_text(text, encoding="utf-8")
    return text


def respell(cmd: str) -> str:
    """A recorded stage command in today's spelling."""
    for old, new in RESPELLED:
        cmd = cmd.replace(old, new)
    return cmd


def _get(d: dict | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _spliced_values(per_image_csv: str | Path, key: str) -> dict[str, dict[str, float]]:
    """method -> {image name: `key`} over the spliced images of an eval's per_image.csv (file order); {} without it."""
    import csv

    if not os.path.exists(per_image_csv):
        return {}
    per: dict[str, dict[str, float]] = {}
    with open(per_image_csv, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["label"] == "1" and r[key] not in ("", "nan"):
                per.setdefault(r["method"], {})[r["name"]] = float(r[key])
    return per


def _interval(x: Any, n: int, rng: Any) -> tuple[float, float]:
    """95% bootstrap interval of the mean of x (n resamples drawn from rng)."""
    import numpy as np

    means = x[rng.integers(0, len(x), (n, len(x)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def bootstrap_ci(per_image_csv: str | Path, key: str = "ap", n: int = 2000, seed: int = 0) -> dict:
    """method -> 95% bootstrap interval of the spliced-only mean of `key` (resampling images)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {method: _interval(np.asarray(list(v.values())), n, rng)
            for method, v in _spliced_values(per_image_csv, key).items()}


def paired_diff_ci(per_image_csv: str | Path, a: str = "learned", b: str = "classical", key: str = "ap",
                   n: int = 2000, seed: int = 0) -> dict:
    """{"mean", "ci"}: spliced-only mean of `key` for method a minus method b, with a 95% paired bootstrap
    interval (the same resampled images for both: the images' shared difficulty cancels); {} without both."""
    import numpy as np

    per = _spliced_values(per_image_csv, key)
    if a not in per or b not in per:
        return {}
    names = sorted(set(per[a]) & set(per[b]))
    d = np.array([per[a][k] - per[b][k] for k in names])
    return {"mean": float(d.mean()), "ci": _interval(d, n, np.random.default_rng(seed)), "images": len(d)}


def reading(evals: dict, cis: dict, probes: dict | None, retr: dict | None, split: dict,
            summary: dict) -> list[str]:
    """The 'honest reading' paragraph, its numbers taken from the results."""
    L = ["## Reading", "", "Spliced-only p-mAP with a 95% bootstrap interval over images (from per_image.csv):", ""]
    for key, _, label in EVAL_COPIES:
        m = evals.get(key)
        if not m:
            continue
        ap = {k: _get(m, "methods", k, "localization", "spliced_only", "ap") for k in m["methods"]}
        det = {k: _get(m, "methods", k, "detection", "ap") for k in m["methods"]}
        best = max(ap, key=lambda k: ap[k] if ap[k] is not None else -1)
        ci = cis.get(key, {})
        L.append(f"- {label}: spliced-only p-mAP " + ", ".join(
            f"{k} {_f(v)}" + (f" [{_f(ci[k][0])}, {_f(ci[k][1])}]" if k in ci else "") for k, v in ap.items())
                 + f" (highest: {best}); detection AP " + ", ".join(f"{k} {_f(v)}" for k, v in det.items()) + ".")
        diff = ci.get("learned-classical")
        if diff:
            L.append(f"  Learned minus classical, paired over the same {diff['images']} spliced images: "
                     f"{diff['mean']:+.3f} [{diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}]"
                     + (" (the interval excludes 0)" if diff["ci"][0] > 0 or diff["ci"][1] < 0
                        else " (the interval includes 0: no difference shown)") + ".")
    if retr:
        lr, ri = _get(retr, "models", "learned", "image->text"), _get(retr, "models", "random-init", "image->text")
        if lr and ri:
            L.append(f"- Retrieval on unseen cameras, photo -> EXIF text R@1: learned {_f(lr['R@1'])}, random init "
                     f"{_f(ri['R@1'])}, chance {_f(lr['chance R@1'])} ({lr['queries']} queries).")
    if probes:
        for task, r in probes["tasks"].items():
            if "sources" in r:
                L.append(f"- Probe `{task}` ({r['classes']} classes, {r['test_photos']} test photos): photo acc "
                         + ", ".join(f"{n} {_f(s['photo'])}" for n, s in r["sources"].items())
                         + f", majority {_f(r['majority']['photo'])}.")
    photos_per_batch = summary["batch"] // summary["crops_per_image"]
    orders = math.log10(PAPER_TRAIN_PHOTOS / split["n_photos"]["train"])
    L += ["", f"How far this is from the paper: with the released checkpoint (trained on ~{PAPER_TRAIN_PHOTOS:,} "
          f"YFCC100M photos), the paper reports Columbia p-mAP {PAPER_COLUMBIA_PMAP} on spliced images. This run "
          f"trains a {summary['crop_size']}-px ViT on {split['n_photos']['train']} photos from "
          f"{split['n_cameras']['train']} cameras for {summary['steps']} steps on 2 shared CPU cores: "
          f"{orders:.1f} orders of magnitude fewer photos, most camera models seen in a single photo, crops "
          f"smaller than the paper's {PAPER_CROP} px, and minutes rather than days of training. The train-batch "
          f"top-1 at the end (i2t {_f(summary['last50']['i2t_top1'])}, t2i {_f(summary['last50']['t2i_top1'])}; "
          f"chance 1/{photos_per_batch} photos = {_f(1 / photos_per_batch)}) is what the towers learned on photos "
          f"they saw; the rows above are what carries over to cameras they never saw. The test set is tiny "
          f"({split['n_photos']['test']} photos; a few dozen splices): see the bootstrap intervals above before "
          "reading a difference between rows. The paper's number is also on another benchmark (Columbia's "
          "uncompressed splices), ours on synthetic splices of held-out cameras. What this run "
          "shows is that the whole pipeline (split -> data -> training -> benchmark -> metrics, probes, "
          "retrieval) runs end to end on held-out cameras and what the numbers look like at this scale; it is "
          "not a reproduction of the paper's numbers."]
    return L
