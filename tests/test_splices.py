"""make-splices on the bundled photos: different cameras, exact pixels, area, determinism, JPEG copy."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exif_jax import exif
from exif_jax.cli import main as cli
from exif_jax.eval import splices
from exif_jax.eval.datasets import load_dataset, load_mask

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "exif_jax" / "assets" / "photos"
N, SEED, Q, SIZE = 12, 1, 85, (256, 192)


def run(out: Path, seed: int = SEED, **kw) -> dict:
    return splices.make_splices(PHOTOS, out, N, seed, jpeg_quality=Q, size=SIZE, authentic_fraction=0.25,
                                progress=False, **kw)


def manifest(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB") if im.mode != "L" else im)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench")
    return out, run(out)


def window(rel: str, xy: list[int]) -> np.ndarray:
    x, y = xy
    return pixels(PHOTOS / rel)[y:y + SIZE[1], x:x + SIZE[0]]


def test_summary_and_layout(bench):
    out, summary = bench
    assert summary["n"] == N and summary["n_authentic"] == 3 and summary["n_spliced"] == 9
    assert summary["size"] == list(SIZE) and summary["cameras"] == 17 and summary["photos_used"] == 18
    assert json.loads((out / "summary.json").read_text()) == summary
    recs = manifest(out)
    assert len(recs) == N and sum(r["label"] for r in recs) == 9
    for r in recs:
        assert (out / r["image"]).suffix == ".png" and (out / r["image"]).is_file()
        assert (out / r["mask"]).is_file()
        assert r["seed"] == SEED and r["host_xy"][0] % 16 == 0 and r["host_xy"][1] % 16 == 0


def test_host_and_donor_cameras_differ(bench):
    out, _ = bench
    cams = {p.name: exif.camera_key(exif.read_tags(p)) for p in PHOTOS.glob("*.jpg")}
    for r in manifest(out):
        assert r["host_camera"] == cams[r["host_file"]]
        if r["label"]:
            assert r["donor_camera"] == cams[r["donor_file"]]
            assert r["donor_camera"] != r["host_camera"]
        else:
            assert r["donor_file"] is None and r["region"] is None


def test_pasted_pixels_are_donor_pixels_rest_is_host(bench):
    out, _ = bench
    for r in manifest(out):
        image, mask = pixels(out / r["image"]), pixels(out / r["mask"])
        assert image.shape == (SIZE[1], SIZE[0], 3) and mask.shape == (SIZE[1], SIZE[0])
        assert set(np.unique(mask)) <= {0, 255}
        m = mask == 255
        host = window(r["host_file"], r["host_xy"])
        assert np.array_equal(image[~m], host[~m])
        if r["label"]:
            donor = window(r["donor_file"], r["donor_xy"])
            assert np.array_equal(image[m], donor[m])
            assert not np.array_equal(image[m], host[m])  # something was pasted
            frac = m.mean()
            assert 0.05 <= frac <= 0.30 and frac == pytest.approx(r["region_fraction"])
        else:  # authentic control: an empty mask, the host crop untouched
            assert not m.any() and np.array_equal(image, host)
    kinds = {r["region"] for r in manifest(out) if r["label"]}
    assert kinds == {"blob", "rectangle"}


def test_deterministic_given_seed(bench, tmp_path):
    out, summary = bench
    again = run(tmp_path / "again")
    assert {k: v for k, v in again.items() if k not in ("out", "copies")} == \
        {k: v for k, v in summary.items() if k not in ("out", "copies")}
    assert manifest(tmp_path / "again") == manifest(out)
    for r in manifest(out):
        for rel in (r["image"], r["mask"], r["image"].replace(".png", ".jpg")):
            root_a, root_b = (out, tmp_path / "again") if rel.endswith(".png") else \
                (out / f"jpeg_q{Q}", tmp_path / "again" / f"jpeg_q{Q}")
            assert np.array_equal(pixels(root_a / rel), pixels(root_b / rel))
    run(tmp_path / "other", seed=SEED + 1)
    assert manifest(tmp_path / "other") != manifest(out)


def test_recompressed_copy_exists_and_differs(bench):
    out, _ = bench
    jq = out / f"jpeg_q{Q}"
    recs, jrecs = manifest(out), manifest(jq)
    assert len(jrecs) == len(recs)
    for r, j in zip(recs, jrecs):
        assert j["image"].endswith(".jpg") and j["jpeg_quality"] == Q and j["label"] == r["label"]
        with Image.open(jq / j["image"]) as im:
            assert im.format == "JPEG"
        a, b = pixels(out / r["image"]).astype(float), pixels(jq / j["image"]).astype(float)
        assert not np.array_equal(a, b)
        psnr = 10 * np.log10(255 ** 2 / np.mean((a - b) ** 2))
        assert psnr > 25  # the same picture, recompressed
        assert np.array_equal(pixels(out / r["mask"]), pixels(jq / j["mask"]))


def test_generic_loader_reads_the_benchmark(bench, tmp_path):
    out, _ = bench
    for root in (out, out / f"jpeg_q{Q}"):
        samples = load_dataset(f"folder:{root}")
        recs = manifest(root)
        assert [s.name for s in samples] == [r["name"] for r in recs]
        for s, r in zip(samples, recs):
            assert s.label == r["label"] and s.image_path == root / r["image"]
            assert np.array_equal(load_mask(s, SIZE[::-1]), pixels(root / r["mask"]) == 255)
    # without the manifest, labels come from the masks (authentic masks are empty)
    bare = tmp_path / "bare"
    shutil.copytree(out / "images", bare / "images")
    shutil.copytree(out / "masks", bare / "masks")
    labels = {s.name: s.label for s in load_dataset(f"folder:{bare}")}
    assert labels == {r["name"]: r["label"] for r in manifest(out)}


def test_skip_reasons_and_errors(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("Nikon_D70.jpg", "Casio_EX-Z3.jpg", "Canon_EOS_20D_1.jpg"):
        shutil.copy(PHOTOS / name, photos / name)
    Image.new("RGB", (320, 240), (90, 120, 30)).save(photos / "no_exif.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8not a jpeg")
    (photos / "notes.txt").write_text("ignored")
    tiny_exif = Image.Exif()
    tiny_exif[0x010F], tiny_exif[0x0110] = "Tiny", "Cam"  # IFD0 Make, Model
    Image.new("RGB", (64, 48)).save(photos / "tiny.png", exif=tiny_exif.tobytes())
    summary = splices.make_splices(photos, tmp_path / "out", 4, 0, size=(256, 192), progress=False)
    assert summary["skipped"] == {"no camera (EXIF Make/Model)": 1, "unreadable EXIF": 1,
                                  "smaller than 256x192": 1}
    assert summary["photos_used"] == 3 and summary["cameras"] == 3
    with pytest.raises(FileExistsError, match="manifest.jsonl"):
        splices.make_splices(photos, tmp_path / "out", 4, 0, size=(256, 192), progress=False)
    splices.make_splices(photos, tmp_path / "out", 2, 0, size=(256, 192), progress=False, overwrite=True)
    assert len(manifest(tmp_path / "out")) == 2 and len(list((tmp_path / "out" / "images").iterdir())) == 2

    one_cam = tmp_path / "one_cam"
    one_cam.mkdir()
    shutil.copy(PHOTOS / "Nikon_D70.jpg", one_cam / "a.jpg")
    with pytest.raises(ValueError, match=">= 2 cameras"):
        splices.make_splices(one_cam, tmp_path / "x", 2, 0, progress=False)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        splices.make_splices(tmp_path / "nope", tmp_path / "x", 2, 0, progress=False)
    with pytest.raises(ValueError, match="512x384"):
        splices.parse_size("512by384")


def test_cli(tmp_path, capsys):
    rc = cli(["make-splices", "--images", str(PHOTOS), "--out", str(tmp_path / "c"), "--count", "3", "--seed", "4",
              "--size", "128x96", "--authentic-fraction", "0", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_spliced"] == 3 and summary["size"] == [128, 96] and summary["jpeg_quality"] is None
    assert not (tmp_path / "c" / "jpeg_q85").exists()
