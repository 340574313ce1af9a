"""Session fixtures shared by test files: one ArrayRecord dataset built from the bundled photos."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
BUNDLED_PHOTOS = REPO / "exif_jax" / "assets" / "photos"


@pytest.fixture(scope="session")
def bundled_records(tmp_path_factory) -> str:
    """Directory of ArrayRecord shards made by `exif-jax build-data` from exif_jax/assets/photos."""
    from exif_jax import cli

    out = tmp_path_factory.mktemp("bundled_records")
    rc = cli.main(["build-data", "--images", str(BUNDLED_PHOTOS), "--out", str(out), "--workers", "1", "--no-progress"])
    assert rc == 0, "build-data failed on the bundled photos"
    return str(out)


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
    """(workdir, model): laid out as `exif-jax train` leaves it (config.json, ckpt/<step>/model) from
    configs/tiny.py with random weights (a real 10-step run takes ~1 min on 2 shared cores)."""
    import importlib.util

    import orbax.checkpoint as ocp
    from flax import nnx

    from exif_jax import checkpoint
    from exif_jax.eval.embedders import random_init_model

    spec = importlib.util.spec_from_file_location("tiny_cfg", REPO / "configs" / "tiny.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    wd = tmp_path_factory.mktemp("tiny_run")
    (wd / "config.json").write_text(config.to_json(indent=2))
    model = random_init_model(config, seed=1)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    mngr = checkpoint.make_manager(str(wd / "ckpt"), keep=1, async_save=False)
    mngr.save(3, args=ocp.args.Composite(model=ocp.args.StandardSave({"params": params, "rest": rest})))
    mngr.wait_until_finished()
    mngr.close()
    return wd, model


# Exact SigLIP shape at the tiny config's sizes (exports to transformers.SiglipModel): both widths == embed_dim.
SIGLIP_OVERRIDES = ["model.image.pool=map", "model.image.head=none", "model.text.pool=last",
                    "model.text.mask_pad=False", "model.logit_scale_max=inf", "loss.kind=sigmoid",
                    "model.embed_dim=64"]


@pytest.fixture(scope="session")
def trained_workdir(bundled_records, tmp_path_factory) -> str:
    """A real `exif-jax train` run: 4 steps of configs/tiny.py (SigLIP-shaped) on the bundled photos."""
    from exif_jax import train

    wd = tmp_path_factory.mktemp("siglip_run")
    overrides = SIGLIP_OVERRIDES + [f"data.train_dir={bundled_records}", "train.steps=4", "train.ckpt_every=2",
                                    "train.log_every=2", "optim.warmup_steps=1"]
    assert train.main(str(REPO / "configs" / "tiny.py"), str(wd), overrides, distributed="off") == 0
    return str(wd)


# --- Object-store servers on 127.0.0.1 (tests/object_store.py); tests put a proxy in front and set env_for(proxy)
# with monkeypatch.setenv.
import object_store  # noqa: E402  (tests/ is on sys.path: pytest puts a conftest's folder there)
from object_store import env_for  # noqa: E402,F401  (for test files: `from conftest import env_for`)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1, for the whole session."""
    server = object_store.start_s3()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_server():
    """gcp-storage-emulator (GCS JSON API, in memory) on 127.0.0.1, for the whole session."""
    server = object_store.start_gcs()
    yield server
    server.stop()
