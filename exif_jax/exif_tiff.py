"""A bounded TIFF IFD reader (the layout metadata-extractor's TiffReader walks) for the raw EXIF block.

Pillow hands over the raw EXIF block (JPEG APP1, PNG eXIf, WebP EXIF, or the TIFF file itself); this walks
its IFDs itself, because the descriptions need each entry's TIFF type and its exact numerator/denominator.
"""
from __future__ import annotations

import mmap
import struct
from typing import Any

from exif_jax.exif_values import Rat, _Big

# metadata-extractor directory names whose tags make up one photo's tag dict, in precedence order.
EXIF_DIRECTORIES: tuple[str, ...] = ("Exif IFD0", "Exif SubIFD", "Interoperability")

# TIFF tag id -> metadata-extractor name (ExifDirectoryBase). Tags not listed are not read.
TAG_NAMES: dict[int, str] = {
    0x0001: "Interoperability Index", 0x0002: "Interoperability Version", 0x00FE: "New Subfile Type",
    0x00FF: "Subfile Type", 0x0100: "Image Width", 0x0101: "Image Height", 0x0102: "Bits Per Sample",
    0x0103: "Compression", 0x0106: "Photometric Interpretation", 0x0107: "Thresholding",
    0x010A: "Fill Order", 0x010D: "Document Name", 0x010E: "Image Description", 0x010F: "Make",
    0x0110: "Model", 0x0111: "Strip Offsets", 0x0112: "Orientation", 0x0115: "Samples Per Pixel",
    0x0116: "Rows Per Strip", 0x0117: "Strip Byte Counts", 0x011A: "X Resolution",
    0x011B: "Y Resolution", 0x011C: "Planar Configuration", 0x0128: "Resolution Unit",
    0x0131: "Software", 0x0132: "Date/Time", 0x013B: "Artist", 0x013C: "Host Computer",
    0x013E: "White Point", 0x013F: "Primary Chromaticities", 0x0211: "YCbCr Coefficients",
    0x0212: "YCbCr Sub-Sampling", 0x0213: "YCbCr Positioning", 0x0214: "Reference Black/White",
    0x1001: "Related Image Width", 0x1002: "Related Image Height", 0x4746: "Rating",
    0x8298: "Copyright", 0x829A: "Exposure Time", 0x829D: "F-Number", 0x8822: "Exposure Program",
    0x8824: "Spectral Sensitivity", 0x8827: "ISO Speed Ratings", 0x8830: "Sensitivity Type",
    0x8831: "Standard Output Sensitivity", 0x8832: "Recommended Exposure Index",
    0x9000: "Exif Version", 0x9003: "Date/Time Original", 0x9004: "Date/Time Digitized",
    0x9101: "Components Configuration", 0x9102: "Compressed Bits Per Pixel",
    0x9201: "Shutter Speed Value", 0x9202: "Aperture Value", 0x9203: "Brightness Value",
    0x9204: "Exposure Bias Value", 0x9205: "Max Aperture Value", 0x9206: "Subject Distance",
    0x9207: "Metering Mode", 0x9208: "White Balance", 0x9209: "Flash", 0x920A: "Focal Length",
    0x9214: "Subject Location", 0x9290: "Sub-Sec Time", 0x9291: "Sub-Sec Time Original",
    0x9292: "Sub-Sec Time Digitized", 0xA000: "FlashPix Version", 0xA001: "Color Space",
    0xA002: "Exif Image Width", 0xA003: "Exif Image Height", 0xA004: "Related Sound File",
    0xA20E: "Focal Plane X Resolution", 0xA20F: "Focal Plane Y Resolution",
    0xA210: "Focal Plane Resolution Unit", 0xA214: "Subject Location", 0xA215: "Exposure Index",
    0xA217: "Sensing Method", 0xA300: "File Source", 0xA301: "Scene Type",
    0xA401: "Custom Rendered", 0xA402: "Exposure Mode", 0xA403: "White Balance Mode",
    0xA404: "Digital Zoom Ratio", 0xA405: "Focal Length 35", 0xA406: "Scene Capture Type",
    0xA407: "Gain Control", 0xA408: "Contrast", 0xA409: "Saturation", 0xA40A: "Sharpness",
    0xA40C: "Subject Distance Range", 0xA420: "Unique Image ID", 0xA430: "Camera Owner Name",
    0xA431: "Body Serial Number", 0xA432: "Lens Specification", 0xA433: "Lens Make",
    0xA434: "Lens Model", 0xA435: "Lens Serial Number", 0xA500: "Gamma",
}
_SUBIFD, _INTEROP = 0x8769, 0xA005

# Bounds against hostile files: IFDs walked, entries per IFD, elements decoded per value.
_MAX_IFDS, _MAX_ENTRIES, _MAX_ELEMENTS, _MAX_ASCII = 8, 1024, 4096, 65536

_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_CODES = {3: "H", 4: "I", 8: "h", 9: "i", 11: "f", 12: "d", 13: "I"}


def _decode(buf: Any, bo: str, fmt: int, count: int, off: int) -> Any:
    if fmt == 2:
        raw = bytes(buf[off:off + min(count, _MAX_ASCII)])
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    if count > _MAX_ELEMENTS:
        return _Big(count)
    if fmt == 7 or (fmt in (1, 6) and count > 1):
        return bytes(buf[off:off + count])
    if fmt in (1, 6):
        return struct.unpack_from("B" if fmt == 1 else "b", buf, off)[0]
    if fmt in (5, 10):
        vals = struct.unpack_from(f"{bo}{2 * count}{'I' if fmt == 5 else 'i'}", buf, off)
        rats = [Rat(vals[i], vals[i + 1]) for i in range(0, len(vals), 2)]
        return rats[0] if count == 1 else rats
    vals = list(struct.unpack_from(f"{bo}{count}{_CODES[fmt]}", buf, off))
    return vals[0] if count == 1 else vals


def _read_ifd(buf: Any, bo: str, off: int) -> tuple[dict[int, Any], dict[int, int]]:
    """Entries of one IFD (tag -> value) and its sub-IFD pointers; bad entries are skipped."""
    n = len(buf)
    if off < 0 or off + 2 > n:
        return {}, {}
    count = struct.unpack_from(bo + "H", buf, off)[0]
    if count > 255 and count & 0xFF == 0:  # byte order flipped by an editor that missed this IFD
        count >>= 8
        bo = "<" if bo == ">" else ">"
    if off + 2 + 12 * count + 4 > n:
        return {}, {}
    tags: dict[int, Any] = {}
    pointers: dict[int, int] = {}
    for i in range(min(count, _MAX_ENTRIES)):
        e = off + 2 + 12 * i
        tag, fmt, cnt = struct.unpack_from(bo + "HHI", buf, e)
        size = _SIZES.get(fmt)
        if size is None or (cnt == 0 and fmt != 2):
            continue
        nbytes = size * cnt
        voff = e + 8 if nbytes <= 4 else struct.unpack_from(bo + "I", buf, e + 8)[0]
        if voff + nbytes > n:
            continue
        if tag in (_SUBIFD, _INTEROP, 0x8825):
            if fmt in (4, 13) or (fmt == 3 and cnt == 1):
                pointers[tag] = _decode(buf, bo, fmt, 1, voff)
            continue
        if tag in TAG_NAMES:
            tags[tag] = _decode(buf, bo, fmt, cnt, voff)
    return tags, pointers


def parse_tiff(buf: bytes | mmap.mmap | memoryview) -> dict[str, dict[int, Any]]:
    """Raw EXIF (a TIFF structure) -> {directory name: {tag id: value}} for IFD0, SubIFD, Interop."""
    if len(buf) < 8 or bytes(buf[:2]) not in (b"II", b"MM"):
        return {}
    bo = "<" if bytes(buf[:2]) == b"II" else ">"
    if struct.unpack_from(bo + "H", buf, 2)[0] != 42:
        return {}
    out: dict[str, dict[int, Any]] = {}
    seen: set[int] = set()
    todo = [("Exif IFD0", struct.unpack_from(bo + "I", buf, 4)[0])]
    while todo and len(seen) < _MAX_IFDS:
        name, off = todo.pop(0)
        if off in seen or name in out:
            continue
        seen.add(off)
        tags, pointers = _read_ifd(buf, bo, off)
        out[name] = tags
        if _SUBIFD in pointers:
            todo.append(("Exif SubIFD", pointers[_SUBIFD]))
        if _INTEROP in pointers:
            todo.append(("Interoperability", pointers[_INTEROP]))
    return out
