"""Region decodes of restart-rewritten JPEGs equal Pillow's full decode + crop, exactly; what is refused is named."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exif_jax.data import crops, jpeg_parse, jpeg_restart
from exif_jax.data.jpeg_parse import NotFastPath

REPO = Path(__file__).resolve().parents[1]
BUNDLED = sorted((REPO / "exif_jax" / "assets" / "photos").glob("*.jpg"))
SHARED = REPO.parent / "shared" / "data"
FULLRES = sorted((SHARED / "fullres").glob("*.jpg"))


def full_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def index_of(rw: jpeg_restart.Rewritten) -> crops.FastIndex:
    return crops.FastIndex(header_len=rw.header_len, sof_hw_at=rw.sof_hw_at, mcu_h=rw.mcu_h, mcu_w=rw.mcu_w,
                           mcus_y=rw.mcus_y, mcus_x=rw.mcus_x, table_at=0, length_bytes=0)


def positions(h: int, w: int, size: int, n: int, seed: int) -> list[tuple[int, int]]:
    """The four corners, n uniform positions, and n whose edges hug 16-px MCU boundaries (0, +-1 px, or
    the far edge on one), where a region decode without enough chroma context would differ."""
    rng = np.random.default_rng(seed)
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size)]
    uniform = [(int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))) for _ in range(n)]
    hug = []
    for _ in range(n):
        y, x = (16 * int(rng.integers(0, max(1, (m - size) // 16 + 1))) for m in (h, w))
        dy, dx = rng.choice([0, 1, -1, -(size % 16), 16 - size % 16], 2)
        hug.append((int(np.clip(y + dy, 0, h - size)), int(np.clip(x + dx, 0, w - size))))
    return corners + uniform + hug


def check_exact(data: bytes, sizes=(128, 64, 17), n: int = 12, seed: int = 0) -> int:
    """Rewrite `data`, then region-decode corner + random crops of each size; all must equal the reference."""
    ref = full_decode(data)
    rw = jpeg_restart.rewrite(data)
    np.testing.assert_array_equal(full_decode(rw.data), ref)  # the rewrite is lossless
    starts, lengths = rw.tables()
    h, w = ref.shape[:2]
    checked = 0
    for size in sizes:
        if size > min(h, w):
            continue
        pos = positions(h, w, size, n, seed + size)
        got = crops.crops_fast(memoryview(rw.data), starts, lengths, index_of(rw), h, w, pos, size)
        want = np.stack([ref[y:y + size, x:x + size] for y, x in pos])
        diff = np.abs(got.astype(int) - want).max()
        assert diff == 0, f"size {size}: max |diff| {diff}"
        # the whole-photo path the loader falls back to gives the same crops
        np.testing.assert_array_equal(crops.crops_full(rw.data, pos, size), want)
        checked += len(pos)
    return checked


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_bundled_photos_region_decode_exact(path):
    assert check_exact(path.read_bytes()) >= 16


@pytest.mark.skipif(not FULLRES, reason=f"camera originals not found at {SHARED / 'fullres'}")
@pytest.mark.slow
def test_fullres_camera_originals_region_decode_exact():
    """All 21 whole 8-16 MP camera originals (4:2:2 and 4:2:0): 28 crops each at 128 px, max |diff| 0."""
    index = {json.loads(ln)["file"] for ln in (SHARED / "fullres" / "index.jsonl").read_text().splitlines() if ln}
    assert {p.name for p in FULLRES} == index
    checked = sum(check_exact(p.read_bytes(), sizes=(128,), seed=i) for i, p in enumerate(FULLRES))
    assert checked == 28 * len(FULLRES)


def encode(size=(200, 152), **kw) -> bytes:
    im = Image.effect_noise(size, 60).convert("RGB")
    im = Image.merge("RGB", (im.getchannel(0), im.getchannel(1).rotate(90, expand=False), im.getchannel(2)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


@pytest.mark.parametrize("kw", [
    dict(subsampling=0), dict(subsampling=1), dict(subsampling=2), dict(quality=100, subsampling=2),
    dict(restart_marker_blocks=3), dict(restart_marker_rows=1, subsampling=2), dict(optimize=True),
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_layouts_and_existing_restart_markers(kw):
    """4:4:4 / 4:2:2 / 4:2:0, q100, optimized tables, and files that already have restart intervals."""
    check_exact(encode(**kw), sizes=(32, 9), n=8)


def test_odd_sizes_partial_mcus_and_whole_image_crop():
    data = encode((203, 157), subsampling=2)  # neither side a multiple of the 16-px MCU
    check_exact(data, sizes=(157, 31, 1), n=6)


def patched(data: bytes, marker: bytes, offset: int, value: int) -> bytes:
    b = bytearray(data)
    b[b.index(marker) + offset] = value
    return bytes(b)


def test_layouts_the_rewrite_refuses_name_their_reason():
    base = encode(subsampling=2)
    prog = encode(progressive=True)
    cases = {
        "progressive": prog,
        "arithmetic": patched(base, b"\xff\xc0", 1, 0xC9),
        "lossless": patched(base, b"\xff\xc0", 1, 0xC3),
        "12_bit": patched(base, b"\xff\xc0", 4, 12),
        "sampling_factors": patched(base, b"\xff\xc0", 14, 0x21),  # Cb sampled 2x1
        "not_jpeg": b"\x89PNG\r\n\x1a\n" + base[2:],
        "truncated": base[:200],
    }
    for reason, data in cases.items():
        with pytest.raises(NotFastPath) as e:
            jpeg_restart.rewrite(data)
        assert e.value.reason == reason, (reason, str(e.value))


def test_corrupt_scans_stop_with_a_reason_in_bounded_time():
    """Cut or scrambled entropy data: a NotFastPath (never a crash or a hang), or a rewrite that build-data's
    pixel check then rejects or keeps only if equal; each within a fraction of a second."""
    data = encode((400, 304), subsampling=2, quality=95)
    start = jpeg_parse.parse(data).entropy_start
    rng = np.random.default_rng(0)
    outcomes = set()
    for i in range(60):
        b = bytearray(data)
        if i % 3 == 0:
            b = b[: start + int(rng.integers(1, len(data) - start))]  # cut inside the scan
        else:
            for j in rng.integers(start, len(b) - 2, size=1 + i % 5):
                b[j] = int(rng.integers(0, 256))
        t = time.perf_counter()
        try:
            jpeg_restart.rewrite(bytes(b))
            outcomes.add("rewritten")
        except NotFastPath as e:
            outcomes.add(e.reason)
        assert time.perf_counter() - t < 2.0
    assert outcomes - {"rewritten"}, outcomes  # some corruption is detected by the rewrite itself


@pytest.mark.skipif(not (SHARED / "exif_edge").is_dir(), reason=f"shared data not found at {SHARED}")
def test_exif_edge_files_never_crash_the_rewrite():
    for p in sorted((SHARED / "exif_edge").iterdir()):
        try:
            rw = jpeg_restart.rewrite(p.read_bytes())
        except NotFastPath:
            continue
        np.testing.assert_array_equal(full_decode(rw.data), full_decode(p.read_bytes()), err_msg=p.name)


def test_one_rgb_rule_for_whole_photos_and_crops(tmp_path):
    """read_rgb / decode_rgb (eval, features, make-splices) give exactly the pixels the trainer's crops cut,
    for any mode Pillow reads; a file that cannot be used is a ValueError naming it."""
    rgb = np.asarray(Image.effect_noise((40, 30), 60).convert("RGB"))
    for mode, fmt in (("P", "PNG"), ("L", "JPEG"), ("RGB", "JPEG"), ("RGBA", "PNG")):
        path = tmp_path / f"x_{mode}.{fmt.lower()}"
        Image.fromarray(rgb).convert(mode).save(path, fmt)
        whole = crops.read_rgb(path)
        assert whole.dtype == np.uint8 and whole.shape == (30, 40, 3), mode
        np.testing.assert_array_equal(whole, crops.decode_rgb(path.read_bytes(), str(path)))
        np.testing.assert_array_equal(crops.crops_full(path.read_bytes(), [(3, 5)], 16, str(path))[0],
                                      whole[3:19, 5:21])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    for bad, why in (("missing.jpg", "no such file"), ("broken.jpg", "cannot decode image"), (".", "cannot read")):
        with pytest.raises(ValueError, match=f"^{tmp_path / bad}: {why}"):
            crops.read_rgb(tmp_path / bad)
