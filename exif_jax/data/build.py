"""`exif-jax build-data`: photos -> ArrayRecord shards of records (EXIF text + where the pixels are), their
pixel files in the range-read layout (layout.py), their indexes, summary.json; local, gs:// or s3://.

Pass 1 lists and hashes the inputs (unreadable files and duplicates are skipped there) and assigns the
unique files, sorted by sha256, to shards. Pass 2 builds the shards in parallel processes; each photo is
checked and turned into a record by photo_check.make_record; its JPEG stream (rewritten for random-access
crops where possible, see jpeg_restart) goes to the shard's pixel file (pixel_store). The pixel file, then
the shard and its index, is written under a temporary name and renamed when complete (on object storage:
built in a local staging folder and uploaded, each object in one PUT), then a per-shard sidecar JSON (its
counts and a digest of its inputs and settings) is written; the sidecar marks the shard finished.
Re-running the same command after an interruption builds only the shards that lack a matching sidecar.
When every shard is finished, index.npy (all shards' index rows) and summary.json are written.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import os
import posixpath
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from tqdm import tqdm

from exif_jax import exif, storage
from exif_jax.data import build_ray, inputs, layout
from exif_jax.data.layout import SHARD_RE, shard_name
from exif_jax.data.photo_check import Settings, make_record
from exif_jax.data.pixel_store import Blob, PixelWriter, pixels_path
from exif_jax.data.reader import original_bytes, read_records, shard_paths  # noqa: F401 - build.X callers
from exif_jax.data.records import RECORD_VERSION, Record, encode_record

SUMMARY_VERSION = 2
# One record per chunk: a random read touches only its record. JPEG bytes do not compress.
WRITER_OPTIONS = "group_size:1,uncompressed"
MAX_LISTED = 1000  # file names listed per skip reason in summary.json (counts are always complete)


@dataclass
class Item:
    """One input file: `src` is read, `name` goes into the record's `path`; `tags` when EXIF comes from a TSV;
    `part`: which bytes of `src` (None: all; a tar member or a parquet cell, see data.inputs)."""
    src: str
    name: str
    sha256: str = ""
    tags: dict[str, str] | None = field(default=None)
    part: inputs.Part | None = None  # not in the shard digest: the same photo makes the same record anywhere


# ----------------------------------------------------------------------------- pass 1: inputs

# Files with these extensions are tried (and skipped with a reason if they are not camera JPEGs); the
# rest of a folder (sidecar .txt/.json/.xmp files, ...) is only counted, as "other_extension".
IMAGE_EXTS = inputs.IMAGE_EXTS


def list_folder(folder: str) -> tuple[list[str], list[str]]:
    """Non-hidden files under `folder` (a local folder or a gs:// / s3:// prefix), sorted: (image-named
    files, all other files)."""
    if storage.is_remote(folder):
        images, others = [], []
        for rel in storage.walk_files(folder):
            if any(part.startswith(".") for part in rel.split("/")):
                continue
            (images if posixpath.splitext(rel)[1].lower() in IMAGE_EXTS else others).append(storage.join(folder, rel))
        if not images and not others:
            raise FileNotFoundError(f"image folder not found or empty: {folder}")
        return sorted(images), sorted(others)
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith("."):
                (images if Path(f).suffix.lower() in IMAGE_EXTS else others).append(os.path.join(dirpath, f))
    return sorted(images), sorted(others)


def list_images(folder: str) -> list[str]:
    """The image-named files under `folder`, sorted."""
    return list_folder(folder)[0]


def items_from_folder(folder: str) -> tuple[list[Item], dict[str, list[str]]]:
    """Inputs from a folder tree, plus its non-image files as skipped "other_extension"."""
    images, others = list_folder(folder)
    return items_from_paths(images), ({"other_extension": others} if others else {})


def items_from_paths(paths: Sequence[str]) -> list[Item]:
    """Inputs from photo paths (the record keeps the path as given)."""
    return [Item(src=p, name=p) for p in paths]


def items_from_list(list_file: str) -> list[Item]:
    """Inputs from a file with one photo path or URI per line (relative paths are relative to the file)."""
    base = storage.dirname(list_file) if storage.is_remote(list_file) else str(Path(list_file).resolve().parent)
    lines = [ln.strip() for ln in storage.read_text(list_file).splitlines()
             if ln.strip() and not ln.startswith("#")]
    return [Item(src=p if (storage.is_remote(p) or os.path.isabs(p)) else storage.join(base, p), name=p)
            for p in lines]


def items_from_yfcc(tsv: str, image_dir: str | None = None, photos: Sequence[inputs.Source] | None = None
                    ) -> tuple[list[Item], dict[str, list[str]]]:
    """Inputs from a YFCC100M EXIF TSV: tags from each line, bytes from IMAGE_DIR/<photo_id>.jpg, or from the
    listed `photos` whose sample_id is the photo id (img2dataset output; the first of a repeated id is used,
    and a line whose photo was not fetched is skipped as "missing")."""
    items, skipped = [], {}
    by_id: dict[str, inputs.Source] = {}
    for p in photos or ():  # issue 24: photos from webdataset/parquet, joined on their photo id
        if p.sample_id is not None:
            by_id.setdefault(p.sample_id, p)
    text = storage.read_bytes(tsv).decode("utf-8", errors="replace")
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            photo_id, tags = exif.parse_yfcc_line(line)
        except Exception as e:  # noqa: BLE001 - any malformed line is skipped, named by its number
            skipped.setdefault("bad_tsv_line", []).append(f"{tsv}:{lineno}: {e}")
            continue
        if photos is None:
            items.append(Item(src=storage.join(image_dir, f"{photo_id}.jpg"), name=str(photo_id), tags=tags))
        elif (p := by_id.get(str(photo_id))) is not None:
            items.append(Item(src=p.src, name=str(photo_id), tags=tags, part=p.part))
        else:
            skipped.setdefault("missing", []).append(str(photo_id))
    return items, skipped


def _hash(item: Item) -> tuple[Item, str]:
    try:
        h = hashlib.sha256()
        with inputs.open_item(item) as f:  # the one reader of an item's bytes (files, tar members, parquet cells)
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except FileNotFoundError:
        return item, "missing"
    except OSError:  # permission, a directory, an I/O error
        return item, "unreadable"
    item.sha256 = h.hexdigest()
    return item, ""


class Engine(Protocol):
    """Where the two passes' parallel work runs instead of local threads and processes (build_ray.RayEngine):
    the same functions (_hash_chunk, build_shard) on other processes or machines."""

    def run(self, fn: Callable, calls: Iterable[tuple[object, tuple]]) -> Iterable[tuple[object, object]]:
        """fn(*args) for each (key, args) of `calls`; yields (key, result) as each finishes."""


HASH_CHUNK = 32  # inputs per hashing call on an engine: a call costs ~1 ms to schedule, 32 photos ~50-100 ms


def _hash_chunk(items: Sequence[Item]) -> list[tuple[str, str]]:
    """(sha256, skip reason) of each item, in order (pass 1 on an engine's worker)."""
    return [(it.sha256, reason) for it, reason in map(_hash, items)]


def _engine_hash(engine: Engine, items: Sequence[Item]) -> Iterator[tuple[Item, str]]:
    # Hashing needs only where the bytes are: the tags (KBs from a YFCC line) stay on the driver.
    calls = ((i, ([dataclasses.replace(it, tags=None) for it in items[i:i + HASH_CHUNK]],))
             for i in range(0, len(items), HASH_CHUNK))
    for i, results in engine.run(_hash_chunk, calls):
        for it, (sha, reason) in zip(items[i:i + HASH_CHUNK], results, strict=True):
            it.sha256 = sha  # the worker hashed a copy
            yield it, reason


def plan_inputs(items: Sequence[Item], *, workers: int = 4, progress: bool = True, engine: Engine | None = None
                ) -> tuple[list[Item], dict[str, list[str]]]:
    """Hash every input; returns the unique readable items sorted by sha256 and the skips by reason."""
    skipped: dict[str, list[str]] = {}
    by_hash: dict[str, Item] = {}
    if engine is not None:
        results = list(tqdm(_engine_hash(engine, items), total=len(items), desc="hash", disable=not progress,
                            unit="file"))
    else:
        with cf.ThreadPoolExecutor(max(1, workers)) as ex:  # hashlib and file reads release the GIL
            results = list(tqdm(ex.map(_hash, items), total=len(items), desc="hash", disable=not progress,
                                unit="file"))
    # The first of equal files by name is kept, so the choice does not depend on listing order.
    for item, reason in sorted(results, key=lambda r: r[0].name):
        if reason:
            skipped.setdefault(reason, []).append(item.name)
        elif item.sha256 in by_hash:
            skipped.setdefault("duplicate", []).append(item.name)
        else:
            by_hash[item.sha256] = item
    return [by_hash[h] for h in sorted(by_hash)], skipped


# ----------------------------------------------------------------------------- pass 2: shards

def _digest(items: Sequence[Item], settings: Settings) -> str:
    payload = {"settings": asdict(settings), "record_version": RECORD_VERSION,
               "items": [[it.sha256, it.name, it.tags] for it in items]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _atomic_write_json(path: str, obj: dict) -> None:
    storage.write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def _sidecar_path(shard_path: str) -> str:
    return layout.sibling(shard_path, layout.SIDECAR_SUFFIX)


def _settle(rec: Record, encode, pix_name: str, at: int, original_len: int | None, original_in_blob: bool
            ) -> tuple[bytes, dict]:
    """Encode the photo's blob with a record that names it (file, offset, length) and, when kept, the
    original's place; the length depends on the record's own size, so iterate until it is stable."""
    length, rec_len = 0, 0
    for _ in range(6):
        rec["jpeg"] = Blob(file=pix_name, at=at, len=length)
        if original_len is not None:
            start = at + layout.FIXED_LEN + rec_len if original_in_blob else at + length
            rec["original"] = Blob(file=pix_name, at=start, len=original_len)
        raw = encode_record(rec)
        blob, entry = encode(raw)
        if len(blob) == length and len(raw) == rec_len:
            return blob, entry
        length, rec_len = len(blob), len(raw)
    raise RuntimeError(f"{rec['path']}: record size did not settle")


def _store_pixels(rec: Record, data: bytes, rw, pixels: PixelWriter, settings: Settings) -> dict:
    """Append the photo's blob (and the original when kept) to the pixel file; fill the record's pixel
    fields; returns its index entry (without the shard number)."""
    name, at = os.path.basename(pixels.path), pixels.size
    if rw is None:
        rec["fast"] = None
        # A photo decoded whole keeps its original file inside its blob.
        blob, entry = _settle(rec, lambda r: layout.encode_whole(r, data), name, at, len(data), True)
        pixels.add_blob(blob)
    else:
        rec["fast"] = {"layout": layout.LAYOUT_VERSION, "band_rows": layout.BAND_ROWS, "mcu_h": rw.mcu_h,
                       "mcu_w": rw.mcu_w, "mcus_y": rw.mcus_y, "mcus_x": rw.mcus_x}
        encode = lambda r: layout.encode_banded(r, rw.data, rw.header_len, rw.sof_hw_at, rw.offsets,  # noqa: E731
                                                rw.mcu_h, rw.mcu_w, rw.mcus_y, rw.mcus_x)
        if not settings.keep_original:
            rec["original"] = None
        blob, entry = _settle(rec, encode, name, at, len(data) if settings.keep_original else None, False)
        pixels.add_blob(blob)
        if settings.keep_original:
            pixels.add_blob(data)
    return {**entry, "at": at, "width": rec["width"], "height": rec["height"]}


def build_shard(shard_path: str, items: Sequence[Item], settings: Settings, digest: str) -> dict:
    """Write one shard, its pixel file and index (local: temporary names, renamed; object storage: staged
    locally, then uploaded), then the sidecar; returns the sidecar."""
    remote = storage.is_remote(shard_path)
    stage = tempfile.mkdtemp(prefix="exif-jax-shard-") if remote else None
    local_shard = os.path.join(stage, storage.basename(shard_path)) if remote else shard_path
    try:
        side = _build_shard_local(local_shard, items, settings, digest)
        if remote:
            # The sidecar goes last: until it is there the shard does not count as built.
            for suffix in (layout.PIXELS_SUFFIX, layout.INDEX_SUFFIX, ".array_record"):
                storage.upload_file(layout.sibling(local_shard, suffix), layout.sibling(shard_path, suffix))
        _atomic_write_json(_sidecar_path(shard_path), side)
        return side
    finally:
        if stage:
            shutil.rmtree(stage, ignore_errors=True)


def _build_shard_local(shard_path: str, items: Sequence[Item], settings: Settings, digest: str) -> dict:
    # A temporary name of this attempt's own: an engine may retry a shard while a cut-off attempt still runs.
    tmp = f"{shard_path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    shard_no = int(SHARD_RE.match(os.path.basename(shard_path)).group(1))
    skipped: dict[str, list[str]] = {}
    slow: dict[str, list[str]] = {}  # photos decoded whole at load time, by reason
    cameras: Counter[str] = Counter()
    entries: list[dict] = []
    n, nbytes, nfast = 0, 0, 0
    writer = ArrayRecordWriter(tmp, WRITER_OPTIONS)
    pixels = PixelWriter(pixels_path(shard_path), tmp_suffix=tmp[len(shard_path):])
    try:
        for it in items:
            try:
                data = inputs.read_item(it)
            except OSError:
                skipped.setdefault("unreadable", []).append(it.name)
                continue
            sha = hashlib.sha256(data).hexdigest()
            if sha != it.sha256:
                skipped.setdefault("changed_during_build", []).append(it.name)
                continue
            try:
                rec, reason, rw = make_record(data, it.name, settings, tags=it.tags, sha256=sha)
            except Exception as e:  # a bug, not bad input: stop, naming the file (finished shards stay)
                raise RuntimeError(f"build-data failed on {it.src}: {type(e).__name__}: {e}") from e
            if rec is None:
                skipped.setdefault(reason, []).append(it.name)
                continue
            entries.append({**_store_pixels(rec, data, rw, pixels, settings), "shard": shard_no})
            if rw is None:
                slow.setdefault(rec["fast_reason"], []).append(it.name)
            writer.write(encode_record(rec))
            cameras[rec["camera"]] += 1
            n += 1
            nfast += rw is not None
            nbytes += len(data)
    except BaseException:
        pixels.abort()
        writer.close()
        os.remove(tmp)
        raise
    writer.close()
    pixels.commit()
    buf = io.BytesIO()
    np.save(buf, layout.index_rows(entries), allow_pickle=False)
    storage.write_bytes(layout.sibling(shard_path, layout.INDEX_SUFFIX), buf.getvalue())
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())  # on disk before the rename makes it count as finished
    os.replace(tmp, shard_path)
    return {"shard": os.path.basename(shard_path), "digest": digest, "records": n, "original_bytes": nbytes,
            "pixel_bytes": pixels.size, "record_bytes": os.path.getsize(shard_path), "fast": nfast,
            "slow": slow, "inputs": len(items), "skipped": skipped, "cameras": dict(sorted(cameras.items())),
            "layout": layout.LAYOUT_VERSION}


def _finished(shard_path: str, digest: str) -> dict | None:
    side = _sidecar_path(shard_path)
    needed = (shard_path, side, pixels_path(shard_path), layout.sibling(shard_path, layout.INDEX_SUFFIX))
    if not all(storage.exists(p) for p in needed):
        return None
    meta = json.loads(storage.read_text(side))
    if meta.get("digest") != digest:
        raise RuntimeError(
            f"{shard_path} was built from other inputs or settings than this run's; "
            f"build into an empty --out folder (or delete that folder) instead of mixing builds")
    return meta


def _check_no_foreign_shards(out_dir: str, num_shards: int) -> None:
    try:
        names = storage.listdir(out_dir)
    except FileNotFoundError:
        return
    for name in names:
        m = SHARD_RE.match(name)
        if m and int(m.group(2)) != num_shards:
            raise RuntimeError(f"{storage.join(out_dir, name)} belongs to a build with {int(m.group(2))} shards, "
                               f"this one makes {num_shards}; use an empty --out folder")


def _remove_leftovers(out_dir: str) -> None:
    """Temporary files of killed runs (local output; object storage never shows a partial object)."""
    if storage.is_remote(out_dir):
        return
    for name in os.listdir(out_dir):
        if name.startswith("records-") and ".tmp-" in name:
            os.remove(os.path.join(out_dir, name))


def write_build_index(out_dir: str, shard_files: Sequence[str]) -> int:
    """index.npy: every shard's index rows in shard order (what a loader reads, in one request)."""
    parts = [np.load(io.BytesIO(storage.read_bytes(layout.sibling(p, layout.INDEX_SUFFIX))), allow_pickle=False)
             for p in shard_files]
    rows = np.concatenate(parts) if parts else np.zeros(0, layout.INDEX_DTYPE)
    buf = io.BytesIO()
    np.save(buf, rows, allow_pickle=False)
    storage.write_bytes(storage.join(out_dir, layout.BUILD_INDEX), buf.getvalue())
    return len(rows)


def build_dataset(items: Sequence[Item], out_dir: str, settings: Settings, *, num_shards: int | None = None,
                  records_per_shard: int = 64, workers: int | None = None, progress: bool = True,
                  pre_skipped: dict[str, list[str]] | None = None, engine: Engine | None = None) -> dict:
    """Build (or finish building) the shards for `items` in `out_dir`; returns the summary it writes.
    `engine` (e.g. build_ray.RayEngine) runs both passes' work; the plan, resume and summary are the same."""
    workers = workers or os.cpu_count() or 1
    if (num_shards is not None and num_shards < 1) or records_per_shard < 1:
        raise ValueError(f"need --shards >= 1 and --records-per-shard >= 1, got {num_shards}, {records_per_shard}")
    storage.makedirs(out_dir)
    _remove_leftovers(out_dir)
    unique, skipped = plan_inputs(items, workers=workers, progress=progress, engine=engine)
    for reason, names in (pre_skipped or {}).items():
        skipped.setdefault(reason, []).extend(names)
    if num_shards is None:
        num_shards = math.ceil(len(unique) / records_per_shard)
    num_shards = max(1, min(num_shards, len(unique))) if unique else 0
    _check_no_foreign_shards(out_dir, num_shards)
    plans = []
    for i in range(num_shards):
        chunk = unique[i * len(unique) // num_shards:(i + 1) * len(unique) // num_shards]
        plans.append((storage.join(out_dir, shard_name(i, num_shards)), chunk, _digest(chunk, settings)))
    sides: dict[str, dict] = {}
    todo = []
    for path, chunk, digest in plans:
        meta = _finished(path, digest)
        if meta is None:
            todo.append((path, chunk, digest))
        else:
            sides[path] = meta
    bar = tqdm(total=sum(len(c) for _, c, _ in todo), desc="build", unit="img", disable=not progress)
    if engine is not None:
        sizes = {path: len(chunk) for path, chunk, _ in todo}
        for path, side in engine.run(build_shard, ((p, (p, c, settings, d)) for p, c, d in todo)):
            sides[path] = side
            bar.update(sizes[path])
    elif workers <= 1 or len(todo) <= 1:
        for path, chunk, digest in todo:
            sides[path] = build_shard(path, chunk, settings, digest)
            bar.update(len(chunk))
    else:
        # spawn, not fork: the caller may hold threads (jax, tqdm) that fork would copy half-alive.
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as ex:
            futs = {ex.submit(build_shard, path, chunk, settings, digest): (path, len(chunk))
                    for path, chunk, digest in todo}
            for fut in cf.as_completed(futs):
                path, n = futs[fut]
                sides[path] = fut.result()
                bar.update(n)
    bar.close()
    summary = merge_summary([sides[p] for p, _, _ in plans], skipped, settings,
                            inputs=len(items) + sum(map(len, (pre_skipped or {}).values())), unique=len(unique))
    _remove_leftovers(out_dir)  # of attempts an engine retried (their workers died mid-shard)
    write_build_index(out_dir, [p for p, _, _ in plans])
    _atomic_write_json(storage.join(out_dir, "summary.json"), summary)
    return summary


def merge_summary(sides: Sequence[dict], skipped: dict[str, list[str]], settings: Settings, *,
                  inputs: int, unique: int) -> dict:
    """summary.json from the shard sidecars plus the skips found while planning."""
    skipped = {k: list(v) for k, v in skipped.items()}
    slow: dict[str, list[str]] = {}
    cameras: Counter[str] = Counter()
    for s in sides:
        for reason, names in s["skipped"].items():
            skipped.setdefault(reason, []).extend(names)
        for reason, names in s["slow"].items():
            slow.setdefault(reason, []).extend(names)
        cameras.update(s["cameras"])
    kept = sum(s["records"] for s in sides)
    original = sum(s["original_bytes"] for s in sides)
    stored = sum(s["pixel_bytes"] + s["record_bytes"] for s in sides)
    return {
        "version": SUMMARY_VERSION, "record_version": RECORD_VERSION, "layout": layout.LAYOUT_VERSION,
        "inputs": inputs, "unique": unique,
        "kept": kept,
        "skipped_total": sum(len(v) for v in skipped.values()),
        "skipped": {r: {"count": len(v), "files": sorted(v)[:MAX_LISTED]} for r, v in sorted(skipped.items())},
        # Kept photos that crop through a region decode, and the rest by why they are decoded whole.
        "fast_path": {"records": sum(s["fast"] for s in sides),
                      "decoded_whole": {r: {"count": len(v), "files": sorted(v)[:MAX_LISTED]}
                                        for r, v in sorted(slow.items())}},
        "cameras": dict(sorted(cameras.items())),
        "original_bytes": original,
        "stored_bytes": stored,  # records + pixel files
        "stored_vs_original": round(stored / original - 1, 4) if original else 0.0,
        "shards": [{"file": s["shard"], "records": s["records"], "fast": s["fast"],
                    "original_bytes": s["original_bytes"], "pixel_bytes": s["pixel_bytes"],
                    "record_bytes": s["record_bytes"]} for s in sides],
        "tags": list(settings.tag_order), "max_value_len": settings.max_value_len, "style": settings.style,
        "min_size": settings.min_size, "formats": list(settings.formats),
        "fast_path_enabled": settings.fast_path, "keep_original": settings.keep_original,
    }


# ----------------------------------------------------------------------------- CLI

def settings_from_config(config_path: str | None, min_size: int = 128) -> Settings:
    """Settings from a config file's `exif` block (defaults: exif.DEFAULT_TAGS, 40, metadata_extractor)."""
    if not config_path:
        return Settings(tag_order=tuple(exif.DEFAULT_TAGS), min_size=min_size)
    from exif_jax.config import load_config
    c = load_config(config_path)
    return Settings(tag_order=tuple(c.exif.tags), max_value_len=int(c.exif.max_value_len),
                    style=str(c.exif.style), min_size=min_size)


def add_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `exif-jax build-data`."""
    from exif_jax import cli_args

    src = parser.add_mutually_exclusive_group()  # one of these or of `box` (issue 24: checked in cli_main)
    src.add_argument("--images", metavar="DIR", help="folder of photos (recursive; other files are counted, not read)")
    src.add_argument("--list", dest="list_file", metavar="FILE", help="file with one photo path per line")
    src.add_argument("--yfcc-exif", metavar="TSV",
                     help="YFCC100M EXIF TSV (photo id + EXIF per line); the photos from --yfcc-images, "
                          "--webdataset or --parquet")
    # --- issue 24: img2dataset output and the Ray engine (data/inputs.py, data/build_ray.py)
    # Explicit flags, not detection inside --images: an img2dataset webdataset folder holds .tar shards *and*
    # per-shard .parquet files of metadata only, so the kind has to be said.
    # Either is the photos of a --yfcc-exif TSV too, so they are a group of their own.
    box = parser.add_mutually_exclusive_group()
    box.add_argument("--webdataset", nargs="+", metavar="TAR",
                     help="webdataset .tar shards (files or folders of them; img2dataset --output_format webdataset); "
                          "with --yfcc-exif: the photos, by the photo_id field of each sample's .json")
    box.add_argument("--parquet", nargs="+", metavar="PARQUET",
                     help="parquet files with an image-bytes column (files or folders; img2dataset "
                          "--output_format parquet); with --yfcc-exif: the photos, by their photo_id column")
    parser.add_argument("--image-column", metavar="NAME", help="--parquet column of image bytes (default: jpg)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: threads + a process pool on this machine; ray: Ray tasks (a local Ray, or "
                             "the cluster at --ray-address); same records either way")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="Ray cluster to join (e.g. auto, ray://head:10001); default: start a local one")
    # --- end issue 24
    parser.add_argument("--yfcc-images", metavar="DIR", help="folder holding <photo_id>.jpg for each --yfcc-exif line")
    cli_args.add_out(parser, "records-*.array_record shards, their pixel files and sidecars, summary.json; re-run "
                             "the same command to resume an interrupted build")
    n = parser.add_mutually_exclusive_group()
    n.add_argument("--shards", type=int, metavar="N", help="number of shards (default: from --records-per-shard)")
    n.add_argument("--records-per-shard", type=int, default=64, metavar="N",
                   help="photos per shard when --shards is not given")
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="processes (0: all cores); with --engine ray: the CPUs of the local Ray it starts")
    parser.add_argument("--config", metavar="FILE", help="config file: EXIF tag set, max_value_len, style")
    parser.add_argument("--min-size", type=int, default=128, metavar="PX",
                        help="skip photos whose shorter side is smaller")
    parser.add_argument("--keep-original", action="store_true",
                        help="also store each original file (the rewritten stream alone gives the same pixels)")
    parser.add_argument("--no-fast-path", action="store_true",
                        help="store original files only; every crop then decodes its whole photo")
    cli_args.add_progress(parser)


def cli_main(args: argparse.Namespace) -> int:
    """Run `exif-jax build-data`."""
    pre: dict[str, list[str]] = {}
    # Flags that cannot apply are errors, not silently ignored.
    if args.yfcc_images and not args.yfcc_exif:
        print("exif-jax build-data: --yfcc-images names the photos of a --yfcc-exif TSV; give --yfcc-exif too",
              file=sys.stderr)
        return 2
    if args.keep_original and args.no_fast_path:
        print("exif-jax build-data: --keep-original has nothing to add with --no-fast-path (which stores only the "
              "original files): drop one of them", file=sys.stderr)
        return 2
    # --- issue 24
    box = args.webdataset or args.parquet
    if box and (args.images or args.list_file):
        print("exif-jax build-data: give one photo source: --images, --list, --webdataset or --parquet",
              file=sys.stderr)
        return 2
    if not (box or args.images or args.list_file or args.yfcc_exif):
        print("exif-jax build-data: give the photos: --images, --list, --yfcc-exif, --webdataset or --parquet",
              file=sys.stderr)
        return 2
    if args.yfcc_exif and args.yfcc_images and box:
        print("exif-jax build-data: the photos of --yfcc-exif come from --yfcc-images or from --webdataset/--parquet,"
              " not both", file=sys.stderr)
        return 2
    if args.ray_address and args.engine != "ray":
        print("exif-jax build-data: --ray-address needs --engine ray", file=sys.stderr)
        return 2
    if args.ray_address and args.workers:
        print("exif-jax build-data: --workers sizes a local Ray; a cluster at --ray-address has its own CPUs",
              file=sys.stderr)
        return 2
    if args.image_column and not args.parquet:
        print("exif-jax build-data: --image-column names a column of --parquet files; give --parquet too",
              file=sys.stderr)
        return 2
    engine = None
    if args.engine == "ray":
        engine = build_ray.RayEngine(address=args.ray_address, num_cpus=args.workers or None)
    if box:
        id_field = "photo_id" if args.yfcc_exif else None  # img2dataset --save_additional_columns '["photo_id"]'
        sources, pre = (inputs.list_webdataset(args.webdataset, id_field, engine=engine) if args.webdataset
                        else inputs.list_parquet(args.parquet, args.image_column or "jpg", id_field, engine=engine))
        if args.yfcc_exif:
            items, bad_lines = items_from_yfcc(args.yfcc_exif, photos=sources)
            for reason, names in bad_lines.items():
                pre.setdefault(reason, []).extend(names)
        else:
            items = [Item(src=s.src, name=s.name, part=s.part) for s in sources]
    # --- end issue 24
    elif args.yfcc_exif:
        if not args.yfcc_images:
            print("exif-jax build-data: --yfcc-exif needs --yfcc-images DIR (or --webdataset/--parquet)",
                  file=sys.stderr)
            return 2
        items, pre = items_from_yfcc(args.yfcc_exif, args.yfcc_images)
    elif args.list_file:
        items = items_from_list(args.list_file)
    else:
        items, pre = items_from_folder(args.images)
    settings = dataclasses.replace(settings_from_config(args.config, min_size=args.min_size),
                                   keep_original=args.keep_original, fast_path=not args.no_fast_path)
    s = build_dataset(items, args.out, settings, num_shards=args.shards, records_per_shard=args.records_per_shard,
                      workers=args.workers or None, progress=not args.no_progress, pre_skipped=pre, engine=engine)
    whole = ", ".join(f"{r}={v['count']}" for r, v in s["fast_path"]["decoded_whole"].items()) or "none"
    print(f"{args.out}: kept {s['kept']} of {s['inputs']} in {len(s['shards'])} shards; "
          f"skipped {s['skipped_total']}{':' if s['skipped'] else ''}")
    width = max((len(r) for r in s["skipped"]), default=0)  # issue 24: the skips as a table, one reason a line
    for reason, v in s["skipped"].items():
        print(f"  {reason:<{width}}  {v['count']:>8}")
    print(f"{args.out}: region decode for {s['fast_path']['records']} of {s['kept']}, decoded whole: {whole}; "
          f"stored {s['stored_bytes'] / 1e6:.1f} MB for {s['original_bytes'] / 1e6:.1f} MB of originals "
          f"({100 * s['stored_vs_original']:+.1f}%)")
    return 0
