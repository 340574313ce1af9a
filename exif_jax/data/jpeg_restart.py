"""Lossless rewrite of a baseline JPEG with a restart marker after every MCU, and where each MCU starts.

Build time only (numba; the load path never imports this). The entropy-coded data is Huffman-decoded to
symbols and re-encoded with the same symbols: every quantized DCT coefficient and the quantization tables
stay as the camera wrote them, so a decoder produces the same pixels. What changes: each MCU starts on a
byte boundary after an RSTn marker, which resets the DC predictors, so the first DC difference of each
component in an MCU becomes its absolute DC value (coded with the Annex K DC tables; see jpeg_parse).
The result lets any rectangle of MCUs be cut out as a small standalone JPEG (exif_jax.data.crops).

Bounded on hostile input: the work is a fixed number of MCUs (from the frame header, whose pixel count
the caller has already capped) times at most 64 symbols per block; the reader never runs past the input
and invalid codes, overlong runs or data that ends early stop with an error code.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from exif_jax.data import jpeg_parse
from exif_jax.data.jpeg_parse import NotFastPath

_MASK56 = (1 << 56) - 1
# Error codes of _rewrite (0 = ok).
_ERRORS = {1: "bad_huffman_code", 2: "coefficient_overrun", 3: "truncated_scan", 4: "bad_restart_marker",
           5: "dc_out_of_range", 6: "trailing_data"}


FAST_BITS = 10  # codes up to this long decode with one table lookup; longer ones (rare) walk the lengths


def _decode_tables(bits: tuple[int, ...], vals: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fast, maxcode, valoff, values) for one Huffman table (JPEG F.2.2.3 with a lookahead table).

    fast[2**FAST_BITS]: (code length << 8) | symbol for every FAST_BITS-bit window starting with a short code,
    0 otherwise; maxcode[17]: the largest code of each length (-1: none); a code c of length l is symbol
    values[valoff[l] + c]. Kept small (2 KB) so the tables stay in L1 while the scan streams past.
    """
    fast = np.zeros(1 << FAST_BITS, np.uint16)
    maxcode = np.full(17, -1, np.int64)
    valoff = np.zeros(17, np.int64)
    code, k = 0, 0
    for length in range(1, 17):
        n = bits[length - 1]
        if n:
            if code + n > (1 << length):
                raise NotFastPath("bad_huffman", "over-subscribed code lengths")
            valoff[length] = k - code
            maxcode[length] = code + n - 1
            if length <= FAST_BITS:
                for j in range(n):
                    lo = (code + j) << (FAST_BITS - length)
                    fast[lo:lo + (1 << (FAST_BITS - length))] = (length << 8) | vals[k + j]
        code += n
        k += n
        code <<= 1
    values = np.zeros(256, np.int64)
    values[:len(vals)] = np.frombuffer(bytes(vals), np.uint8)
    return fast, maxcode, valoff, values


def _encode_table(bits: tuple[int, ...], vals: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(code, length) per symbol 0..255 (length 0: symbol absent)."""
    codes, lens = np.zeros(256, np.uint32), np.zeros(256, np.uint8)
    code, k = 0, 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            codes[vals[k]], lens[vals[k]] = code, length
            code += 1
            k += 1
        code <<= 1
    return codes, lens


@numba.njit(cache=True, nogil=True)
def _rewrite(data, start, fast, maxcode, valoff, values, dc_code, dc_len, ac_code, ac_len, blk_comp, blk_dc,
             blk_ac, n_mcu, restart_in, out, offsets):  # pragma: no cover - compiled; tested through rewrite()
    """Decode + re-encode every MCU. Returns (error, bytes written, input position after the scan)."""
    n = data.shape[0]
    ncomp = 3
    pred = np.zeros(ncomp, np.int64)
    newpred = np.zeros(ncomp, np.int64)
    pos = start
    buf = 0
    cnt = 0            # valid bits in buf (low end); at most 56, so int64 arithmetic never overflows
    hit = False        # reader stopped at a marker (or the end); zero bits are fed from then on
    phantom = 0        # zero bytes fed after `hit`
    wbuf = 0
    wcnt = 0
    op = 0
    nblk = blk_comp.shape[0]
    rst_next = 0
    for m in range(n_mcu):
        # --- the input's own restart markers (some cameras write them) -------------------------------
        if restart_in > 0 and m > 0 and m % restart_in == 0:
            cnt -= cnt % 8
            if cnt > 8 * phantom:
                pass  # leftover whole bytes before the marker: decoders skip them too
            if not hit or pos + 1 >= n or data[pos] != 0xFF or data[pos + 1] != 0xD0 + rst_next:
                return 4, op, pos
            pos += 2
            rst_next = (rst_next + 1) & 7
            buf = 0
            cnt = 0
            hit = False
            phantom = 0
            for c in range(ncomp):
                pred[c] = 0
        offsets[m] = op
        for c in range(ncomp):
            newpred[c] = 0
        for b in range(nblk):
            c = blk_comp[b]
            # ---- one block: DC, then AC symbols up to EOB ----------------------------------------------
            k = 0
            while k < 64:
                # refill to > 56 bits; stuffed 0xFF00 -> 0xFF; stop feeding real bytes at a marker
                while cnt <= 48:
                    if hit:
                        buf = (buf << 8) & _MASK56
                        cnt += 8
                        phantom += 1
                        continue
                    if pos >= n:
                        hit = True
                        continue
                    byte = data[pos]
                    if byte == 0xFF:
                        nb = data[pos + 1] if pos + 1 < n else 0xD9
                        if nb == 0:
                            pos += 2
                        elif nb == 0xFF:
                            pos += 1  # fill byte
                            continue
                        else:
                            hit = True
                            continue
                    else:
                        pos += 1
                    buf = ((buf << 8) | byte) & _MASK56
                    cnt += 8
                look = (buf >> (cnt - 16)) & 0xFFFF
                t = blk_dc[b] if k == 0 else 4 + blk_ac[b]  # tables 0-3: DC, 4-7: AC
                e = np.int64(fast[t, look >> (16 - FAST_BITS)])
                if e:
                    length = e >> 8
                    sym = e & 0xFF
                else:
                    length = FAST_BITS + 1
                    while length <= 16 and (look >> (16 - length)) > maxcode[t, length]:
                        length += 1
                    if length > 16:
                        return 1, op, pos
                    sym = values[t, valoff[t, length] + (look >> (16 - length))]
                cnt -= length
                if k == 0:
                    s = sym
                    if s > 11:
                        return 5, op, pos
                    diff = 0
                    if s > 0:
                        v = (buf >> (cnt - s)) & ((1 << s) - 1)
                        cnt -= s
                        diff = v if v >= (1 << (s - 1)) else v - (1 << s) + 1
                    pred[c] += diff
                    nd = pred[c] - newpred[c]
                    newpred[c] = pred[c]
                    a = nd if nd >= 0 else -nd
                    s2 = 0
                    while a > 0:
                        s2 += 1
                        a >>= 1
                    if s2 > 11:
                        return 5, op, pos
                    t = blk_dc[b]
                    # write code, then the value bits (negative: one's complement in s2 bits)
                    code = np.int64(dc_code[t, s2])
                    clen = dc_len[t, s2]
                    if s2 > 0:
                        vb = nd if nd >= 0 else nd + (1 << s2) - 1
                        code = (code << s2) | vb
                        clen += s2
                    wbuf = (wbuf << clen) | code
                    wcnt += clen
                    k = 1
                else:
                    r = sym >> 4
                    s = sym & 15
                    code = np.int64(ac_code[blk_ac[b], sym])
                    clen = ac_len[blk_ac[b], sym]
                    if s > 0:
                        v = (buf >> (cnt - s)) & ((1 << s) - 1)
                        cnt -= s
                        code = (code << s) | v
                        clen += s
                        k += r + 1
                        if k > 64:
                            return 2, op, pos
                    elif r == 15:
                        k += 16
                        if k > 64:
                            return 2, op, pos
                    else:
                        k = 64  # EOB
                    wbuf = (wbuf << clen) | code
                    wcnt += clen
                # flush whole bytes, stuffing 0x00 after every 0xFF
                while wcnt >= 8:
                    byte = (wbuf >> (wcnt - 8)) & 0xFF
                    out[op] = byte
                    op += 1
                    if byte == 0xFF:
                        out[op] = 0
                        op += 1
                    wcnt -= 8
                wbuf &= (1 << wcnt) - 1
        if cnt < 8 * phantom:
            return 3, op, pos  # decoding read zero bits that the file does not have
        # pad the MCU to a byte with 1-bits, then RSTn (none after the last MCU)
        if wcnt > 0:
            pad = 8 - wcnt
            wbuf = (wbuf << pad) | ((1 << pad) - 1)
            byte = wbuf & 0xFF
            out[op] = byte
            op += 1
            if byte == 0xFF:
                out[op] = 0
                op += 1
            wcnt = 0
            wbuf = 0
        if m + 1 < n_mcu:
            out[op] = 0xFF
            out[op + 1] = 0xD0 + (m & 7)
            op += 2
        if op + 8192 > out.shape[0]:
            return -1, op, pos  # caller grows `out` and retries
    offsets[n_mcu] = op
    # the scan must end here: only padding bits, then EOI (or the end of the file)
    real_left = cnt - 8 * phantom
    if real_left >= 8:
        return 6, op, pos
    if hit and pos + 1 < n and not (data[pos] == 0xFF and data[pos + 1] == 0xD9):
        return 6, op, pos
    return 0, op, pos


@dataclass
class Rewritten:
    """A restart-per-MCU stream: `data` is a complete JPEG; MCU i's bytes are data[offsets[i]:offsets[i+1]]
    (each but the last ends with its 2-byte RST marker)."""
    data: bytes
    header_len: int
    sof_hw_at: int            # byte offset of the SOF height field (width follows)
    height: int
    width: int
    mcu_h: int
    mcu_w: int
    mcus_y: int
    mcus_x: int
    offsets: np.ndarray       # uint32 [mcus_y * mcus_x + 1], absolute within `data`

    def tables(self) -> tuple[np.ndarray, np.ndarray]:
        """What the pixel file stores: row starts uint32 [mcus_y + 1] and MCU lengths [mcus_y, mcus_x]
        (uint8 when every MCU fits in 255 bytes, as nearly all do; else uint16)."""
        off = self.offsets.astype(np.int64)
        starts = np.append(off[:-1:self.mcus_x], off[-1]).astype(np.uint32)
        lengths = np.diff(off).reshape(self.mcus_y, self.mcus_x)
        if lengths.max() >= 1 << 16:
            raise NotFastPath("mcu_too_long", f"an MCU of {lengths.max()} bytes")
        return starts, lengths.astype(np.uint8 if lengths.max() < 256 else np.uint16)


def rewrite(data: bytes) -> Rewritten:
    """Rewrite a baseline JPEG losslessly with a restart marker after every MCU; raises NotFastPath."""
    js = jpeg_parse.parse(data)
    # DC tables: the first component's table gets K.3, any other table K.4 (both code categories 0..11).
    dc_ids = sorted({td for td, _ in js.scan_tables})
    std = {th: (0 if th == js.scan_tables[0][0] else 1) for th in dc_ids}
    header, sof_hw_at = jpeg_parse.rewritten_header(js, std)

    fast = np.zeros((8, 1 << FAST_BITS), np.uint16)
    maxcode = np.full((8, 17), -1, np.int64)
    valoff = np.zeros((8, 17), np.int64)
    values = np.zeros((8, 256), np.int64)
    dc_code, dc_len = np.zeros((4, 256), np.uint32), np.zeros((4, 256), np.uint8)
    ac_code, ac_len = np.zeros((4, 256), np.uint32), np.zeros((4, 256), np.uint8)
    for (tc, th), (bits, vals) in js.huffman.items():
        if tc == 0 and th in std:
            fast[th], maxcode[th], valoff[th], values[th] = _decode_tables(bits, vals)
            dc_code[th], dc_len[th] = _encode_table(jpeg_parse.STD_DC_BITS[std[th]], bytes(jpeg_parse.STD_DC_VALS))
        elif tc == 1:
            fast[4 + th], maxcode[4 + th], valoff[4 + th], values[4 + th] = _decode_tables(bits, vals)
            ac_code[th], ac_len[th] = _encode_table(bits, vals)
    blk_comp, blk_dc, blk_ac = [], [], []
    for i, (c, (td, ta)) in enumerate(zip(js.components, js.scan_tables)):
        for _ in range(c.h * c.v):
            blk_comp.append(i)
            blk_dc.append(td)
            blk_ac.append(ta)
    mcus_y, mcus_x = js.mcu_grid
    n_mcu = mcus_y * mcus_x
    src = np.frombuffer(data, np.uint8)
    offsets = np.zeros(n_mcu + 1, np.int64)
    cap = len(data) - js.entropy_start + 4 * n_mcu + 65536
    while True:
        out = np.empty(cap, np.uint8)
        err, n_out, _ = _rewrite(src, js.entropy_start, fast, maxcode, valoff, values, dc_code, dc_len, ac_code,
                                 ac_len,
                                 np.array(blk_comp, np.int64), np.array(blk_dc, np.int64),
                                 np.array(blk_ac, np.int64), n_mcu, js.restart_interval, out, offsets)
        if err != -1:
            break
        cap *= 2
    if err:
        raise NotFastPath(_ERRORS[err])
    stream = header + out[:n_out].tobytes() + b"\xff\xd9"
    if len(stream) >= 1 << 32:
        raise NotFastPath("too_large", "stream over 4 GiB")
    mh, mw = js.mcu_size
    return Rewritten(data=stream, header_len=len(header), sof_hw_at=sof_hw_at, height=js.height,
                     width=js.width, mcu_h=mh, mcu_w=mw, mcus_y=mcus_y, mcus_x=mcus_x,
                     offsets=(offsets + len(header)).astype(np.uint32))
