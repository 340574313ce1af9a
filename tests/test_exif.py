"""EXIF reading and text: metadata-extractor parity on the shared photos, broken files, rendering, CLI."""
from __future__ import annotations

import collections
import io
import json
import random
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from exif_jax import cli, exif, exif_tiff, exif_values

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHOTOS = SHARED / "photos"
EDGE = SHARED / "exif_edge"
needs_photos = pytest.mark.skipif(not (PHOTOS / "metadata-extractor").is_dir(),
                                  reason=f"shared photos not found at {PHOTOS}")
needs_edge = pytest.mark.skipif(not EDGE.is_dir(), reason=f"shared exif_edge files not found at {EDGE}")

# Photos whose text from the YFCC-style line may differ from the text read from the file, and why.
# Empty: every shared photo agrees on the default tag set.
KNOWN_TEXT_MISMATCHES: dict[str, str] = {}


# ---------------------------------------------------------------------------------------------------
# Hand-built TIFF structures: every type and offset under the test's control.

def _ascii(s: str) -> tuple[int, int, bytes]:
    b = s.encode() + b"\0"
    return 2, len(b), b


def _short(*v: int, bo: str = "<") -> tuple[int, int, bytes]:
    return 3, len(v), struct.pack(f"{bo}{len(v)}H", *v)


def _long(*v: int, bo: str = "<") -> tuple[int, int, bytes]:
    return 4, len(v), struct.pack(f"{bo}{len(v)}I", *v)


def _rat(*pairs: tuple[int, int], signed: bool = False, bo: str = "<") -> tuple[int, int, bytes]:
    flat = [x for p in pairs for x in p]
    return (10 if signed else 5), len(pairs), struct.pack(f"{bo}{len(flat)}{'i' if signed else 'I'}", *flat)


def _undef(b: bytes) -> tuple[int, int, bytes]:
    return 7, len(b), b


def _ifd(entries: dict[int, tuple[int, int, bytes]], start: int, bo: str) -> bytes:
    head = struct.pack(bo + "H", len(entries))
    data = b""
    data_off = start + 2 + 12 * len(entries) + 4
    for tag in sorted(entries):
        typ, count, payload = entries[tag]
        if len(payload) <= 4:
            head += struct.pack(bo + "HHI", tag, typ, count) + payload.ljust(4, b"\0")
        else:
            head += struct.pack(bo + "HHII", tag, typ, count, data_off + len(data))
            data += payload + b"\0" * (len(payload) % 2)
    return head + struct.pack(bo + "I", 0) + data


def tiff_blob(ifd0: dict, sub: dict | None = None, interop: dict | None = None, bo: str = "<") -> bytes:
    """A TIFF structure IFD0 -> Exif SubIFD -> Interop, pointers filled in."""
    ifds = [dict(ifd0)] + ([dict(sub)] if sub is not None else []) + ([dict(interop)] if interop else [])
    if sub is not None:
        ifds[0][0x8769] = _long(0, bo=bo)
        if interop:
            ifds[1][0xA005] = _long(0, bo=bo)
    starts = [8]
    for d in ifds[:-1]:
        starts.append(starts[-1] + len(_ifd(d, 0, bo)))
    if sub is not None:
        ifds[0][0x8769] = _long(starts[1], bo=bo)
        if interop:
            ifds[1][0xA005] = _long(starts[2], bo=bo)
    header = (b"II*\0" if bo == "<" else b"MM\0*") + struct.pack(bo + "I", 8)
    return header + b"".join(_ifd(d, s, bo) for d, s in zip(ifds, starts))


def camera_blob(bo: str = "<") -> bytes:
    ifd0 = {0x010F: _ascii("Canon"), 0x0110: _ascii("Canon EOS 20D"), 0x011A: _rat((72, 1), bo=bo),
            0x011B: _rat((72, 1), bo=bo), 0x0128: _short(2, bo=bo), 0x0213: _short(2, bo=bo),
            0x0132: _ascii("2004:09:19 12:25:20"), 0x0131: _ascii("Ver.1.0  ")}
    sub = {0x829A: _rat((1, 50), bo=bo), 0x829D: _rat((90, 10), bo=bo), 0x8822: _short(2, bo=bo),
           0x8827: _short(200, bo=bo), 0x9000: _undef(b"0221"), 0x9101: _undef(bytes([1, 2, 3, 0])),
           0x9201: _rat((8, 1), signed=True, bo=bo), 0x9202: _rat((6, 1), bo=bo),
           0x9204: _rat((-10, 30), signed=True, bo=bo), 0x9205: _rat((3, 1), bo=bo),
           0x9207: _short(99, bo=bo), 0x9209: _short(0x18, bo=bo), 0x920A: _rat((58, 10), bo=bo),
           0xA000: _undef(b"0100"), 0xA001: _short(65535, bo=bo), 0xA404: _rat((0, 100), bo=bo),
           0xA405: _short(0, bo=bo), 0x9102: _rat((1, 1), bo=bo), 0xA431: _ascii("002300072"),
           0x9003: _ascii("2004:09:19 12:25:20")}
    interop = {0x0001: _ascii("R98"), 0x0002: _undef(b"0100")}
    return tiff_blob(ifd0, sub, interop, bo)


# Descriptions metadata-extractor gives for camera_blob's values (each seen in the reference dumps).
CAMERA_TAGS = {
    "Make": "Canon", "Model": "Canon EOS 20D", "X Resolution": "72 dots per inch",
    "Y Resolution": "72 dots per inch", "Resolution Unit": "Inch", "YCbCr Positioning": "Datum point",
    "Software": "Ver.1.0  ", "Exposure Time": "0.02 sec", "F-Number": "f/9.0",
    "Exposure Program": "Program normal", "ISO Speed Ratings": "200", "Exif Version": "2.21",
    "Components Configuration": "YCbCr", "Shutter Speed Value": "1/256 sec", "Aperture Value": "f/8.0",
    "Exposure Bias Value": "-1/3 EV", "Max Aperture Value": "f/2.8", "Metering Mode": "Unknown (99)",
    "Flash": "Flash did not fire, auto", "Focal Length": "5.8 mm", "FlashPix Version": "1.00",
    "Color Space": "Undefined", "Digital Zoom Ratio": "Digital zoom not used",
    "Focal Length 35": "Unknown", "Compressed Bits Per Pixel": "1 bit/pixel",
    "Interoperability Index": "Recommended Exif Interoperability Rules (ExifR98)",
    "Interoperability Version": "1.00",
}


def _image_bytes(fmt: str, exif_bytes: bytes | None = None, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    kw = {"exif": exif_bytes} if exif_bytes is not None else {}
    Image.new(mode, (24, 16), 90).save(buf, fmt, **kw)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------
# Description rules

@pytest.mark.parametrize("bo", ["<", ">"])
def test_descriptions_follow_metadata_extractor(bo):
    tags = exif.describe_directories(exif.parse_tiff(camera_blob(bo)))
    for name, want in CAMERA_TAGS.items():
        assert tags.get(name) == want, name
    assert tags["Body Serial Number"] == "002300072"  # read, but never rendered (see below)


@pytest.mark.parametrize("num,den,want", [
    (1, 250, "1/250"), (10, 2500, "1/250"), (1, 50, "0.02"), (1, 8, "1/8"), (3, 10, "0.3"),
    (-10, 30, "-1/3"), (10, -30, "-1/3"), (0, 0, "0"), (5, 0, "5/0"), (901, 200000, "901/200000"),
    (300, 1, "300"), (154, 10, "15.4"), (-66, 100, "-33/50"),
])
def test_rational_simple_string(num, den, want):
    assert exif_values._rat_simple(exif_values.Rat(num, den)) == want


@pytest.mark.parametrize("flash,want", [
    (0x00, "Flash did not fire"), (0x10, "Flash did not fire"), (0x18, "Flash did not fire, auto"),
    (0x01, "Flash fired"), (0x05, "Flash fired, return not detected"),
    (0x5F, "Flash fired, return detected, auto, red-eye reduction"),
])
def test_flash_bits(flash, want):
    tags = exif.describe_directories(exif.parse_tiff(tiff_blob({0x0110: _ascii("X")}, {0x9209: _short(flash)})))
    assert tags["Flash"] == want


def test_rounding_is_java_decimalformat():
    # f-stops and focal lengths round half up on the exact binary value; zoom rounds half even.
    blob = tiff_blob({0x0110: _ascii("X")}, {0x829D: _rat((285, 100)), 0x920A: _rat((125, 100)),
                                              0xA404: _rat((25, 100)), 0x9206: _rat((0, 1))})
    tags = exif.describe_directories(exif.parse_tiff(blob))
    assert tags["F-Number"] == "f/2.9"           # 2.85 is 2.850000000000000088... -> up
    assert tags["Focal Length"] == "1.3 mm"      # 1.25 exactly -> half up
    assert tags["Digital Zoom Ratio"] == "0.2"   # 0.25 exactly -> half even
    assert tags["Subject Distance"] == "Unknown"


def test_hostile_tiff_structures_give_partial_tags_not_exceptions():
    good = camera_blob()
    # SubIFD pointing back at IFD0 (a loop), out-of-range offsets, absurd counts, unknown types.
    loop = tiff_blob({0x010F: _ascii("Canon"), 0x0110: _ascii("Loop")}, {})
    loop = loop.replace(struct.pack("<HHII", 0x8769, 4, 1, struct.unpack_from("<I", loop, 8 + 2 + 12 * 2 + 8)[0]),
                        struct.pack("<HHII", 0x8769, 4, 1, 8))
    absurd = tiff_blob({0x010F: (2, 0xFFFFFFFF, b"Canon\0\0\0"), 0x0110: _ascii("Model"),
                        0x0131: (99, 1, b"abcd"), 0x011A: (5, 1 << 28, b"\0" * 8)})
    cases = [loop, absurd, good[:40], good[:7], b"II*\0\xff\xff\xff\xff", b"MM\0*\0\0\0\x08\xff\xff",
             b"", b"XX*\0\0\0\0\0"]
    for blob in cases:
        tags = exif.describe_directories(exif.parse_tiff(blob))
        assert isinstance(tags, dict)
    assert exif.describe_directories(exif.parse_tiff(loop))["Model"] == "Loop"
    assert exif.describe_directories(exif.parse_tiff(absurd)) == {"Model": "Model"}


def test_mutated_exif_never_raises():
    rng = random.Random(0)
    seed = camera_blob()
    t0 = time.monotonic()
    for _ in range(3000):
        b = bytearray(seed)
        for _ in range(rng.randint(1, 20)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        tags = exif.describe_directories(exif.parse_tiff(bytes(b[:rng.randint(0, len(b))])))
        exif.render_text(tags, tag_order=None)
    assert time.monotonic() - t0 < 20


# ---------------------------------------------------------------------------------------------------
# Files: formats, errors

@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_formats_carrying_exif(fmt):
    data = _image_bytes(fmt, b"Exif\0\0" + camera_blob())
    assert exif.read_tags(data) == exif.describe_directories(exif.parse_tiff(camera_blob()))


def test_png_exif_chunk_after_image_data(tmp_path):
    png = _image_bytes("PNG")
    body = camera_blob()
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    iend = png.rindex(b"IEND") - 4
    path = tmp_path / "late.png"
    path.write_bytes(png[:iend] + chunk + png[iend:])
    with Image.open(path) as im:
        assert "exif" not in im.info  # Pillow would need to decode the pixels to see it
    assert exif.read_tags(path)["Model"] == "Canon EOS 20D"
    assert exif.read_tags(path.read_bytes()) == exif.read_tags(path)


def test_tiff_file_with_exif_subifd(tmp_path):
    ifd0 = {0x0100: _short(1), 0x0101: _short(1), 0x0102: _short(8), 0x0103: _short(1),
            0x0106: _short(1), 0x0111: _long(0), 0x0115: _short(1), 0x0116: _short(1),
            0x0117: _long(1), 0x010F: _ascii("NIKON"), 0x0110: _ascii("NIKON D3200")}
    sub = {0x829A: _rat((1, 250)), 0x8827: _short(400)}
    size = len(tiff_blob(ifd0, sub))
    ifd0[0x0111] = _long(size)
    path = tmp_path / "one.tif"
    path.write_bytes(tiff_blob(ifd0, sub) + b"\x80")
    with Image.open(path) as im:
        assert im.size == (1, 1) and im.getpixel((0, 0)) == 128
    tags = exif.read_tags(path)
    assert tags["Make"] == "NIKON" and tags["Model"] == "NIKON D3200"
    assert tags["Exposure Time"] == "1/250 sec" and tags["ISO Speed Ratings"] == "400"
    assert exif.render_text(tags).startswith("Make: NIKON, Model: NIKON D3200, Exposure Time: 1/250 sec")


def test_no_exif_is_empty_and_bad_files_raise_naming_the_file(tmp_path):
    assert exif.read_tags(_image_bytes("JPEG")) == {}
    assert exif.read_tags(_image_bytes("PNG", mode="L")) == {}
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"this is not an image at all")
    with pytest.raises(exif.ExifError, match="notes.jpg.*identify"):
        exif.read_tags(bad)
    with pytest.raises(exif.ExifError, match="missing.jpg"):
        exif.read_tags(tmp_path / "missing.jpg")
    with pytest.raises(exif.ExifError, match="upload-7"):
        exif.read_tags(b"\xff\xd8\xff\xe1garbage", name="upload-7")


def test_decompression_bomb_is_an_exif_error():
    data = bytearray(_image_bytes("JPEG", b"Exif\0\0" + camera_blob()))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)  # 3.6 gigapixels claimed
    with pytest.raises(exif.ExifError, match="bomb"):
        exif.read_tags(bytes(data), name="bomb.jpg")


# ---------------------------------------------------------------------------------------------------
# Text rendering

def test_render_order_and_omission():
    tags = {"Flash": "Flash fired", "Model": "Canon EOS 20D", "Make": "Canon", "Orientation": "x"}
    assert exif.render_text(tags) == "Make: Canon, Model: Canon EOS 20D, Flash: Flash fired"
    assert exif.render_text(tags, tag_order=("Flash", "Make")) == "Flash: Flash fired, Make: Canon"
    assert exif.render_text({}) == ""
    assert list(exif.select_tags(tags)) == ["Make", "Model", "Flash"]


def test_values_are_cleaned_and_bounded():
    tags = {"Make": "\0\0NIKON\0 CORPORATION  \x07", "Model": "NIKON\tD3200\r\n\u200b",
            "Software": "   ", "Exposure Time": "\0\0", "F-Number": "x" * 10_000_000,
            "Flash": "\0" * 100_000 + "Flash fired" + "\0" * 100_000}
    sel = exif.select_tags(tags, tag_order=("Make", "Model", "Software", "Exposure Time", "F-Number",
                                            "Flash"), max_value_len=12)
    assert sel == {"Make": "NIKON CORPOR", "Model": "NIKON D3200", "F-Number": "x" * 12,
                   "Flash": "Flash fired"}
    assert "NIKON D3200" in exif.render_text(tags)  # spaces are kept, unlike the paper's code
    assert len(exif.render_text(tags, max_value_len=40)) < 200
    with pytest.raises(ValueError):
        exif.select_tags(tags, max_value_len=0)
    with pytest.raises(ValueError, match="style"):
        exif.render_text(tags, style="nope")


def test_private_tags_never_reach_text():
    tags = exif.describe_directories(exif.parse_tiff(camera_blob()))
    tags.update({"GPS Latitude": "42.1", "Camera Owner Name": "Ann", "Makernote": "[12 values]",
                 "Date/Time Original": "2004:09:19 12:25:20", "Sub-Sec Time": "12",
                 "Lens Serial Number": "123", "Artist": "Ann", "User Comment": "hi"})
    for order in (exif.DEFAULT_TAGS, None, tuple(tags)):
        text = exif.render_text(tags, tag_order=order, max_value_len=200)
        assert "2004" not in text and "42.1" not in text and "Ann" not in text
        assert "002300072" not in text and "Makernote" not in text and "hi" not in text.split(": ")
    assert exif.select_tags({"Date/\0Time": "2004", "GPS\u200bLatitude": "1"}, tag_order=None) == {}
    assert not any(exif._PRIVATE.search(t) for t in exif.DEFAULT_TAGS)
    assert set(exif.DEFAULT_TAGS) <= set(exif_tiff.TAG_NAMES.values())


def test_camera_key():
    assert exif.camera_key({"Make": " Canon ", "Model": "Canon  EOS 20D"}) == "Canon|Canon EOS 20D"
    assert exif.camera_key({}) == ""
    assert exif.camera_key({"Make": "Apple"}) == "Apple|"


# ---------------------------------------------------------------------------------------------------
# metadata-extractor dumps and YFCC lines

def test_metadata_extractor_txt_parsing(tmp_path):
    dump = tmp_path / "x.jpg.txt"
    dump.write_text(
        "FILE: x.jpg\n\n[JPEG - 0x0001] Image Height = 10 pixels\n"
        "[Exif IFD0 - 0x010f] Make = Canon\n[Exif IFD0 - 0x0131] Software = Ver 1.0  \n"
        "[Exif SubIFD - 0x9286] User Comment = \n[Exif SubIFD - 0x010f] Make = Other\n"
        "[Exif Thumbnail - 0x0103] Compression = JPEG (old-style)\n"
        "[Canon Makernote - 0x0006] Image Type = a = b\n[GPS - 0x0001] GPS Latitude Ref = N\n"
        "[Interoperability - 0x0001] Interoperability Index = Recommended Exif Interoperability "
        "Rules (ExifR98)\n- Exif IFD0\n", encoding="utf-8")
    assert exif.parse_metadata_extractor_txt(dump) == {
        "Make": "Canon", "Software": "Ver 1.0  ", "User Comment": "",
        "Interoperability Index": "Recommended Exif Interoperability Rules (ExifR98)"}
    assert ("Canon Makernote", "Image Type", "a = b") in exif.metadata_extractor_entries(dump)


def test_yfcc_line_round_trip():
    entries = [("Exif IFD0", "Make", "CASIO COMPUTER CO.,LTD."), ("Exif IFD0", "Model", "EX-Z3 : 50% +1"),
               ("Exif SubIFD", "Exposure Time", "1/250 sec"), ("Exif SubIFD", "F-Number", "f/9.0"),
               ("GPS", "GPS Latitude", "42° 16' 30\""), ("Exif Thumbnail", "Compression", "JPEG"),
               ("Exif SubIFD", "Make", "second"), ("Exif IFD0", "Software", "Ünïcode, ok")]
    line = exif.to_yfcc_line(6985418911, entries)
    assert line.startswith("6985418911\tExif+IFD0.Make:CASIO+COMPUTER+CO.%2CLTD.,")
    assert "\n" not in line and line.count("\t") == 1
    photo_id, tags = exif.parse_yfcc_line(line + "\n")
    assert photo_id == "6985418911"
    assert tags == {"Make": "CASIO COMPUTER CO.,LTD.", "Model": "EX-Z3 : 50% +1",
                    "Exposure Time": "1/250 sec", "F-Number": "f/9.0", "Software": "Ünïcode, ok"}
    assert exif.parse_yfcc_line("123\t") == ("123", {})
    # The dump's documented example (YFCC100M readme).
    _, t = exif.parse_yfcc_line("1\tExif+SubIFD.Focal+Length:50.0+mm,Exif+SubIFD.Focal+Plane+Resolution+Unit:Inches")
    assert t == {"Focal Length": "50.0 mm", "Focal Plane Resolution Unit": "Inches"}
    assert exif.to_yfcc_line(1, {"Exif SubIFD": {"Focal Length": "50 mm"}}) == "1\tExif+SubIFD.Focal+Length:50+mm"


# ---------------------------------------------------------------------------------------------------
# CLI

def test_cli_prints_json_lines_and_carries_on(tmp_path, capsys):
    good = tmp_path / "good.jpg"
    good.write_bytes(_image_bytes("JPEG", b"Exif\0\0" + camera_blob()))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\0" * 100)
    rc = cli.main(["exif", str(bad), str(good), "--max-value-len", "8"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 1 and [d["file"] for d in lines] == [str(bad), str(good)]
    assert "bad.jpg" in lines[0]["error"] and "text" not in lines[0]
    assert lines[1]["text"].startswith("Make: Canon, Model: Canon EO, Exposure Time: 0.02 sec")
    assert lines[1]["tags"]["Model"] == "Canon EO"
    assert cli.main(["exif", str(good), "--tags-all"]) == 0
    everything = json.loads(capsys.readouterr().out)
    assert everything["tags"]["Software"] == "Ver.1.0" and "Date/Time" not in everything["tags"]
    assert "Body Serial Number" not in everything["tags"]


# ---------------------------------------------------------------------------------------------------
# Shared data: metadata-extractor parity, YFCC equivalence, broken files

def _shared_photos() -> list[Path]:
    return sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))


@needs_photos
def test_agrees_with_metadata_extractor_on_shared_photos():
    agree, total = collections.Counter(), collections.Counter()
    extra, misses = [], []
    for photo in _shared_photos():
        ref = exif.parse_metadata_extractor_txt(PHOTOS / "metadata-extractor" / f"{photo.name}.txt")
        got = exif.read_tags(photo)
        for tag in exif.DEFAULT_TAGS:
            if tag in ref:
                total[tag] += 1
                if got.get(tag) == ref[tag]:
                    agree[tag] += 1
                else:
                    misses.append((photo.name, tag, ref[tag], got.get(tag)))
            elif tag in got:
                extra.append((photo.name, tag, got[tag]))
    print(f"\n{'tag':28s} agree/total")
    for tag in exif.DEFAULT_TAGS:
        print(f"{tag:28s} {agree[tag]:4d}/{total[tag]:<4d}")
    print(f"{'ALL':28s} {sum(agree.values()):4d}/{sum(total.values())}")
    for m in misses:
        print("differs:", m)
    assert len(_shared_photos()) >= 140 and sum(total.values()) > 2000
    assert sum(agree.values()) >= 0.95 * sum(total.values())
    assert not extra, f"tags metadata-extractor does not report: {extra[:5]}"


@needs_photos
def test_yfcc_line_gives_same_text_as_the_photo():
    mismatched = {}
    for i, photo in enumerate(_shared_photos()):
        entries = exif.metadata_extractor_entries(PHOTOS / "metadata-extractor" / f"{photo.name}.txt")
        photo_id, tags = exif.parse_yfcc_line(exif.to_yfcc_line(1000 + i, entries))
        assert photo_id == str(1000 + i)
        from_line, from_file = exif.render_text(tags), exif.render_text(exif.read_tags(photo))
        assert from_file.startswith("Make: ")
        if from_line != from_file:
            mismatched[photo.name] = (from_line, from_file)
    assert set(mismatched) <= set(KNOWN_TEXT_MISMATCHES), mismatched


@needs_edge
def test_edge_files_give_a_result_per_file():
    files = sorted(EDGE.iterdir())
    assert len(files) == 44
    outcomes = collections.Counter()
    for path in files:
        t0 = time.monotonic()
        try:
            tags = exif.read_tags(path)
            outcomes["tags" if tags else "empty"] += 1
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())
            exif.render_text(tags, tag_order=None)
        except exif.ExifError as e:
            assert path.name in str(e)
            outcomes["error"] += 1
        assert time.monotonic() - t0 < 5, path.name
    print("\nexif_edge outcomes:", dict(outcomes))
    assert outcomes["tags"] >= 10 and outcomes["error"] >= 10
    # The fuzzed files do not get past Pillow; feed any TIFF structure inside them to the reader.
    for path in files:
        data = path.read_bytes()
        for marker in (b"II*\0", b"MM\0*"):
            at = data.find(marker)
            if at >= 0:
                assert isinstance(exif.describe_directories(exif.parse_tiff(data[at:])), dict)


# ---------------------------------------------------------------------------------------------------
# The paper's ("official") text: tags in the photo's own order

BUNDLED_S30 = Path(__file__).resolve().parent / "data" / "canon_powershot_s30_exif.jpg"
_TAG_ID = {name: tag for tag, name in exif_tiff.TAG_NAMES.items()}


def _official_text_in(tags: dict, order: list) -> str:
    """The official style's values joined in `order` (computed here, not by render_text's ordering)."""
    styled = {k: exif.official_value(k, v) for k, v in tags.items()}
    return ", ".join(f"{k}: {v}" for k, v in exif.select_tags(styled, order).items())


def test_official_style_keeps_the_photos_tag_order():
    """A Canon PowerShot S30's real EXIF block stores Sensing Method (a SubIFD tag, 0xA217) in IFD0: the
    paper's data.py, joining tags as the EXIF dump lists them, puts it right after IFD0's tags."""
    tags = exif.read_tags(BUNDLED_S30)
    want = ("Make: Canon, Model: CanonPowerShotS30, X Resolution: 180 dots per inch, Y Resolution: 180 dots "
            "per inch, Resolution Unit: Inch, YCbCr Positioning: Unknown, Sensing Method: Unknown, Exposure Time: "
            "1/640sec, F-Number: f/2.8, Exif Version: 2.10, Components Configuration: YCbCr, Compressed Bits Per "
            "Pixel: 5bits/pixel, Shutter Speed Value: 1/636sec, Aperture Value: f/2.8, Exposure Bias Value: 0 EV, "
            "Max Aperture Value: f/2.8, Metering Mode: Multi-segment, Flash: Flashdidnotfire, Focal Length: 7.1 mm, "
            "FlashPix Version: 1.00, Color Space: sRGB")
    by_id = sorted(exif.DEFAULT_TAGS, key=_TAG_ID.__getitem__)  # IFD0 then SubIFD by tag id: the old order
    assert _official_text_in(tags, by_id) != want
    for order in (exif.DEFAULT_TAGS, by_id, tuple(reversed(by_id))):  # the tag set, not the order, is asked
        assert exif.render_text(tags, tag_order=order, style="official") == want
    assert exif.render_text(tags, tag_order=("Flash", "Model", "Make"), style="official") == (
        "Make: Canon, Model: CanonPowerShotS30, Flash: Flashdidnotfire")
    # Our own style keeps the config's order.
    assert exif.render_text(tags, tag_order=("Flash", "Make")) == "Flash: Flash did not fire, Make: Canon"


@needs_photos
def test_official_style_orders_tags_as_the_metadata_extractor_dump():
    reordered = set()
    photos = _shared_photos()
    for photo in photos:
        tags = exif.read_tags(photo)
        entries = exif.metadata_extractor_entries(PHOTOS / "metadata-extractor" / f"{photo.name}.txt")
        dump_order = list(dict.fromkeys(n for d, n, _ in entries if d in exif_tiff.EXIF_DIRECTORIES))
        want = _official_text_in(tags, [n for n in dump_order if n in exif.DEFAULT_TAGS])
        assert exif.render_text(tags, tag_order=exif.DEFAULT_TAGS, style="official") == want, photo.name
        if want != _official_text_in(tags, sorted(exif.DEFAULT_TAGS, key=_TAG_ID.__getitem__)):
            reordered.add(photo.name)
    assert len(photos) == 143
    # The photos where the file's order is not the tag-id order (the text moved when this was fixed).
    assert reordered == {"Canon PowerShot A85.jpg", "Canon PowerShot S30 (2).jpg"}
