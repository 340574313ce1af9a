"""Real object-store servers on 127.0.0.1 for tests and benchmarks, and a fault-injecting proxy in front of them.

- `start_s3()`: moto's S3 server (`moto_server`) in a subprocess.
- `start_gcs()`: `gcp-storage-emulator` (GCS JSON API) in a subprocess.
- `start_proxy(upstream)`: our reverse proxy in its own subprocess (so its CPU is not billed to the client
  process being measured). It adds latency to every request without serialising them, caps concurrent upstream
  requests (the stock GCS emulator is single-threaded with a listen backlog of 5), injects faults (503, 429,
  connection reset, read timeout, truncated body) and counts requests and response bytes as the server sees them.
  Counters and settings are read/changed over `/__proxy__/...` on the proxy itself: "__proxy__" can be neither an
  S3 bucket (no underscores allowed) nor a GCS JSON API path (/storage, /download, /upload, /batch).

Plain module (no pytest at import): benchmarks import it too. Run as a script it is the proxy process:
`python tests/object_store.py proxy --upstream http://127.0.0.1:P --config '{"latency_s": 0.05}'`.
Everything binds and connects to 127.0.0.1 only. Every subprocess started here is killed by `.stop()`, at
interpreter exit (atexit), and by the kernel if the starting thread dies (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import ctypes
import json
import os
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

HOST = "127.0.0.1"
CONTROL_PREFIX = "/__proxy__/"
FAULT_KINDS = ("503", "429", "reset", "timeout", "truncate")
_BIN = Path(sys.executable).parent
_LIVE: set[_Process] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel SIGKILLs it when the starting thread exits, so even a
    # SIGKILLed test run leaves no server behind (atexit does not run then).
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # 1 == PR_SET_PDEATHSIG


class _Process:
    """A child process in its own process group, with its output in a log file (a pipe could fill and block it)."""

    def __init__(self, argv: list[str], name: str, *, stdout=None, stdin=None, env: dict | None = None):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=stdout if stdout is not None else self.log, stderr=self.log,
                                     stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=_die_with_parent, env=env)
        _LIVE.add(self)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}; its log "
                               f"({self.log.name}) ends with:\n{self.log_tail()}")

    def stop(self) -> None:
        _LIVE.discard(self)
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


@atexit.register
def _stop_all() -> None:
    for p in list(_LIVE):
        p.stop()


def _http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
          timeout: float = 10.0) -> tuple[int, bytes]:
    """One plain HTTP request with the stdlib (no proxies from the environment: only loopback is ever a target)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _wait_http(url: str, proc: _Process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        proc.check_alive()
        try:
            _http("GET", url, timeout=2.0)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{proc.name} did not answer at {url} within {timeout:.0f} s; "
                                   f"log:\n{proc.log_tail()}") from None
            time.sleep(0.1)


class Server:
    """An object-store emulator running on 127.0.0.1. `kind` is "s3" or "gcs"."""

    def __init__(self, kind: str, process: _Process, port: int):
        self.kind = kind
        self.process = process
        self.port = port
        self.endpoint = f"http://{HOST}:{port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point every client we use (fsspec, boto, tensorstore) at `endpoint`."""
        return client_env(self.kind, self.endpoint)

    def make_bucket(self, name: str) -> None:
        if self.kind == "s3":
            status, body = _http("PUT", f"{self.endpoint}/{name}")
        else:
            status, body = _http("POST", f"{self.endpoint}/storage/v1/b?project=test",
                                 json.dumps({"name": name}).encode(), {"Content-Type": "application/json"})
        if status not in (200, 409):  # 409: it exists already
            raise RuntimeError(f"creating bucket {name!r} on {self.kind} server {self.endpoint} failed: "
                               f"HTTP {status} {body[:300]!r}")

    def kvstore_spec(self, bucket: str, path: str = "") -> dict[str, Any]:
        """A tensorstore kvstore spec for `bucket` on this server (gcs also needs `env` set: the driver reads
        TENSORSTORE_GCS_HTTP_URL when the store is opened)."""
        return kvstore_spec(self.kind, self.endpoint, bucket, path)

    def stop(self) -> None:
        self.process.stop()

    def __repr__(self) -> str:
        return f"Server({self.kind!r}, {self.endpoint!r})"


def client_env(kind: str, endpoint: str) -> dict[str, str]:
    """Client environment for a `kind` ("s3"/"gcs") store at `endpoint` (see ../shared/notes/scale.md)."""
    if kind == "s3":
        return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    if kind == "gcs":
        # GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false: otherwise gcsfs stalls 60 s per call probing the bucket type.
        return {"STORAGE_EMULATOR_HOST": endpoint, "FSSPEC_GCS_TOKEN": "anon", "NO_GCE_CHECK": "true",
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "TENSORSTORE_GCS_HTTP_URL": endpoint,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy"}
    raise ValueError(f"unknown object store kind {kind!r} (expected 's3' or 'gcs')")


def kvstore_spec(kind: str, endpoint: str, bucket: str, path: str = "") -> dict[str, Any]:
    if kind == "s3":
        # tensorstore's s3 driver ignores AWS_ENDPOINT_URL: the endpoint must be in the spec.
        return {"driver": "s3", "bucket": bucket, "path": path, "endpoint": endpoint, "aws_region": "us-east-1",
                "aws_credentials": {"type": "environment"}}
    if kind == "gcs":
        return {"driver": "gcs", "bucket": bucket, "path": path}
    raise ValueError(f"unknown object store kind {kind!r} (expected 's3' or 'gcs')")


def start_s3(port: int | None = None) -> Server:
    """moto's S3 server on 127.0.0.1 (honours suffix ranges and conditional writes)."""
    port = port or free_port()
    exe = _BIN / "moto_server"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    proc = _Process(argv + ["-H", HOST, "-p", str(port)], "moto_server")
    server = Server("s3", proc, port)
    try:
        _wait_http(f"{server.endpoint}/", proc)
    except BaseException:
        proc.stop()
        raise
    return server


def start_gcs(port: int | None = None, default_bucket: str | None = None) -> Server:
    """gcp-storage-emulator (GCS JSON API, in memory) on 127.0.0.1. It is single-threaded: put a proxy with
    max_upstream <= 4 in front of it for concurrent clients."""
    port = port or free_port()
    exe = _BIN / "gcp-storage-emulator"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "gcp_storage_emulator"]
    argv += ["start", "--host", HOST, "--port", str(port), "--in-memory", "--quiet"]
    if default_bucket:
        argv += ["--default-bucket", default_bucket]
    proc = _Process(argv, "gcp-storage-emulator")
    server = Server("gcs", proc, port)
    try:
        _wait_http(f"{server.endpoint}/storage/v1/b?project=test", proc)
    except BaseException:
        proc.stop()
        raise
    return server


class Proxy:
    """Client side of a running proxy subprocess (see `start_proxy`)."""

    def __init__(self, process: _Process, port: int, upstream: str, server: Server | None):
        self.process = process
        self.port = port
        self.endpoint = f"http://{HOST}:{port}"
        self.upstream = upstream
        self.server = server

    @property
    def kind(self) -> str | None:
        return self.server.kind if self.server else None

    @property
    def env(self) -> dict[str, str]:
        """Client environment pointing at the proxy instead of the server behind it."""
        if self.server is None:
            raise ValueError(f"proxy {self.endpoint} was started from a URL, not a Server: its store kind is unknown")
        return client_env(self.server.kind, self.endpoint)

    def kvstore_spec(self, bucket: str, path: str = "") -> dict[str, Any]:
        return kvstore_spec(self.kind, self.endpoint, bucket, path)

    def _control(self, method: str, what: str, payload: dict | None = None) -> dict:
        body = json.dumps(payload).encode() if payload is not None else None
        status, data = _http(method, f"{self.endpoint}{CONTROL_PREFIX}{what}", body,
                             {"Content-Type": "application/json"} if body else None)
        if status != 200:
            raise RuntimeError(f"proxy {self.endpoint} {method} {what}: HTTP {status} {data[:300]!r}")
        return json.loads(data)

    def stats(self) -> dict:
        """Counters since start or the last reset: requests/bytes_out/bytes_in by method, range_gets,
        faults by kind, statuses, forwarded, upstream_errors, max_inflight, max_upstream_inflight."""
        return self._control("GET", "stats")

    def reset(self) -> dict:
        """Zero the counters; returns the counters as they were."""
        return self._control("POST", "reset")

    def configure(self, **settings: Any) -> dict:
        """Change settings at run time (keys as `start_proxy`'s, plus `script`: a list of fault kinds given, in
        order, to the next eligible requests before random faults resume). Returns all settings."""
        return self._control("POST", "config", settings)

    def config(self) -> dict:
        return self._control("GET", "config")

    def stop(self) -> None:
        self.process.stop()

    def __repr__(self) -> str:
        return f"Proxy({self.endpoint!r} -> {self.upstream!r})"


def start_proxy(upstream: str | Server, *, latency_s: float = 0.0, fault_rate: float = 0.0,
                faults: tuple[str, ...] | list[str] = FAULT_KINDS, max_upstream: int = 4, seed: int = 0,
                fault_writes: bool = False, timeout_hold_s: float = 30.0, port: int | None = None,
                timeout: float = 30.0) -> Proxy:
    """Start the proxy subprocess in front of `upstream` (a Server or an http://127.0.0.1:P URL).

    latency_s: added to every request (concurrent requests overlap: it is an asyncio.sleep).
    fault_rate: probability that an eligible request (GET/HEAD reads; writes too with fault_writes) gets one of
      `faults`, drawn from a RNG seeded with `seed`: "503"/"429" (S3 XML or GCS JSON error body), "reset" (TCP RST,
      no response), "timeout" (no response for timeout_hold_s, then the connection is closed), "truncate" (status
      and the full Content-Length, half the body, then close).
    max_upstream: concurrent requests forwarded upstream (clients are accepted without limit and wait their turn).
    """
    server = upstream if isinstance(upstream, Server) else None
    url = server.endpoint if server else str(upstream)
    if URL(url).host != HOST:
        raise ValueError(f"proxy upstream {url!r} is not on {HOST}: only loopback servers are allowed")
    config = {"latency_s": latency_s, "fault_rate": fault_rate, "faults": list(faults), "max_upstream": max_upstream,
              "seed": seed, "fault_writes": fault_writes, "timeout_hold_s": timeout_hold_s}
    _validate_config(config)
    argv = [sys.executable, "-u", str(Path(__file__).resolve()), "proxy", "--upstream", url,
            "--port", str(port or 0), "--config", json.dumps(config)]
    # stdin is a pipe the proxy watches: when this process dies, EOF ends the proxy too.
    proc = _Process(argv, "object-store-proxy", stdout=subprocess.PIPE, stdin=subprocess.PIPE)
    try:
        bound = _read_port(proc, timeout)
    except BaseException:
        proc.stop()
        raise
    return Proxy(proc, bound, url, server)


def _read_port(proc: _Process, timeout: float) -> int:
    sel = selectors.DefaultSelector()
    sel.register(proc.proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            raise TimeoutError(f"proxy did not start within {timeout:.0f} s; log:\n{proc.log_tail()}")
        chunk = os.read(proc.proc.stdout.fileno(), 256)
        if not chunk:
            proc.proc.wait(5)
            proc.check_alive()
        line += chunk
    sel.close()
    word, port = line.split()[:2]
    assert word == b"LISTENING", line
    return int(port)


def env_for(target: Server | Proxy) -> dict[str, str]:
    """Client environment for a server, or for a proxy in front of one (the proxy's endpoint replaces the
    server's in AWS_ENDPOINT_URL / STORAGE_EMULATOR_HOST / TENSORSTORE_GCS_HTTP_URL)."""
    return target.env


# ----------------------------------------------------------------------------------------------------------------
# The proxy process.

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
               "transfer-encoding", "upgrade", "content-length", "expect"}
_WRITE_METHODS = {"PUT", "POST", "DELETE", "PATCH"}
_SETTINGS = {"latency_s", "fault_rate", "faults", "max_upstream", "seed", "fault_writes", "timeout_hold_s", "script"}


def _validate_config(cfg: dict) -> None:
    unknown = set(cfg) - _SETTINGS
    if unknown:
        raise ValueError(f"unknown proxy settings {sorted(unknown)}; known: {sorted(_SETTINGS)}")
    for key in ("faults", "script"):
        bad = [f for f in cfg.get(key, ()) if f not in FAULT_KINDS]
        if bad:
            raise ValueError(f"unknown fault kinds {bad} in {key!r}; known: {list(FAULT_KINDS)}")
    if not 0.0 <= float(cfg.get("fault_rate", 0.0)) <= 1.0:
        raise ValueError(f"fault_rate must be in [0, 1], got {cfg['fault_rate']}")
    if int(cfg.get("max_upstream", 1)) < 1:
        raise ValueError(f"max_upstream must be >= 1, got {cfg['max_upstream']}")


def _zero_stats() -> dict:
    return {"requests": {}, "bytes_out": {}, "bytes_in": {}, "range_gets": 0, "faults": {}, "statuses": {},
            "forwarded": 0, "upstream_errors": 0, "max_inflight": 0, "max_upstream_inflight": 0}


def _bump(d: dict, key: str, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


class _ProxyApp:
    def __init__(self, upstream: str, config: dict):
        self.upstream = upstream.rstrip("/")
        self.cfg = {"latency_s": 0.0, "fault_rate": 0.0, "faults": list(FAULT_KINDS), "max_upstream": 4,
                    "seed": 0, "fault_writes": False, "timeout_hold_s": 30.0, "script": []}
        self.stats = _zero_stats()
        self.inflight = 0
        self.upstream_inflight = 0
        self.session: aiohttp.ClientSession | None = None
        self.endpoint = ""
        self._apply(config)

    def _apply(self, changes: dict) -> None:
        _validate_config(changes)
        self.cfg.update(changes)
        self.cfg["script"] = list(self.cfg["script"])
        if "seed" in changes or not hasattr(self, "rng"):
            self.rng = random.Random(self.cfg["seed"])
        if "max_upstream" in changes or not hasattr(self, "gate"):
            self.gate = asyncio.Semaphore(int(self.cfg["max_upstream"]))

    async def start(self, app: web.Application) -> None:
        # limit=0: the semaphore is the one cap (a connector limit too would only add a second queue).
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"))

    async def close(self, app: web.Application) -> None:
        await self.session.close()

    async def control(self, request: web.Request) -> web.Response:
        what = request.path[len(CONTROL_PREFIX):]
        if what == "stats" and request.method == "GET":
            return web.json_response(self.stats)
        if what == "reset" and request.method == "POST":
            old, self.stats = self.stats, _zero_stats()
            return web.json_response(old)
        if what == "config" and request.method == "GET":
            return web.json_response(self.cfg)
        if what == "config" and request.method == "POST":
            try:
                self._apply(await request.json())
            except (ValueError, TypeError) as e:
                return web.json_response({"error": str(e)}, status=400)
            return web.json_response(self.cfg)
        return web.json_response({"error": f"no control endpoint {request.method} {request.path}"}, status=404)

    def _pick_fault(self, method: str) -> str | None:
        if method not in ("GET", "HEAD") and not (self.cfg["fault_writes"] and method in _WRITE_METHODS):
            return None
        if self.cfg["script"]:
            return self.cfg["script"].pop(0)
        if self.cfg["fault_rate"] > 0 and self.rng.random() < self.cfg["fault_rate"]:
            return self.rng.choice(self.cfg["faults"])
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith(CONTROL_PREFIX):
            return await self.control(request)
        self.inflight += 1
        self.stats["max_inflight"] = max(self.stats["max_inflight"], self.inflight)
        try:
            return await self._forward(request)
        finally:
            self.inflight -= 1

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        method = request.method
        st = self.stats
        _bump(st["requests"], method)
        if method == "GET" and "Range" in request.headers:
            st["range_gets"] += 1
        body = await request.read()
        _bump(st["bytes_in"], method, len(body))
        if self.cfg["latency_s"] > 0:
            await asyncio.sleep(self.cfg["latency_s"])
        fault = self._pick_fault(method)
        if fault is not None:
            _bump(st["faults"], fault)
        if fault in ("503", "429"):
            return self._error_response(request, int(fault))
        if fault == "reset":
            return self._reset(request)
        if fault == "timeout":
            await asyncio.sleep(self.cfg["timeout_hold_s"])
            return self._reset(request)

        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        # Host stays as the client sent it (the proxy's): S3 signatures cover it, and servers that build URLs
        # from it (GCS resumable-upload Location) then send the client back through the proxy.
        async with self.gate:
            self.upstream_inflight += 1
            st["max_upstream_inflight"] = max(st["max_upstream_inflight"], self.upstream_inflight)
            try:
                async with self.session.request(method, URL(self.upstream + request.raw_path, encoded=True),
                                                headers=headers, data=body if body else None,
                                                allow_redirects=False) as up:
                    payload = await up.read()
                    status, up_headers = up.status, up.headers
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                st["upstream_errors"] += 1
                return web.Response(status=502, text=f"object-store proxy: upstream {self.upstream} failed: {e!r}")
            finally:
                self.upstream_inflight -= 1
        st["forwarded"] += 1
        _bump(st["statuses"], str(status))
        resp = web.StreamResponse(status=status, reason=up.reason)
        for k, v in up_headers.items():
            if k.lower() in _HOP_BY_HOP:
                continue
            if k.lower() == "location":
                v = v.replace(self.upstream, self.endpoint)
            resp.headers.add(k, v)
        no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
        length = int(up_headers.get("Content-Length", len(payload))) if method == "HEAD" else len(payload)
        if not (status in (204, 304) or 100 <= status < 200):
            resp.content_length = length
        if fault == "truncate" and not no_body and len(payload) > 0:
            half = payload[: len(payload) // 2]
            await resp.prepare(request)
            await resp.write(half)
            _bump(st["bytes_out"], method, len(half))
            request.transport.close()  # close() flushes what was written; the client sees a short body
            return resp
        if fault == "truncate":  # nothing to truncate (HEAD, empty body): cut the connection instead
            return self._reset(request)
        await resp.prepare(request)
        if not no_body:
            await resp.write(payload)
            _bump(st["bytes_out"], method, len(payload))
        await resp.write_eof()
        return resp

    def _error_response(self, request: web.Request, status: int) -> web.Response:
        text = "Service Unavailable" if status == 503 else "Too Many Requests"
        if request.path.startswith(("/storage/", "/download/", "/upload/", "/batch/")):
            body = json.dumps({"error": {"code": status, "message": f"{text} (injected by object-store proxy)",
                                         "errors": [{"reason": "backendError" if status == 503 else "rateLimitExceeded",
                                                     "message": text}]}})
            ctype = "application/json; charset=UTF-8"
        else:
            code = "SlowDown" if status == 503 else "TooManyRequests"
            body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                    f"<Message>{text} (injected by object-store proxy)</Message><RequestId>proxy</RequestId></Error>")
            ctype = "application/xml"
        _bump(self.stats["statuses"], str(status))
        return web.Response(status=status, text=body, headers={"Content-Type": ctype}, charset=None)

    def _reset(self, request: web.Request) -> web.Response:
        sock = request.transport.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER 0: close() sends a TCP RST, so the client gets ECONNRESET rather than a clean EOF.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        request.transport.abort()
        raise ConnectionResetError("injected reset")


async def _serve(upstream: str, port: int, config: dict) -> None:
    state = _ProxyApp(upstream, config)
    app = web.Application(client_max_size=1 << 34)  # uploads of any size pass through
    app.router.add_route("*", "/{tail:.*}", state.handle)
    app.on_startup.append(state.start)
    app.on_cleanup.append(state.close)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port, backlog=1024, reuse_address=True)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]
    state.endpoint = f"http://{HOST}:{bound}"
    print(f"LISTENING {bound}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # EOF on stdin: the process that started us is gone.
    loop.add_reader(sys.stdin.fileno(), lambda: os.read(sys.stdin.fileno(), 4096) or stop.set())
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fault-injecting, counting HTTP proxy for object-store emulators.")
    sub = p.add_subparsers(dest="cmd", required=True)
    px = sub.add_parser("proxy")
    px.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT of the server")
    px.add_argument("--port", type=int, default=0, help="port to listen on (0: any free one)")
    px.add_argument("--config", default="{}", help="JSON settings (see start_proxy)")
    args = p.parse_args(argv)
    if URL(args.upstream).host != HOST:
        p.error(f"--upstream {args.upstream!r} is not on {HOST}")
    asyncio.run(_serve(args.upstream, args.port, json.loads(args.config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
