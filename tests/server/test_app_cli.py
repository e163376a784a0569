"""``speakwire serve`` as a real process, and the server run from a background thread."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as connect_sync

from speakwire.cli import _serve_notice
from speakwire.server import TTSServer
from speakwire.server.espeak import EspeakEngine
from tests.server.conftest import ENGINE_RATE, assert_speech, collect, decode, request

KEY = "sk-cli-test-5a6b7c"


@pytest.fixture
def serve_process() -> Iterator[str]:
    env = {**os.environ, "SPEAKWIRE_API_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "speakwire", "serve", "--port", "0", "--idle-timeout", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        yield line
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0  # SIGTERM is a clean shutdown
    assert KEY not in (proc.stderr.read() if proc.stderr else "")


async def test_serve_prints_its_url_and_speaks(serve_process: str) -> None:
    assert serve_process.startswith("speakwire: serving ws://127.0.0.1:")
    assert "API key required" in serve_process and KEY not in serve_process
    url = serve_process.split()[2]
    assert url.endswith("/tts/websocket") and not url.endswith(":0/tts/websocket")
    with pytest.raises(InvalidStatus) as info:
        async with connect(url):
            pass
    assert info.value.response.status_code == 401
    async with connect(url, additional_headers={"X-API-Key": KEY}) as ws:
        await ws.send(request("cli", "Served from the command line."))
        result = await collect(ws, "cli")
    assert_speech(decode(result.audio, "pcm_f32le"), ENGINE_RATE, "Served from the command line.")


def test_start_in_thread_serves_sync_clients(engine: EspeakEngine) -> None:
    server = TTSServer(port=0, engine=engine)
    url = server.start_in_thread()
    try:
        assert url == server.url and server.port != 0
        assert "serving" in repr(server)
        with connect_sync(url) as ws:
            ws.send(request("sync", "Hello from a thread.", encoding="pcm_s16le", rate=8000))
            frames = []
            while not frames or frames[-1]["type"] not in ("done", "error"):
                frames.append(json.loads(ws.recv(timeout=10)))
    finally:
        server.stop()
    assert frames[-1]["type"] == "done"
    audio = b"".join(base64.b64decode(f["data"]) for f in frames if f["type"] == "chunk")
    assert_speech(decode(audio, "pcm_s16le"), 8000, "Hello from a thread.")
    assert "stopped" in repr(server)


async def test_a_server_without_an_engine_makes_and_closes_its_own() -> None:
    async with TTSServer(port=0) as server:
        async with connect(server.url) as ws:
            await ws.send(request("own", "My own engine."))
            result = await collect(ws, "own")
        engine = server.engine
        assert engine.name == "espeak"
    assert_speech(decode(result.audio, "pcm_f32le"), ENGINE_RATE, "My own engine.")
    assert getattr(engine, "closed", True)


async def test_serve_allow_origin_lets_that_page_in_and_no_other() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SPEAKWIRE_API_KEY"}
    page = "http://127.0.0.1:5173"
    proc = subprocess.Popen(
        [sys.executable, "-m", "speakwire", "serve", "--port", "0", "--allow-origin", page + "/"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "no API key: anyone on this host may connect" in line, line
        url = line.split()[2]
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, origin="https://evil.example"):  # type: ignore[arg-type]
                pass
        assert info.value.response.status_code == 403
        async with connect(url, origin=page) as ws:  # type: ignore[arg-type]
            await ws.send(request("page", "Allowed page."))
            result = await collect(ws, "page")
        assert_speech(decode(result.audio, "pcm_f32le"), ENGINE_RATE, "Allowed page.")
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0
    assert "WARNING" not in (proc.stderr.read() if proc.stderr else "")  # loopback: nothing to warn about


def test_serve_rejects_a_malformed_allow_origin() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "speakwire", "serve", "--allow-origin", "https://app.example/path"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "--allow-origin: allowed origin 'https://app.example/path' is not of the form" in proc.stderr


@pytest.mark.parametrize(
    ("host", "open_to"),
    [
        ("127.0.0.1", "host"),
        ("127.0.0.2", "host"),
        ("::1", "host"),
        ("localhost", "host"),
        ("0.0.0.0", "network"),
        ("::", "network"),
        ("192.168.1.20", "network"),
        ("myhost.lan", "network"),
    ],
)
def test_serve_warns_when_open_to_the_network_without_a_key(host: str, open_to: str) -> None:
    # Unit-tested rather than bound: tests stay on loopback.
    url = f"ws://{host}:8765/tts/websocket"
    line, warning = _serve_notice(host, url, "espeak-ng 1.52", keyed=False)
    if open_to == "host":
        assert line == f"speakwire: serving {url} (espeak-ng 1.52, no API key: anyone on this host may connect)"
        assert warning is None
    else:
        assert "anyone on this host" not in line and f"ANYONE WHO CAN REACH {host} MAY CONNECT" in line
        assert warning is not None and warning.startswith(f"speakwire: WARNING: --host {host} is not a loopback")
        assert "--api-key" in warning
    keyed_line, keyed_warning = _serve_notice(host, url, "espeak-ng 1.52", keyed=True)
    assert keyed_line == f"speakwire: serving {url} (espeak-ng 1.52, API key required)" and keyed_warning is None
