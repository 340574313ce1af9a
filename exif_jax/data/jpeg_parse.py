"""A JPEG file's marker segments -> what a lossless restart-marker rewrite needs, or why it can't be done.

Build time only. The parse is bounded by the file's length (every step advances), never decodes pixels,
and refuses everything but the one layout the fast crop path handles: a single interleaved baseline
(sequential Huffman, 8-bit) scan of three components whose first component carries the largest sampling
factors (4:4:4, 4:2:2, 4:4:0, 4:2:0). Anything else gets a reason and is decoded whole at load time.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

SOI, EOI, SOS, DQT, DHT, DRI = 0xD8, 0xD9, 0xDA, 0xDB, 0xC4, 0xDD
APP0, APP14 = 0xE0, 0xEE
# Start-of-frame markers by what they mean; only 0xC0/0xC1 (sequential Huffman) are taken.
_SOF_REASON = {0xC2: "progressive", 0xC3: "lossless", 0xC5: "hierarchical", 0xC6: "hierarchical",
               0xC7: "hierarchical", 0xC9: "arithmetic", 0xCA: "arithmetic", 0xCB: "arithmetic",
               0xCD: "arithmetic", 0xCE: "arithmetic", 0xCF: "arithmetic"}

# Annex K.3 / K.4 DC tables: they code every DC category 0..11 of 8-bit JPEG. A restart marker after every
# MCU turns each MCU's first DC difference into the absolute DC value, whose category the camera's own
# (often trimmed) DC table may lack; AC symbols are unchanged and keep the camera's AC tables.
STD_DC_BITS = ((0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0), (0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0))
STD_DC_VALS = tuple(range(12))


class NotFastPath(Exception):
    """The stream is valid for a decoder but not for the restart rewrite; `reason` is a short key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Component:
    """One frame component: id, sampling factors, quantization table."""
    cid: int
    h: int
    v: int
    tq: int


@dataclass
class JpegStructure:
    """The parsed header of a single-scan baseline JPEG."""
    height: int
    width: int
    sof_marker: int
    components: list[Component]
    quant_segments: list[bytes]             # DQT segments, verbatim (marker included)
    keep_segments: list[bytes]              # APP0 (JFIF) / APP14 (Adobe): they decide the colour transform
    huffman: dict[tuple[int, int], tuple[tuple[int, ...], bytes]]  # (class 0=DC 1=AC, id) -> (bits, values)
    scan_tables: list[tuple[int, int]]      # per component in frame order: (DC table id, AC table id)
    sos_segment: bytes
    restart_interval: int
    entropy_start: int                      # first byte of the entropy-coded data
    sof_segment: bytes = field(repr=False, default=b"")

    @property
    def hmax(self) -> int:
        return max(c.h for c in self.components)

    @property
    def vmax(self) -> int:
        return max(c.v for c in self.components)

    @property
    def mcu_size(self) -> tuple[int, int]:
        """(height, width) of one MCU in pixels."""
        return 8 * self.vmax, 8 * self.hmax

    @property
    def mcu_grid(self) -> tuple[int, int]:
        """(rows, columns) of MCUs covering the image."""
        mh, mw = self.mcu_size
        return -(-self.height // mh), -(-self.width // mw)


def _segment(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """(marker, whole segment incl. marker and length, next position) of the segment at pos."""
    if pos + 4 > len(data):
        raise NotFastPath("truncated", f"segment header at byte {pos}")
    marker = data[pos + 1]
    (length,) = struct.unpack_from(">H", data, pos + 2)
    end = pos + 2 + length
    if length < 2 or end > len(data):
        raise NotFastPath("truncated", f"marker 0x{marker:02X} at byte {pos} runs past the end")
    return marker, data[pos:end], end


def parse(data: bytes) -> JpegStructure:
    """Parse the header of `data` up to its first scan; raises NotFastPath with the reason it is not taken."""
    if data[:2] != b"\xff\xd8":
        raise NotFastPath("not_jpeg")
    pos = 2
    quant, keep, huff = [], [], {}
    frame = None
    restart = 0
    while True:
        # Fill bytes (0xFF runs) may precede any marker.
        while pos < len(data) and data[pos] == 0xFF and pos + 1 < len(data) and data[pos + 1] == 0xFF:
            pos += 1
        if pos + 2 > len(data) or data[pos] != 0xFF:
            raise NotFastPath("bad_marker", f"no marker at byte {pos}")
        marker = data[pos + 1]
        if marker in (SOI, EOI) or 0xD0 <= marker <= 0xD7:
            raise NotFastPath("bad_marker", f"marker 0x{marker:02X} before the scan")
        marker, seg, nxt = _segment(data, pos)
        body = seg[4:]
        if marker == DQT:
            quant.append(seg)
        elif marker == DHT:
            i = 0
            while i < len(body):
                if i + 17 > len(body):
                    raise NotFastPath("bad_huffman", "short DHT")
                tc, th = body[i] >> 4, body[i] & 15
                bits = tuple(body[i + 1:i + 17])
                n = sum(bits)
                if tc > 1 or th > 3 or n > 256 or i + 17 + n > len(body):
                    raise NotFastPath("bad_huffman", f"table class {tc} id {th}")
                huff[(tc, th)] = (bits, bytes(body[i + 17:i + 17 + n]))
                i += 17 + n
        elif marker == DRI:
            if len(body) != 2:
                raise NotFastPath("bad_marker", "DRI length")
            (restart,) = struct.unpack(">H", body)
        elif marker in (APP0, APP14):
            keep.append(seg)
        elif marker in _SOF_REASON:
            raise NotFastPath(_SOF_REASON[marker])
        elif marker in (0xC0, 0xC1):
            if frame is not None:
                raise NotFastPath("bad_marker", "two frames")
            if len(body) < 6:
                raise NotFastPath("truncated", "SOF")
            precision, height, width, nf = struct.unpack_from(">BHHB", body)
            if precision != 8:
                raise NotFastPath("12_bit" if precision == 12 else "precision", f"{precision}-bit samples")
            if len(body) != 6 + 3 * nf:
                raise NotFastPath("bad_marker", "SOF length")
            comps = [Component(body[6 + 3 * i], body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15, body[8 + 3 * i])
                     for i in range(nf)]
            frame = (marker, height, width, comps, seg)
        elif marker == SOS:
            if frame is None:
                raise NotFastPath("bad_marker", "scan before frame")
            return _finish(frame, quant, keep, huff, restart, seg, body, nxt)
        # Every other segment (APPn, COM, ...) does not affect the pixels and is dropped.
        pos = nxt


def _finish(frame, quant, keep, huff, restart, sos_seg, body, entropy_start) -> JpegStructure:
    sof_marker, height, width, comps, sof_seg = frame
    if height == 0:
        raise NotFastPath("dnl_height", "height defined by a DNL marker")
    if width == 0:
        raise NotFastPath("bad_marker", "zero width")
    if len(comps) != 3:
        raise NotFastPath("components", f"{len(comps)} components")
    y, chroma = comps[0], comps[1:]
    if not ((y.h, y.v) in ((1, 1), (2, 1), (1, 2), (2, 2)) and all((c.h, c.v) == (1, 1) for c in chroma)):
        raise NotFastPath("sampling_factors", " ".join(f"{c.h}x{c.v}" for c in comps))
    if any(c.tq > 3 for c in comps):
        raise NotFastPath("bad_marker", "quantization table id")
    ns = body[0] if body else 0
    if len(body) != 4 + 2 * ns:
        raise NotFastPath("bad_marker", "SOS length")
    if ns != len(comps):
        raise NotFastPath("non_interleaved", f"first scan holds {ns} of {len(comps)} components")
    sel = {body[1 + 2 * i]: (body[2 + 2 * i] >> 4, body[2 + 2 * i] & 15) for i in range(ns)}
    if [c.cid for c in comps] != [body[1 + 2 * i] for i in range(ns)]:
        raise NotFastPath("non_interleaved", "scan order differs from frame order")
    ss, se, ahal = body[1 + 2 * ns], body[2 + 2 * ns], body[3 + 2 * ns]
    if (ss, se, ahal) != (0, 63, 0):
        raise NotFastPath("progressive", f"spectral selection {ss}-{se}, approximation {ahal}")
    tables = [sel[c.cid] for c in comps]
    for td, ta in tables:
        if (0, td) not in huff or (1, ta) not in huff:
            raise NotFastPath("bad_huffman", f"scan uses undefined table DC{td}/AC{ta}")
    return JpegStructure(height=height, width=width, sof_marker=sof_marker, components=comps,
                         quant_segments=quant, keep_segments=keep, huffman=huff, scan_tables=tables,
                         sos_segment=sos_seg, restart_interval=restart, entropy_start=entropy_start,
                         sof_segment=sof_seg)


def _dht(tc: int, th: int, bits: tuple[int, ...], vals: bytes) -> bytes:
    body = bytes([(tc << 4) | th, *bits]) + bytes(vals)
    return b"\xff\xc4" + struct.pack(">H", len(body) + 2) + body


def rewritten_header(js: JpegStructure, dc_tables: dict[int, int]) -> tuple[bytes, int]:
    """Header of the rewritten stream (SOI .. SOS, restart interval 1) and the byte offset of its SOF height.

    `dc_tables` maps each DC table id the scan uses to 0 (Annex K.3) or 1 (K.4); AC tables are the file's.
    """
    parts = [b"\xff\xd8", *js.keep_segments, *js.quant_segments]
    sof_at = sum(map(len, parts))
    parts.append(js.sof_segment)
    for th, std in sorted(dc_tables.items()):
        parts.append(_dht(0, th, STD_DC_BITS[std], bytes(STD_DC_VALS)))
    for th in sorted({ta for _, ta in js.scan_tables}):
        parts.append(_dht(1, th, *js.huffman[(1, th)]))
    parts.append(b"\xff\xdd\x00\x04\x00\x01")  # DRI: a restart marker after every MCU
    parts.append(js.sos_segment)
    # SOF: marker(2) length(2) precision(1) then height(2) width(2).
    return b"".join(parts), sof_at + 5
