"""metadata-extractor's description rules (ExifDescriptorBase / TagDescriptor) for parsed EXIF directories.

The paper trained on the YFCC100M EXIF dump, whose values are metadata-extractor's (Java) descriptions
(`Exposure Time = 1/250 sec`, `F-Number = f/9.0`). These rules re-implement them so text from a photo file
and text from a YFCC line are the same string.
"""
from __future__ import annotations

import math
import struct
from decimal import ROUND_HALF_UP
from typing import Any, Callable, Mapping

from exif_jax.exif_tiff import EXIF_DIRECTORIES, TAG_NAMES
from exif_jax.exif_values import (
    Rat,
    _Big,
    _dformat,
    _f32,
    _get_double,
    _get_float,
    _get_int,
    _get_int_array,
    _get_rational,
    _get_string,
    _jint,
    _jround,
    _rat_is_int,
    _rat_simple,
    _rdouble,
)


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
    0x0001: _interop_index, 0x0002: _version, 0xA432: _lens_spec,
    0x0100: _simple_string(" pixels"), 0x0101: _simple_string(" pixels"),
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
