"""benchmarks/pod_compile.py --target tpu at a small config: libtpu's compiler for an abstract v5e:2x2 slice
(no TPU attached) compiles the trainer's real step; per-chip memory against HBM, the reduce-scatter that the
TPU pipeline forms, the largest-batch search and the table it writes. Skipped when libtpu is not installed."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location("pod_compile", REPO / "benchmarks" / "pod_compile.py")
pod_compile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pod_compile)

pytestmark = [pytest.mark.skipif(not pod_compile.libtpu_available(),
                                 reason="libtpu (the TPU compiler) is not installed: pip install -e '.[tpu]'"),
              pytest.mark.slow]  # the TPU compiler, seconds a compile

# configs/tiny.py cut to one block per tower, as in test_pod_compile.py: each compile takes seconds.
SMALL = ("mesh.fsdp_min_size=0", "model.image.depth=1", "model.text.depth=1", "data.crop_size=16",
         "model.image.patch=8", "tokenizer.max_len=16", "data.global_batch_size=16", "model.text.vocab_size=61")


@pytest.fixture(scope="module")
def fsdp_row():
    """data 2 x fsdp 2 on the four chips of a v5e:2x2, compiled by libtpu."""
    return pod_compile.tpu_case("tiny", "v5e-4", (2, 2, 1), SMALL)


@pytest.fixture(autouse=True, scope="module")
def tiny_config():
    pod_compile.CONFIGS["tiny"] = REPO / "configs" / "tiny.py"
    yield
    pod_compile.CONFIGS.pop("tiny")


def test_tpu_compile_gives_per_chip_memory_against_hbm(tiny_config, fsdp_row):
    row = fsdp_row
    assert "error" not in row, row.get("error")
    assert row["platform"] == "tpu" and row["device_kind"].startswith("TPU v5") and row["devices"] == 4
    assert row["slice"] == "v5e-4" and row["topology"] == "v5e:2x2" and row["hbm_bytes"] == 16 * 2**30
    pd = row["per_device"]
    # The compiled arguments are the trainer's shards plus the batch (TPU pads small arrays to its tiles).
    state = pd["params_bytes"] + pd["opt_bytes"] + pd["rest_bytes"] + pd["batch_bytes"]
    assert state <= pd["argument_bytes"] < 4 * state, pd
    assert pd["temp_bytes"] >= 0 and row["generated_code_bytes"] > 0  # tiny temporaries: 0 in HBM
    assert row["total_bytes"] == (pd["argument_bytes"] + pd["output_bytes"] - pd["alias_bytes"] + pd["temp_bytes"]
                                  + row["generated_code_bytes"])
    assert row["fits"] and row["margin_bytes"] == row["hbm_bytes"] - row["total_bytes"]
    assert row["flops"] > 0
    assert row["optimal_seconds"] is None or row["optimal_seconds"] > 0


def test_tpu_pipeline_forms_reduce_scatter_for_fsdp_gradients(tiny_config, fsdp_row):
    c = fsdp_row["collectives"]
    # FSDP: weights gathered just in time, gradients reduce-scattered back to their shards (the CPU pipeline
    # leaves these as all-reduce + slice).
    assert c["all-gather"]["ops"] > 0 and c["reduce-scatter"]["ops"] > 0, c
    assert fsdp_row["while_loops_without_trip_count"] == 0


def test_memory_the_compiler_cannot_fit_is_a_row_that_does_not_fit(tiny_config):
    # A 40M-row embedding table, replicated with its two Adam moments: ~30 GiB per chip, past a v5e's 16 GiB, so
    # libtpu refuses it at compile time (in seconds: nothing for its rematerialization to try).
    row = pod_compile.tpu_case("tiny", "v5e-4", (4, 1, 1), SMALL + ("model.text.vocab_size=40000000",))
    assert row["fits"] is False and "RESOURCE_EXHAUSTED" in row["error"], {k: v for k, v in row.items()
                                                                            if k != "largest"}


def test_run_writes_table_and_says_what_it_did_not_reach(tiny_config, tmp_path):
    out = tmp_path / "pod_tpu"
    run = pod_compile.TpuRun(out, ["tiny"], ["v5e-4"], list(SMALL), budget_s=0, resume=False)
    run.run()  # a spent budget compiles nothing and lists every planned case as missing
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["rows"] == [] and saved["missing"] and "libtpu" in saved["compiler"]
    assert "Not compiled in this run" in out.with_suffix(".md").read_text()
    # One compile, then --resume keeps it and compiles nothing twice.
    run = pod_compile.TpuRun(out, ["tiny"], ["v5e-4"], list(SMALL), budget_s=600, resume=False)
    row = run.case("tiny", "v5e-4", (4, 1, 1))
    assert row["fits"] and row["global_batch"] == 16
    again = pod_compile.TpuRun(out, ["tiny"], ["v5e-4"], list(SMALL), budget_s=0, resume=True)
    assert again.case("tiny", "v5e-4", (4, 1, 1)) == json.loads(out.with_suffix(".json").read_text())["rows"][0]
    md = out.with_suffix(".md").read_text()
    assert "| tiny (mesh.fsdp_min_size=0, " in md and "| v5e-4 (v5e:2x2) | 4×1×1 | 4 |" in md and "yes (+" in md


def test_mesh_axis_of_8_on_a_4x4x4_torus():
    # v4-128 / v5p-128 are 4x4x4 tori: no set of whole physical axes has 8 chips, so jax.make_mesh refuses
    # data 8 x fsdp 8 there; the trainer's mesh splits one axis and still uses every chip once.
    import jax
    import ml_collections

    from exif_jax import sharding

    devices = pod_compile.tpu_devices("v4-128")
    with pytest.raises(NotImplementedError):
        jax.make_mesh((8, 8, 1), sharding.MESH_AXES, devices=devices)
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 8, "fsdp": 8, "tensor": 1}), devices)
    assert dict(mesh.shape) == {"data": 8, "fsdp": 8, "tensor": 1}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)
    # A mesh that fits the torus whole keeps jax's own layout.
    whole = sharding.make_mesh(ml_collections.ConfigDict({"data": 4, "fsdp": 16, "tensor": 1}), devices)
    assert (whole.devices == jax.make_mesh((4, 16, 1), sharding.MESH_AXES, devices=devices).devices).all()
