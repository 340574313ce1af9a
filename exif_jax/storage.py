"""Every path the project reads or writes: a local path, `gs://bucket/key` or `s3://bucket/key`.

Two clients, each for what it does best:
- fsspec (gcsfs, s3fs) for listing, whole-object reads and writes, deletes and tree copies: the
  ordinary file operations, through the library orbax's etils.epath also uses.
- tensorstore's kvstore for the loader's many small range reads (`RangeReader`): C++ futures, many in
  flight from one Python thread, at ~0.1-0.3 ms of client CPU a request where s3fs costs 1.3-1.8 ms
  (docs/storage.md has the measurements). A local path is read with os.pread through a bounded set of
  open files.

Endpoints and credentials come from the standard variables, so emulators and private endpoints need no code
change: GCS reads STORAGE_EMULATOR_HOST (and the default Google credentials otherwise); S3 reads
AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN and
AWS_DEFAULT_REGION / AWS_REGION. Errors name the URI and the reason. An object write is one PUT, so a
reader sees the whole object or none of it; a local write goes to a temporary name and is renamed.
"""
from __future__ import annotations

import collections
import os
import posixpath
import shutil
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

REMOTE_SCHEMES = ("gs", "s3")


# ----------------------------------------------------------------------------- paths

def scheme_of(path: str) -> str:
    """'gs', 's3' or '' for a local path."""
    head, sep, _ = str(path).partition("://")
    if not sep:
        return ""
    if head not in REMOTE_SCHEMES:
        raise ValueError(f"{path}: unsupported storage scheme {head!r}; use a local path, gs://… or s3://…")
    return head


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` names object storage (gs:// or s3://)."""
    return bool(scheme_of(str(path)))


def split_bucket(uri: str) -> tuple[str, str, str]:
    """(scheme, bucket, key) of a gs:// or s3:// URI."""
    scheme = scheme_of(uri)
    if not scheme:
        raise ValueError(f"{uri}: not an object-storage URI")
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri}: no bucket named")
    return scheme, bucket, key.strip("/")


def normalize(path: str | os.PathLike) -> str:
    """A URI without a trailing slash, or an absolute local path (what a workdir is identified by)."""
    path = str(path)
    if is_remote(path):
        scheme, bucket, key = split_bucket(path)
        return f"{scheme}://{bucket}/{key}" if key else f"{scheme}://{bucket}"
    return os.path.abspath(path)


def join(base: str | os.PathLike, *names: str) -> str:
    """`base/name/...`, for local paths and URIs alike."""
    base = str(base)
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *names)
    return os.path.join(base, *names)


def basename(path: str) -> str:
    """The last component of a path or URI."""
    return posixpath.basename(str(path).rstrip("/")) if is_remote(path) else os.path.basename(path)


def dirname(path: str) -> str:
    """The parent of a path or URI."""
    return posixpath.dirname(str(path).rstrip("/")) if is_remote(path) else os.path.dirname(path)


# ----------------------------------------------------------------------------- fsspec file systems

_FS: dict[tuple, Any] = {}
_FS_LOCK = threading.Lock()


def _endpoint(scheme: str) -> str | None:
    if scheme == "gs":
        host = os.environ.get("STORAGE_EMULATOR_HOST")
        if host and not host.startswith("http"):
            host = "http://" + host
        return host or None
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def filesystem(scheme: str) -> Any:
    """The fsspec file system for 'gs' or 's3', configured from the environment (one per endpoint)."""
    endpoint = _endpoint(scheme)
    key = (scheme, endpoint, os.getpid())
    with _FS_LOCK:
        fs = _FS.get(key)
        if fs is not None:
            return fs
        try:
            import fsspec  # noqa: PLC0415 - imported where object storage is used (gcsfs/s3fs pull in aiohttp)
        except ImportError as e:  # pragma: no cover - setup.py installs it
            raise ImportError("object storage needs fsspec, gcsfs and s3fs: pip install 'exif-jax[cloud]'") from e
        if scheme == "gs":
            # Without it every gcsfs call probes the bucket type first (60 s against an emulator).
            os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
            kw: dict[str, Any] = {"use_listings_cache": False, "skip_instance_cache": True}
            if endpoint:
                kw.update(endpoint_url=endpoint, token=os.environ.get("FSSPEC_GCS_TOKEN", "anon"))
            fs = fsspec.filesystem("gcs", **kw)
        else:
            kw = {"use_listings_cache": False, "skip_instance_cache": True}
            if endpoint:
                kw["endpoint_url"] = endpoint
            fs = fsspec.filesystem("s3", **kw)
        _FS[key] = fs
        return fs


def _fs_path(uri: str) -> tuple[Any, str]:
    scheme, bucket, key = split_bucket(uri)
    return filesystem(scheme), f"{bucket}/{key}" if key else bucket


def _error(uri: str, e: BaseException, doing: str = "read") -> OSError:
    if isinstance(e, FileNotFoundError):
        return FileNotFoundError(f"{uri}: no such file or object")
    if isinstance(e, PermissionError):
        return PermissionError(f"{uri}: permission denied ({doing}): {e}")
    return OSError(f"{uri}: cannot {doing}: {type(e).__name__}: {e}")


# ----------------------------------------------------------------------------- file operations

def _on_store(path: str, doing: str, op: Any) -> Any:
    """op(file system, path within it) for a URI; a client error becomes an OSError naming the URI."""
    fs, p = _fs_path(path)
    try:
        return op(fs, p)
    except Exception as e:  # noqa: BLE001 - any client error is reported with the URI
        raise _error(path, e, doing) from e


def exists(path: str) -> bool:
    """Whether a file, object or folder (a prefix with objects under it) exists."""
    if not is_remote(path):
        return os.path.exists(path)
    return bool(_on_store(path, "check", lambda fs, p: fs.exists(p)))


def isdir(path: str) -> bool:
    """Whether `path` is a folder (a prefix with objects under it, for object storage)."""
    if not is_remote(path):
        return os.path.isdir(path)
    return bool(_on_store(path, "check", lambda fs, p: fs.isdir(p)))


def isfile(path: str) -> bool:
    """Whether `path` is a file (an object)."""
    if not is_remote(path):
        return os.path.isfile(path)
    return bool(_on_store(path, "check", lambda fs, p: fs.isfile(p)))


def listdir(path: str) -> list[str]:
    """Names directly under a folder or prefix, sorted; a missing folder is FileNotFoundError naming it."""
    if not is_remote(path):
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such folder") from None
        except NotADirectoryError:
            raise NotADirectoryError(f"{path}: not a folder") from None
    fs, p = _fs_path(path)
    try:
        entries = fs.ls(p, detail=False)
    except Exception as e:  # noqa: BLE001
        raise _error(path, e, "list") from e
    names = sorted({posixpath.basename(str(e).rstrip("/")) for e in entries} - {""})
    if not names and not fs.exists(p):
        raise FileNotFoundError(f"{path}: no such folder or prefix")
    return names


def walk_files(path: str) -> list[str]:
    """Every file under `path`, as paths relative to it (sorted, '/'-separated)."""
    if not is_remote(path):
        out = []
        for dirpath, _, files in os.walk(path):
            rel = os.path.relpath(dirpath, path)
            out += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/") for f in files]
        return sorted(out)
    fs, p = _fs_path(path)
    try:
        found = fs.find(p)
    except Exception as e:  # noqa: BLE001
        raise _error(path, e, "list") from e
    return sorted(str(f)[len(p):].lstrip("/") for f in found)


def makedirs(path: str) -> None:
    """Create a local folder (and parents); object storage has no folders, so nothing to do there."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def size(path: str) -> int:
    """Size in bytes of a file or object."""
    if not is_remote(path):
        try:
            return os.path.getsize(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file") from None
    return int(_on_store(path, "stat", lambda fs, p: fs.size(p)))


def read_bytes(path: str) -> bytes:
    """The whole file or object."""
    if not is_remote(path):
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise IsADirectoryError(f"{path}: is a folder, not a file") from None
    return _on_store(path, "read", lambda fs, p: fs.cat_file(p))


def open_read(path: str) -> Any:
    """A seekable binary file object for reading (an object is fetched by ranges as it is read)."""
    if not is_remote(path):
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file") from None
    return _on_store(path, "read", lambda fs, p: fs.open(p, "rb"))


def read_text(path: str) -> str:
    """The whole file or object as UTF-8 text."""
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file or object atomically: readers see the old content or the new, never a part."""
    if not is_remote(path):
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return
    _on_store(path, "write", lambda fs, p: fs.pipe_file(p, bytes(data)))


def write_text(path: str, text: str) -> None:
    """write_bytes of UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))


def upload_file(local: str, uri: str) -> None:
    """Copy a local file to a path or URI (one PUT, or a multipart upload that completes atomically)."""
    if not is_remote(uri):
        os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
        tmp = f"{uri}.tmp-{os.getpid()}"
        shutil.copyfile(local, tmp)
        os.replace(tmp, uri)
        return
    _on_store(uri, "write", lambda fs, p: fs.put_file(local, p))


def download_file(uri: str, local: str) -> None:
    """Copy a file or object to a local file (under a temporary name until complete)."""
    os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
    tmp = f"{local}.tmp-{os.getpid()}"
    if not is_remote(uri):
        try:
            shutil.copyfile(uri, tmp)
        except FileNotFoundError:
            raise FileNotFoundError(f"{uri}: no such file") from None
    else:
        fs, p = _fs_path(uri)
        try:
            fs.get_file(p, tmp)
        except Exception as e:  # noqa: BLE001
            if os.path.exists(tmp):
                os.remove(tmp)
            raise _error(uri, e) from e
    os.replace(tmp, local)


def copy_tree(src: str, dst: str, *, files: Iterable[str] | None = None) -> list[str]:
    """Copy every file under `src` (or only `files`, relative names) to `dst`; either side may be remote.
    Returns the relative names copied."""
    names = sorted(files) if files is not None else walk_files(src)
    for name in names:
        s, d = join(src, name), join(dst, name)
        if is_remote(s) and is_remote(d):
            write_bytes(d, read_bytes(s))
        elif is_remote(d):
            upload_file(s, d)
        else:
            download_file(s, d)
    return names


def remove(path: str) -> None:
    """Delete a file or object (missing: nothing to do)."""
    if not is_remote(path):
        if os.path.exists(path):
            os.remove(path)
        return
    fs, p = _fs_path(path)
    try:
        if fs.exists(p):
            fs.rm_file(p)
    except FileNotFoundError:
        pass
    except Exception as e:  # noqa: BLE001
        raise _error(path, e, "delete") from e


def rmtree(path: str) -> None:
    """Delete a folder or prefix and everything under it (missing: nothing to do)."""
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    fs, p = _fs_path(path)
    try:
        if fs.exists(p):
            fs.rm(p, recursive=True)
    except FileNotFoundError:
        pass
    except Exception as e:  # noqa: BLE001
        raise _error(path, e, "delete") from e


class AppendLog:
    """A text file that grows by lines (metrics.jsonl): appended locally; on object storage, which cannot
    append, the whole object is rewritten at each `flush` (what tensorboardX does for event files too)."""

    def __init__(self, path: str):
        self.path = path
        self.remote = is_remote(path)
        if self.remote:
            self._text = read_text(path) if exists(path) else ""
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._f = open(path, "a", buffering=1, encoding="utf-8")

    def write(self, text: str) -> None:
        """Add text (lines); on object storage it is stored at the next flush."""
        if self.remote:
            self._text += text
        else:
            self._f.write(text)

    def flush(self) -> None:
        """Make what was written durable where the file lives."""
        if self.remote:
            write_text(self.path, self._text)
        else:
            self._f.flush()

    def close(self) -> None:
        """Flush and close."""
        self.flush()
        if not self.remote:
            self._f.close()


# ----------------------------------------------------------------------------- range reads

class RangeError(OSError):
    """A range read that failed after its retries, or came back with the wrong length."""


class RangeReader:
    """Concurrent byte-range reads of the files under one folder or prefix.

    `read([(name, start, stop), ...])` returns each span's bytes; all spans of a call are in flight at once.
    Local files: os.pread through at most `max_open` open descriptors (least recently used closed first),
    so the open-file count does not grow with the number of shards. Object storage: tensorstore kvstore
    futures; a failed request (HTTP 5xx, 429, reset, timeout) or a response of the wrong length is retried
    up to `retries` times with backoff, and counted in `stats` (never returned as data).
    """

    def __init__(self, root: str, *, max_open: int = 32, retries: int = 8, backoff_s: float = 0.05):
        self.root = str(root)
        self.remote = is_remote(self.root)
        self.max_open = max_open
        self.retries = retries
        self.backoff_s = backoff_s
        self.stats = collections.Counter()
        self._fds: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._kv = None

    def __getstate__(self) -> dict:  # grain workers open their own descriptors / clients
        return {"root": self.root, "max_open": self.max_open, "retries": self.retries,
                "backoff_s": self.backoff_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"], max_open=state["max_open"], retries=state["retries"],
                      backoff_s=state["backoff_s"])

    # -- local
    def _fd(self, name: str) -> int:
        with self._lock:
            fd = self._fds.get(name)
            if fd is not None:
                self._fds.move_to_end(name)
                return fd
            path = os.path.join(self.root, name)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise FileNotFoundError(f"{path}: no such file (was the build moved or deleted?)") from None
            self._fds[name] = fd
            self.stats["opens"] += 1
            while len(self._fds) > self.max_open:
                _, old = self._fds.popitem(last=False)
                os.close(old)
            return fd

    def _read_local(self, spans: Sequence[tuple[str, int, int]]) -> list[bytes]:
        out = []
        for name, start, stop in spans:
            data = os.pread(self._fd(name), stop - start, start)
            if len(data) != stop - start:
                raise RangeError(f"{os.path.join(self.root, name)}: bytes {start}-{stop} asked, file ends "
                                 f"after {start + len(data)} (truncated copy?); rebuild with exif-jax build-data")
            out.append(data)
        self.stats["requests"] += len(spans)
        self.stats["bytes"] += sum(b - a for _, a, b in spans)
        return out

    # -- remote
    def _kvstore(self) -> Any:
        if self._kv is None:
            self._kv = open_kvstore(self.root)
        return self._kv

    def _read_remote(self, spans: Sequence[tuple[str, int, int]]) -> list[bytes]:
        kv = self._kvstore()
        out: list[bytes | None] = [None] * len(spans)
        todo = list(range(len(spans)))
        errors: dict[int, str] = {}
        for attempt in range(self.retries + 1):
            futs = [(i, kv.read(spans[i][0], byte_range=slice(spans[i][1], spans[i][2]))) for i in todo]
            self.stats["requests"] += len(futs)
            again = []
            for i, fut in futs:
                name, start, stop = spans[i]
                try:
                    res = fut.result()
                except Exception as e:  # noqa: BLE001 - HTTP errors, resets and timeouts are retried
                    errors[i] = f"{type(e).__name__}: {e}"
                    again.append(i)
                    continue
                if res.state == "missing":
                    raise FileNotFoundError(f"{join(self.root, name)}: no such object (deleted while training?)")
                value = res.value
                if len(value) != stop - start:
                    errors[i] = f"{len(value)} bytes back for a {stop - start}-byte range"
                    again.append(i)
                    continue
                out[i] = value
                self.stats["bytes"] += len(value)
            if not again:
                return out  # type: ignore[return-value]
            self.stats["retries"] += len(again)
            todo = again
            time.sleep(min(self.backoff_s * 2 ** attempt, 2.0))
        i = todo[0]
        raise RangeError(f"{join(self.root, spans[i][0])}: bytes {spans[i][1]}-{spans[i][2]} failed after "
                         f"{self.retries} retries: {errors.get(i)}")

    def read(self, spans: Sequence[tuple[str, int, int]]) -> list[bytes]:
        """The bytes of each (file name, start, stop) span, all requested at once."""
        if not spans:
            return []
        return self._read_remote(spans) if self.remote else self._read_local(spans)

    def read_file(self, name: str) -> bytes:
        """A whole file under the root (one request)."""
        if not self.remote:
            return read_bytes(os.path.join(self.root, name))
        return read_bytes(join(self.root, name))

    def close(self) -> None:
        """Close open descriptors."""
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def open_kvstore(root: str) -> Any:
    """A tensorstore KvStore for a gs:// or s3:// prefix, endpoint and credentials from the environment."""
    import tensorstore as ts  # noqa: PLC0415 - only object-storage reads need it (orbax imports it anyway)

    scheme, bucket, key = split_bucket(root)
    prefix = f"{key}/" if key else ""
    endpoint = _endpoint(scheme)
    # tensorstore would retry 5xx, 429, truncated bodies and timeouts itself, unseen; with its retries off they
    # reach RangeReader, which retries and counts them (a reset on a reused connection is still retried once
    # inside libcurl). A request that stalls (no byte for 20 s) fails and is retried rather than hanging.
    os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS", "20")
    os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES", "1")
    if scheme == "gs":
        if endpoint:  # tensorstore reads its own variable, not STORAGE_EMULATOR_HOST
            os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", endpoint)
            os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
        spec = {"driver": "gcs", "bucket": bucket, "path": prefix,
                "context": {"gcs_request_retries": {"max_retries": 0}}}
    else:
        spec = {"driver": "s3", "bucket": bucket, "path": prefix,
                "aws_region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
                "context": {"s3_request_retries": {"max_retries": 0}}}
        if endpoint:
            spec["endpoint"] = endpoint
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            spec["aws_credentials"] = {"type": "environment"}
    try:
        return ts.KvStore.open(spec).result()
    except Exception as e:  # noqa: BLE001
        raise OSError(f"{root}: cannot open for reading: {type(e).__name__}: {e}") from e
