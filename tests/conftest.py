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
    rc = cli.main(["build-data", "--images", str(BUNDLED_PHOTOS), "--out", str(out), "--workers", "1", "--quiet"])
    assert rc == 0, "build-data failed on the bundled photos"
    return str(out)
