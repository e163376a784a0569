"""WebRTC signaling over one HTTP route: ``POST /offer`` with ``{"sdp", "type"}``, answered in kind.

The shape is pipecat's SmallWebRTC one (``{"sdp": ..., "type": "offer"}`` in, ``{"sdp": ...,
"type": "answer", "pc_id": ...}`` out), so a SmallWebRTC browser client can talk to it. There is no
trickle ICE: aiortc gathers every candidate before it answers, so one round trip connects.

The app owner supplies a callback receiving each new :class:`~aiortc.RTCPeerConnection` *before*
the offer is applied, so it can ``addTrack`` a :class:`~speakwire.transport.track.RingBufferAudioTrack`,
or create a transceiver and force a codec with ``setCodecPreferences`` (after
``setRemoteDescription`` aiortc silently ignores that), and register ``"track"`` handlers for the
caller's microphone. Peers that fail or close are forgotten, and so is a peer not connected within
``connect_timeout`` seconds of its answer (closed first): an offer whose candidates never work
would otherwise hold one of the ``max_peers`` slots, and whatever the app set up for it, forever.
The rest are closed on shutdown.

Any web page can make a browser ``POST`` here, so requests are checked before the body is read:
the ``Content-Type`` must be ``application/json`` (HTTP 415 otherwise; that is also what makes a
cross-site ``fetch`` need a CORS preflight, which this server never grants), and an ``Origin``
header, when present, must be the server's own (``http://<address>:<port>`` of the socket the
request came in on, or ``http://localhost:<port>`` on a loopback address) or listed in
``allowed_origins`` (HTTP 403 otherwise). The socket address rather than the ``Host`` header is
the reference, so a DNS-rebound name does not pass. Requests without ``Origin`` (not from a
browser) are not refused for it.

Loopback by default (the team rule: WebRTC traffic must not leave 127.0.0.0/8): the HTTP server
binds 127.0.0.1, peers get ``iceServers=[]`` (aiortc otherwise asks a public STUN server), the
answer's only host candidate is 127.0.0.1 (aioice never offers it by itself), and offered
candidates outside 127.0.0.0/8, mDNS ``.local`` names included, are stripped before aiortc sees
them. Chromium signals no loopback candidate at all and still connects, as peer-reflexive, when it
checks ours. ``loopback_only=False`` lifts all of that but the bind address, which is the caller's
choice.

Bad requests get HTTP 400 (or the 403, 413 and 415 above) with ``{"error": message, "field":
name}``; ``field`` is ``null`` when the whole body is at fault. Bodies are bounded (64 KiB by
default) and so is the number of live peers (HTTP 503 beyond it).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Collection
from types import TracebackType
from typing import Final, Self

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from speakwire.transport.loopback import loopback_candidates, loopback_configuration

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_PEERS",
    "LocalSite",
    "OfferEndpoint",
    "PeerCallback",
    "SignalingServer",
    "strip_non_loopback_candidates",
]

_log = logging.getLogger(__name__)

#: A callback given each new peer before the offer is applied; it may be a coroutine function.
PeerCallback = Callable[[RTCPeerConnection], Awaitable[None] | None]

#: Largest request body accepted. Browser offers are 3-8 KB; this leaves room for many m-lines.
DEFAULT_MAX_BODY_BYTES: Final = 64 * 1024
#: Live peers one endpoint holds before answering 503.
DEFAULT_MAX_PEERS: Final = 64
#: Seconds after its answer within which a peer must connect, or it is closed and forgotten.
#: Loopback peers connect in well under a second; a browser's ICE checks take a few.
DEFAULT_CONNECT_TIMEOUT: Final = 20.0

_CANDIDATE_LINE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ \S+.*$")


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        # Host names (mDNS "<uuid>.local" from browsers) would need resolving off-loopback.
        return False


def strip_non_loopback_candidates(sdp: str) -> str:
    """``sdp`` without the ``a=candidate`` lines whose address is not in 127.0.0.0/8 or ``::1``.

    Every other line, line endings included, is kept as is.
    """
    lines = sdp.splitlines(keepends=True)
    kept = []
    for line in lines:
        match = _CANDIDATE_LINE.match(line.rstrip("\r\n"))
        if match is None or _is_loopback(match.group(1)):
            kept.append(line)
    return "".join(kept)


class _BadRequest(Exception):
    def __init__(self, message: str, field: str | None, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


def _error(message: str, field: str | None, status: int) -> web.Response:
    return web.json_response({"error": message, "field": field}, status=status)


class OfferEndpoint:
    """The ``POST /offer`` handler and the peers it created.

    ``on_peer`` is called (and awaited if it returns an awaitable) with each new peer before its
    offer is applied. ``configuration`` defaults to ``RTCConfiguration(iceServers=[])``.
    ``loopback_only`` strips non-loopback candidates from offers and answers from 127.0.0.1 only.
    ``connect_timeout`` is how long after its answer a peer may take to connect before it is
    closed and forgotten. ``allowed_origins`` are exact ``Origin`` values (``"https://app.example"``)
    accepted besides the server's own. Install it in an app with :meth:`install`, or use :class:`SignalingServer`.
    """

    def __init__(
        self,
        on_peer: PeerCallback,
        *,
        configuration: RTCConfiguration | None = None,
        loopback_only: bool = True,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_peers: int = DEFAULT_MAX_PEERS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        allowed_origins: Collection[str] = (),
    ) -> None:
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be positive, got {connect_timeout!r}")
        if isinstance(allowed_origins, str):
            raise TypeError("allowed_origins must be a collection of origins, not one string")
        if max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes!r}")
        if max_peers <= 0:
            raise ValueError(f"max_peers must be positive, got {max_peers!r}")
        self._on_peer = on_peer
        self._configuration = configuration
        self._loopback_only = loopback_only
        self._max_body = max_body_bytes
        self._max_peers = max_peers
        self._connect_timeout = connect_timeout
        self._allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self._peers: dict[str, RTCPeerConnection] = {}
        self._deadlines: dict[str, asyncio.Task[None]] = {}

    @property
    def peers(self) -> dict[str, RTCPeerConnection]:
        """The live peers by ``pc_id`` (a copy)."""
        return dict(self._peers)

    def install(self, app: web.Application, path: str = "/offer") -> None:
        """Add ``POST path`` to ``app`` and close this endpoint's peers when ``app`` shuts down."""
        app.router.add_post(path, self.handle_offer)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, _app: web.Application) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every live peer (idempotent)."""
        peers = list(self._peers.values())
        self._peers.clear()
        for task in self._deadlines.values():
            task.cancel()
        self._deadlines.clear()
        await asyncio.gather(*(pc.close() for pc in peers), return_exceptions=True)

    async def handle_offer(self, request: web.Request) -> web.Response:
        """Answer one offer; see the module docstring for the request and response shapes."""
        try:
            self._check_origin(request)
            offer = await self._read_offer(request)
        except _BadRequest as bad:
            return _error(str(bad), bad.field, bad.status)
        if len(self._peers) >= self._max_peers:
            return _error(f"too many peers: at most {self._max_peers} may be connected", None, 503)
        pc = RTCPeerConnection(self._configuration or loopback_configuration())
        pc_id = uuid.uuid4().hex
        self._peers[pc_id] = pc
        self._forget_when_done(pc_id, pc)
        try:
            result = self._on_peer(pc)
            if inspect.isawaitable(result):
                await result
        except Exception:
            _log.exception("on_peer callback failed for peer %s", pc_id)
            await self._drop(pc_id)
            return _error("the application could not set up the peer", None, 500)
        try:
            await pc.setRemoteDescription(offer)
        except Exception as exc:  # aiortc raises ValueError and others on SDP it cannot use
            await self._drop(pc_id)
            return _error(f"the offer's SDP cannot be used: {exc}", "sdp", 400)
        try:
            if self._loopback_only:
                with loopback_candidates():
                    await pc.setLocalDescription(await pc.createAnswer())
            else:
                await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await self._drop(pc_id)
            return _error(f"no answer could be made for the offer: {exc}", "sdp", 400)
        self._start_deadline(pc_id, pc)
        answer = pc.localDescription
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "pc_id": pc_id})

    def _check_origin(self, request: web.Request) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/").lower() not in self._own_origins(request):
            raise _BadRequest(f"origin {origin!r} may not make offers here", None, 403)
        if request.content_type != "application/json":
            raise _BadRequest(f"Content-Type must be application/json, got {request.content_type!r}", None, 415)

    def _own_origins(self, request: web.Request) -> frozenset[str]:
        sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
        if not sockname:
            return self._allowed_origins
        address, port = sockname[0], sockname[1]
        hosts = [f"[{address}]" if ":" in address else address]
        if _is_loopback(address):
            hosts.append("localhost")
        return self._allowed_origins | {f"{request.scheme}://{host}:{port}".lower() for host in hosts}

    async def _read_offer(self, request: web.Request) -> RTCSessionDescription:
        if request.content_length is not None and request.content_length > self._max_body:
            raise _BadRequest(f"body of {request.content_length} bytes exceeds {self._max_body}", None, 413)
        body = await request.content.read(self._max_body + 1)
        if len(body) > self._max_body:
            raise _BadRequest(f"body exceeds {self._max_body} bytes", None, 413)
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _BadRequest(f"body is not valid JSON: {exc}", None) from None
        if not isinstance(data, dict):
            raise _BadRequest(f"body must be a JSON object, got {type(data).__name__}", None)
        for name in ("sdp", "type"):
            if name not in data:
                raise _BadRequest(f"missing field {name!r}", name)
            if not isinstance(data[name], str):
                raise _BadRequest(f"field {name!r} must be a string, got {type(data[name]).__name__}", name)
        if data["type"] != "offer":
            raise _BadRequest(f"field 'type' must be 'offer', got {data['type']!r}", "type")
        sdp = data["sdp"]
        if not sdp.startswith("v=0"):
            raise _BadRequest("field 'sdp' is not a session description (it must start with 'v=0')", "sdp")
        if self._loopback_only:
            sdp = strip_non_loopback_candidates(sdp)
        return RTCSessionDescription(sdp=sdp, type="offer")

    def _forget_when_done(self, pc_id: str, pc: RTCPeerConnection) -> None:
        @pc.on("connectionstatechange")
        async def _changed() -> None:
            if pc.connectionState == "connected":
                deadline = self._deadlines.pop(pc_id, None)
                if deadline is not None:
                    deadline.cancel()
            elif pc.connectionState in ("failed", "closed"):
                await self._drop(pc_id)

    def _start_deadline(self, pc_id: str, pc: RTCPeerConnection) -> None:
        async def expire() -> None:
            await asyncio.sleep(self._connect_timeout)
            self._deadlines.pop(pc_id, None)
            if pc.connectionState != "connected" and self._peers.get(pc_id) is pc:
                _log.info("peer %s not connected %.1f s after its answer: closing it", pc_id, self._connect_timeout)
                await self._drop(pc_id)

        if pc.connectionState == "connected" or pc_id not in self._peers:
            return
        self._deadlines[pc_id] = asyncio.create_task(expire(), name=f"signaling-deadline-{pc_id}")

    async def _drop(self, pc_id: str) -> None:
        deadline = self._deadlines.pop(pc_id, None)
        if deadline is not None and deadline is not asyncio.current_task():
            deadline.cancel()
        pc = self._peers.pop(pc_id, None)
        if pc is not None:
            await pc.close()


class LocalSite:
    """An aiohttp application served on ``host:port`` (127.0.0.1 by default; ``port=0`` picks one).

    Subclasses build the application in :meth:`make_app` and release their own resources in
    :meth:`_closed`. Use it as an async context manager, or call :meth:`start` and :meth:`close`.
    """

    _what = "the server"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    def make_app(self) -> web.Application:
        """The aiohttp application to serve."""
        raise NotImplementedError

    async def _closed(self) -> None:
        """Called by :meth:`close` once the HTTP server has stopped."""

    @property
    def port(self) -> int:
        """The bound port (raises ``RuntimeError`` before :meth:`start`)."""
        if self._port is None:
            raise RuntimeError(f"{self._what} is not started")
        return self._port

    def _base_url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving."""
        if self._runner is not None:
            return
        runner = web.AppRunner(self.make_app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def close(self) -> None:
        """Stop serving, then release what the subclass holds (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        await self._closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class SignalingServer(LocalSite):
    """An aiohttp server with one :class:`OfferEndpoint` at ``path``, bound to 127.0.0.1 by default.

    ``port=0`` picks a free port (read :attr:`port` or :attr:`url` after start). Use it as an
    async context manager, or call :meth:`start` and :meth:`close`; closing shuts the HTTP server
    down and closes every peer. Other keyword arguments go to :class:`OfferEndpoint`.
    """

    def __init__(
        self,
        on_peer: PeerCallback,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/offer",
        configuration: RTCConfiguration | None = None,
        loopback_only: bool = True,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_peers: int = DEFAULT_MAX_PEERS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        allowed_origins: Collection[str] = (),
    ) -> None:
        self.endpoint: Final = OfferEndpoint(
            on_peer,
            configuration=configuration,
            loopback_only=loopback_only,
            max_body_bytes=max_body_bytes,
            max_peers=max_peers,
            connect_timeout=connect_timeout,
            allowed_origins=allowed_origins,
        )
        super().__init__(host, port)
        self._path = path
        self._max_body = max_body_bytes

    _what = "the signaling server"

    @property
    def url(self) -> str:
        """The offer URL, e.g. ``http://127.0.0.1:8765/offer``."""
        return self._base_url() + self._path

    def make_app(self) -> web.Application:
        """An application with the offer route only."""
        app = web.Application(client_max_size=self._max_body)
        self.endpoint.install(app, self._path)
        return app

    async def _closed(self) -> None:
        await self.endpoint.close()
