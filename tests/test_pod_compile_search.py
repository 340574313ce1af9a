"""benchmarks/pod_compile.py --target tpu's planning, with libtpu faked by a rule for what fits: the largest-batch
search brackets the limit, a larger slice's search starts from the smaller slice's bracket, and --resume runs
that share one output keep each other's rows. No compile: seconds."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location("pod_compile", REPO / "benchmarks" / "pod_compile.py")
pod_compile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pod_compile)

# ------------------------------------------------------------------ the largest-batch search, compiles faked

def _fake_tpu_case(limit_per_chip: int, log: list):
    """A stand-in for libtpu that fits any per-chip batch up to `limit_per_chip` (memory linear in the batch)."""
    def tpu_case(name, slice_name, mesh_shape, overrides=(), global_batch=None, purpose="default"):
        chips = pod_compile.chips_of(slice_name)
        batch = global_batch or 1024
        per_chip = batch // chips
        log.append((slice_name, per_chip))
        base = {"config": name, "slice": slice_name, "topology": pod_compile.TOPOLOGIES[slice_name][0],
                "mesh": dict(zip(("data", "fsdp", "tensor"), mesh_shape)), "purpose": purpose,
                "global_batch": batch, "compile_s": 1.0, **({"overrides": list(overrides)} if overrides else {})}
        if per_chip > limit_per_chip:
            return {**base, "error": "JaxRuntimeError: RESOURCE_EXHAUSTED: Ran out of memory on HBM",
                    "hbm_bytes": 16 * 2**30, "fits": False}
        temp = per_chip * 2**20
        return {**base, "per_device": {"temp_bytes": temp, "batch_bytes": per_chip * 2**10,
                                       "argument_bytes": 2**30, "output_bytes": 0, "alias_bytes": 0},
                "collectives": {k: {"executions": 0, "bytes": 0} for k in pod_compile.COLLECTIVES},
                "flops": 1e12, "optimal_seconds": None, "margin_bytes": 15 * 2**30 - temp,
                "total_bytes": 2**30 + temp, "hbm_bytes": 16 * 2**30, "fits": True}
    return tpu_case


def test_largest_batch_search_brackets_the_limit_and_starts_a_larger_slice_from_the_smaller_one(
        monkeypatch, tmp_path):
    log: list = []
    monkeypatch.setattr(pod_compile, "tpu_case", _fake_tpu_case(1200, log))
    monkeypatch.setattr(pod_compile.TpuRun, "write", lambda self: None)
    run = pod_compile.TpuRun(tmp_path / "t", ["vit_b16"], ["v5e-16", "v5e-256"], [], budget_s=600, resume=False)
    small = run.largest_batch("vit_b16", "v5e-16")
    # Powers of two, then one refinement: 1024 fits, 2048 does not, 1536 does not.
    assert small == (1024, 1536), log
    log.clear()
    assert run.largest_batch("vit_b16", "v5e-256", small) == (1024, 1536)
    assert log == [("v5e-256", 4), ("v5e-256", 1024), ("v5e-256", 1536)]  # default, then the two ends only
    # A bracket that does not hold on the larger slice: the search goes on from it.
    log.clear()
    monkeypatch.setattr(pod_compile, "tpu_case", _fake_tpu_case(700, log))
    run = pod_compile.TpuRun(tmp_path / "u", ["vit_b16"], ["v5e-256"], [], budget_s=600, resume=False)
    lo, hi = run.largest_batch("vit_b16", "v5e-256", (1024, 1536))
    assert lo <= 700 < hi and hi <= 2 * lo, (lo, hi, log)
    assert log[1] == ("v5e-256", 1024)


def test_resume_runs_sharing_an_output_keep_each_others_rows(monkeypatch, tmp_path):
    log: list = []
    monkeypatch.setattr(pod_compile, "tpu_case", _fake_tpu_case(1200, log))
    monkeypatch.setattr(pod_compile.importlib.metadata, "version", lambda name: "test")
    out = tmp_path / "shared"
    a = pod_compile.TpuRun(out, ["vit_b16"], ["v5e-16"], [], budget_s=600, resume=True)
    b = pod_compile.TpuRun(out, ["vit_b16"], ["v4-32"], [], budget_s=600, resume=True)
    a.case("vit_b16", "v5e-16", (16, 1, 1))
    b.case("vit_b16", "v4-32", (16, 1, 1))  # b started before a wrote: it must not drop a's row
    a.case("vit_b16", "v5e-16", (2, 8, 1))
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert sorted((r["slice"], r["mesh"]["data"]) for r in rows) == [("v4-32", 16), ("v5e-16", 2), ("v5e-16", 16)]
    # A --set run on the same output compiles its own cases: a's row is another program's.
    log.clear()
    ring = pod_compile.TpuRun(out, ["vit_b16"], ["v5e-16"], ["loss.impl=ring"], budget_s=600, resume=True)
    assert ring.case("vit_b16", "v5e-16", (16, 1, 1))["overrides"] == ["loss.impl=ring"] and len(log) == 1
    again = pod_compile.TpuRun(out, ["vit_b16"], ["v5e-16"], [], budget_s=0, resume=True)
    assert "overrides" not in again.case("vit_b16", "v5e-16", (16, 1, 1))
    assert "| vit_b16 (loss.impl=ring) | v5e-16 (v5e:4x4) | 16×1×1 | 64 |" in out.with_suffix(".md").read_text()


def test_a_case_another_run_compiled_again_replaces_the_failed_copy(monkeypatch, tmp_path):
    log: list = []
    monkeypatch.setattr(pod_compile, "tpu_case", _fake_tpu_case(1200, log))
    monkeypatch.setattr(pod_compile.importlib.metadata, "version", lambda name: "test")
    out = tmp_path / "shared"
    failed = {"config": "vit_b16", "slice": "v4-128", "topology": "v4:4x4x4", "global_batch": 1024,
              "mesh": {"data": 8, "fsdp": 8, "tensor": 1}, "compile_s": 0.0, "error": "NotImplementedError: mesh"}
    out.with_suffix(".json").write_text(json.dumps({"rows": [failed]}))
    a = pod_compile.TpuRun(out, ["vit_b16"], ["v5e-16"], [], budget_s=600, resume=True)
    b = pod_compile.TpuRun(out, ["vit_b16"], ["v4-128"], [], budget_s=600, resume=True)
    assert b.case("vit_b16", "v4-128", (8, 8, 1))["fits"]  # a failed case is compiled again
    a.case("vit_b16", "v5e-16", (16, 1, 1))  # a still holds the failed copy it read at start
    rows = {(r["slice"], r["mesh"]["data"]): r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    assert rows[("v4-128", 8)].get("fits") is True and "error" not in rows[("v4-128", 8)]
    assert rows[("v5e-16", 16)]["fits"]


def test_batch_per_chip_compiles_only_what_was_asked(monkeypatch, tmp_path):
    log: list = []
    monkeypatch.setattr(pod_compile, "tpu_case", _fake_tpu_case(1200, log))
    monkeypatch.setattr(pod_compile.importlib.metadata, "version", lambda name: "test")
    run = pod_compile.TpuRun(tmp_path / "asked", ["vit_b16"], ["v5e-256"], ["loss.impl=ring"], budget_s=600,
                             resume=False)
    run.asked([1024, 2048])
    assert log == [("v5e-256", 1024), ("v5e-256", 2048)]
    assert [r.get("fits") for r in run.rows] == [True, False]


def test_a_failed_default_case_without_its_batch_is_the_same_case(monkeypatch, tmp_path):
    # Older runs wrote a failed default case with global_batch null: it is the config's batch, and a compiled
    # row of the same case is the one kept.
    monkeypatch.setattr(pod_compile.importlib.metadata, "version", lambda name: "test")
    out = tmp_path / "old"
    case = {"config": "vit_b16", "slice": "v4-128", "topology": "v4:4x4x4", "mesh": {"data": 8, "fsdp": 8, "tensor": 1}}
    failed = {**case, "global_batch": None, "compile_s": 0.0, "error": "NotImplementedError: mesh"}
    good = _fake_tpu_case(1200, [])("vit_b16", "v4-128", (8, 8, 1), (), 1024)
    out.with_suffix(".json").write_text(json.dumps({"rows": [failed, good]}))
    run = pod_compile.TpuRun(out, ["vit_b16"], ["v4-128"], [], budget_s=0, resume=True)
    assert run.rows == [good] and run.case("vit_b16", "v4-128", (8, 8, 1)) == good
