"""The POST /offer signaling helper: a real aiortc client over real HTTP on 127.0.0.1, and bad requests."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from speakwire.transport.loopback import loopback_candidates, loopback_configuration
from speakwire.transport.signaling import SignalingServer, strip_non_loopback_candidates
from speakwire.transport.track import RingBufferAudioTrack
from tests.transport.fixtures_track import Recorder, active_span, peak_frequency, rms, tone

CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) ", re.MULTILINE)
JSON = {"Content-Type": "application/json"}


async def _client_offer() -> RTCPeerConnection:
    client = RTCPeerConnection(loopback_configuration())
    client.addTransceiver("audio", direction="recvonly")
    with loopback_candidates():
        await client.setLocalDescription(await client.createOffer())
    return client


async def _post(
    url: str, body: bytes | str | dict[str, object], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object]]:
    data = json.dumps(body) if isinstance(body, dict) else body
    async with aiohttp.ClientSession() as session, session.post(url, data=data, headers=headers or JSON) as response:
        return response.status, await response.json()


async def _connected(pc: RTCPeerConnection) -> None:
    async with asyncio.timeout(10):
        while pc.connectionState != "connected":
            await asyncio.sleep(0.01)


async def test_aiortc_client_connects_over_http_and_hears_the_track() -> None:
    tracks: list[RingBufferAudioTrack] = []

    async def on_peer(pc: RTCPeerConnection) -> None:
        track = RingBufferAudioTrack(16000, channels=2)
        pc.addTrack(track)
        tracks.append(track)

    async with SignalingServer(on_peer) as server:
        assert server.url.startswith("http://127.0.0.1:")
        client = await _client_offer()
        try:
            status, answer = await _post(server.url, {"sdp": client.localDescription.sdp, "type": "offer"})
            assert status == 200 and answer["type"] == "answer" and len(answer["pc_id"]) == 32
            assert set(CANDIDATE.findall(answer["sdp"])) == {"127.0.0.1"}, "answer offers only loopback"
            remote: list[object] = []
            client.on("track", remote.append)
            await client.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
            await _connected(client)
            assert list(server.endpoint.peers) == [answer["pc_id"]]
            recorder = Recorder(remote[0]).start()
            await recorder.wait_frames(5)
            tracks[0].write(tone(16000, 440, 0.6))
            await asyncio.sleep(0.6 + 0.4)
            await recorder.stop()
        finally:
            await client.close()
    x = recorder.signal()
    start, end = active_span(x, 0.05)
    assert (end - start) / recorder.rate == pytest.approx(0.6, abs=0.01)
    steady = x[start + 4800 : end - 4800]
    assert peak_frequency(steady, recorder.rate) == pytest.approx(440, abs=1)
    # A 0.5 sine sent as duplicated stereo arrives at full level through Opus.
    assert 20 * np.log10(rms(steady) / (0.5 / np.sqrt(2))) == pytest.approx(0, abs=0.5)


async def test_shutdown_closes_peers_and_failed_callbacks_answer_500() -> None:
    created: list[RTCPeerConnection] = []

    def on_peer(pc: RTCPeerConnection) -> None:
        created.append(pc)
        if len(created) == 2:
            raise RuntimeError("app refused")
        pc.addTrack(RingBufferAudioTrack(8000))

    server = SignalingServer(on_peer)
    await server.start()
    clients = [await _client_offer(), await _client_offer()]
    try:
        status, _ = await _post(server.url, {"sdp": clients[0].localDescription.sdp, "type": "offer"})
        assert status == 200
        status, body = await _post(server.url, {"sdp": clients[1].localDescription.sdp, "type": "offer"})
        assert (status, body) == (500, {"error": "the application could not set up the peer", "field": None})
        assert created[1].connectionState == "closed" and len(server.endpoint.peers) == 1
        await server.close()
        assert created[0].connectionState == "closed" and server.endpoint.peers == {}
    finally:
        await server.close()
        for client in clients:
            await client.close()


async def test_peer_limit_answers_503() -> None:
    async with SignalingServer(lambda pc: None, max_peers=1) as server:
        clients = [await _client_offer(), await _client_offer()]
        try:
            assert (await _post(server.url, {"sdp": clients[0].localDescription.sdp, "type": "offer"}))[0] == 200
            status, body = await _post(server.url, {"sdp": clients[1].localDescription.sdp, "type": "offer"})
            assert (status, body) == (503, {"error": "too many peers: at most 1 may be connected", "field": None})
        finally:
            for client in clients:
                await client.close()


@pytest.mark.parametrize(
    ("body", "status", "field", "message"),
    [
        ("{not json", 400, None, "body is not valid JSON"),
        ("[1, 2]", 400, None, "body must be a JSON object, got list"),
        ({"type": "offer"}, 400, "sdp", "missing field 'sdp'"),
        ({"sdp": "v=0\r\n"}, 400, "type", "missing field 'type'"),
        ({"sdp": 5, "type": "offer"}, 400, "sdp", "field 'sdp' must be a string, got int"),
        ({"sdp": "v=0\r\n", "type": None}, 400, "type", "field 'type' must be a string, got NoneType"),
        ({"sdp": "v=0\r\n", "type": "answer"}, 400, "type", "field 'type' must be 'offer', got 'answer'"),
        ({"sdp": "hello", "type": "offer"}, 400, "sdp", "field 'sdp' is not a session description"),
        ({"sdp": "v=0\r\nm=audio nonsense\r\n", "type": "offer"}, 400, "sdp", "the offer's SDP cannot be used"),
        ("x" * 70000, 413, None, "exceeds 65536"),
    ],
)
async def test_bad_requests_get_a_json_error_naming_the_field(
    body: str | dict[str, object], status: int, field: str | None, message: str
) -> None:
    peers: list[RTCPeerConnection] = []
    async with SignalingServer(peers.append) as server:
        async with aiohttp.ClientSession() as session:
            data = json.dumps(body) if isinstance(body, dict) else body
            async with session.post(server.url, data=data, headers=JSON) as response:
                got_status = response.status
                got = await response.json() if response.content_type == "application/json" else {}
        assert got_status == status
        if got:
            assert got["field"] == field and message in got["error"]
        else:
            assert status == 413  # aiohttp's own limit may answer before the handler runs
        assert server.endpoint.peers == {}
        assert all(pc.connectionState == "closed" for pc in peers)


def test_strip_non_loopback_candidates_keeps_everything_else_byte_for_byte() -> None:
    sdp = (
        "v=0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
        "a=candidate:1 1 udp 2122260223 192.168.1.20 50000 typ host\r\n"
        "a=candidate:2 1 udp 2122260223 127.0.0.1 50001 typ host\r\n"
        "a=candidate:3 1 udp 2122260223 4f1c-aa.local 50002 typ host generation 0\r\n"
        "a=candidate:4 1 udp 1686052607 203.0.113.9 50003 typ srflx raddr 10.0.0.2 rport 50000\r\n"
        "a=candidate:5 1 udp 2122260223 ::1 50004 typ host\r\n"
        "a=end-of-candidates\r\n"
    )
    assert strip_non_loopback_candidates(sdp) == (
        "v=0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
        "a=candidate:2 1 udp 2122260223 127.0.0.1 50001 typ host\r\n"
        "a=candidate:5 1 udp 2122260223 ::1 50004 typ host\r\n"
        "a=end-of-candidates\r\n"
    )


def _without_candidates(sdp: str) -> str:
    return "".join(line for line in sdp.splitlines(True) if not line.startswith(("a=candidate", "a=end-of-candidates")))


async def test_a_peer_that_never_connects_is_closed_and_forgotten_after_the_deadline() -> None:
    created: list[RTCPeerConnection] = []
    async with SignalingServer(created.append, connect_timeout=0.5, max_peers=1) as server:
        stalled = await _client_offer()
        healthy = await _client_offer()
        try:
            # No candidates: the peer can never connect, so it would hold the only slot for good.
            status, _ = await _post(
                server.url, {"sdp": _without_candidates(stalled.localDescription.sdp), "type": "offer"}
            )
            assert status == 200 and len(server.endpoint.peers) == 1
            await asyncio.sleep(0.25)
            assert created[0].connectionState != "closed" and len(server.endpoint.peers) == 1
            status, _ = await _post(server.url, {"sdp": healthy.localDescription.sdp, "type": "offer"})
            assert status == 503
            async with asyncio.timeout(2):
                while server.endpoint.peers:
                    await asyncio.sleep(0.02)
            assert created[0].connectionState == "closed"
            # The slot is free again; a peer that does connect outlives the deadline.
            status, answer = await _post(server.url, {"sdp": healthy.localDescription.sdp, "type": "offer"})
            assert status == 200
            await healthy.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
            await _connected(healthy)
            await asyncio.sleep(1.0)
            assert list(server.endpoint.peers) == [answer["pc_id"]]
            assert created[1].connectionState == "connected"
        finally:
            await stalled.close()
            await healthy.close()


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({"Content-Type": "text/plain"}, 415, "Content-Type must be application/json, got 'text/plain'"),
        ({}, 415, "Content-Type must be application/json, got 'application/octet-stream'"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "Content-Type must be application/json"),
        ({"Content-Type": "application/json", "Origin": "https://evil.example"}, 403, "origin 'https://evil.example'"),
        ({"Content-Type": "text/plain", "Origin": "https://evil.example"}, 403, "may not make offers here"),
        ({"Content-Type": "application/json", "Origin": "null"}, 403, "origin 'null' may not make offers here"),
        # DNS rebinding: the attacker's name resolves to 127.0.0.1, so Host and Origin agree.
        (
            {"Content-Type": "application/json", "Origin": "http://evil.example:{port}", "Host": "evil.example:{port}"},
            403,
            "may not make offers here",
        ),
        ({"Content-Type": "application/json", "Origin": "http://127.0.0.1:{other}"}, 403, "may not make offers here"),
    ],
)
async def test_cross_site_and_non_json_offers_are_refused_before_a_peer_exists(
    headers: dict[str, str], status: int, message: str
) -> None:
    created: list[RTCPeerConnection] = []
    async with SignalingServer(created.append) as server:
        client = await _client_offer()
        try:
            port = server.port
            filled = {k: v.format(port=port, other=port + 1) for k, v in headers.items()}
            async with aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as session:
                body = json.dumps({"sdp": client.localDescription.sdp, "type": "offer"}).encode()
                async with session.post(server.url, data=body, headers=filled) as response:
                    got = (response.status, await response.json())
        finally:
            await client.close()
    assert got[0] == status and got[1]["field"] is None and message in got[1]["error"]
    assert created == []


@pytest.mark.parametrize("origin", ["http://127.0.0.1:{port}", "http://localhost:{port}", "https://app.example"])
async def test_same_origin_and_allow_listed_offers_are_answered(origin: str) -> None:
    async with SignalingServer(lambda pc: None, allowed_origins=["https://app.example/"]) as server:
        client = await _client_offer()
        try:
            headers = {**JSON, "Origin": origin.format(port=server.port)}
            status, answer = await _post(server.url, {"sdp": client.localDescription.sdp, "type": "offer"}, headers)
            assert status == 200 and answer["type"] == "answer"
        finally:
            await client.close()


def test_signaling_options_are_validated() -> None:
    with pytest.raises(ValueError, match="connect_timeout must be positive, got 0"):
        SignalingServer(lambda pc: None, connect_timeout=0)
    with pytest.raises(TypeError, match="allowed_origins must be a collection"):
        SignalingServer(lambda pc: None, allowed_origins="https://app.example")
