"""pipecat 1.14's stock CartesiaTTSService speaking a turn through the local server, under pipecat's run_test."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import (
    ErrorFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.services.cartesia.tts import CartesiaTTSService
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import SleepFrame, run_test

from speakwire.server import TTSServer
from speakwire.server.espeak import EspeakEngine
from tests.server.conftest import assert_speech

KEY = "sk-pipecat-compat-123"
TOKENS = ["Hello", " there", ",", " my", " friend", ".", " How", " are", " you", " doing", " today", "?"]


@pytest.mark.parametrize("mode", [TextAggregationMode.SENTENCE, TextAggregationMode.TOKEN], ids=["sentence", "token"])
async def test_stock_cartesia_service_speaks_a_turn(engine: EspeakEngine, mode: TextAggregationMode) -> None:
    async with TTSServer(port=0, engine=engine, api_key=KEY) as server:
        tts = CartesiaTTSService(
            api_key=KEY,
            url=server.url,
            sample_rate=24000,
            settings=CartesiaTTSService.Settings(voice="a0e99841-438c-4a64-b679-ae501e7d6091"),
            text_aggregation_mode=mode,
        )
        frames = [LLMFullResponseStartFrame(), *(LLMTextFrame(t) for t in TOKENS), LLMFullResponseEndFrame()]
        down, up = await run_test(tts, frames_to_send=[*frames, SleepFrame(sleep=2.0)])
    assert not [f for f in up if isinstance(f, ErrorFrame)], [str(f) for f in up]
    audio_frames = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio_frames and all(f.sample_rate == 24000 and f.num_channels == 1 for f in audio_frames)
    samples = np.frombuffer(b"".join(f.audio for f in audio_frames), "<i2") / 32768.0
    text = "".join(TOKENS)
    assert_speech(samples, 24000, text)
    # pipecat turns our word timestamps into TTSTextFrames: every word, punctuation attached.
    words = [f.text for f in down if isinstance(f, TTSTextFrame)]
    assert " ".join(words).split() == text.split()
    assert any(isinstance(f, TTSStartedFrame) for f in down)
    assert sum(isinstance(f, TTSStoppedFrame) for f in down) == 1
