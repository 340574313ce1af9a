"""Java value semantics of metadata-extractor: its Rational, Directory getters, DecimalFormat, Double.toString.

The descriptions in exif_describe.py are metadata-extractor's (Java) strings, so the arithmetic under them
must round and overflow as Java's does (float32 where the Java code uses float, saturating int casts,
DecimalFormat's rounding on the exact binary value). The TIFF reader hands values over as these types.
"""
from __future__ import annotations

import math
import re
import struct
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from typing import Any, NamedTuple


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
