"""The demo's web server: the page, ``POST /offer``, and one :class:`DemoAgent` per WebRTC peer.

Routes (aiohttp, 127.0.0.1 by default):

- ``GET /``: the page (``page.html``, ``page.js``, ``page.css``; no external assets, so it works
  with no network beyond loopback);
- ``POST /offer``: WebRTC signaling (:class:`~speakwire.transport.signaling.OfferEndpoint`:
  ``iceServers=[]``, loopback candidates only); each peer gets its own agent, whose track is
  added before the offer is applied;
- ``POST /autotest``: the page's test hook (``?autotest=1``) posts its ``getStats`` findings here;
  they are queued on :attr:`DemoServer.autotest_results` for the test that started the browser.

Control and events go over a WebRTC **data channel** named ``"control"`` that the client opens in
its offer, not a separate WebSocket: it is born and dies with the peer it controls (no session id
to correlate, nothing left over when a tab closes), it needs no second route, and the headless
aiortc peer uses it exactly as the browser does. Messages are JSON objects, at most
:data:`MAX_CONTROL_BYTES`:

- client to server: ``{"type": "say", "text": ...}``, ``{"type": "speed", "speed": x}``,
  ``{"type": "barge_in"}``;
- server to client: the :class:`~speakwire.plugin.demo.agent.DemoAgent` events, plus
  ``{"type": "error", "message": ...}`` for a refused command.

Any WebRTC client hears the greeting as soon as its peer connects, data channel or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections import deque
from importlib import resources
from typing import Any, Final

from aiohttp import web
from aiortc import RTCDataChannel, RTCPeerConnection

from speakwire.errors import InvalidSpeedError
from speakwire.plugin.demo.agent import DemoAgent, Event
from speakwire.plugin.demo.llm import SimulatedLLM
from speakwire.transport.signaling import LocalSite, OfferEndpoint

__all__ = ["CONTROL_CHANNEL", "MAX_CONTROL_BYTES", "DemoServer", "main_serve", "quiet_pipecat_logs"]

#: The data channel's label.
CONTROL_CHANNEL: Final = "control"
#: Largest control message accepted, and largest autotest report.
MAX_CONTROL_BYTES: Final = 4096
_MAX_AUTOTEST_BYTES: Final = 256 * 1024
# Events kept for a client whose data channel is not open yet (the greeting starts at once).
_MAX_BUFFERED_EVENTS: Final = 512
_MAX_PEERS: Final = 8

_ASSETS: Final = {
    "/": ("page.html", "text/html"),
    "/page.js": ("page.js", "text/javascript"),
    "/page.css": ("page.css", "text/css"),
}


class _Session:
    """One peer: its agent and its control channel."""

    def __init__(self, pc: RTCPeerConnection, llm: SimulatedLLM) -> None:
        self.pc = pc
        self.channel: RTCDataChannel | None = None
        self._pending: deque[str] = deque(maxlen=_MAX_BUFFERED_EVENTS)
        self.agent = DemoAgent(self.send, llm=llm)
        self._greeted = False
        self._tasks: set[asyncio.Task[Any]] = set()

    def send(self, event: Event) -> None:
        message = json.dumps(event)
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            channel.send(message)
        else:
            self._pending.append(message)

    def attach(self, channel: RTCDataChannel) -> None:
        if channel.label != CONTROL_CHANNEL or self.channel is not None:
            return
        self.channel = channel

        def flush() -> None:
            while self._pending and channel.readyState == "open":
                channel.send(self._pending.popleft())

        channel.on("open", flush)
        channel.on("message", self._on_message)
        flush()

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def greet(self) -> None:
        if not self._greeted:
            self._greeted = True
            await self.agent.greet()

    def _on_message(self, message: str | bytes) -> None:
        self.spawn(self.handle(message))

    async def handle(self, message: str | bytes) -> None:
        """Run one control message; refused ones become an ``error`` event."""
        try:
            if len(message) > MAX_CONTROL_BYTES:
                raise ValueError(f"control message of {len(message)} bytes exceeds {MAX_CONTROL_BYTES}")
            command = json.loads(message)
            if not isinstance(command, dict):
                raise ValueError("a control message must be a JSON object")
            kind = command.get("type")
            if kind == "say":
                text = command.get("text")
                if not isinstance(text, str) or not text.strip():
                    raise ValueError("'say' needs a non-empty string 'text'")
                await self.agent.answer(text)
            elif kind == "speed":
                await self.agent.set_speed(command.get("speed"))
            elif kind == "barge_in":
                await self.agent.barge_in()
            else:
                raise ValueError(f"unknown control message type {kind!r}; use 'say', 'speed' or 'barge_in'")
        except (ValueError, InvalidSpeedError) as exc:  # json errors and InvalidSpeedError are ValueErrors
            self.send({"type": "error", "message": str(exc)})

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.agent.close()


class DemoServer(LocalSite):
    """The demo: page, signaling and agents on ``host:port`` (127.0.0.1; ``port=0`` picks one).

    ``llm`` is the simulated LLM every agent uses (default: :class:`SimulatedLLM`).
    Use it as an async context manager, or :meth:`start` and :meth:`close`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, *, llm: SimulatedLLM | None = None) -> None:
        super().__init__(host, port)
        self._llm = llm
        self._sessions: dict[RTCPeerConnection, _Session] = {}
        self._endpoint = OfferEndpoint(self._on_peer, max_peers=_MAX_PEERS)
        #: What pages run with ``?autotest=1`` posted to ``/autotest``, in arrival order.
        self.autotest_results: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=16)

    _what = "the demo server"

    @property
    def url(self) -> str:
        """The page's URL, e.g. ``http://127.0.0.1:8080/``."""
        return self._base_url() + "/"

    @property
    def agents(self) -> list[DemoAgent]:
        """The agents of the connected peers."""
        return [s.agent for s in self._sessions.values()]

    def make_app(self) -> web.Application:
        """The aiohttp application (routes as in the module docstring)."""
        app = web.Application(client_max_size=_MAX_AUTOTEST_BYTES)
        for path in _ASSETS:
            app.router.add_get(path, self._asset)
        app.router.add_post("/autotest", self._autotest)
        self._endpoint.install(app, "/offer")
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _closed(self) -> None:
        await self._close_sessions()

    # -- routes ---------------------------------------------------------------------------------

    async def _asset(self, request: web.Request) -> web.Response:
        name, content_type = _ASSETS[request.path]
        body = resources.files("speakwire.plugin.demo").joinpath(name).read_bytes()
        return web.Response(body=body, content_type=content_type, headers={"Cache-Control": "no-store"})

    async def _autotest(self, request: web.Request) -> web.Response:
        try:
            report = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return web.json_response({"error": f"body is not valid JSON: {exc}"}, status=400)
        if not isinstance(report, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        with contextlib.suppress(asyncio.QueueFull):
            self.autotest_results.put_nowait(report)
        return web.json_response({"ok": True})

    # -- peers ----------------------------------------------------------------------------------

    async def _on_peer(self, pc: RTCPeerConnection) -> None:
        session = _Session(pc, self._llm or SimulatedLLM())
        self._sessions[pc] = session
        # Started before the answer, so the embedded TTS server is up when the peer connects.
        try:
            await session.agent.start()
        except BaseException:
            self._sessions.pop(pc, None)
            await session.close()
            raise
        pc.addTrack(session.agent.track)
        pc.on("datachannel", session.attach)

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState == "connected":
                session.spawn(session.greet())
            elif pc.connectionState in ("failed", "closed"):
                await self._drop(pc)

    async def _drop(self, pc: RTCPeerConnection) -> None:
        session = self._sessions.pop(pc, None)
        if session is not None:
            await session.close()

    async def _on_shutdown(self, _app: web.Application) -> None:
        await self._close_sessions()

    async def _close_sessions(self) -> None:
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        await self._endpoint.close()


def quiet_pipecat_logs(level: str = "WARNING") -> None:
    """Show pipecat's (loguru) log records from ``level`` up only, on stderr.

    pipecat logs every frame of a turn at DEBUG by default; the command-line entries call this so
    a user sees the demo's own output. Libraries embedding the demo keep their own logging.
    """
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=level)


def main_serve(host: str, port: int) -> int:
    """Serve the demo until Ctrl-C or SIGTERM; the ``speakwire demo`` entry."""
    import signal

    quiet_pipecat_logs()

    async def serve() -> None:
        async with DemoServer(host, port) as server:
            stop = asyncio.Event()
            with contextlib.suppress(NotImplementedError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            print(f"speakwire demo: open {server.url} in a browser (embedded espeak-ng TTS; Ctrl-C to stop)",
                  flush=True)
            await stop.wait()

    try:
        asyncio.run(serve())
    except OSError as exc:  # the port is taken, or the address is not this host's
        print(f"speakwire demo: cannot serve on {host}:{port}: {exc}", file=sys.stderr)
        return 2
    return 0
