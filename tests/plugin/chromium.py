"""Headless Chromium for the browser tests: found on this machine or skipped (never under CI).

The flags are the ones docs/webrtc.md found were all needed for WebRTC on loopback with no
network: no GPU, no QUIC, no background traffic, autoplay allowed, loopback ICE allowed, no mDNS
host names, and every host name but 127.0.0.1 unresolvable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.needs import missing

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    # Chromium honours only one --disable-features switch: comma-join features into it.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)


def chromium_path() -> str:
    """The Chromium binary ($CHROMIUM, or chromium on PATH, or /usr/bin/chromium).

    Skips the test when there is none, except under CI (``CI=true``), where it fails: CI installs it.
    """
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    message = "headless Chromium is not installed (apt-get install chromium, or set $CHROMIUM)"
    missing(message)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def chromium(url: str) -> Iterator[subprocess.Popen[bytes]]:
    """Headless Chromium showing ``url`` with a throwaway profile; killed (its process group) on exit."""
    binary = chromium_path()
    with tempfile.TemporaryDirectory(prefix="speakwire-chromium-") as profile:
        process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
