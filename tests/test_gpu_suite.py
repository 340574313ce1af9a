"""benchmarks/gpu_suite.py: its dry run (every stage, tiny shapes, on the CPU) finishes with each stage ok and the
report it writes holds what a GPU run needs (device, versions, date, rows, the fastest correct setting); and the
"correct" and "fastest" rules, on made-up rows."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_suite  # noqa: E402
import gpu_suite_stages  # noqa: E402

TOL = gpu_suite_stages.TOLERANCE["float32"]


def ours(setting: str, img_s: float, loss: float = 2.0, batch: int = 16, status: str = "ok") -> dict:
    overrides = [] if setting == "default" else setting.split(", ")
    return {"kind": "ours", "setting": setting, "overrides": overrides, "batch": batch, "status": status,
            "img_s": img_s, "mfu": 0.1, "first_loss": loss, "last_loss": loss, "first_grad_norm": 1.0}


def test_a_fast_setting_with_another_loss_is_not_correct_nor_chosen():
    rows = [ours("default", 100.0), ours("model.attention=einsum", 120.0, loss=2.0 * (1 + TOL["loss"] / 2)),
            ours("model.attention=cudnn", 200.0, loss=2.1),  # fastest, but computes something else
            ours("data.global_batch_size=32", 150.0, loss=3.0, batch=32),  # its own reference
            ours("model.image.remat=full", 500.0, status="failed")]
    gpu_suite_stages.mark_correct(rows, TOL)
    assert [r.get("correct") for r in rows] == [True, True, False, True, None]
    assert gpu_suite.best_setting(rows)["setting"] == "data.global_batch_size=32"


def test_read_flags_splits_set_flags_from_measured_variants(tmp_path):
    flags, variants = gpu_suite.read_flags()
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in flags
    assert variants and not set(flags) & set(variants)
    f = tmp_path / "flags.txt"
    f.write_text("# c\n--a=1  # why\n#   --xla_b=2   measured\n# --x is prose\n--c\n")
    assert gpu_suite.read_flags(f) == (["--a=1", "--c"], ["--xla_b=2"])


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_suite")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--dry-run", "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (report,) = out.glob("gpu_suite_dry-run_*.json")
    return json.loads(report.read_text()), report.with_suffix(".md").read_text(), p.stdout


@pytest.mark.subprocess
@pytest.mark.slow
def test_the_dry_run_runs_every_stage(dry_run):
    report, _, _ = dry_run
    assert list(report["stages"]) == [name for name, _, _ in gpu_suite.STAGES]
    assert {n: s["status"] for n, s in report["stages"].items()} == dict.fromkeys(report["stages"], "ok")
    rows = {r["setting"]: r for r in report["stages"]["vit_b16"]["rows"]}
    default, knobs = rows.pop("default"), rows[", ".join(gpu_suite_stages.DRY_SWEEP[1])]
    # Every knob at once, on the real (sharded) step: the same losses and gradient norm as the default.
    assert default["status"] == knobs["status"] == "ok" and default["correct"] is True and knobs["correct"] is True
    assert default["img_s"] > 0 and default["first_loss"] > 0
    assert rows["model.attention=cudnn"]["status"] == "failed" and "needs a CUDA GPU" in rows[
        "model.attention=cudnn"]["error"]
    peer = next(r for r in report["stages"]["vit_b16"]["rows"] if r["kind"] == "peer")
    assert peer["status"] == "skipped" and peer["error"]  # torch/timm absent, or the dry run: said which
    assert [r["status"] for r in report["stages"]["resnet50_paper"]["rows"]] == ["lowered"]
    assert [r["status"] for r in report["stages"]["localize"]["rows"]] == ["ok", "ok"]
    assert all(r["warm_s"] > 0 and r["patches"] > 0 for r in report["stages"]["localize"]["rows"])
    crops = [r for r in report["stages"]["input"]["rows"] if r["unit"] == "crops/s wall"]
    assert len(crops) == 3 and all(r["value"] > 0 for r in crops)
    assert [r["status"] for r in report["stages"]["flags"]["rows"]] == ["ok"]


@pytest.mark.subprocess
@pytest.mark.slow
def test_the_dry_run_reports_device_versions_and_the_fastest_correct_setting(dry_run):
    report, md, stdout = dry_run
    assert report["device"]["platform"] == "cpu" and report["versions"]["jax"] not in ("", "absent")
    assert report["date"][:4].isdigit() and report["xla_flags"]["applied"]
    best = report["best"]["vit_b16"]
    assert best["config"].startswith("configs/tiny.py --config.")  # the dry run's shapes, said so
    line = next(ln for ln in stdout.splitlines() if ln.startswith("gpu_suite: fastest correct vit_b16"))
    assert best["config"] in line and all(f"--config.{o}" in line for o in best["overrides"])
    assert f"jax {report['versions']['jax']}" in md and report["date"] in md and "| default |" in md


def test_the_docstring_recipe_carries_setup_py_pins():
    """The wheels the GPU recipe downloads are the versions setup.py pins (portpicker: grain's own dependency)."""
    import re

    pins = dict(re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', (REPO / "setup.py").read_text()))
    wheels = dict(re.findall(r"\b([A-Za-z][A-Za-z0-9_.-]*)==(\S+)", gpu_suite.__doc__))
    assert set(wheels) == {"grain", "array-record", "ml-collections", "portpicker", "tensorboardX"}
    assert {k: v for k, v in wheels.items() if k != "portpicker"} == {k: pins[k] for k in wheels if k != "portpicker"}
