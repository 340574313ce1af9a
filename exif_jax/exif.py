"""EXIF -> text: read IFD0 / Exif SubIFD tags with Pillow and describe them as metadata-extractor does.

The paper trained on the YFCC100M EXIF dump, whose values are metadata-extractor's (Java) descriptions
(`Exposure Time = 1/250 sec`, `F-Number = f/9.0`). This module re-implements those description rules
(TagDescriptor, ExifDescriptorBase, Rational, Directory getters) so text from a photo file and text from
a YFCC line are the same string. Pillow opens the file and hands over the raw EXIF block (JPEG APP1,
PNG eXIf, WebP EXIF, or the TIFF file itself); a small bounded TIFF reader below walks the IFDs, because
the descriptions need each entry's TIFF type and its exact numerator/denominator.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import mmap
import os
import re
import struct
import unicodedata
import urllib.parse
import warnings
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal, localcontext
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

from PIL import Image

# The default tag set, in text order (metadata-extractor names). Chosen from what the shared photos'
# reference dumps carry and from the paper (hellomuffin/exif-as-language keeps the YFCC tags present in
# >= 49% of photos, dataProcess/yfcc_dataInfo.py). Why the starting list changed:
# - Compression dropped: in camera JPEGs it lives in IFD1 (the thumbnail), never IFD0 (128 of 143 shared
#   photos have it, all under "Exif Thumbnail"); it describes the thumbnail, not the photo.
# - Software dropped: free text, near-unique per firmware ("v88-74", "Ver.1.00u", "R1CA008 prg1223-...")
#   so it duplicates Model, and on the web it names editors (Photoshop, Picasa), i.e. it describes what
#   happened to the file, not the camera. The shared photos were even selected for not naming an editor.
# - Compressed Bits Per Pixel added (86/143): the camera's JPEG quality setting, visible in every crop.
# - Gain Control, Contrast, Saturation, Sharpness added (26-34/143): in-camera processing that changes
#   pixels (noise, tone, edges), which is what the image tower can learn from.
# - Never: pixel dimensions (Exif Image Width/Height leak crop size), Orientation (how the camera was
#   held), dates, GPS, serial numbers, owner/artist names, comments, maker notes (see _PRIVATE below).
# - Left out as uninformative: File Source / Scene Type (constant for cameras), White Balance (light
#   source: "Unknown" on 62 of 69 photos, and its wording changed between metadata-extractor releases).
DEFAULT_TAGS: tuple[str, ...] = (
    "Make", "Model", "Exposure Time", "F-Number", "Exposure Program", "ISO Speed Ratings",
    "Shutter Speed Value", "Aperture Value", "Exposure Bias Value", "Max Aperture Value",
    "Metering Mode", "Flash", "Focal Length", "Color Space", "Components Configuration",
    "Compressed Bits Per Pixel", "Exposure Mode", "White Balance Mode", "Digital Zoom Ratio",
    "Focal Length 35", "Scene Capture Type", "Gain Control", "Contrast", "Saturation", "Sharpness",
    "Sensing Method", "Custom Rendered", "X Resolution", "Y Resolution", "Resolution Unit",
    "YCbCr Positioning", "Exif Version", "FlashPix Version",
)

# Tag names whose values never go into text, whatever tag order is asked for: time, place, identity,
# free text, maker notes.
_PRIVATE = re.compile(
    r"date|sub-sec|time zone|offset time|gps|serial|owner|maker ?note|artist|copyright|comment|"
    r"description|windows xp|unique image id|host computer|document name", re.IGNORECASE)

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


class ExifError(Exception):
    """A file that cannot be read as an image; the message names the file and the reason."""


# ----------------------------------------------------------------------------------------------------
# Java value semantics (metadata-extractor's Rational, Directory getters, DecimalFormat, Double.toString)

class Rat(NamedTuple):
    """A TIFF (S)RATIONAL, kept unreduced as metadata-extractor keeps it."""
    num: int
    den: int


class _Big(NamedTuple):
    """An array too long to decode; only its length is described ("[N values]")."""
    count: int


def _f32(x: float) -> float:
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def _jint(x: float) -> int:
    """Java's (int) cast of a double: NaN -> 0, saturating, truncating."""
    if math.isnan(x):
        return 0
    if math.isinf(x):
        return 2**31 - 1 if x > 0 else -(2**31)
    return max(-(2**31), min(2**31 - 1, int(x)))


def _jround(x: float) -> int:
    """Java's Math.round(double): floor(x + 0.5) as a saturating long."""
    if math.isnan(x):
        return 0
    if math.isinf(x):
        return 2**63 - 1 if x > 0 else -(2**63)
    return max(-(2**63), min(2**63 - 1, math.floor(x + 0.5)))


def _wrap32(v: int) -> int:
    return (v + 2**31) % 2**32 - 2**31


def _rdouble(r: Rat) -> float:
    if r.num == 0:
        return 0.0
    if r.den == 0:
        return math.copysign(math.inf, r.num)
    return r.num / r.den


def _rfloat(r: Rat) -> float:
    if r.num == 0:
        return 0.0
    if r.den == 0:
        return math.copysign(math.inf, r.num)
    return _f32(_f32(float(r.num)) / _f32(float(r.den)))


def _java_double_str(x: float) -> str:
    # Only the length of this string matters when it is long (>= 5 chars means "use n/d"), and Java
    # switches to "1.0E-4" style outside [1e-3, 1e7), which is always at least 5 characters.
    return repr(x) if 1e-3 <= abs(x) < 1e7 else "0.0E00"


def _rat_is_int(r: Rat) -> bool:
    return r.den == 1 or (r.den != 0 and r.num % r.den == 0) or (r.den == 0 and r.num == 0)


def _rat_simple(r: Rat) -> str:
    """Rational.toSimpleString(true): integer, short decimal, or reduced n/d."""
    n, d = r.num, r.den
    if d == 0 and n != 0:
        return f"{n}/{d}"
    if _rat_is_int(r):
        return str(_jint(_rdouble(r)))
    if d < 0:
        n, d = -n, -d
    g = math.gcd(n, d) or 1
    n, d = n // g, d // g
    s = _java_double_str(n / d)
    return s if len(s) < 5 else f"{n}/{d}"


def _dformat(x: float, max_frac: int, min_frac: int = 0, rounding: str = ROUND_HALF_EVEN) -> str:
    """java.text.DecimalFormat with pattern like "0.0##": rounding decided on the exact binary value."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "-\u221e" if x < 0 else "\u221e"
    with localcontext(Context(prec=800)):
        q = Decimal(x).quantize(Decimal(1).scaleb(-max_frac), rounding=rounding)
    whole, _, frac = format(abs(q), "f").partition(".")
    frac = frac.rstrip("0").ljust(min_frac, "0")
    return ("-" if q.is_signed() else "") + whole + ("." + frac if frac else "")


def _get_int(v: Any) -> int | None:
    """Directory.getInteger."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return _wrap32(v)
    if isinstance(v, float):
        return _jint(v)
    if isinstance(v, Rat):
        return _jint(_rdouble(v))
    if isinstance(v, str):
        if re.fullmatch(r"[+-]?[0-9]+", v) and -(2**31) <= int(v) < 2**31:
            return int(v)
        acc = 0
        for b in v.encode("utf-8", "replace"):
            acc = ((acc << 8) + b) & 0xFFFFFFFFFFFFFFFF
        return _wrap32(acc)
    if isinstance(v, bytes):
        return struct.unpack("b", v)[0] if len(v) == 1 else None
    if isinstance(v, list) and len(v) == 1:
        return _get_int(v[0])
    return None


def _get_rational(v: Any) -> Rat | None:
    if isinstance(v, Rat):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return Rat(v, 1)
    return None


def _get_double(v: Any) -> float | None:
    if isinstance(v, Rat):
        return _rdouble(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


def _get_float(v: Any) -> float | None:
    if isinstance(v, Rat):
        return _rfloat(v)
    d = _get_double(v)
    return None if d is None else _f32(d)


def _get_int_array(v: Any) -> list[int] | None:
    if isinstance(v, bytes):
        return list(struct.unpack(f"{len(v)}b", v))
    if isinstance(v, list):
        return [_jint(_rdouble(x)) if isinstance(x, Rat) else int(x) for x in v]
    if isinstance(v, str):
        return [ord(c) for c in v]
    if isinstance(v, int):
        return [v]
    return None


def _get_string(v: Any) -> str | None:
    """Directory.getString: the 'raw' value as text."""
    if isinstance(v, Rat):
        return _rat_simple(v)
    if isinstance(v, bytes):
        return " ".join(str(b) for b in v)
    if isinstance(v, list):
        return " ".join(f"{x.num}/{x.den}" if isinstance(x, Rat)
                        else _dformat(x, 3) if isinstance(x, float) else str(x) for x in v)
    if isinstance(v, float):
        return _dformat(v, 3)
    if isinstance(v, _Big):
        return None
    return None if v is None else str(v)


# ----------------------------------------------------------------------------------------------------
# Descriptions (ExifDescriptorBase / TagDescriptor rules)

def _indexed(base: int, *names: str | None) -> Callable[[dict, int], str | None]:
    def describe(d: dict, tag: int) -> str | None:
        i = _get_int(d[tag])
        if i is None:
            return None
        if 0 <= i - base < len(names) and names[i - base] is not None:
            return names[i - base]
        return f"Unknown ({i})"
    return describe


def _table(names: dict[int, str]) -> Callable[[dict, int], str | None]:
    def describe(d: dict, tag: int) -> str | None:
        i = _get_int(d[tag])
        return None if i is None else names.get(i, f"Unknown ({i})")
    return describe


def _fstop(f: float) -> str:
    return "f/" + _dformat(f, 1, 1, ROUND_HALF_UP)


def _focal(mm: float) -> str:
    return _dformat(mm, 1, 0, ROUND_HALF_UP) + " mm"


def _apex_fstop(d: dict, tag: int) -> str | None:
    a = _get_double(d[tag])
    if a is None:
        return None
    try:
        return _fstop(math.pow(math.sqrt(2.0), a))
    except OverflowError:
        return _fstop(math.inf)


def _shutter(d: dict, tag: int) -> str | None:
    apex = _get_float(d[tag])
    if apex is None:
        return None
    try:
        power = math.exp(apex * math.log(2))
    except OverflowError:
        power = math.inf
    if apex <= 1:
        p = _f32(1 / power) if power else math.inf
        p10 = _jround(p * 10.0)
        return _dformat(_f32(_f32(float(p10)) / _f32(10.0)), 2, 0, ROUND_HALF_UP) + " sec"
    return f"1/{_jint(float(_jround(power)))} sec"


def _resolution(d: dict, tag: int) -> str | None:
    r = _get_rational(d[tag])
    if r is None:
        return None
    unit = _describe(d, 0x0128)
    return f"{_rat_simple(r)} dots per {unit.lower() if unit else 'unit'}"


def _version(d: dict, tag: int) -> str | None:
    comps = _get_int_array(d[tag])
    if comps is None:
        return None
    out = []
    for i, c in enumerate(comps[:4]):
        if i == 2:
            out.append(".")
        ch = c & 0xFFFF
        if ch < 0x30:
            ch = (ch + 0x30) & 0xFFFF
        if i == 0 and ch == 0x30:
            continue
        out.append(chr(ch) if not 0xD800 <= ch < 0xE000 else "\ufffd")
    return "".join(out)


def _components(d: dict, tag: int) -> str | None:
    comps = _get_int_array(d[tag])
    if comps is None:
        return None
    names = ("", "Y", "Cb", "Cr", "R", "G", "B")
    return "".join(names[j] for j in comps[:4] if 0 < j < len(names))


def _flash(d: dict, tag: int) -> str | None:
    v = _get_int(d[tag])
    if v is None:
        return None
    s = "Flash fired" if v & 0x1 else "Flash did not fire"
    if v & 0x4:
        s += ", return detected" if v & 0x2 else ", return not detected"
    if v & 0x10 and v & 0x0F:  # 0x10 alone is "flash off" (41 shared photos: "Flash did not fire")
        s += ", auto"
    if v & 0x40:
        s += ", red-eye reduction"
    return s


def _rat_then(fmt: Callable[[Rat], str | None]) -> Callable[[dict, int], str | None]:
    def describe(d: dict, tag: int) -> str | None:
        r = _get_rational(d[tag])
        return None if r is None else fmt(r)
    return describe


def _bits_per_pixel(r: Rat) -> str:
    one = _rat_is_int(r) and _jint(_rdouble(r)) == 1
    return _rat_simple(r) + (" bit/pixel" if one else " bits/pixel")


def _subject_distance(r: Rat) -> str:
    if r.num == 0xFFFFFFFF:
        return "Infinity"
    if r.num == 0:
        return "Unknown"
    return _dformat(_rdouble(r), 3, 1) + " metres"


def _focal_plane(d: dict, tag: int) -> str | None:
    r = _get_rational(d[tag])
    if r is None:
        return None
    unit = _describe(d, 0xA210)
    return _rat_simple(Rat(r.den, r.num)) + (" " + unit.lower() if unit else "")


def _simple_string(suffix: str) -> Callable[[dict, int], str | None]:
    def describe(d: dict, tag: int) -> str | None:
        s = _get_string(d[tag])
        return None if s is None else s + suffix
    return describe


def _interop_index(d: dict, tag: int) -> str | None:
    s = _get_string(d[tag])
    if s is None:
        return None
    return "Recommended Exif Interoperability Rules (ExifR98)" if s.strip().lower() == "r98" \
        else f"Unknown ({s})"


def _int_then(fmt: Callable[[int], str]) -> Callable[[dict, int], str | None]:
    def describe(d: dict, tag: int) -> str | None:
        i = _get_int(d[tag])
        return None if i is None else fmt(i)
    return describe


def _lens_spec(d: dict, tag: int) -> str | None:
    v = d[tag]
    if not (isinstance(v, list) and len(v) == 4 and all(isinstance(x, Rat) for x in v)):
        return None
    zero = [x.num == 0 or x.den == 0 for x in v]
    if zero[0] and zero[2]:
        return None
    same = [_rdouble(v[0]) == _rdouble(v[1]), _rdouble(v[2]) == _rdouble(v[3])]
    s = _rat_simple(v[0]) + ("" if same[0] else "-" + _rat_simple(v[1])) + "mm"
    if not zero[2]:
        s += " " + (_fstop(_rdouble(v[2])) if same[1] else
                    "f/" + "-".join(_dformat(_rdouble(x), 1, 1, ROUND_HALF_UP) for x in v[2:]))
    return s


def _black_white(d: dict, tag: int) -> str | None:
    v = _get_int_array(d[tag])
    if v is None or len(v) < 6:
        return None
    return f"[{v[0]},{v[2]},{v[4]}] [{v[1]},{v[3]},{v[5]}]"


_DESCRIBERS: dict[int, Callable[[dict, int], str | None]] = {
    0x0214: _black_white,
    0x0001: _interop_index, 0x0002: _version, 0xA432: _lens_spec, 0x0100: _simple_string(" pixels"), 0x0101: _simple_string(" pixels"),
    0x0102: _simple_string(" bits/component/pixel"), 0x0115: _simple_string(" samples/pixel"),
    0x0116: _simple_string(" rows/strip"), 0x0117: _simple_string(" bytes"),
    0x0103: _table({1: "Uncompressed", 2: "CCITT 1D", 3: "T4/Group 3 Fax", 4: "T6/Group 4 Fax",
                    5: "LZW", 6: "JPEG (old-style)", 7: "JPEG", 8: "Adobe Deflate", 99: "JPEG",
                    32773: "PackBits", 32946: "Deflate", 34712: "JPEG 2000", 34892: "Lossy JPEG"}),
    0x0106: _table({0: "WhiteIsZero", 1: "BlackIsZero", 2: "RGB", 3: "RGB Palette", 5: "CMYK",
                    6: "YCbCr", 8: "CIELab", 32803: "Color Filter Array", 34892: "Linear Raw"}),
    0x00FE: _indexed(0, "Full-resolution image", "Reduced-resolution image",
                     "Single page of multi-page image"),
    0x0112: _indexed(1, "Top, left side (Horizontal / normal)", "Top, right side (Mirror horizontal)",
                     "Bottom, right side (Rotate 180)", "Bottom, left side (Mirror vertical)",
                     "Left side, top (Mirror horizontal and rotate 270 CW)",
                     "Right side, top (Rotate 90 CW)",
                     "Right side, bottom (Mirror horizontal and rotate 90 CW)",
                     "Left side, bottom (Rotate 270 CW)"),
    0x011A: _resolution, 0x011B: _resolution,
    0x011C: _indexed(1, "Chunky (contiguous for each subsampling pixel)",
                     "Separate (Y-plane/Cb-plane/Cr-plane format)"),
    0x0128: _indexed(1, "(No unit)", "Inch", "cm"),
    0x0213: _indexed(1, "Center of pixel array", "Datum point"),
    0x829A: _simple_string(" sec"),
    0x829D: _rat_then(lambda r: _fstop(_rdouble(r))),
    0x8822: _indexed(1, "Manual control", "Program normal", "Aperture priority", "Shutter priority",
                     "Program creative (slow program)", "Program action (high-speed program)",
                     "Portrait mode", "Landscape mode"),
    0x8827: _int_then(str),
    0x8830: _indexed(0, "Unknown", "Standard Output Sensitivity", "Recommended Exposure Index",
                     "ISO Speed", "Standard Output Sensitivity and Recommended Exposure Index",
                     "Standard Output Sensitivity and ISO Speed",
                     "Recommended Exposure Index and ISO Speed",
                     "Standard Output Sensitivity, Recommended Exposure Index and ISO Speed"),
    0x9000: _version, 0xA000: _version, 0x9101: _components,
    0x9102: _rat_then(_bits_per_pixel),
    0x9201: _shutter, 0x9202: _apex_fstop, 0x9205: _apex_fstop,
    0x9203: _rat_then(lambda r: "Unknown" if r.num == 0xFFFFFFFF else _dformat(_rdouble(r), 3, 1)),
    0x9204: _rat_then(lambda r: _rat_simple(r) + " EV"),
    0x9206: _rat_then(_subject_distance),
    0x9207: _table({0: "Unknown", 1: "Average", 2: "Center weighted average", 3: "Spot",
                    4: "Multi-spot", 5: "Multi-segment", 6: "Partial", 255: "(Other)"}),
    0x9208: _table({0: "Unknown", 1: "Daylight", 2: "Florescent", 3: "Tungsten (Incandescent)",
                    4: "Flash", 9: "Fine Weather", 10: "Cloudy", 11: "Shade",
                    12: "Daylight Fluorescent", 13: "Day White Fluorescent",
                    14: "Cool White Fluorescent", 15: "White Fluorescent",
                    16: "Warm White Fluorescent", 17: "Standard light A", 18: "Standard light B",
                    19: "Standard light C", 20: "D55", 21: "D65", 22: "D75", 23: "D50",
                    24: "ISO Studio Tungsten", 255: "Other"}),
    0x9209: _flash,
    0x920A: _rat_then(lambda r: _focal(_rdouble(r))),
    0xA001: _table({1: "sRGB", 65535: "Undefined"}),
    0xA002: _int_then(lambda i: f"{i} pixels"), 0xA003: _int_then(lambda i: f"{i} pixels"),
    0xA20E: _focal_plane, 0xA20F: _focal_plane,
    0xA210: _indexed(1, "(No unit)", "Inches", "cm"),
    0xA217: _indexed(1, "(Not defined)", "One-chip color area sensor", "Two-chip color area sensor",
                     "Three-chip color area sensor", "Color sequential area sensor", None,
                     "Trilinear sensor", "Color sequential linear sensor"),
    0xA300: _indexed(1, "Film Scanner", "Reflection Print Scanner", "Digital Still Camera (DSC)"),
    0xA301: _indexed(1, "Directly photographed image"),
    0xA401: _indexed(0, "Normal process", "Custom process"),
    0xA402: _indexed(0, "Auto exposure", "Manual exposure", "Auto bracket"),
    0xA403: _indexed(0, "Auto white balance", "Manual white balance"),
    0xA404: _rat_then(lambda r: "Digital zoom not used" if r.num == 0 else _dformat(_rdouble(r), 1)),
    0xA405: _int_then(lambda i: "Unknown" if i == 0 else _focal(i)),
    0xA406: _indexed(0, "Standard", "Landscape", "Portrait", "Night scene"),
    0xA407: _indexed(0, "None", "Low gain up", "Low gain down", "High gain up", "High gain down"),
    0xA408: _indexed(0, "None", "Soft", "Hard"),
    0xA409: _indexed(0, "None", "Low saturation", "High saturation"),
    0xA40A: _indexed(0, "None", "Low", "Hard"),
    0xA40C: _indexed(0, "Unknown", "Macro", "Close view", "Distant view"),
}


def _describe(d: dict, tag: int) -> str | None:
    """One tag's description, or None where metadata-extractor has none to give."""
    if tag not in d:
        return None
    fn = _DESCRIBERS.get(tag)
    if fn is not None:
        return fn(d, tag)
    v = d[tag]
    if isinstance(v, _Big) or (isinstance(v, (list, bytes)) and len(v) > 16):
        return f"[{v.count if isinstance(v, _Big) else len(v)} values]"
    return _get_string(v)


# ----------------------------------------------------------------------------------------------------
# A bounded TIFF IFD reader (the layout metadata-extractor's TiffReader walks)

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


def describe_directories(dirs: Mapping[str, Mapping[int, Any]]) -> dict[str, str]:
    """Parsed directories -> {tag name: description}; IFD0 first, first occurrence of a name wins."""
    out: dict[str, str] = {}
    for dname in EXIF_DIRECTORIES:
        d = dict(dirs.get(dname, {}))
        for tag in d:
            name = TAG_NAMES[tag]
            if name in out:
                continue
            try:
                desc = _describe(d, tag)
            except (ArithmeticError, ValueError, struct.error):
                desc = None
            if desc is not None:
                out[name] = desc
    return out


# ----------------------------------------------------------------------------------------------------
# Reading files

def _png_exif_after_idat(fp: Any) -> bytes | None:
    """An eXIf chunk placed after the image data, found by walking chunk headers (no decoding)."""
    fp.seek(8)
    for _ in range(100_000):
        head = fp.read(8)
        if len(head) < 8:
            return None
        length, kind = struct.unpack(">I4s", head)
        if kind == b"eXIf":
            return fp.read(min(length, 1 << 24))
        if kind == b"IEND":
            return None
        fp.seek(length + 4, 1)
    return None


def _exif_block(im: Image.Image, source: Any) -> Any:
    if im.format == "TIFF":
        return source  # bytes given: they are the TIFF structure EXIF uses
    raw = im.info.get("exif")
    if raw is None and im.format == "PNG":
        # Pillow sees a trailing eXIf only after decoding every pixel; walk the chunks instead.
        with (io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")) as fp:
            raw = _png_exif_after_idat(fp)
    if not isinstance(raw, (bytes, bytearray)):
        return b""
    return raw[6:] if raw[:6] == b"Exif\0\0" else raw


def read_tags(source: str | os.PathLike | bytes, *, name: str | None = None) -> dict[str, str]:
    """A photo's EXIF tags described as metadata-extractor does ({} when it has none)."""
    in_memory = isinstance(source, (bytes, bytearray))
    label = name or ("<bytes>" if in_memory else os.fspath(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(source) if in_memory else source) as im:
                if im.format == "TIFF" and not in_memory:
                    # The file is itself the TIFF structure: map it rather than read it whole.
                    with open(source, "rb") as f, \
                            mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                        return describe_directories(parse_tiff(mm))
                return describe_directories(parse_tiff(_exif_block(im, source)))
    except Image.DecompressionBombError as e:
        raise ExifError(f"{label}: refused, too many pixels (decompression bomb limit): {e}") from e
    except Image.UnidentifiedImageError as e:
        raise ExifError(f"{label}: not an image Pillow can identify") from e
    except (OSError, MemoryError) as e:
        raise ExifError(f"{label}: cannot read: {e}") from e
    except Exception as e:  # a fuzzed file can trip any reader; report it against the file
        raise ExifError(f"{label}: malformed file ({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------------------------------
# Tags -> text

def _clean(value: str, limit: int) -> str:
    """Drop control/format characters, collapse whitespace, keep at most `limit` characters."""
    out: list[str] = []
    space = False
    for ch in value:
        if ch.isspace():
            space = bool(out)
            continue
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co"):
            continue
        if space:
            out.append(" ")
            space = False
        out.append(ch)
        if len(out) >= limit:
            break
    return "".join(out[:limit]).rstrip()


def select_tags(tags: Mapping[str, str], tag_order: Sequence[str] | None = DEFAULT_TAGS,
                max_value_len: int = 40) -> dict[str, str]:
    """The tags that go into text, in order, cleaned and bounded; tag_order=None keeps every tag."""
    if max_value_len < 1:
        raise ValueError(f"max_value_len must be >= 1, got {max_value_len}")
    names = list(tags) if tag_order is None else list(tag_order)
    out: dict[str, str] = {}
    for name in names:
        value = tags.get(name)
        key = _clean(str(name), 64)
        if not isinstance(value, str) or _PRIVATE.search(str(name)) or _PRIVATE.search(key):
            continue
        value = _clean(value, max_value_len)
        if key and value and key not in out:
            out[key] = value
    return out


# Value refinements by text style. "official" (the paper code's refine_value) arrives with issue #8.
STYLES: dict[str, Callable[[str, str], str]] = {
    "metadata_extractor": lambda name, value: value,
}


def render_text(tags: Mapping[str, str], tag_order: Sequence[str] | None = DEFAULT_TAGS,
                max_value_len: int = 40, style: str = "metadata_extractor") -> str:
    """`Make: Canon, Model: Canon EOS 20D, Exposure Time: 1/250 sec, ...` in fixed order."""
    if style not in STYLES:
        raise ValueError(f"unknown text style {style!r}; known: {sorted(STYLES)}")
    refine = STYLES[style]
    styled = {k: refine(k, v) for k, v in tags.items() if isinstance(v, str)}
    return ", ".join(f"{k}: {v}" for k, v in select_tags(styled, tag_order, max_value_len).items())


def camera_key(tags: Mapping[str, str]) -> str:
    """"Make|Model" with whitespace normalized; "" when both are absent."""
    make, model = (_clean(tags.get(k) or "", 256) for k in ("Make", "Model"))
    return f"{make}|{model}" if make or model else ""


# ----------------------------------------------------------------------------------------------------
# metadata-extractor dumps and YFCC100M lines

_ME_LINE = re.compile(r"^\[(?P<dir>[^\]]+?) - 0x[0-9a-fA-F]+\] (?P<name>.+?) = (?P<value>.*)$")


def metadata_extractor_entries(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """Every (directory, tag name, description) line of a metadata-extractor text dump."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    out = []
    for line in text.split("\n"):  # not splitlines(): values may hold \x0b, \x1c, U+2028 ...
        m = _ME_LINE.match(line.removesuffix("\r"))
        if m:
            out.append((m["dir"], m["name"], m["value"]))
    return out


def _exif_dict(entries: Iterable[tuple[str, str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for directory, name, value in entries:
        if directory in EXIF_DIRECTORIES and name not in out:
            out[name] = value
    return out


def parse_metadata_extractor_txt(path: str | os.PathLike) -> dict[str, str]:
    """A reference dump -> {tag name: description} from IFD0 / SubIFD / Interop; first wins."""
    return _exif_dict(metadata_extractor_entries(path))


def parse_yfcc_line(line: str) -> tuple[str, dict[str, str]]:
    """`photo_id<TAB>Exif+SubIFD.Exposure+Time:1%2F250+sec,...` -> (photo_id, tags as read_tags)."""
    # Category, tag and value are each URL-encoded once (YFCC100M readme: "Exif+SubIFD.Focal+Length:
    # 50.0+mm"), so one unquote_plus each. The paper's code decodes twice, which only differs for a
    # value that still holds "%XX" after the first decode.
    photo_id, _, rest = line.rstrip("\r\n").partition("\t")
    entries = []
    for item in rest.split(","):
        key, sep, value = item.partition(":")
        directory, dot, name = key.partition(".")
        if sep and dot:
            entries.append((urllib.parse.unquote_plus(directory), urllib.parse.unquote_plus(name),
                            urllib.parse.unquote_plus(value)))
    return photo_id.strip(), _exif_dict(entries)


def to_yfcc_line(photo_id: str | int,
                 dir_tags: Mapping[str, Mapping[str, str]] | Iterable[tuple[str, str, str]]) -> str:
    """The YFCC100M EXIF line for (directory, tag, description) entries or {directory: {tag: desc}}."""
    if isinstance(dir_tags, Mapping):
        dir_tags = [(d, k, v) for d, tags in dir_tags.items() for k, v in tags.items()]
    q = urllib.parse.quote_plus
    return f"{photo_id}\t" + ",".join(f"{q(d)}.{q(k)}:{q(v)}" for d, k, v in dir_tags)


# ----------------------------------------------------------------------------------------------------
# CLI: exif-jax exif FILE... [--tags-all] [--max-value-len N]

def describe_files(paths: Iterable[str], tag_order: Sequence[str] | None = DEFAULT_TAGS,
                   max_value_len: int = 40, style: str = "metadata_extractor") -> Iterator[dict]:
    """One result per file: {"file", "text", "tags"} or {"file", "error"}; never stops early."""
    for path in paths:
        try:
            tags = read_tags(path)
        except ExifError as e:
            yield {"file": path, "error": str(e)}
            continue
        yield {"file": path, "text": render_text(tags, tag_order, max_value_len, style),
               "tags": select_tags(tags, tag_order, max_value_len)}


def add_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `exif-jax exif`."""
    parser.add_argument("files", nargs="+", help="photos (JPEG, TIFF, PNG, WebP)")
    parser.add_argument("--tags-all", action="store_true",
                        help="every tag read (dates, GPS, serials, names still left out)")
    parser.add_argument("--max-value-len", type=int, default=40, help="characters kept per value")
    parser.add_argument("--style", default="metadata_extractor", choices=sorted(STYLES))


def cli_main(args: argparse.Namespace) -> int:
    """Print one JSON line per file; exit 1 if any file could not be read."""
    rc = 0
    for result in describe_files(args.files, None if args.tags_all else DEFAULT_TAGS,
                                 args.max_value_len, args.style):
        rc |= "error" in result
        print(json.dumps(result, ensure_ascii=False), flush=True)
    return rc
