"""Reading a build (local folder, gs:// or s3://): its shards, its records, and the pixels of crops.

The read path of training and eval: it imports no build code (numba, the JPEG rewriter). A build made
by this version (layout.py: `index.npy` present) is read by byte ranges through storage.RangeReader, so
the same code serves a local disk (os.pread) and object storage (concurrent range requests); older builds
(ArrayRecord records with pixel files, or records holding the photo inline) are read from local disk as
before.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader

from exif_jax import storage
from exif_jax.data import crops as crops_lib
from exif_jax.data import layout
from exif_jax.data.pixel_store import PixelReader
from exif_jax.data.records import Record, decode_record

PositionsFn = Callable[[int, int], np.ndarray]  # (height, width) -> int32 [k, 2] crop origins (y, x)


def shard_paths(data_dir: str) -> list[str]:
    """The finished shard files of a build, in order; raises if the folder holds none or a mixture."""
    try:
        names = storage.listdir(data_dir)
    except FileNotFoundError:
        raise FileNotFoundError(f"data folder not found: {data_dir}") from None
    found = sorted(n for n in names if layout.SHARD_RE.match(n))
    if not found:
        raise FileNotFoundError(f"no records-*-of-*.array_record shards in {data_dir} (run exif-jax build-data)")
    totals = {int(layout.SHARD_RE.match(n).group(2)) for n in found}
    if len(totals) != 1:
        raise RuntimeError(f"{data_dir} mixes shards of builds with {sorted(totals)} shards")
    total = totals.pop()
    if len(found) != total:
        missing = sorted(set(layout.shard_name(i, total) for i in range(total)) - set(found))
        raise RuntimeError(f"{data_dir} is an unfinished build: missing {missing[:5]}... re-run build-data")
    return [storage.join(data_dir, n) for n in found]


def has_index(data_dir: str) -> bool:
    """Whether the build is in the range-read layout (layout.py) with its index written."""
    return storage.exists(storage.join(data_dir, layout.BUILD_INDEX))


def load_index(data_dir: str) -> np.ndarray:
    """The build's index rows (layout.INDEX_DTYPE), one read."""
    path = storage.join(data_dir, layout.BUILD_INDEX)
    try:
        rows = np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path}: not an index of this layout ({e}); rebuild with exif-jax build-data") from e
    if rows.dtype != layout.INDEX_DTYPE:
        raise ValueError(f"{path}: index of another layout version; rebuild with exif-jax build-data")
    return rows


class Build:
    """A build in the range-read layout: `fetch` gives records and crops for many photos with all their
    reads in flight at once (the head of every photo, then every band range)."""

    def __init__(self, data_dir: str, *, max_open: int = 32):
        self.data_dir = data_dir
        self.shards = [storage.basename(p) for p in shard_paths(data_dir)]
        self.pixel_files = [layout.sibling(n, layout.PIXELS_SUFFIX) for n in self.shards]
        self.index = load_index(data_dir)
        self._pixel_paths = [storage.join(data_dir, f) for f in self.pixel_files]  # for error messages
        self.ranges = storage.RangeReader(data_dir, max_open=max_open)

    def __len__(self) -> int:
        return len(self.index)

    def _what(self, i: int) -> str:
        return f"{self._pixel_paths[int(self.index[i]['shard'])]} (record {i})"

    def fetch(self, indices: Sequence[int], positions: Sequence[PositionsFn | np.ndarray], size: int, *,
              decode: str = "auto") -> list[tuple[Record, np.ndarray]]:
        """(record, crops uint8 [k, size, size, 3]) for each index; `positions` gives each photo's crop
        origins, or a function of (height, width) returning them."""
        rows = [self.index[i] for i in indices]
        pos = [np.asarray(p(int(r["height"]), int(r["width"])) if callable(p) else p, np.int64).reshape(-1, 2)
               for p, r in zip(positions, rows)]
        for i, r, p in zip(indices, rows, pos):
            if len(p) and (p.min() < 0 or (p[:, 0] + size).max() > r["height"] or (p[:, 1] + size).max() > r["width"]):
                raise ValueError(f"{self._what(i)}: a {size}-px crop at {p.tolist()} does not fit the photo "
                                 f"{int(r['width'])}x{int(r['height'])}")
        # 1: heads (records + the band tables the crops need)
        bounds, head_reqs = [], []
        for r, p in zip(rows, pos):
            if r["kind"] != layout.KIND_BANDED:
                bb = []
            elif decode == "whole":  # one region: the whole MCU grid
                bb = [(0, int(r["mcus_y"]), 0, int(r["mcus_x"]))]
            else:
                bb = [layout.region_bounds(r, int(y), int(x), size, size) for y, x in p]
            last = max([(r1 - 1) // int(r["band_rows"]) for _, r1, _, _ in bb], default=0)
            a, z = layout.head_span(r, last)
            bounds.append(bb)
            head_reqs.append((self.pixel_files[int(r["shard"])], int(r["at"]) + a, int(r["at"]) + z))
        heads_raw = self.ranges.read(head_reqs)
        heads = [layout.Head(h, r, self._what(i)) for h, r, i in zip(heads_raw, rows, indices)]
        # 2: every band range of every crop, deduplicated
        want: dict[tuple[str, int, int], int] = {}
        plan = []
        for r, hd, bb in zip(rows, heads, bounds):
            per_crop = []
            for r0, r1, c0, c1 in bb:
                spans = layout.band_spans(r, hd, r0, r1, c0, c1)
                keys = []
                for b, a, z in spans:
                    key = (self.pixel_files[int(r["shard"])], int(r["at"]) + a, int(r["at"]) + z)
                    keys.append((b, want.setdefault(key, len(want))))
                per_crop.append(keys)
            plan.append(per_crop)
        data = self.ranges.read(list(want))
        # 3: assemble and decode
        out = []
        for j, (i, r, hd, p) in enumerate(zip(indices, rows, heads, pos)):
            what = self._what(i)
            rec = decode_record(hd.record)
            if r["kind"] != layout.KIND_BANDED:
                crops = crops_lib.crops_full(layout.whole_stream(heads_raw[j], r), [tuple(q) for q in p.tolist()],
                                             size, what)
            elif decode == "whole":
                (r0, r1, c0, c1), = bounds[j]
                jpeg, *_ = layout.region_jpeg(r, hd, [(b, data[k]) for b, k in plan[j][0]], r0, r1, c0, c1, what)
                crops = crops_lib.crops_full(jpeg, [tuple(q) for q in p.tolist()], size, what)
            else:
                crops = np.empty((len(p), size, size, 3), np.uint8)
                for t, ((y, x), (r0, r1, c0, c1), keys) in enumerate(zip(p.tolist(), bounds[j], plan[j])):
                    jpeg, y0, x0, ph, pw = layout.region_jpeg(r, hd, [(b, data[k]) for b, k in keys], r0, r1, c0,
                                                              c1, what)
                    crops[t] = crops_lib.decode_sized(jpeg, pw, ph, what)[y - y0:y - y0 + size, x - x0:x - x0 + size]
            out.append((rec, crops))
        return out

    def photo(self, i: int) -> tuple[Record, bytes]:
        """Photo i's record and a whole JPEG that decodes to its pixels (the banded MCUs reassembled in
        order), from one read of its blob."""
        r, what = self.index[i], self._what(i)
        f = self.pixel_files[int(r["shard"])]
        blob = self.ranges.read([(f, int(r["at"]), int(r["at"] + r["len"]))])[0]
        if r["kind"] != layout.KIND_BANDED:
            return decode_record(layout.Head(blob, r, what).record), layout.whole_stream(blob, r)
        my, mx = int(r["mcus_y"]), int(r["mcus_x"])
        hd = layout.Head(memoryview(blob)[: layout.head_span(r, (my - 1) // int(r["band_rows"]))[1]], r, what)
        pieces = [(b, blob[a:z]) for b, a, z in layout.band_spans(r, hd, 0, my, 0, mx)]
        return decode_record(hd.record), layout.region_jpeg(r, hd, pieces, 0, my, 0, mx, what)[0]

    def records(self, indices: Sequence[int]) -> list[Record]:
        """The records of these photos (their heads only)."""
        return [rec for rec, _ in self.fetch(indices, [np.zeros((0, 2), np.int64)] * len(indices), 1)]

    def close(self) -> None:
        """Close open files."""
        self.ranges.close()


def read_records(data_dir: str, *, with_image: bool = False) -> Iterator[Record]:
    """Every record of a build, in order; with_image adds `image`: a whole JPEG of the photo's stored
    pixels (decodes to the original's pixels)."""
    if has_index(data_dir):
        build = Build(data_dir)
        try:
            for start in range(0, len(build), 32):
                idx = list(range(start, min(len(build), start + 32)))
                if with_image:  # each blob read once: its head holds the record
                    for i in idx:
                        rec, jpeg = build.photo(i)
                        rec["image"] = jpeg
                        yield rec
                else:
                    yield from build.records(idx)
        finally:
            build.close()
        return
    if storage.is_remote(data_dir):
        raise ValueError(f"{data_dir}: a build without {layout.BUILD_INDEX} (made by an older exif-jax) is read "
                         f"from local disk only; rebuild it with exif-jax build-data --out {data_dir}")
    reader = PixelReader(data_dir) if with_image else None
    for path in shard_paths(data_dir):
        ar = ArrayRecordReader(path)
        try:
            n = ar.num_records()
            for start in range(0, n, 32):
                for raw in ar.read(start, min(n, start + 32)):
                    rec = decode_record(raw)
                    if reader is not None and rec["jpeg"] is not None:
                        rec["image"] = bytes(reader.bytes_of(rec["jpeg"]))
                    yield rec
        finally:
            ar.close()


def original_bytes(data_dir: str, rec: Record) -> bytes:
    """The photo's original file from a build (build-data --keep-original, or a photo decoded whole)."""
    if rec["jpeg"] is None:  # version 1: inline
        return rec["image"]
    if rec["original"] is None:
        raise ValueError(f"{rec['path']}: the build did not keep the original file (build-data --keep-original)")
    blob = rec["original"]
    if has_index(data_dir):
        return storage.RangeReader(data_dir).read([(blob["file"], blob["at"], blob["at"] + blob["len"])])[0]
    return bytes(PixelReader(data_dir).bytes_of(blob))
