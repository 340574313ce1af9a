"""Workdirs and packaged models: one loader; a package round-trips the run's towers (f32 exactly, bf16 closely)."""
from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from exif_jax import cli, workdir


def embeddings(model, config):
    rng = np.random.default_rng(0)
    s = int(config.data.crop_size)
    images = rng.integers(0, 256, (4, s, s, 3), dtype=np.uint8)
    tokens = np.zeros((4, int(config.tokenizer.max_len)), np.int32)
    tokens[:, :5] = rng.integers(3, 200, (4, 5))
    tokens[:, 5] = 1
    return np.asarray(model.embed_image(jnp.asarray(images))), np.asarray(model.embed_text(jnp.asarray(tokens)))


@pytest.mark.parametrize("dtype,tol", [("float32", 0.0), ("bfloat16", 2e-2)])
def test_package_round_trips_the_run(trained_workdir, tmp_path, dtype, tol):
    out = tmp_path / f"pkg_{dtype}"
    assert cli.main(["package", "--run", trained_workdir, "--out", str(out), "--name", "test model x",
                     "--dtype", dtype, "--about", json.dumps({"steps": 4})]) == 0
    assert workdir.is_packaged(out) and workdir.model_name(out) == "test model x"
    assert json.loads((out / "model.json").read_text())["steps"] == 4
    packed, config = workdir.load_packaged(out, float32=True)
    run, run_config, _ = workdir.load_model(trained_workdir, float32=True)
    for a, b in zip(embeddings(packed, config), embeddings(run, run_config)):
        assert np.abs(a - b).max() <= tol, (dtype, np.abs(a - b).max())
        if dtype == "bfloat16":
            assert np.abs(a - b).max() > 0  # really stored in bf16


def test_package_refuses_params_that_do_not_fit(trained_workdir, tmp_path):
    out = tmp_path / "pkg"
    workdir.package(trained_workdir, str(out), name="x", dtype="float32")
    cfg = json.loads((out / "config.json").read_text())
    cfg["model"]["text"]["mlp_dim"] = 96
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"params\.msgpack: .* has shape"):
        workdir.load_packaged(out)


def test_packaged_model_loads_like_a_workdir(trained_workdir, tmp_path, capsys):
    """--checkpoint takes a packaged model: same loader, its one step; --step elsewhere is an error naming it."""
    out = tmp_path / "pkg"
    workdir.package(trained_workdir, str(out), name="pkg under test", dtype="float32")
    model, config, step = workdir.load_model(str(out))
    _, _, run_step = workdir.load_model(trained_workdir)
    assert step == run_step and workdir.read_config(str(out)).to_dict() == config.to_dict()
    with pytest.raises(ValueError, match="pkg under test.*drop --step"):
        workdir.load_model(str(out), run_step + 1)
    # default_source: an explicit source wins; with none, the bundled default (named on stderr).
    assert workdir.default_source("x") == "x" and workdir.default_source(None, "noise") is None
    assert workdir.default_source(None, command="cmd") == str(workdir.DEFAULT_MODEL)
    err = capsys.readouterr().err
    assert err.startswith("cmd: no --checkpoint: using the bundled default model")
    assert workdir.model_name(workdir.DEFAULT_MODEL) in err
