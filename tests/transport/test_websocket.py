"""TTSConnection against the real local server over a real loopback socket: multiplexing, cancel,
flush, backpressure, server errors. Every test checks the audio it gets."""

from __future__ import annotations

import asyncio

import pytest

from speakwire.errors import ContextStateError, ProtocolError, ServerError
from speakwire.protocol import Chunk, FlushDone, OutputFormat, WordTimestamps
from speakwire.protocol.context import ContextState
from speakwire.server import TTSServer
from speakwire.transport import ReconnectPolicy, TTSConnection

from .conftest import S16_16K, TIMEOUT, VOICE, assert_speech, audio_of, drain, rms, samples

TEXTS = {
    "fox": "The quick brown fox jumps over the lazy dog.",
    "hello": "Hello there, general.",
    "count": "One two three four five six seven eight nine ten eleven twelve.",
    "story": "Once upon a time a small robot learned to speak, and it never stopped talking after that day.",
}
FORMATS = {
    "fox": OutputFormat("pcm_s16le", 16000),
    "hello": OutputFormat("pcm_f32le", 22050),
    "count": OutputFormat("pcm_mulaw", 8000),
    "story": OutputFormat("pcm_alaw", 8000),
}


async def _solo(conn: TTSConnection, text: str, fmt: OutputFormat) -> bytes:
    ctx = conn.context(voice=VOICE, output_format=fmt)
    await ctx.push(text)
    await ctx.no_more_inputs()
    return await audio_of(ctx)


async def test_many_contexts_interleaved_each_get_only_their_audio(server: TTSServer) -> None:
    async with TTSConnection(server.url) as conn:
        solo = {name: await _solo(conn, TEXTS[name], FORMATS[name]) for name in TEXTS}
        contexts = {name: conn.context(f"ctx-{name}", voice=VOICE, output_format=FORMATS[name]) for name in TEXTS}
        # Word by word, round robin: every context is open and generating at once on one socket.
        words = {name: TEXTS[name].split() for name in TEXTS}
        for i in range(max(len(w) for w in words.values())):
            for name, ctx in contexts.items():
                if i < len(words[name]):
                    await ctx.push(words[name][i] + " ")
        for ctx in contexts.values():
            await ctx.no_more_inputs()
        async with asyncio.timeout(TIMEOUT):
            mixed = dict(zip(contexts, await asyncio.gather(*(audio_of(c) for c in contexts.values())), strict=True))
        for name in TEXTS:
            fmt = FORMATS[name]
            duration = assert_speech(mixed[name], fmt, TEXTS[name])
            solo_duration = len(samples(solo[name], fmt)) / fmt.sample_rate
            # Its own text, whole: same length as the same text spoken alone (word pushes may
            # segment a little differently), and not another context's length.
            assert abs(duration - solo_duration) <= 0.1 * solo_duration + 0.3, (name, duration, solo_duration)
            assert contexts[name].state is ContextState.DONE
        durations = sorted(len(samples(mixed[n], FORMATS[n])) / FORMATS[n].sample_rate for n in TEXTS)
        assert durations[0] < 0.5 * durations[-1]
        assert conn.stats.dropped == 0 and conn.stats.violations == 0 and conn.stats.connects == 1


async def test_cancel_mid_stream_delivers_nothing_more_while_another_context_completes(server: TTSServer) -> None:
    long_text = " ".join([TEXTS["story"]] * 8)
    async with TTSConnection(server.url) as conn:
        victim = conn.context("victim", voice=VOICE, output_format=S16_16K)
        other = conn.context("other", voice=VOICE, output_format=S16_16K)
        await victim.push(long_text)
        await victim.no_more_inputs()
        await other.push(TEXTS["fox"])
        await other.no_more_inputs()
        async with asyncio.timeout(TIMEOUT):
            first = await anext(victim)
            assert isinstance(first, Chunk) and len(first.audio) > 0
            await victim.cancel()
            after = await drain(victim)
            assert after == []
            assert victim.state is ContextState.CANCELLED
            other_audio = await audio_of(other)
        assert_speech(other_audio, S16_16K, TEXTS["fox"])
        # Still nothing later: the reader dropped whatever was in flight (counted, not queued).
        await asyncio.sleep(0.2)
        assert await drain(victim) == []
        with pytest.raises(ContextStateError, match="cancelled"):
            await victim.push("more")
        # The connection is unharmed: a new context speaks.
        assert_speech(await _solo(conn, TEXTS["hello"], S16_16K), S16_16K, TEXTS["hello"])


async def test_flush_and_timestamps_arrive_in_order_before_done(server: TTSServer) -> None:
    async with TTSConnection(server.url) as conn:
        ctx = conn.context(voice=VOICE, output_format=S16_16K, add_timestamps=True)
        await ctx.push("Hello there, general.")
        await ctx.flush()
        events = []
        async with asyncio.timeout(TIMEOUT):
            async for event in ctx:
                events.append(event)
                if isinstance(event, FlushDone):
                    break
            await ctx.push("The quick brown fox.")
            await ctx.no_more_inputs()
            events += await drain(ctx)
        flushes = [e for e in events if isinstance(e, FlushDone)]
        assert [f.flush_id for f in flushes] == [1]
        words = [w for e in events if isinstance(e, WordTimestamps) for w in e.words]
        assert words == ["Hello", "there,", "general.", "The", "quick", "brown", "fox."]
        cut = events.index(flushes[0])
        before = b"".join(e.audio for e in events[:cut] if isinstance(e, Chunk))
        after = b"".join(e.audio for e in events[cut:] if isinstance(e, Chunk))
        assert_speech(before, S16_16K, "Hello there, general.")
        assert_speech(after, S16_16K, "The quick brown fox.")


async def test_speak_one_shot(server: TTSServer) -> None:
    fmt = OutputFormat("pcm_f32le", 24000)
    async with TTSConnection(server.url) as conn:
        async with asyncio.timeout(TIMEOUT):
            audio = b"".join(
                [
                    e.audio
                    async for e in conn.speak(TEXTS["fox"], voice=VOICE, output_format=fmt)
                    if isinstance(e, Chunk)
                ]
            )
        assert_speech(audio, fmt, TEXTS["fox"])
        assert conn.stats.dropped == 0


async def test_push_after_no_more_inputs_raises_context_state_error(server: TTSServer) -> None:
    async with TTSConnection(server.url) as conn:
        ctx = conn.context(voice=VOICE, output_format=S16_16K)
        await ctx.push(TEXTS["hello"])
        await ctx.no_more_inputs()
        with pytest.raises(ContextStateError, match="input was closed"):
            await ctx.push("too late")
        with pytest.raises(ContextStateError):
            await ctx.flush()
        # The refused push sent nothing: the context still ends with exactly its own audio.
        assert_speech(await audio_of(ctx), S16_16K, TEXTS["hello"])


async def test_duplicate_ids_and_context_limit(server: TTSServer) -> None:
    async with TTSConnection(server.url, max_contexts=2) as conn:
        a = conn.context("a", voice=VOICE, output_format=S16_16K)
        with pytest.raises(ContextStateError, match="'a'"):
            conn.context("a", voice=VOICE)
        conn.context("b", voice=VOICE, output_format=S16_16K)
        with pytest.raises(ProtocolError) as info:
            conn.context("c", voice=VOICE)
        assert info.value.status_code == 429
        await a.push(TEXTS["hello"])
        await a.no_more_inputs()
        assert_speech(await audio_of(a), S16_16K, TEXTS["hello"])
        # a is done: its slot is free again.
        c = conn.context("c", voice=VOICE, output_format=S16_16K)
        await c.push(TEXTS["fox"])
        await c.no_more_inputs()
        assert_speech(await audio_of(c), S16_16K, TEXTS["fox"])


@pytest.mark.parametrize(
    ("fmt", "field"),
    [
        (OutputFormat("pcm_s24le", 16000), "output_format.encoding"),  # type: ignore[arg-type]
        (OutputFormat("pcm_s16le", 12345), "output_format.sample_rate"),
    ],
)
async def test_bad_output_format_is_the_servers_error_and_others_go_on(
    server: TTSServer, fmt: OutputFormat, field: str
) -> None:
    async with TTSConnection(server.url) as conn:
        bad = conn.context(voice=VOICE, output_format=fmt)
        good = conn.context(voice=VOICE, output_format=S16_16K)
        await bad.push(TEXTS["hello"])
        await good.push(TEXTS["fox"])
        await good.no_more_inputs()
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ServerError) as info:
                await audio_of(bad)
            assert_speech(await audio_of(good), S16_16K, TEXTS["fox"])
        assert info.value.status_code == 422
        assert info.value.context_id == bad.context_id
        assert field.split(".")[-1] in str(info.value)


async def test_bounded_queue_backpressure_loses_nothing_and_cancel_unblocks(server: TTSServer) -> None:
    text = " ".join([TEXTS["count"]] * 3)
    async with TTSConnection(server.url) as fast:
        reference = await _solo(fast, text, S16_16K)
    async with TTSConnection(server.url, queue_size=2) as conn:
        slow = conn.context(voice=VOICE, output_format=S16_16K)
        await slow.push(text)
        await slow.no_more_inputs()
        async with asyncio.timeout(TIMEOUT):
            while conn.stats.backpressure_waits == 0:
                await asyncio.sleep(0.01)
            # The reader waits for space: nothing is dropped, the rest stays in the socket.
            chunks = []
            async for event in slow:
                if isinstance(event, Chunk):
                    chunks.append(event.audio)
                await asyncio.sleep(0.002)
        audio = b"".join(chunks)
        assert conn.stats.dropped == 0
        assert abs(len(audio) - len(reference)) <= 0.01 * len(reference), (len(audio), len(reference))
        assert_speech(audio, S16_16K, text)

        # A consumer that never reads holds the reader; cancelling it frees the others at once.
        stuck = conn.context(voice=VOICE, output_format=S16_16K)
        other = conn.context(voice=VOICE, output_format=S16_16K)
        await stuck.push(text)
        await stuck.no_more_inputs()
        waits = conn.stats.backpressure_waits
        async with asyncio.timeout(TIMEOUT):
            while conn.stats.backpressure_waits == waits:
                await asyncio.sleep(0.01)
            await other.push(TEXTS["fox"])
            await other.no_more_inputs()
            await stuck.cancel()
            assert_speech(await audio_of(other), S16_16K, TEXTS["fox"])
        assert await drain(stuck) == []


async def test_keepalive_pings_measure_latency(server: TTSServer) -> None:
    async with TTSConnection(server.url, ping_interval=0.05, ping_timeout=5) as conn:
        async with asyncio.timeout(TIMEOUT):
            while conn.latency == 0.0:
                await asyncio.sleep(0.02)
        assert 0.0 < conn.latency < 1.0
        assert_speech(await _solo(conn, TEXTS["hello"], S16_16K), S16_16K, TEXTS["hello"])


async def test_close_ends_live_contexts_with_connection_error(server: TTSServer) -> None:
    from speakwire.errors import TTSConnectionError

    conn = TTSConnection(server.url)
    await conn.connect()
    ctx = conn.context(voice=VOICE, output_format=S16_16K)
    await ctx.push(TEXTS["fox"], flush=True)  # input left open: no done will come
    async with asyncio.timeout(TIMEOUT):
        got = []
        async for event in ctx:
            if isinstance(event, Chunk):
                got.append(event.audio)
            if isinstance(event, FlushDone):
                break
        await conn.close()
        with pytest.raises(TTSConnectionError, match="closed by the client"):
            await anext(ctx)
    assert rms(samples(b"".join(got), S16_16K)) > 0.02
    with pytest.raises(TTSConnectionError):
        await ctx.push("more")
    with pytest.raises(ContextStateError):
        conn.context(voice=VOICE)


def test_reconnect_policy_delays_are_bounded_exponential_with_jitter() -> None:
    import random

    from speakwire.transport.websocket import _GaveUp

    exact = ReconnectPolicy(max_attempts=6, initial_delay=0.2, max_delay=1.0, factor=2.0, jitter=0.0)
    gen = exact.delays()
    assert [next(gen) for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    with pytest.raises(_GaveUp):
        next(gen)
    jittered = list(_take(ReconnectPolicy(max_attempts=200, jitter=0.5).delays(random.Random(7))))
    bases = [min(5.0, 0.2 * 2.0**n) for n in range(199)]
    assert len(jittered) == 199
    assert all(0.5 * b <= d <= b for d, b in zip(jittered, bases, strict=True))
    assert len({round(d / b, 6) for d, b in zip(jittered, bases, strict=True)}) > 150  # really random
    assert list(_take(ReconnectPolicy(max_attempts=1).delays())) == []
    for bad in ({"max_attempts": 0}, {"jitter": 1.5}, {"factor": 0.5}, {"initial_delay": 9.0, "max_delay": 1.0}):
        with pytest.raises(ValueError):
            ReconnectPolicy(**bad)  # type: ignore[arg-type]


def _take(gen):  # type: ignore[no-untyped-def]
    from speakwire.transport.websocket import _GaveUp

    try:
        yield from gen
    except _GaveUp:
        return


async def test_a_stalled_consumer_cannot_hang_the_others_forever(server: TTSServer) -> None:
    from speakwire.errors import TTSConnectionError

    text = " ".join([TEXTS["story"]] * 4)
    # Nothing is read while the reader waits on the stalled queue, not even pongs: the keepalive
    # times out, and every context, including the one nobody reads, ends instead of hanging.
    async with TTSConnection(server.url, queue_size=1, ping_interval=0.05, ping_timeout=0.3, close_timeout=0.3) as conn:
        stalled = conn.context(voice=VOICE, output_format=S16_16K)
        other = conn.context(voice=VOICE, output_format=S16_16K)
        await other.push(TEXTS["fox"])  # input left open
        await stalled.push(text)
        await stalled.no_more_inputs()
        async with asyncio.timeout(TIMEOUT):
            while conn.stats.backpressure_waits == 0:
                await asyncio.sleep(0.01)
            with pytest.raises(TTSConnectionError, match="lost") as info:
                await audio_of(other)
            assert "ping timeout" in str(info.value)
            got = []
            with pytest.raises(TTSConnectionError):
                async for event in stalled:
                    if isinstance(event, Chunk):
                        got.append(event.audio)
        assert rms(samples(b"".join(got), S16_16K)) > 0.02


async def test_generation_config_default_and_per_push_reach_the_server(server: TTSServer) -> None:
    from speakwire.protocol import GenerationConfig

    text = TEXTS["count"]
    async with TTSConnection(server.url) as conn:
        normal = len(samples(await _solo(conn, text, S16_16K), S16_16K))
        slow = conn.context(voice=VOICE, output_format=S16_16K, generation_config=GenerationConfig(speed=0.75))
        await slow.push(text)
        await slow.no_more_inputs()
        fast = conn.context(voice=VOICE, output_format=S16_16K, generation_config=GenerationConfig(speed=0.75))
        await fast.push(text, generation_config=GenerationConfig(speed=1.5))  # replaces the default
        await fast.no_more_inputs()
        slow_audio, fast_audio = await audio_of(slow), await audio_of(fast)
    assert_speech(slow_audio, S16_16K, text)
    assert_speech(fast_audio, S16_16K, text)
    assert len(samples(slow_audio, S16_16K)) / normal == pytest.approx(1 / 0.75, rel=0.1)
    assert len(samples(fast_audio, S16_16K)) / normal == pytest.approx(1 / 1.5, rel=0.1)


async def test_phoneme_timestamps_are_delivered_typed(server: TTSServer) -> None:
    from speakwire.protocol import PhonemeTimestamps

    async with TTSConnection(server.url) as conn:
        ctx = conn.context(voice=VOICE, output_format=S16_16K, add_phoneme_timestamps=True)
        await ctx.push(TEXTS["hello"])
        await ctx.no_more_inputs()
        events = await drain(ctx)
    stamps = [e for e in events if isinstance(e, PhonemeTimestamps)]
    audio = b"".join(e.audio for e in events if isinstance(e, Chunk))
    duration = assert_speech(audio, S16_16K, TEXTS["hello"])
    phonemes = [p for s in stamps for p in s.phonemes]
    starts = [t for s in stamps for t in s.start]
    assert len(phonemes) >= 10 and all(phonemes)
    assert starts == sorted(starts) and 0.0 <= starts[0] and starts[-1] <= duration
