"""The demo's pieces: the simulated LLM's tokens, the served page, and refused control messages."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys

import aiohttp
import pytest

from speakwire.plugin.demo import DemoServer
from speakwire.plugin.demo.headless import _Client
from speakwire.plugin.demo.llm import GREETING, SimulatedLLM, pick_reply, tokenize


def test_tokens_rebuild_the_text_and_look_like_an_llms() -> None:
    text = "Hi, I'm the speakwire demo agent. Internationalisation isn't 42 tokens!"
    tokens = tokenize(text)
    assert "".join(tokens) == text
    assert tokens[:6] == ["Hi", ",", " I", "'", "m", " the"]
    # Long words become pieces, the first with the leading space.
    assert tokens[6:8] == [" spea", "kwire"]
    start = tokens.index(" Inte")
    assert tokens[start : start + 5] == [" Inte", "rnat", "iona", "lisa", "tion"]
    assert all(len(t.strip()) <= 6 for t in tokens)
    assert " 42" in tokens and "!" in tokens


def test_replies_are_chosen_by_keyword() -> None:
    assert pick_reply("Can I INTERRUPT you?").startswith("When you barge in")
    assert pick_reply("make it faster").startswith("Speed is applied locally")
    assert pick_reply("hello") == "Hello again! I'm listening."
    assert pick_reply("what's this?").startswith("Here is a scripted answer")


async def test_the_llm_streams_at_its_rate() -> None:
    llm = SimulatedLLM(tokens_per_s=200.0, first_token_s=0.05, seed=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    times, tokens = [], []
    async for token in llm.stream(GREETING):
        times.append(loop.time() - started)
        tokens.append(token)
    assert "".join(tokens) == GREETING
    assert times[0] >= 0.05
    rate = (len(tokens) - 1) / (times[-1] - times[0])
    assert 120 < rate < 210, rate
    with pytest.raises(ValueError, match="tokens_per_s"):
        SimulatedLLM(tokens_per_s=0)


async def test_the_page_is_served_with_no_external_assets() -> None:
    async with DemoServer("127.0.0.1", 0) as server, aiohttp.ClientSession() as http:
        assert server.url.startswith("http://127.0.0.1:")
        bodies = {}
        for path, kind in (("", "text/html"), ("page.js", "text/javascript"), ("page.css", "text/css")):
            async with http.get(server.url + path) as response:
                assert response.status == 200 and response.content_type == kind
                bodies[path] = await response.text()
        assert '<script src="/page.js">' in bodies[""] and 'href="/page.css"' in bodies[""]
        for body in bodies.values():
            assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", body), "external asset"
        assert "iceServers: []" in bodies["page.js"]
        async with http.post(server.url + "offer", json={"sdp": "x", "type": "offer"}) as response:
            assert response.status == 400 and (await response.json())["field"] == "sdp"
        async with http.post(server.url + "autotest", data=b"{not json") as response:
            assert response.status == 400


async def test_bad_control_messages_get_precise_errors_and_the_call_goes_on() -> None:
    async with DemoServer("127.0.0.1", 0) as server:
        client = _Client()
        try:
            await client.connect(f"{server.url}offer")
            await client.wait_for("reply_start", turn=1)
            for bad in ({"type": "speed", "speed": 3.0}, {"type": "dance"}, {"type": "say", "text": " "}):
                client.send(bad)
            client.channel.send("[1, 2]")
            client.channel.send("x" * 5000)
            await client.wait_until(lambda: len(client.of("error")) >= 5, timeout=10)
            messages = [e["message"] for e in client.of("error")]
            assert "3.0" in messages[0] and "2.0" in messages[0]  # the value and the range
            assert "'dance'" in messages[1]
            assert "'text'" in messages[2]
            assert "JSON object" in messages[3]
            assert "5000 bytes" in messages[4]
            # Nothing changed and the agent still works: the greeting plays out, a reply follows.
            assert [e["speed"] for e in client.of("speed")] == [1.0]
            await client.wait_for("turn_end", turn=1)
            client.send({"type": "say", "text": "hello"})
            end = await client.wait_for("turn_end", turn=2)
            assert end["words_heard"] == 4 and end["audio_s"] > 1.0
            assert server.agents[0].figures.underruns == 0
        finally:
            await client.pc.close()


def test_a_taken_port_is_a_clear_error_not_a_traceback() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "speakwire", "demo", "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"speakwire demo: cannot serve on 127.0.0.1:{port}: ")
    assert "Traceback" not in done.stderr
