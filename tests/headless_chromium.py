"""Drive headless Chromium over the DevTools protocol (stdlib only) for the report's browser test.

Chromium runs with --remote-debugging-pipe: commands go in on its fd 3 and replies come out on its fd 4, as
JSON messages ended by a NUL byte (what Puppeteer uses), so no port, websocket or driver library is needed.
Run as a script it screenshots a page (how docs/report_screenshot.png is made):
`python tests/headless_chromium.py REPORT.html OUT.png [WIDTH HEIGHT] [--colors N]`.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The flags that work on this kind of machine: no sandbox (root in a container), no GPU, nothing that
# reaches the network on its own.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")


def find_chromium() -> str | None:
    """Path of a Chromium binary ($CHROMIUM, then chromium / chromium-browser on PATH), or None."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


class Browser:
    """One headless Chromium process with one page; `call` sends a DevTools command to that page."""

    def __init__(self, binary: str, width: int = 1400, height: int = 900, timeout: float = 30.0):
        self.timeout, self._id, self._buf, self._events = timeout, 0, b"", []
        self._profile = tempfile.mkdtemp(prefix="exif-jax-chromium-")
        self._log = open(os.path.join(self._profile, "stderr.log"), "wb")  # quoted when chromium fails
        to_child, self._w = os.pipe()  # we write commands, chromium reads them on its fd 3
        self._r, from_child = os.pipe()  # chromium writes replies on its fd 4, we read them
        # Move the child's ends above 9 so that placing them at 3 and 4 can't overwrite one with the other
        # (bash places them: dash's redirections take single-digit fds only).
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child, from_child)]
        for fd in (to_child, from_child):
            os.close(fd)
        to_child, from_child = ends
        redirect = f'exec "$@" 3<&{to_child} 4>&{from_child} {to_child}<&- {from_child}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", redirect, "bash", binary, *FLAGS, f"--user-data-dir={self._profile}",
             "--remote-debugging-pipe", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
            pass_fds=(to_child, from_child))
        os.close(to_child)
        os.close(from_child)
        try:
            targets = self._send("Target.getTargets")["targetInfos"]
            page = next(t["targetId"] for t in targets if t["type"] == "page")
            self._session = self._send("Target.attachToTarget", targetId=page, flatten=True)["sessionId"]
            self.call("Page.enable")
            self.call("Runtime.enable")
            self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                      mobile=False)
        except BaseException:
            self.close()
            raise

    def _read_message(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError(f"chromium sent nothing for {self.timeout:.0f} s")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                tail = Path(self._log.name).read_bytes()[-2000:].decode(errors="replace")
                raise RuntimeError(f"chromium exited (rc {self.proc.poll()}): {tail}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def _send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)  # an event (or another session's message): kept for wait_event

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command to the page and return its result."""
        return self._send(method, self._session, **params)

    def wait_event(self, method: str) -> dict[str, Any]:
        """The params of the next event `method` from the page (already received ones count)."""
        deadline = time.monotonic() + self.timeout
        while True:
            for i, ev in enumerate(self._events):
                if ev.get("method") == method:
                    return self._events.pop(i).get("params", {})
            self._events.append(self._read_message(deadline))

    def open(self, url: str) -> None:
        """Navigate to url and wait for its load event."""
        self._events.clear()
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serializable); page errors raise."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails'].get('exception', r['exceptionDetails'])}")
        return r["result"].get("value")

    def images_in_view(self, timeout_ms: int = 10000) -> list[int]:
        """naturalWidth of every image within the window's height, once all have loaded (0: failed, or still
        loading after timeout_ms). Lazy images start loading as they come into view."""
        return self.js(f"""new Promise(done => {{
            const t0 = performance.now();
            (function poll() {{
                const imgs = [...document.images].filter(i => i.getBoundingClientRect().top < innerHeight);
                if (imgs.every(i => i.complete && i.naturalWidth > 0) || performance.now() - t0 > {timeout_ms})
                    done(imgs.map(i => i.naturalWidth));
                else setTimeout(poll, 50);
            }})();
        }})""")

    def screenshot(self, path: str, full_page: bool = False) -> str:
        """Save a PNG of the viewport (or the whole page) to path."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        Path(path).write_bytes(base64.b64decode(self.call("Page.captureScreenshot", **params)["data"]))
        return path

    def close(self) -> None:
        """End the browser and remove its profile."""
        try:
            if self.proc.poll() is None:
                try:
                    self._send("Browser.close")
                except Exception:  # already gone, or not answering: terminate it below
                    pass
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self._log.close()
            for fd in (self._w, self._r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Screenshot a local HTML page with headless Chromium.")
    ap.add_argument("page")
    ap.add_argument("png")
    ap.add_argument("size", nargs="*", type=int, default=[1400, 900], help="WIDTH HEIGHT of the window")
    ap.add_argument("--colors", type=int, help="reduce the PNG to this many colors (a smaller file)")
    args = ap.parse_args(argv)
    binary = find_chromium()
    if not binary:
        print("no chromium found (apt-get install chromium, or set $CHROMIUM)", file=sys.stderr)
        return 2
    with Browser(binary, *args.size) as b:
        b.open(Path(args.page).resolve().as_uri())
        b.images_in_view()
        b.screenshot(args.png)
    if args.colors:
        from PIL import Image

        Image.open(args.png).convert("RGB").quantize(args.colors).save(args.png, optimize=True)
    print(args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
