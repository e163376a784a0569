"""loopback_candidates() scopes aioice's host-address lookup to one task, overlapping uses included."""

from __future__ import annotations

import asyncio
import re

import aioice.ice
from aiortc import RTCPeerConnection

from speakwire.transport import loopback
from speakwire.transport.loopback import loopback_candidates, loopback_configuration

CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) ", re.MULTILINE)


async def _gathered() -> set[str]:
    """The host candidates a real aiortc peer gathers for an offer, in the calling task."""
    pc = RTCPeerConnection(loopback_configuration())
    try:
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        return set(CANDIDATE.findall(pc.localDescription.sdp))
    finally:
        await pc.close()


async def test_overlapping_uses_each_gather_loopback_only_and_others_are_untouched() -> None:
    real = set(loopback._original_get_host_addresses(True, False))
    assert real and "127.0.0.1" not in real, "the machine needs a non-loopback address for this test"
    a_entered, a_exited = asyncio.Event(), asyncio.Event()
    seen: dict[str, set[str]] = {}

    async def a() -> None:
        with loopback_candidates():
            a_entered.set()
        a_exited.set()

    async def b() -> None:
        await a_entered.wait()
        with loopback_candidates():
            await a_exited.wait()  # A left its scope while B is still inside its own
            seen["b"] = await _gathered()
            seen["b_spawned"] = await asyncio.create_task(_gathered())

    async def outside() -> None:
        await a_exited.wait()
        seen["outside"] = await _gathered()

    await asyncio.gather(a(), b(), outside())
    assert seen["b"] == {"127.0.0.1"}
    assert seen["b_spawned"] == {"127.0.0.1"}
    assert seen["outside"] >= real and "127.0.0.1" not in seen["outside"]
    # After every use has ended, the lookup answers with the machine's addresses again.
    assert set(aioice.ice.get_host_addresses(True, False)) == real
