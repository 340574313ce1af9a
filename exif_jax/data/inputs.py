"""Where build-data's photos come from, and the one place their bytes are read.

An input photo is a `build.Item`; `Item.src` names a file and `Item.part` says which bytes of it:

    part=None                               the whole file (a photo in a folder, a list, a YFCC image dir)
    TarMember(offset, size)                 a member of an uncompressed tar: one byte range of the file
                                            (img2dataset `--output_format webdataset`: <key>.jpg + <key>.json)
    ParquetRow(row_group, row, column)      one cell of a binary column (img2dataset `--output_format parquet`,
                                            column "jpg" by default)

A structured `part` rather than a "shard.tar#member" string: any local path may contain "#" or "::", so a
string locator would be ambiguous, and `part` is not in a shard's digest (only sha256, name, tags are), so the
same photo gives the same record whichever container it came in. A tar member is read as one byte range
(no tar parsing after listing: one pread, or one ranged GET on object storage); a parquet cell costs its row
group's column chunk (img2dataset writes 100 rows per group; a small per-process cache keeps the last one, so
pass 1, which reads in listing order, reads each group once; pass 2 reads in sha256 order and pays one chunk
per photo: prefer webdataset output at scale).

Every read of a path goes through `open_path` and every listing through `list_files`; these are the two
places where gs:// and s3:// plug in (through exif_jax.storage once it lands). Until then a remote path is a
clear error naming it.
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
import io
import json
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

from exif_jax import storage

# Suffixes build-data tries as photos (the rest of a folder is counted as "other_extension").
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".tif", ".tiff", ".webp", ".bmp",
                        ".gif", ".heic", ".heif"})


class TarMember(NamedTuple):
    """A tar member's data: `size` bytes at `offset` of the tar file."""
    offset: int
    size: int


class ParquetRow(NamedTuple):
    """Row `row` of row group `row_group`, binary column `column`, of a parquet file."""
    row_group: int
    row: int
    column: str


Part = TarMember | ParquetRow


class Located(Protocol):
    """What a reader needs of an input (build.Item has these)."""
    src: str
    part: Part | None


class Source(NamedTuple):
    """One listed input photo: becomes build.Item(src=src, name=name, part=part); `sample_id` is the value of
    the id field asked for (a YFCC photo id, to join the EXIF dump), else None."""
    src: str
    name: str
    part: Part | None = None
    sample_id: str | None = None


class MissingBytes(FileNotFoundError):
    """The input exists but holds no photo bytes (a parquet row of a failed download): skipped as "missing"."""


# ----------------------------------------------------------------------------- paths (remote plugs in here)

def open_path(path: str) -> BinaryIO:
    """Open a file or object for binary reading (seekable; an object is read by ranges as it is read)."""
    return storage.open_read(path)


def list_files(root: str, suffixes: Sequence[str]) -> list[str]:
    """`root` itself if it is a file, else its non-hidden files (recursive) ending in one of `suffixes`, sorted."""
    if storage.isfile(root):
        return [root]
    if not storage.isdir(root):
        raise FileNotFoundError(f"input not found: {root}")
    return [storage.join(root, rel) for rel in storage.walk_files(root)
            if not any(part.startswith(".") for part in rel.split("/")) and rel.lower().endswith(tuple(suffixes))]


# ----------------------------------------------------------------------------- reading one item

class _Range(io.RawIOBase):
    """`size` bytes at `offset` of an open file, as a file; an input shorter than that is an OSError."""

    def __init__(self, f: BinaryIO, offset: int, size: int, name: str):
        self._f, self._left, self._name = f, size, name
        f.seek(offset)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self._left)
        if n == 0:
            return 0
        got = self._f.readinto(memoryview(b)[:n])
        if not got:
            raise OSError(f"{self._name}: truncated tar member ({self._left} bytes missing)")
        self._left -= got
        return got

    def close(self) -> None:
        self._f.close()
        super().close()


def _parquet():
    try:
        import pyarrow.parquet as pq  # lazy: only parquet inputs need pyarrow (a heavy import)
    except ImportError as e:
        raise ImportError("parquet inputs need pyarrow: pip install -e '.[ray]' (or pyarrow alone)") from e
    return pq


@functools.lru_cache(maxsize=1)  # one row group's column: up to ~100 photos (img2dataset's group size)
def _row_group_column(src: str, row_group: int, column: str):
    pq = _parquet()
    try:
        with open_path(src) as f:
            return pq.ParquetFile(f).read_row_group(row_group, columns=[column]).column(0).combine_chunks()
    except (OSError, NotImplementedError):
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow's ArrowInvalid etc.: a bad file is unreadable input
        raise OSError(f"{src}: row group {row_group} column {column!r}: {type(e).__name__}: {e}") from e


def open_item(item: Located) -> BinaryIO:
    """The item's bytes as a file (pass 1 hashes through this; FileNotFoundError/OSError mean missing/unreadable)."""
    part = item.part
    if part is None:
        return open_path(item.src)
    if isinstance(part, TarMember):
        return io.BufferedReader(_Range(open_path(item.src), part.offset, part.size, item.src))
    if isinstance(part, ParquetRow):
        value = _row_group_column(item.src, part.row_group, part.column)[part.row].as_py()
        if value is None:
            raise MissingBytes(f"{item.src}: row {part.row} of row group {part.row_group} has no {part.column!r}")
        return io.BytesIO(value)
    raise TypeError(f"{item.src}: unknown part {part!r}")


def read_item(item: Located) -> bytes:
    """All of the item's bytes (pass 2 reads through this)."""
    with open_item(item) as f:
        return f.read()


# ----------------------------------------------------------------------------- listing containers

Skips = dict[str, list[str]]


def _map_containers(fn: Callable, paths: list[str], args: tuple, engine) -> list[tuple[list[Source], Skips]]:
    """fn(path, *args) for every container, in path order: on the engine's workers when given (listing is
    latency-bound: ~1,000 header reads per tar), else in threads (file reads release the GIL)."""
    if engine is None:
        with cf.ThreadPoolExecutor(8) as ex:
            return list(ex.map(lambda p: fn(p, *args), paths))
    got = dict(engine.run(fn, ((i, (p, *args)) for i, p in enumerate(paths))))
    return [got[i] for i in range(len(paths))]


def _merge(parts: list[tuple[list[Source], Skips]]) -> tuple[list[Source], Skips]:
    sources: list[Source] = []
    skipped: Skips = {}
    for got, skips in parts:
        sources += got
        for reason, names in skips.items():
            skipped.setdefault(reason, []).extend(names)
    return sources, skipped


def list_webdataset(roots: Sequence[str], id_field: str | None = None, engine=None) -> tuple[list[Source], Skips]:
    """Photos in webdataset tars (each root: a .tar or a folder of them), plus skips by reason; `engine`
    (a build.Engine) lists the tars on its workers.

    A member is a photo when its suffix is an image suffix; the other members of a sample (<key>.json,
    <key>.txt: img2dataset's metadata) go with it and are not counted; members of no photo's sample are
    "other_extension"; a tar that cannot be listed (compressed, corrupt) is "unreadable_tar".
    Names read as paths: <tar path>/<member name>. Only headers are read (tarfile seeks over the data), and
    with `id_field` each sample's <key>.json (a sample without that field is skipped as "no_sample_id").
    """
    paths = [p for root in roots for p in list_files(root, (".tar",))]
    return _merge(_map_containers(list_tar, paths, (id_field,), engine))


def list_tar(tar_path: str, id_field: str | None = None) -> tuple[list[Source], Skips]:
    """The photos of one webdataset tar and its skips (see list_webdataset)."""
    sources: list[Source] = []
    skipped: Skips = {}
    try:
        with open_path(tar_path) as f, tarfile.open(fileobj=f, mode="r:") as tf:
            members = [m for m in tf if m.isfile()]
            photos = [m for m in members if Path(m.name).suffix.lower() in IMAGE_EXTS]
            ids = _json_ids(f, tar_path, members, photos, id_field) if id_field else {}
    except (OSError, tarfile.TarError) as e:
        return [], {"unreadable_tar": [f"{tar_path}: {type(e).__name__}: {e}"]}
    keys = {_sample_key(m.name) for m in photos}
    for m in photos:
        name = f"{tar_path}/{m.name}"
        if id_field and ids.get(m.name) is None:
            skipped.setdefault("no_sample_id", []).append(name)
            continue
        sources.append(Source(tar_path, name, TarMember(m.offset_data, m.size), ids.get(m.name)))
    others = [f"{tar_path}/{m.name}" for m in members
              if Path(m.name).suffix.lower() not in IMAGE_EXTS and _sample_key(m.name) not in keys]
    if others:
        skipped["other_extension"] = others
    return sources, skipped


def _json_ids(f: BinaryIO, tar_path: str, members, photos, id_field: str) -> dict[str, str | None]:
    """Photo member name -> `id_field` of its sample's <key>.json (None when there is none)."""
    jsons = {_sample_key(m.name): m for m in members if m.name.endswith(".json")}
    ids: dict[str, str | None] = {}
    for m in photos:
        j = jsons.get(_sample_key(m.name))
        value = None
        if j is not None:
            f.seek(j.offset_data)
            try:
                value = json.loads(f.read(j.size)).get(id_field)
            except (ValueError, AttributeError):  # not JSON, or not an object: the sample has no id
                value = None
        ids[m.name] = None if value is None else str(value)
    return ids


def _sample_key(member: str) -> str:
    # webdataset: the key is the name up to the first "." of its last path component.
    head, _, tail = member.rpartition("/")
    return f"{head}/{tail.split('.', 1)[0]}"


class MissingColumn(ValueError):
    """A parquet file without the image-bytes column: an error, not a skip (the flags point at the wrong files)."""


def list_parquet(roots: Sequence[str], column: str = "jpg", id_field: str | None = None, engine=None
                 ) -> tuple[list[Source], Skips]:
    """Photos in parquet files (each root: a .parquet or a folder of them): one per row of `column`; `engine`
    (a build.Engine) lists the files on its workers.

    Names read as paths: <parquet path>/<key> (the "key" column, img2dataset's sample key, when there is one;
    else the row number in the file). Only the metadata and the key column are read here; a row without bytes
    (a failed download) is found when it is hashed and skipped as "missing"; a file that cannot be read is
    "unreadable_parquet". A file without `column` (or without `id_field`, when given) is an error naming it
    (an img2dataset webdataset folder also holds per-shard .parquet files of metadata only).
    """
    paths = [p for root in roots for p in list_files(root, (".parquet",))]
    return _merge(_map_containers(list_parquet_file, paths, (column, id_field), engine))


def list_parquet_file(path: str, column: str = "jpg", id_field: str | None = None) -> tuple[list[Source], Skips]:
    """The photos of one parquet file and its skips (see list_parquet)."""
    try:
        return _list_one_parquet(path, column, id_field), {}
    except MissingColumn:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid etc. for a corrupt file
        return [], {"unreadable_parquet": [f"{path}: {type(e).__name__}: {e}"]}


def _list_one_parquet(path: str, column: str, id_field: str | None) -> list[Source]:
    pq = _parquet()
    sources = []
    with open_path(path) as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        if column not in names:
            raise MissingColumn(f"{path}: no column {column!r} of image bytes (columns: {names}); give "
                                f"--image-column, or point --parquet at img2dataset's parquet output")
        if id_field and id_field not in names:
            raise MissingColumn(f"{path}: no column {id_field!r} of sample ids (columns: {names}); fetch with "
                                f"img2dataset --save_additional_columns '[\"{id_field}\"]'")
        start = 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            keys = (pf.read_row_group(g, columns=["key"]).column(0).to_pylist() if "key" in names
                    else [str(start + r) for r in range(n)])
            ids = (pf.read_row_group(g, columns=[id_field]).column(0).to_pylist() if id_field else [None] * n)
            sources += [Source(path, f"{path}/{k}", ParquetRow(g, r, column), None if i is None else str(i))
                        for r, (k, i) in enumerate(zip(keys, ids, strict=True))]
            start += n
    return sources
