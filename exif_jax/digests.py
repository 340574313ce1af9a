"""Digests of files as written, verified as read: checkpoints, packaged models and exports.

One algorithm, CRC-32C (Castagnoli), through google_crc32c's hardware path (SSE4.2 / ARMv8 CRC
instructions): ~0.2 s per GiB on one core here, 5-7x cheaper than SHA-256 or BLAKE2b
(benchmarks/checkpoint_digest.py measures all three). It guards against bit rot, truncation and
half-copied buckets, not against an adversary. A manifest is a JSON object

  {"algorithm": "crc32c", "files": {"relative/name": {"crc32c": "1a2b3c4d", "bytes": 1265}, ...}}

written next to what it describes through exif_jax.storage, so it works on a local disk, gs:// and s3://.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

import google_crc32c

from exif_jax import storage

ALGORITHM = "crc32c"
CHUNK = 64 << 20  # local files are digested in pieces, so a multi-GiB file is never all in memory
THREADS = 8       # reads (and google_crc32c on large buffers) release the GIL


def crc32c(data: bytes | memoryview) -> str:
    """CRC-32C of `data` as 8 hex digits."""
    return f"{google_crc32c.value(bytes(data) if isinstance(data, memoryview) else data):08x}"


def file_digest(path: str) -> tuple[str, int]:
    """(crc32c hex, size in bytes) of a file or object, of its bytes as read now."""
    if storage.is_remote(path):
        data = storage.read_bytes(path)
        return crc32c(data), len(data)
    c, n = google_crc32c.Checksum(), 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                c.update(chunk)
                n += len(chunk)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    return c.digest().hex(), n


def digest_files(root: str, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """{name: {"crc32c", "bytes"}} of the files `names` (relative to `root`), read concurrently."""
    names = sorted(names)
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        got = list(pool.map(lambda n: file_digest(storage.join(root, n)), names))
    return {n: {ALGORITHM: d, "bytes": size} for n, (d, size) in zip(names, got)}


def manifest(files: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON object a digest file holds."""
    return {"algorithm": ALGORITHM, "files": {k: dict(v) for k, v in sorted(files.items())}}


def write_manifest(path: str, files: Mapping[str, Mapping[str, Any]]) -> None:
    """Write a digest file (atomically: it is complete or absent)."""
    storage.write_text(path, json.dumps(manifest(files), indent=1) + "\n")


def read_manifest(path: str) -> dict[str, dict[str, Any]]:
    """The files of a digest file; an unreadable or malformed one is ValueError naming it."""
    try:
        m = json.loads(storage.read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: digest file is not valid JSON ({e})") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: digest file is not text ({e})") from e
    if not isinstance(m, dict) or m.get("algorithm") != ALGORITHM or not isinstance(m.get("files"), dict):
        raise ValueError(f"{path}: not a digest file (expected {{'algorithm': '{ALGORITHM}', 'files': {{...}}}})")
    return m["files"]


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """One file whose bytes are not what was written."""
    name: str       # relative to the folder the manifest describes
    expected: str   # e.g. "crc32c 1a2b3c4d, 1265 bytes"
    found: str      # e.g. "crc32c 5e6f7a8b, 1000 bytes" or "missing"

    def __str__(self) -> str:
        return f"{self.name}: expected {self.expected}, found {self.found}"


def _describe(d: Mapping[str, Any]) -> str:
    return f"{ALGORITHM} {d[ALGORITHM]}, {d['bytes']} bytes"


def verify_files(root: str, files: Mapping[str, Mapping[str, Any]]) -> list[Mismatch]:
    """The files under `root` whose bytes differ from `files` (a manifest's entries), or that are missing."""
    names = sorted(files)

    def check(name: str) -> Mismatch | None:
        try:
            d, n = file_digest(storage.join(root, name))
        except FileNotFoundError:
            return Mismatch(name, _describe(files[name]), "missing")
        got = {ALGORITHM: d, "bytes": n}
        if d != files[name][ALGORITHM] or n != files[name]["bytes"]:
            return Mismatch(name, _describe(files[name]), _describe(got))
        return None

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        return [m for m in pool.map(check, names) if m is not None]


def verify_file(path: str, expected: str) -> None:
    """Raise ValueError naming `path` unless its crc32c is `expected` (8 hex digits)."""
    got, n = file_digest(path)
    if got != expected:
        raise ValueError(f"{path}: corrupt: {ALGORITHM} expected {expected}, found {got} ({n} bytes); "
                         "re-copy or re-create it")


def record(directory: str, name: str, digest_file: str = "digests.json") -> None:
    """Add (or replace) `name`'s digest in `directory`/`digest_file` (an export's weights, one at a time)."""
    path = storage.join(directory, digest_file)
    files = read_manifest(path) if storage.exists(path) else {}
    files.update(digest_files(directory, [name]))
    write_manifest(path, files)


def verify_recorded(directory: str, digest_file: str = "digests.json") -> list[str]:
    """Verify every file `directory`/`digest_file` lists (ValueError naming the first bad one and the digests);
    returns the names verified ([] when there is no digest file)."""
    path = storage.join(directory, digest_file)
    if not storage.exists(path):
        return []
    files = read_manifest(path)
    bad = verify_files(directory, files)
    if bad:
        raise ValueError(f"{storage.join(directory, bad[0].name)}: corrupt: {bad[0]}"
                         + (f" (and {len(bad) - 1} more files)" if len(bad) > 1 else "") + f" [{path}]")
    return sorted(files)
