"""The demo page in a real headless Chromium: speech arrives, the speed control works, barge-in silences.

The page's own test hook (``?autotest=1``) clicks through the steps a user would, samples
``getStats()`` (inbound-rtp audio) every 50 ms and POSTs it all back to the server under test.
"""

from __future__ import annotations

import asyncio
from typing import Any

from speakwire.plugin.demo import DemoServer
from tests.plugin.chromium import chromium, chromium_path


def _window(stats: list[dict[str, Any]], start: float, end: float) -> list[dict[str, Any]]:
    return [s for s in stats if start <= s["at"] <= end]


def _energy(stats: list[dict[str, Any]], start: float, end: float) -> float:
    window = _window(stats, start, end)
    return window[-1]["totalAudioEnergy"] - window[0]["totalAudioEnergy"]


async def test_page_speaks_changes_speed_and_barges_in_in_headless_chromium() -> None:
    chromium_path()  # skip (or fail under CI) before starting anything
    async with DemoServer("127.0.0.1", 0) as server:
        with chromium(f"{server.url}?autotest=1"):
            report = await asyncio.wait_for(server.autotest_results.get(), timeout=45)
    assert report["errors"] == []
    stats, marks = report["stats"], report["marks"]

    # Speech arrives: samples keep coming and the greeting is loud.
    greeting = _window(stats, marks["greeting_start"], marks["greeting_end"])
    assert greeting[-1]["totalSamplesReceived"] - greeting[0]["totalSamplesReceived"] > 48000 * 2
    assert max(s["audioLevel"] for s in greeting) > 0.05
    assert report["greeting"]["words_heard"] == 12

    # The speed control: the server applies 2.0 and the same reply plays in about half the time.
    assert report["fastSpeed"]["speed"] == 2.0
    assert report["normal"]["speeds"] == [1.0] and report["fast"]["speeds"] == [2.0]
    ratio = report["fast"]["audio_s"] / report["normal"]["audio_s"]
    assert 0.4 < ratio < 0.62, (report["normal"], report["fast"])

    # Barge-in: loud just before, silent soon after, as the browser measured it. Chromium's
    # playout (jitter buffer) delays the cut by ~100-250 ms past the server's fade frame, its
    # getStats() refreshes about every 100 ms and its audioLevel decays by 4x per update, so the
    # check is on totalAudioEnergy (which stops growing) 400 ms on, and on the level 650 ms on.
    cut = marks["barge_in"]
    assert max(s["audioLevel"] for s in _window(stats, cut - 600, cut)) > 0.02
    assert report["bargeIn"]["latency_ms"] < 60
    before = _energy(stats, cut - 600, cut) / 0.6
    after = _energy(stats, cut + 400, marks["end"]) / ((marks["end"] - cut - 400) / 1000)
    series = [(round(s["at"] - cut), round(s["audioLevel"], 4)) for s in _window(stats, cut - 200, cut + 800)]
    assert before > 0.05 and after < before / 100, (before, after, series)
    quiet = _window(stats, cut + 650, marks["end"])
    assert len(quiet) > 10 and max(s["audioLevel"] for s in quiet) < 0.002, series
    # Samples keep arriving (silence), so the quiet is the audio's, not a dead connection.
    assert quiet[-1]["totalSamplesReceived"] - quiet[0]["totalSamplesReceived"] > 48000 * 0.5
