"""The TFDS builder (array_record, no tensorflow): prepare the bundled photos, read them back byte-identical."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from exif_jax import exif  # noqa: E402
from exif_jax.data import build  # noqa: E402
from exif_jax.data.tfds_builder import ExifPhotos  # noqa: E402

PHOTOS = Path(__file__).resolve().parents[1] / "exif_jax" / "assets" / "photos"


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)  # Text features come back as bytes without TF


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    b = ExifPhotos(data_dir=str(data_dir), file_format="array_record")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(PHOTOS)))
    return b, data_dir


def test_prepare_and_read_back_bytes_identical(prepared):
    b, data_dir = prepared
    ds = tfds.data_source("exif_photos", data_dir=str(data_dir))["train"]
    jpgs = {p.name: p for p in PHOTOS.glob("*.jpg")}
    assert len(ds) == len(jpgs) == 18
    seen = set()
    for i in range(len(ds)):
        ex = ds[i]
        name = _s(ex["path"])
        src = jpgs[name].read_bytes()
        assert ex["image"] == src and hashlib.sha256(ex["image"]).hexdigest() == _s(ex["sha256"])
        tags = exif.read_tags(src, name=name)
        assert _s(ex["text"]) == exif.render_text(tags)
        assert json.loads(_s(ex["tags"])) == exif.select_tags(tags)
        assert _s(ex["camera"]) == exif.camera_key(tags)
        seen.add(name)
    assert seen == set(jpgs)


def test_builder_from_directory_matches_build_data(prepared, tmp_path):
    b, _ = prepared
    ds = tfds.builder_from_directory(b.data_dir).as_data_source()["train"]
    build.build_dataset(build.items_from_paths(build.list_images(str(PHOTOS))), str(tmp_path / "out"),
                        build.Settings(tag_order=tuple(exif.DEFAULT_TAGS)), workers=1, progress=False)
    recs = {r["sha256"]: r for r in build.read_records(str(tmp_path / "out"))}
    got = {_s(ds[i]["sha256"]): ds[i] for i in range(len(ds))}
    assert set(got) == set(recs)
    for h, r in recs.items():
        ex = got[h]
        assert hashlib.sha256(ex["image"]).hexdigest() == r["sha256"] and _s(ex["text"]) == r["text"]
        assert (int(ex["width"]), int(ex["height"])) == (r["width"], r["height"])
