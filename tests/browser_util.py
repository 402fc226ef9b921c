"""Headless Chromium for the real-browser tests: Debian's chromium driven by Playwright, servers on loopback.

``playwright install`` cannot download a browser here, so Playwright drives the system's Chromium (``$CHROMIUM``,
default /usr/bin/chromium; ``make test`` installs it with apt). Flags keep it off the network.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200 (or fail, with the server's exit if it died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextmanager
def server(cmd: list[str], url: str, log: Path, cwd: Path | None = None, env: dict | None = None,
           timeout: float = 90.0) -> Iterator[subprocess.Popen]:
    """Run a server in its own process group until the block ends; its output goes to ``log``."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(url, timeout, proc)
            yield proc
        finally:
            try:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, 9)


@contextmanager
def static_server(folder: Path, log: Path) -> Iterator[str]:
    """``python -m http.server`` on a free loopback port; yields the base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with server([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(folder)],
                base + "/", log):
        yield base


@contextmanager
def chromium(tmp: Path) -> Iterator:
    """A Playwright browser on the system Chromium with a fresh profile."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        raise FileNotFoundError(f"{CHROMIUM} not found: install Debian's chromium (make test does: apt-get install "
                                f"chromium) or set CHROMIUM to a Chromium binary")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp / "chromium-profile"), executable_path=CHROMIUM,
                                                       args=FLAGS, headless=True,
                                                       viewport={"width": 1400, "height": 1000})
        try:
            yield context
        finally:
            context.close()


def pixels(png: bytes) -> np.ndarray:
    """RGB array of a PNG screenshot."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def differs(a: bytes, b: bytes, min_fraction: float = 0.005) -> bool:
    """Whether two screenshots of the same element differ in at least ``min_fraction`` of their pixels; both must
    have the same size and show something (not one flat colour)."""
    pa, pb = pixels(a), pixels(b)
    if pa.shape != pb.shape:
        raise AssertionError(f"screenshots of different sizes {pa.shape} and {pb.shape}: the element changed layout")
    for p in (pa, pb):
        if int(p.max()) - int(p.min()) < 32:
            raise AssertionError("a screenshot is blank (one flat colour): the image did not render")
    return float((np.abs(pa - pb).max(-1) > 8).mean()) >= min_fraction
