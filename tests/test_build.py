"""build-data: real ArrayRecord shards from real photos, bad inputs generated with PIL, a killed build resumed."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exif_jax import exif
from exif_jax.cli import main as cli
from exif_jax.data import build, photo_check

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "exif_jax" / "assets" / "photos"
SHARED = REPO.parent / "shared" / "data"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def settings(**kw) -> build.Settings:
    return build.Settings(tag_order=tuple(exif.DEFAULT_TAGS), **kw)


def jpeg(size=(256, 192), mode="RGB", exif_tags: dict[int, str] | None = None, seed: int = 0,
         fmt: str = "JPEG") -> bytes:
    """A small image with a noise texture (so files differ) and optional IFD0 EXIF tags."""
    im = Image.effect_noise(size, 40 + seed).convert(mode if mode in ("L", "CMYK") else "RGB")
    if mode not in ("L", "CMYK", "RGB"):
        im = im.convert("L").convert(mode)
    kw = {}
    if exif_tags is not None:
        ex = Image.Exif()
        for k, v in exif_tags.items():
            ex[k] = v
        kw["exif"] = ex.tobytes()
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


CAM = {0x010F: "TestMake", 0x0110: "TestModel 1"}  # IFD0 Make, Model


def bomb(width: int, height: int) -> bytes:
    """A valid tiny JPEG whose frame header claims width x height."""
    data = bytearray(jpeg((64, 64), exif_tags=CAM))
    i = data.index(b"\xff\xc0")  # SOF0: marker, length(2), precision(1), height(2), width(2)
    data[i + 5:i + 7] = height.to_bytes(2, "big")
    data[i + 7:i + 9] = width.to_bytes(2, "big")
    return bytes(data)


def records_by_path(out: Path) -> dict[str, dict]:
    return {r["path"]: r for r in build.read_records(str(out), with_image=True)}


def skip_reason(summary: dict, name: str) -> str | None:
    hits = [r for r, v in summary["skipped"].items() if any(f.endswith(name) for f in v["files"])]
    assert len(hits) <= 1, hits
    return hits[0] if hits else None


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def check_consistent(out: Path, summary: dict, src_of=lambda path: Path(path)) -> dict[str, dict]:
    """Counts in summary.json match what the shards hold; every stored stream decodes to the source file's
    pixels (src_of maps a record's path to the file; None: not checked), kept originals match sha256."""
    recs = records_by_path(out)
    assert summary["kept"] == len(recs) == sum(s["records"] for s in summary["shards"])
    assert summary["original_bytes"] == sum(r["bytes"] for r in recs.values())
    assert summary["stored_bytes"] == sum(os.path.getsize(p) for p in out.glob("records-*")
                                          if p.suffix in (".array_record", ".pixels"))
    assert summary["inputs"] == summary["kept"] + summary["skipped_total"]
    fast = summary["fast_path"]
    assert fast["records"] == sum(r["fast"] is not None for r in recs.values())
    assert fast["records"] + sum(v["count"] for v in fast["decoded_whole"].values()) == summary["kept"]
    cams: dict[str, int] = {}
    for r in recs.values():
        assert (r["fast"] is None) == bool(r["fast_reason"])
        if r["original"] is not None:
            assert sha(build.original_bytes(str(out), r)) == r["sha256"]
        src = src_of(r["path"])
        if src is not None:
            np.testing.assert_array_equal(pixels(r["image"]), pixels(src.read_bytes()), err_msg=r["path"])
        cams[r["camera"]] = cams.get(r["camera"], 0) + 1
    assert cams == summary["cameras"]
    assert json.loads((out / "summary.json").read_text()) == summary
    return recs


@pytest.mark.slow
def test_bundled_round_trip(tmp_path):
    out = tmp_path / "out"
    items, pre = build.items_from_folder(str(PHOTOS))
    s = build.build_dataset(items, str(out), settings(), records_per_shard=5, workers=2, progress=False,
                            pre_skipped=pre)
    recs = check_consistent(out, s)  # every stream decodes to its photo's pixels
    jpgs = sorted(PHOTOS.glob("*.jpg"))
    assert len(recs) == len(jpgs) == 18 and len(s["shards"]) == 4
    assert s["skipped"] == {"other_extension": {"count": 1, "files": [str(PHOTOS / "SOURCES.md")]}}
    assert s["fast_path"] == {"records": 18, "decoded_whole": {}}  # all baseline camera JPEGs
    for p in jpgs:
        r = recs[str(p)]
        assert r["original"] is None and r["image"] != p.read_bytes()  # the rewrite, not the file
        assert r["sha256"] == sha(p.read_bytes()) and r["bytes"] == p.stat().st_size
        with Image.open(p) as im:
            assert (r["width"], r["height"]) == im.size
        tags = exif.read_tags(str(p))
        assert r["camera"] == exif.camera_key(tags)
        assert r["text"] == exif.render_text(tags)
        assert r["tags"] == exif.select_tags(tags)
    # Shards hold files in sha256 order: the assignment does not depend on names or listing order.
    order = [r["sha256"] for r in build.read_records(str(out))]
    assert order == sorted(order)
    assert len(s["cameras"]) == 17
    assert s["stored_vs_original"] < 0.15, s["stored_vs_original"]


def test_keep_original_and_fast_path_off(tmp_path):
    jpgs = sorted(PHOTOS.glob("*.jpg"))[:4]
    items = build.items_from_paths([str(p) for p in jpgs])
    s = build.build_dataset(items, str(tmp_path / "keep"), settings(keep_original=True), workers=1, progress=False)
    recs = check_consistent(tmp_path / "keep", s)
    for p in jpgs:
        assert build.original_bytes(str(tmp_path / "keep"), recs[str(p)]) == p.read_bytes()
    s = build.build_dataset(items, str(tmp_path / "off"), settings(fast_path=False), workers=1, progress=False)
    recs = check_consistent(tmp_path / "off", s)
    assert s["fast_path"] == {"records": 0, "decoded_whole": {"fast_path_off": {
        "count": 4, "files": sorted(str(p) for p in jpgs)}}}
    for p in jpgs:
        assert recs[str(p)]["image"] == p.read_bytes()  # the original file, unchanged


def test_photos_the_rewrite_cannot_take_are_counted(tmp_path, monkeypatch):
    """Progressive photos and a rewrite that would change pixels are kept and decoded whole, by reason."""
    src = tmp_path / "src"
    src.mkdir()
    good = sorted(PHOTOS.glob("*.jpg"))
    shutil.copy(good[0], src / "baseline.jpg")
    shutil.copy(good[1], src / "mismatch.jpg")
    with Image.open(good[2]) as im:
        im.save(src / "progressive.jpg", "JPEG", progressive=True, quality=90, exif=im.info["exif"])
    real = photo_check.jpeg_restart.rewrite

    def corrupting(data: bytes):
        rw = real(data)
        if data == good[1].read_bytes():  # one wrong coefficient bit in the middle of the scan
            buf = bytearray(rw.data)
            i = rw.offsets[len(rw.offsets) // 2] + 1
            buf[i] ^= 0x10 if buf[i] not in (0xEF, 0xFF) else 0x01
            rw.data = bytes(buf)
        return rw

    monkeypatch.setattr(photo_check.jpeg_restart, "rewrite", corrupting)
    s = build.build_dataset(build.items_from_paths(build.list_images(str(src))), str(tmp_path / "out"),
                            settings(), workers=1, progress=False)
    check_consistent(tmp_path / "out", s)
    assert s["kept"] == 3 and s["fast_path"]["records"] == 1
    assert {r: v["files"] for r, v in s["fast_path"]["decoded_whole"].items()} == {
        "progressive": [str(src / "progressive.jpg")], "verify_mismatch": [str(src / "mismatch.jpg")]}


@pytest.mark.skipif(not (SHARED / "photos").is_dir(), reason=f"shared data not found at {SHARED}")
@pytest.mark.slow
def test_shared_photos_round_trip(tmp_path):
    index = [json.loads(ln) for ln in (SHARED / "photos" / "index.jsonl").read_text().splitlines() if ln]
    out = tmp_path / "out"
    s = build.build_dataset(build.items_from_paths(build.list_images(str(SHARED / "photos"))), str(out),
                            settings(), workers=2, progress=False)
    recs = check_consistent(out, s)
    assert s["kept"] == len(index) == 143
    # 141 baseline photos crop through region decodes; the 2 progressive ones are decoded whole.
    assert s["fast_path"]["records"] == 141
    assert {r: v["count"] for r, v in s["fast_path"]["decoded_whole"].items()} == {"progressive": 2}
    by_name = {os.path.basename(p): r for p, r in recs.items()}
    for row in index:
        r = by_name[row["file"]]
        assert r["sha256"] == row["sha256"] and (r["width"], r["height"]) == (row["width"], row["height"])


def test_duplicates_kept_once(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    a = sorted(PHOTOS.glob("*.jpg"))[:3]
    for p in a:
        shutil.copy(p, src / p.name)
    shutil.copy(a[0], src / "zz_copy.jpg")
    shutil.copy(a[0], src / "zz_copy2.jpg")
    s = build.build_dataset(build.items_from_paths(build.list_images(str(src))), str(tmp_path / "out"),
                            settings(), workers=1, progress=False)
    check_consistent(tmp_path / "out", s)
    assert s["kept"] == 3 and s["unique"] == 3
    assert s["skipped"]["duplicate"]["count"] == 2
    assert skip_reason(s, "zz_copy.jpg") == skip_reason(s, "zz_copy2.jpg") == "duplicate"


# ----------------------------------------------------------------------------- bad inputs

BAD_CASES = {
    # file name -> expected skip reason (None: kept)
    "truncated.jpg": "corrupt_image",
    "garbage.jpg": "not_an_image",
    "notes.txt": "other_extension",  # counted, never opened
    "empty.jpg": "not_an_image",
    "no_exif.jpg": "no_exif",
    "no_camera.jpg": "no_camera",
    "only_make.jpg": "no_camera",
    "cmyk.jpg": "cmyk",
    "gray.jpg": "grayscale",
    "gray16.png": "high_bit_depth",
    "gray16.tif": "high_bit_depth",
    "rgb_no_exif.png": "not_jpeg",
    "rgb_exif.png": "not_jpeg",
    "small.jpg": "too_small",
    "bomb_error.jpg": "decompression_bomb",
    "bomb_warning.jpg": "decompression_bomb",
    "dangling.jpg": "missing",
    "absurd_exif.jpg": None,
    "good.jpg": None,
}


def make_bad_folder(root: Path) -> None:
    root.mkdir()
    good = jpeg(exif_tags=CAM, seed=1)
    (root / "good.jpg").write_bytes(good)
    (root / "truncated.jpg").write_bytes(jpeg((512, 384), exif_tags=CAM, seed=2)[: len(good) // 2])
    (root / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    (root / "notes.txt").write_text("not a photo\n")
    (root / "empty.jpg").write_bytes(b"")
    (root / "no_exif.jpg").write_bytes(jpeg(seed=3))
    (root / "no_camera.jpg").write_bytes(jpeg(exif_tags={0x0131: "Editor 1.0", 0x0132: "2020:01:01 00:00:00"}, seed=4))
    (root / "only_make.jpg").write_bytes(jpeg(exif_tags={0x010F: "TestMake"}, seed=5))
    (root / "cmyk.jpg").write_bytes(jpeg(mode="CMYK", exif_tags=CAM, seed=6))
    (root / "gray.jpg").write_bytes(jpeg(mode="L", exif_tags=CAM, seed=7))
    (root / "gray16.png").write_bytes(jpeg(mode="I;16", seed=8, fmt="PNG"))
    (root / "gray16.tif").write_bytes(jpeg(mode="I;16", seed=9, fmt="TIFF"))
    (root / "rgb_no_exif.png").write_bytes(jpeg(seed=10, fmt="PNG"))
    (root / "rgb_exif.png").write_bytes(jpeg(exif_tags=CAM, seed=11, fmt="PNG"))
    (root / "small.jpg").write_bytes(jpeg((100, 300), exif_tags=CAM, seed=12))
    (root / "bomb_error.jpg").write_bytes(bomb(40000, 40000))   # > 2x Pillow's limit: Pillow raises
    (root / "bomb_warning.jpg").write_bytes(bomb(10000, 10000))  # between 1x and 2x: Pillow only warns
    os.symlink(root / "gone.jpg", root / "dangling.jpg")
    absurd = {0x010F: "Q" * 30000, 0x0110: "Cam\x01\x7f\u00e9\u4e2d" * 50 + "\n\t", 0x0131: "x" * 20000}
    (root / "absurd_exif.jpg").write_bytes(jpeg(exif_tags=absurd, seed=13))


@pytest.fixture(scope="module")
def bad_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    make_bad_folder(root / "src")
    out = root / "out"
    items, pre = build.items_from_folder(str(root / "src"))
    s = build.build_dataset(items, str(out), settings(), records_per_shard=4, workers=1, progress=False,
                            pre_skipped=pre)
    return out, s


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_input(bad_build, name):
    out, s = bad_build
    assert skip_reason(s, name) == BAD_CASES[name]
    recs = records_by_path(out)
    kept = {os.path.basename(p) for p in recs}
    assert (name in kept) == (BAD_CASES[name] is None)


def test_bad_inputs_accounted(bad_build):
    out, s = bad_build
    recs = check_consistent(out, s)
    assert s["inputs"] == len(BAD_CASES) and s["kept"] == 2
    absurd = next(r for p, r in recs.items() if p.endswith("absurd_exif.jpg"))
    assert all(len(v) <= 40 for v in absurd["tags"].values())
    assert len(absurd["text"]) < 40 * len(exif.DEFAULT_TAGS) * 3


def test_unreadable_paths_in_list(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg(exif_tags=CAM))
    (tmp_path / "a_dir.jpg").mkdir()
    lst = tmp_path / "list.txt"
    lst.write_text("good.jpg\na_dir.jpg\n/nonexistent/photo.jpg\n")
    s = build.build_dataset(build.items_from_list(str(lst)), str(tmp_path / "out"), settings(), workers=1,
                            progress=False)
    assert s["kept"] == 1
    assert s["skipped"]["unreadable"]["files"] == ["a_dir.jpg"]
    assert s["skipped"]["missing"]["files"] == ["/nonexistent/photo.jpg"]
    with pytest.raises(FileNotFoundError, match="/nonexistent/folder"):
        build.list_images("/nonexistent/folder")


@pytest.mark.skipif(not (SHARED / "exif_edge").is_dir(), reason=f"shared data not found at {SHARED}")
@pytest.mark.slow
def test_exif_edge_never_crashes(tmp_path):
    edge = SHARED / "exif_edge"
    files = sorted(str(p) for p in edge.iterdir())
    s = build.build_dataset(build.items_from_paths(files), str(tmp_path / "out"), settings(), workers=1,
                            progress=False)
    recs = check_consistent(tmp_path / "out", s)
    listed = set(recs) | {f for v in s["skipped"].values() for f in v["files"]}
    assert listed == set(files) and s["inputs"] == len(files) == 44
    assert s["skipped"]["not_an_image"]["count"] >= 11  # README: 11 that Pillow cannot identify + 4 fuzz files


# ----------------------------------------------------------------------------- resume

def _state(out: Path) -> dict[str, tuple[int, str]]:
    return {p.name: (p.stat().st_mtime_ns, sha(p.read_bytes())) for p in sorted(out.iterdir())
            if p.name.startswith("records-") and ".tmp" not in p.name}


def test_resume_after_deleting_a_shard(tmp_path):
    out = tmp_path / "out"
    items = build.items_from_paths(build.list_images(str(PHOTOS)))
    s1 = build.build_dataset(items, str(out), settings(), records_per_shard=5, workers=1, progress=False)
    before = _state(out)
    (out / "records-00002-of-00004.array_record").unlink()
    (out / "records-00002-of-00004.json").unlink()
    (out / "summary.json").unlink()
    with pytest.raises(RuntimeError, match="unfinished build"):
        build.shard_paths(str(out))
    s2 = build.build_dataset(items, str(out), settings(), records_per_shard=5, workers=1, progress=False)
    after = _state(out)
    for name, st in before.items():
        if "00002" not in name:
            assert after[name] == st, f"{name} was rewritten"
    assert after["records-00002-of-00004.array_record"][1] == before["records-00002-of-00004.array_record"][1]
    assert s1 == s2
    check_consistent(out, s2)


def test_mixing_builds_is_refused(tmp_path):
    out = tmp_path / "out"
    items = build.items_from_paths(build.list_images(str(PHOTOS)))
    build.build_dataset(items, str(out), settings(), records_per_shard=5, workers=1, progress=False)
    (out / "records-00001-of-00004.json").unlink()
    with pytest.raises(RuntimeError, match="other inputs or settings"):
        build.build_dataset(items, str(out), settings(max_value_len=12), records_per_shard=5, workers=1,
                            progress=False)
    with pytest.raises(RuntimeError, match="empty --out"):
        build.build_dataset(items, str(out), settings(), records_per_shard=3, workers=1, progress=False)


@pytest.mark.subprocess
def test_resume_after_sigkill(tmp_path):
    """Kill a real build (CLI subprocess) while it is stuck on a FIFO mid-way, then finish it."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    photos = sorted(PHOTOS.glob("*.jpg"))
    for p in photos:
        shutil.copy(p, src / p.name)
    hashes = sorted(sha(p.read_bytes()) for p in photos)
    # Pick a photo whose sha256 sorts in the middle: shards before it finish, shards after it never start.
    seed = next(i for i in range(100) if hashes[5] < sha(jpeg(exif_tags=CAM, seed=i)) < hashes[-5])
    content = jpeg(exif_tags=CAM, seed=seed)
    pos = sorted(hashes + [sha(content)]).index(sha(content))
    fifo = src / "fifo.jpg"
    os.mkfifo(fifo)
    cmd = [sys.executable, "-m", "exif_jax.cli", "build-data", "--images", str(src), "--out", str(out),
           "--records-per-shard", "1", "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stderr=subprocess.PIPE)
    try:
        with open(fifo, "wb") as f:  # pass 1 hashes the FIFO once; pass 2 then blocks re-reading it
            f.write(content)
        deadline = time.time() + 60
        while len(list(out.glob("*.json"))) < pos and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        assert proc.poll() is None, proc.stderr.read().decode()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    n = len(photos) + 1
    done = {build.shard_name(i, n) for i in range(pos)}
    assert {p.name for p in out.glob("*.array_record")} == done
    assert not (out / "summary.json").exists()
    assert list(out.glob(build.shard_name(pos, n) + ".tmp-*"))  # killed while writing this one
    before = _state(out)
    fifo.unlink()
    fifo.write_bytes(content)  # same bytes, same name: same plan
    assert cli(["build-data", "--images", str(src), "--out", str(out), "--records-per-shard", "1",
                "--workers", "2", "--no-progress"]) == 0
    after = _state(out)
    for name, st in before.items():
        assert after[name] == st, f"{name} was rewritten"
    s = json.loads((out / "summary.json").read_text())
    recs = check_consistent(out, s)
    assert len(recs) == n and len(build.shard_paths(str(out))) == n
    assert not list(out.glob("*.tmp*"))  # the killed run's temporary files are gone


def test_yfcc_mode(tmp_path):
    """EXIF from the TSV line, bytes from IMAGES/<photo_id>.jpg; the record's path is the photo id."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    photos = sorted(PHOTOS.glob("*.jpg"))[:3]
    lines, want = [], {}
    for i, p in enumerate(photos):
        pid = str(1000 + i)
        shutil.copy(p, imgs / f"{pid}.jpg")
        tags = exif.read_tags(str(p))
        tags["Model"] = f"From TSV {i}"  # proves the text comes from the TSV, not the file
        lines.append(exif.to_yfcc_line(pid, {"Exif IFD0": tags}))
        want[pid] = (p, tags)
    lines.append(exif.to_yfcc_line("2000", {"Exif IFD0": {"Make": "X", "Model": "Y"}}))  # no image file
    (imgs / "2001.jpg").write_bytes(jpeg(exif_tags=CAM, seed=21))
    lines.append("2001\t")  # no EXIF in the dump
    (imgs / "2002.jpg").write_bytes(jpeg(exif_tags=CAM, seed=22))
    lines.append(exif.to_yfcc_line("2002", {"Exif SubIFD": {"Exposure Time": "1/250 sec"}}))  # no camera
    tsv = tmp_path / "exif.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert cli(["build-data", "--yfcc-exif", str(tsv), "--yfcc-images", str(imgs), "--out", str(out),
                "--workers", "1", "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    recs = check_consistent(out, s, src_of=lambda pid: imgs / f"{pid}.jpg")
    assert set(recs) == set(want)
    for pid, (p, tags) in want.items():
        assert recs[pid]["text"] == exif.render_text(tags) and "Model: From TSV" in recs[pid]["text"]
        assert recs[pid]["camera"] == exif.camera_key(tags)
    assert {r: v["files"] for r, v in s["skipped"].items()} == {
        "missing": ["2000"], "no_exif": ["2001"], "no_camera": ["2002"]}
    assert cli(["build-data", "--yfcc-exif", str(tsv), "--out", str(out)]) == 2  # needs --yfcc-images
