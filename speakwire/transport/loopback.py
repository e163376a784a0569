"""Two aiortc peers talking over 127.0.0.1 only: for tests, local demos and benchmarks.

WebRTC here must never leave 127.0.0.0/8: peers get ``RTCConfiguration(iceServers=[])`` (with no
configuration aiortc asks a public STUN server), and because aioice never offers 127.0.0.1 as a
host candidate, :func:`loopback_candidates` makes it the only one while candidates are gathered.

:func:`connect_loopback` plays a call the way production sees it: the receiving peer offers (as a
browser does, ``recvonly``) and the sending peer answers with the track. A codec is forced on the
answering side with ``setCodecPreferences`` before ``setRemoteDescription`` (after it the call is
silently ignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamTrack

from speakwire.errors import PeerConnectionError, UnsupportedEncodingError

__all__ = ["LoopbackCall", "connect_loopback", "loopback_candidates", "loopback_configuration"]

_LOOPBACK: tuple[str, ...] = ("127.0.0.1",)


def loopback_configuration() -> RTCConfiguration:
    """A peer configuration with no ICE servers, so nothing is sent to a public STUN server."""
    return RTCConfiguration(iceServers=[])


# Set by loopback_candidates(); tasks aioice spawns while gathering copy the context and see it.
_loopback_gathering: contextvars.ContextVar[bool] = contextvars.ContextVar("speakwire_loopback", default=False)
_original_get_host_addresses: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if _loopback_gathering.get():
        return list(_LOOPBACK)
    return _original_get_host_addresses(use_ipv4, use_ipv6)


def _install_patch() -> None:
    # Installed once for the process and never removed: a per-use save/restore breaks when two
    # gatherings overlap (the first to finish restores the real lookup under the second). The
    # replacement defers to the original outside loopback_candidates(), so others are unaffected.
    if aioice.ice.get_host_addresses is not _get_host_addresses:
        aioice.ice.get_host_addresses = _get_host_addresses


@contextlib.contextmanager
def loopback_candidates() -> Iterator[None]:
    """While active in this task, aioice gathers 127.0.0.1 as its only host candidate.

    The scope is the current :mod:`contextvars` context (this task and the tasks it creates), so
    overlapping uses in concurrent tasks do not interfere and code outside any use gathers the
    machine's real addresses. Only candidate gathering (``setLocalDescription``) needs it;
    connection checks afterwards use the gathered candidates.
    """
    _install_patch()
    token = _loopback_gathering.set(True)
    try:
        yield
    finally:
        _loopback_gathering.reset(token)


@dataclass
class LoopbackCall:
    """A connected pair: ``sender`` answers with the track, ``receiver`` offered and plays ``remote_track``.

    ``codec`` is the negotiated audio codec's name and clock rate as in the SDP (``"PCMU/8000"``,
    ``"opus/48000/2"``).
    """

    sender: RTCPeerConnection
    receiver: RTCPeerConnection
    remote_track: MediaStreamTrack
    codec: str

    async def close(self) -> None:
        """Close both peers (idempotent)."""
        await self.sender.close()
        await self.receiver.close()


def _negotiated_codec(sdp: str) -> str:
    media = re.search(r"^m=audio \d+ \S+ (\d+)", sdp, re.MULTILINE)
    if media is None:
        raise PeerConnectionError("the answer has no audio m-line")
    rtpmap = re.search(rf"^a=rtpmap:{media.group(1)} (\S+)", sdp, re.MULTILINE)
    return rtpmap.group(1) if rtpmap else media.group(1)


async def _connected(pc: RTCPeerConnection, timeout: float) -> None:
    done = asyncio.get_running_loop().create_future()

    def check() -> None:
        if done.done():
            return
        if pc.connectionState == "connected":
            done.set_result(None)
        elif pc.connectionState in ("failed", "closed"):
            done.set_exception(PeerConnectionError(f"loopback peer connection {pc.connectionState}"))

    pc.on("connectionstatechange", check)
    check()
    try:
        await asyncio.wait_for(done, timeout)
    except TimeoutError:
        raise PeerConnectionError(f"loopback peers did not connect within {timeout} s") from None


async def connect_loopback(track: MediaStreamTrack, *, codec: str | None = None, timeout: float = 10.0) -> LoopbackCall:
    """Connect two aiortc peers on 127.0.0.1, the answering one sending ``track``.

    ``codec`` is a MIME type such as ``"audio/PCMU"`` or ``"audio/opus"``; ``None`` keeps aiortc's
    order (Opus first). Raises :class:`~speakwire.errors.UnsupportedEncodingError` for a codec
    aiortc does not offer and :class:`~speakwire.errors.PeerConnectionError` if the peers do not
    connect within ``timeout`` seconds. Close the call with :meth:`LoopbackCall.close`.
    """
    receiver = RTCPeerConnection(loopback_configuration())
    sender = RTCPeerConnection(loopback_configuration())
    try:
        receiving = receiver.addTransceiver("audio", direction="recvonly")
        sending = sender.addTransceiver(track, direction="sendonly")
        if codec is not None:
            capabilities = RTCRtpSender.getCapabilities("audio").codecs
            chosen = [c for c in capabilities if c.mimeType.lower() == codec.lower()]
            if not chosen:
                known = sorted({c.mimeType for c in capabilities})
                raise UnsupportedEncodingError(f"codec {codec!r} is not offered by aiortc; known: {known}")
            sending.setCodecPreferences(chosen)
        with loopback_candidates():
            await receiver.setLocalDescription(await receiver.createOffer())
            await sender.setRemoteDescription(receiver.localDescription)
            await sender.setLocalDescription(await sender.createAnswer())
        await receiver.setRemoteDescription(sender.localDescription)
        await asyncio.gather(_connected(sender, timeout), _connected(receiver, timeout))
        remote = receiving.receiver.track
        return LoopbackCall(sender, receiver, remote, _negotiated_codec(sender.localDescription.sdp))
    except BaseException:
        await sender.close()
        await receiver.close()
        raise
