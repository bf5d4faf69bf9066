"""What the SDK tests share: `rill serve` on a free port with an API key, ready before use and
stopped after, and a failing check that exits non-zero."""

import contextlib
import socket
import subprocess
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(binary, key):
    """Runs `rill serve --api-key KEY` on a free port; yields its base URL once /ready."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([binary, "serve", "--port", str(port), "--api-key", key, "-t", "2"])
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"rill serve exited early with {proc.returncode}")
            if time.time() > deadline:
                raise SystemExit("rill serve did not become ready")
            try:
                req = urllib.request.Request(base + "/ready", headers={"Authorization": "Bearer " + key})
                with urllib.request.urlopen(req, timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def check(cond, what):
    if not cond:
        raise AssertionError(what)
