"""The bundled default model: `exif-jax localize photo.jpg -o out/` with no other flag uses it and says so in
every output; it is small; it is the packaged camera-held-out run (README 'Default model')."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from exif_jax import workdir

PHOTO = Path(workdir.__file__).parent / "assets" / "photos" / "Canon_EOS_1000D.jpg"


def test_default_model_is_bundled_and_small():
    d = workdir.DEFAULT_MODEL
    assert workdir.is_packaged(d), f"{d}: the bundled default model is missing"
    size = sum(f.stat().st_size for f in d.iterdir())
    assert size < 4 * 2**20, size
    meta = workdir.packaged_meta(d)
    assert "not the paper" in meta["name"] and meta["param_dtype_stored"] == "bfloat16"
    assert workdir.read_config(str(d)).tokenizer.model.startswith(str(d))


@pytest.mark.subprocess
def test_localize_with_no_model_flag_uses_and_names_the_default(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one device is enough
    r = subprocess.run([sys.executable, "-m", "exif_jax.cli", "localize", str(PHOTO), "-o", str(out),
                        "--no-progress"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    name = workdir.model_name(workdir.DEFAULT_MODEL)
    assert f"using the bundled default model {name!r}" in r.stderr
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert line["embedder"] == f"model:{name}"
    assert line["patch"] == workdir.read_config(str(workdir.DEFAULT_MODEL)).data.crop_size
    png = Image.open(line["png"])
    assert png.size[0] > 300


def test_export_with_no_flags_writes_what_the_default_model_fits(tmp_path, capsys):
    """The default model (avg pool, linear heads) fits timm, not SiglipModel: with no --format it exports the
    one it fits and names the other with the reason; an explicit --format hf is refused."""
    from exif_jax import cli

    assert cli.main(["export", "-o", str(tmp_path / "o")]) == 0
    out, err = capsys.readouterr()
    assert f"exported {workdir.model_name(workdir.DEFAULT_MODEL)} (step 1000)" in out
    assert "skipped --format hf" in err and "model.image.pool='avg'" in err
    assert (tmp_path / "o" / "vit_big_vision.npz").is_file() and not (tmp_path / "o" / "config.json").exists()
    assert cli.main(["export", "-o", str(tmp_path / "h"), "--format", "hf"]) == 2
    assert not (tmp_path / "h").exists()
