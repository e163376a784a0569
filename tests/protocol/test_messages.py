"""speakwire.protocol.messages: wire forms, decoding of what real clients send, errors, round trips."""

from __future__ import annotations

import base64
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speakwire.errors import ProtocolError
from speakwire.protocol.messages import (
    DEFAULT_LIMITS,
    ENCODINGS,
    SAMPLE_RATES,
    CancelRequest,
    Chunk,
    Done,
    ErrorMessage,
    ExperimentalControls,
    FlushDone,
    GenerationConfig,
    GenerationRequest,
    Limits,
    OutputFormat,
    PhonemeTimestamps,
    Voice,
    WordTimestamps,
    context_id_of,
    decode_request,
    decode_response,
    encode,
)

# Seed 004, verbatim: the documented generation request.
SEED_REQUEST = """{
"model_id": "sonic-2",
"transcript": "Hello, world! I'm generating audio on Cartesia!",
"voice": {
"mode": "id",
"id": "a0e99841-438c-4a64-b679-ae501e7d6091"
},
"language": "en",
"context_id": "happy-monkeys-fly",
"output_format": {
"container": "raw",
"encoding": "pcm_s16le",
"sample_rate": 8000
},
"add_timestamps": true,
"continue": false
}"""


def raises(text: str | bytes, status: int, field: str | None, limits: Limits = DEFAULT_LIMITS) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_request(text, limits)
    assert (info.value.status_code, info.value.field) == (status, field), str(info.value)
    return info.value


def request_json(**fields: object) -> str:
    return json.dumps({"context_id": "c1", **fields})


# --- decoding requests as the official clients send them ---------------------------------------


def test_seed_request_decodes_field_by_field() -> None:
    req = decode_request(SEED_REQUEST)
    assert req == GenerationRequest(
        context_id="happy-monkeys-fly",
        transcript="Hello, world! I'm generating audio on Cartesia!",
        continue_=False,
        model_id="sonic-2",
        voice=Voice(mode="id", id="a0e99841-438c-4a64-b679-ae501e7d6091"),
        language="en",
        output_format=OutputFormat("pcm_s16le", 8000),
        add_timestamps=True,
    )
    assert req.voice_id == "a0e99841-438c-4a64-b679-ae501e7d6091"
    assert req.closes_input and req.effective_speed is None
    assert req.output_format is not None and req.output_format.bytes_per_sample == 2


def test_seed_cancel_decodes() -> None:
    assert decode_request('{\n"context_id": "happy-monkeys-fly",\n"cancel": true\n}') == CancelRequest(
        "happy-monkeys-fly"
    )


def test_pipecat_token_push_decodes() -> None:
    from pipecat.services.cartesia.tts import CartesiaTTSService

    service = CartesiaTTSService(api_key="k", settings=CartesiaTTSService.Settings(voice="voice-1"))
    service._output_sample_rate = 16000  # set by pipecat at StartFrame; no pipeline runs here
    req = decode_request(service._build_msg("Hello ", True, True, "ctx-uuid"))
    assert isinstance(req, GenerationRequest)
    assert (req.context_id, req.transcript, req.continue_) == ("ctx-uuid", "Hello ", True)
    assert req.voice == Voice(mode="id", id="voice-1")
    assert req.output_format == OutputFormat("pcm_s16le", 16000)
    assert req.add_timestamps is True and req.use_normalized_timestamps is False
    close = decode_request(service._build_msg("", False, True, "ctx-uuid"))
    assert isinstance(close, GenerationRequest) and close.transcript == "" and close.closes_input


def test_sdk4_push_with_top_level_speed_and_bare_voice() -> None:
    # What cartesia 4.2's context.send() builds: bare voice id, "speed" label, generation_config.
    req = decode_request(
        request_json(
            model_id="sonic-latest",
            transcript="Hi",
            voice="6ccbfb76-1fc6-48f7-b71d-91ac6298247b",
            output_format={"container": "raw", "encoding": "pcm_f32le", "sample_rate": 44100},
            speed="slow",
            generation_config={"speed": 1.25, "volume": 0.8, "emotion": "excited"},
            max_buffer_delay_ms=3000,
            pronunciation_dict_id="dict-1",
            flush=True,
            **{"continue": True},
        )
    )
    assert isinstance(req, GenerationRequest)
    assert req.voice == "6ccbfb76-1fc6-48f7-b71d-91ac6298247b" == req.voice_id
    assert req.generation_config == GenerationConfig(speed=1.25, volume=0.8, emotion="excited")
    assert req.effective_speed == 1.25  # generation_config wins over the label
    assert (req.max_buffer_delay_ms, req.pronunciation_dict_id, req.flush, req.speed) == (3000, "dict-1", True, "slow")


def test_sdk2_empty_close_with_dummy_embedding_and_legacy_keys() -> None:
    req = decode_request(
        request_json(
            model_id="sonic-2",
            transcript="",
            output_format={"container": "raw", "encoding": "pcm_f32le", "sample_rate": 44100},
            voice={"mode": "embedding", "embedding": [1.0] * 192},
            stream=True,
            duration=None,
            language=None,
            use_original_timestamps=False,
        )
    )
    assert isinstance(req, GenerationRequest)
    assert req.voice == Voice(mode="embedding", embedding=(1.0,) * 192)
    assert req.voice_id is None
    assert (req.transcript, req.continue_, req.stream, req.duration, req.language) == ("", False, True, None, None)
    assert req.use_original_timestamps is False


@pytest.mark.parametrize(
    ("controls", "factor"),
    [("slowest", 0.5), ("normal", 1.0), ("fastest", 2.0), (-1, 0.5), (0.5, 2**0.5), (0, 1.0)],
)
def test_experimental_speed_maps_to_factor(controls: object, factor: float) -> None:
    voice = {"mode": "id", "id": "v", "__experimental_controls": {"speed": controls, "emotion": ["curiosity"]}}
    req = decode_request(request_json(voice=voice))
    assert isinstance(req, GenerationRequest)
    assert req.effective_speed == pytest.approx(factor, abs=1e-12)
    assert isinstance(req.voice, Voice) and req.voice.experimental_controls is not None
    assert req.voice.experimental_controls.emotion == ("curiosity",)


def test_effective_speed_order() -> None:
    controls = ExperimentalControls(speed="fastest")
    voice = Voice(id="v", experimental_controls=controls)
    assert GenerationRequest("c", voice=voice, speed="slowest").effective_speed == 2.0
    assert GenerationRequest("c", speed="slowest").effective_speed == 0.5
    gc = GenerationConfig(speed=0.9)
    assert GenerationRequest("c", voice=voice, generation_config=gc).effective_speed == 0.9
    assert GenerationRequest("c", generation_config=GenerationConfig(volume=2.0)).effective_speed is None


def test_nulls_and_unknown_keys_are_absent() -> None:
    req = decode_request(
        request_json(
            transcript=None,
            voice=None,
            output_format=None,
            generation_config=None,
            flush=None,
            future_key={"x": [1, 2]},
            **{"continue": None, "cancel": None},
        )
    )
    assert req == GenerationRequest("c1")


def test_cancel_false_is_a_generation_request() -> None:
    assert decode_request(request_json(cancel=False, transcript="a")) == GenerationRequest("c1", transcript="a")


def test_integral_float_sample_rate_and_delay_accepted() -> None:
    req = decode_request(
        request_json(
            output_format={"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000.0}, max_buffer_delay_ms=0.0
        )
    )
    assert isinstance(req, GenerationRequest)
    assert req.output_format == OutputFormat("pcm_mulaw", 8000) and req.max_buffer_delay_ms == 0


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("rate", SAMPLE_RATES)
def test_every_supported_format_decodes(encoding: str, rate: int) -> None:
    req = decode_request(request_json(output_format={"container": "raw", "encoding": encoding, "sample_rate": rate}))
    assert isinstance(req, GenerationRequest) and req.output_format == OutputFormat(encoding, rate)  # type: ignore[arg-type]


def test_constants() -> None:
    assert ENCODINGS == ("pcm_f32le", "pcm_s16le", "pcm_mulaw", "pcm_alaw")
    assert SAMPLE_RATES == (8000, 16000, 22050, 24000, 44100, 48000)


# --- rejected requests: status and field --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "status", "field"),
    [
        ("", 400, None),
        ("{", 400, None),
        ("[1]", 400, None),
        ('"context_id"', 400, None),
        ("{}", 400, "context_id"),
        ('{"context_id": null}', 400, "context_id"),
        ('{"context_id": 7}', 400, "context_id"),
        ('{"context_id": ""}', 422, "context_id"),
        ('{"context_id": "c", "transcript": 5}', 400, "transcript"),
        ('{"context_id": "c", "continue": "yes"}', 400, "continue"),
        ('{"context_id": "c", "cancel": 1}', 400, "cancel"),
        ('{"context_id": "c", "voice": 5}', 400, "voice"),
        ('{"context_id": "c", "voice": {"mode": "id"}}', 400, "voice.id"),
        ('{"context_id": "c", "voice": {"mode": "clone", "id": "v"}}', 422, "voice.mode"),
        ('{"context_id": "c", "voice": {"mode": "embedding", "embedding": "x"}}', 400, "voice.embedding"),
        ('{"context_id": "c", "voice": {"mode": "embedding", "embedding": [1, NaN]}}', 422, "voice.embedding"),
        (
            '{"context_id": "c", "voice": {"id": "v", "__experimental_controls": {"speed": "warp"}}}',
            422,
            "voice.__experimental_controls.speed",
        ),
        (
            '{"context_id": "c", "voice": {"id": "v", "__experimental_controls": {"speed": 1.5}}}',
            422,
            "voice.__experimental_controls.speed",
        ),
        (
            '{"context_id": "c", "voice": {"id": "v", "__experimental_controls": {"emotion": ["joy:high"]}}}',
            422,
            "voice.__experimental_controls.emotion",
        ),
        (
            '{"context_id": "c", "voice": {"id": "v", "__experimental_controls": {"emotion": "anger"}}}',
            400,
            "voice.__experimental_controls.emotion",
        ),
        ('{"context_id": "c", "output_format": "pcm"}', 400, "output_format"),
        (
            '{"context_id": "c", "output_format": {"container": "mp3", "encoding": "pcm_s16le", "sample_rate": 8000}}',
            422,
            "output_format.container",
        ),
        (
            '{"context_id": "c", "output_format": {"container": "raw", "encoding": "pcm_s24le", "sample_rate": 8000}}',
            422,
            "output_format.encoding",
        ),
        (
            '{"context_id": "c", "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 12345}}',
            422,
            "output_format.sample_rate",
        ),
        (
            '{"context_id": "c", "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": "8k"}}',
            400,
            "output_format.sample_rate",
        ),
        (
            '{"context_id": "c", "output_format": {"container": "raw", "sample_rate": 8000}}',
            400,
            "output_format.encoding",
        ),
        ('{"context_id": "c", "generation_config": {"speed": NaN}}', 422, "generation_config.speed"),
        ('{"context_id": "c", "generation_config": {"speed": Infinity}}', 422, "generation_config.speed"),
        ('{"context_id": "c", "generation_config": {"speed": 1e400}}', 422, "generation_config.speed"),
        ('{"context_id": "c", "generation_config": {"speed": "fast"}}', 400, "generation_config.speed"),
        ('{"context_id": "c", "generation_config": {"speed": true}}', 400, "generation_config.speed"),
        ('{"context_id": "c", "generation_config": {"volume": -Infinity}}', 422, "generation_config.volume"),
        ('{"context_id": "c", "generation_config": {"emotion": 3}}', 400, "generation_config.emotion"),
        ('{"context_id": "c", "generation_config": []}', 400, "generation_config"),
        ('{"context_id": "c", "max_buffer_delay_ms": 5001}', 422, "max_buffer_delay_ms"),
        ('{"context_id": "c", "max_buffer_delay_ms": -1}', 422, "max_buffer_delay_ms"),
        ('{"context_id": "c", "max_buffer_delay_ms": 2.5}', 400, "max_buffer_delay_ms"),
        ('{"context_id": "c", "speed": "ludicrous"}', 422, "speed"),
        ('{"context_id": "c", "add_timestamps": 1}', 400, "add_timestamps"),
        ('{"context_id": "c", "duration": "long"}', 400, "duration"),
    ],
)
def test_malformed_requests(text: str, status: int, field: str | None) -> None:
    raises(text, status, field)


def test_error_names_the_value() -> None:
    err = raises(
        request_json(output_format={"container": "raw", "encoding": "pcm_s24le", "sample_rate": 8000}),
        422,
        "output_format.encoding",
    )
    assert "'pcm_s24le'" in str(err) and "pcm_f32le, pcm_s16le, pcm_mulaw, pcm_alaw" in str(err)
    assert isinstance(err, ValueError)


def test_binary_frame_is_400() -> None:
    raises(b'{"context_id": "c"}', 400, None)
    raises(bytearray(b"{}"), 400, None)


def test_size_limits_are_413() -> None:
    limits = Limits(max_message_bytes=100, max_transcript_chars=10, max_context_id_length=8)
    raises(request_json(transcript="x" * 100), 413, None, limits)
    # 50 two-byte characters in a 28-character envelope: 78 characters but 128 UTF-8 bytes.
    text = json.dumps({"context_id": "c", "t": "é" * 50}, ensure_ascii=False)
    assert len(text) <= 100 < len(text.encode())
    raises(text, 413, None, limits)
    raises(request_json(transcript="x" * 11), 413, "transcript", limits)
    assert decode_request(request_json(transcript="x" * 10), limits) == GenerationRequest("c1", transcript="x" * 10)
    raises(json.dumps({"context_id": "c" * 9}), 413, "context_id", limits)
    assert decode_request(json.dumps({"context_id": "c" * 8}), limits) == GenerationRequest("c" * 8)


def test_deep_nesting_and_huge_numbers_are_400() -> None:
    raises('{"context_id": "c", "x": ' + "[" * 50_000 + "]" * 50_000 + "}", 400, None, Limits(max_message_bytes=10**6))
    raises('{"context_id": "c", "x": ' + "9" * 5000 + "}", 400, None)


def test_limits_validate() -> None:
    with pytest.raises(ValueError, match="max_open_contexts"):
        Limits(max_open_contexts=0)


def test_context_id_of_is_best_effort() -> None:
    assert context_id_of('{"context_id": "abc", "output_format": 3}') == "abc"
    assert context_id_of("not json") is None
    assert context_id_of(b'{"context_id": "abc"}') is None
    assert context_id_of('{"context_id": 5}') is None


# --- server messages: exact wire form ------------------------------------------------------------


def test_chunk_wire_form_matches_seed() -> None:
    chunk = Chunk("happy-monkeys-fly", b"i \xe2\x9d\xa4\xef\xb8\x8f mintlify", step_time=123)
    assert json.loads(encode(chunk)) == {
        "type": "chunk",
        "data": "aSDinaTvuI8gbWludGxpZnk=",
        "done": False,
        "status_code": 206,
        "step_time": 123,
        "context_id": "happy-monkeys-fly",
    }
    assert encode(chunk) == (
        '{"type":"chunk","context_id":"happy-monkeys-fly","done":false,'
        '"data":"aSDinaTvuI8gbWludGxpZnk=","step_time":123,"status_code":206}'
    )


def test_chunk_carries_flush_id_only_when_set() -> None:
    assert "flush_id" not in json.loads(encode(Chunk("c", b"\x00\x01")))
    assert json.loads(encode(Chunk("c", b"\x00\x01", flush_id=2)))["flush_id"] == 2


def test_flush_done_done_timestamps_wire_forms_match_seed() -> None:
    assert json.loads(encode(FlushDone("happy-monkeys-fly", 1))) == {
        "type": "flush_done",
        "done": False,
        "flush_done": True,
        "flush_id": 1,
        "status_code": 206,
        "context_id": "happy-monkeys-fly",
    }
    assert encode(Done("happy-monkeys-fly")) == (
        '{"type":"done","context_id":"happy-monkeys-fly","done":true,"status_code":206}'
    )
    stamps = WordTimestamps("happy-monkeys-fly", ("Hello", "world"), (0, 0.5), (0.4, 0.9))
    assert json.loads(encode(stamps)) == {
        "type": "timestamps",
        "done": False,
        "status_code": 206,
        "context_id": "happy-monkeys-fly",
        "word_timestamps": {"words": ["Hello", "world"], "start": [0, 0.5], "end": [0.4, 0.9]},
    }
    phonemes = PhonemeTimestamps("c", ("h", "ə"), (0.0, 0.1), (0.1, 0.2), flush_id=1)
    assert json.loads(encode(phonemes)) == {
        "type": "phoneme_timestamps",
        "done": False,
        "status_code": 206,
        "context_id": "c",
        "flush_id": 1,
        "phoneme_timestamps": {"phonemes": ["h", "ə"], "start": [0.0, 0.1], "end": [0.1, 0.2]},
    }


def test_error_wire_form_serves_both_sdks() -> None:
    err = ErrorMessage(422, "Unprocessable Entity", "bad encoding", context_id="c")
    assert json.loads(encode(err)) == {
        "type": "error",
        "context_id": "c",
        "done": True,
        "status_code": 422,
        "error": "Unprocessable Entity: bad encoding",
        "title": "Unprocessable Entity",
        "message": "bad encoding",
    }
    connection_level = ErrorMessage(400, "Bad Request", "not JSON")
    # null, not absent: pipecat indexes msg["context_id"] unguarded.
    assert json.loads(encode(connection_level))["context_id"] is None
    assert decode_response(encode(connection_level)) == connection_level


def test_error_from_exception() -> None:
    exc = ProtocolError("too many", field="context_id", status_code=429)
    assert ErrorMessage.from_exception(exc, "c") == ErrorMessage(429, "Too Many Requests", "too many", "c")
    assert ErrorMessage.from_exception(ProtocolError("x", status_code=418)).title == "Error"


def test_cartesia_sdk_parses_our_server_messages() -> None:
    from cartesia.types import websocket_response as sdk
    from pydantic import TypeAdapter

    adapter = TypeAdapter(sdk.WebsocketResponse)
    chunk = adapter.validate_json(encode(Chunk("c", b"\x01\x02\x03", 5.0, flush_id=1)))
    assert isinstance(chunk, sdk.Chunk) and chunk.audio == b"\x01\x02\x03" and chunk.flush_id == 1
    done = adapter.validate_json(encode(Done("c")))
    assert isinstance(done, sdk.Done) and done.done is True
    flush = adapter.validate_json(encode(FlushDone("c", 3)))
    assert isinstance(flush, sdk.FlushDone) and flush.flush_id == 3
    stamps = adapter.validate_json(encode(WordTimestamps("c", ("there,",), (0.0,), (0.3,))))
    assert isinstance(stamps, sdk.Timestamps) and stamps.word_timestamps is not None
    assert stamps.word_timestamps.words == ["there,"]
    err = adapter.validate_json(encode(ErrorMessage(400, "Bad Request", "nope", "c")))
    assert isinstance(err, sdk.Error) and err.error == "Bad Request: nope" and err.status_code == 400


def test_encode_refuses_nan() -> None:
    with pytest.raises(ProtocolError) as info:
        encode(GenerationRequest("c", generation_config=GenerationConfig(speed=math.nan)))
    assert info.value.status_code == 422
    with pytest.raises(TypeError):
        encode("chunk")  # type: ignore[arg-type]


def test_encode_request_always_writes_continue() -> None:
    assert encode(GenerationRequest("c")) == '{"context_id":"c","transcript":"","continue":false}'
    assert encode(CancelRequest("c")) == '{"context_id":"c","cancel":true}'


# --- decoding server messages ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "status", "field"),
    [
        ('{"context_id": "c"}', 400, "type"),
        ('{"type": 3, "context_id": "c"}', 400, "type"),
        ('{"type": "audio", "context_id": "c"}', 422, "type"),
        ('{"type": "chunk", "data": "AAAA"}', 400, "context_id"),
        ('{"type": "chunk", "context_id": "c", "data": "A"}', 400, "data"),
        ('{"type": "chunk", "context_id": "c", "data": "!!!!"}', 400, "data"),
        ('{"type": "chunk", "context_id": "c", "data": 5}', 400, "data"),
        ('{"type": "chunk", "context_id": "c", "data": "", "flush_id": 0}', 422, "flush_id"),
        ('{"type": "chunk", "context_id": "c", "data": "", "flush_id": "1"}', 400, "flush_id"),
        ('{"type": "chunk", "context_id": "c", "data": "", "step_time": NaN}', 422, "step_time"),
        ('{"type": "flush_done", "context_id": "c"}', 400, "flush_id"),
        ('{"type": "timestamps", "context_id": "c"}', 400, "word_timestamps"),
        (
            '{"type": "timestamps", "context_id": "c", "word_timestamps": {"words": ["a"], "start": [], "end": []}}',
            422,
            "word_timestamps",
        ),
        (
            '{"type": "timestamps", "context_id": "c", "word_timestamps": {"words": [1], "start": [0], "end": [1]}}',
            400,
            "word_timestamps.words",
        ),
        (
            '{"type": "phoneme_timestamps", "context_id": "c", "phoneme_timestamps": {}}',
            400,
            "phoneme_timestamps.phonemes",
        ),
        ('{"type": "done", "context_id": "c", "status_code": "ok"}', 400, "status_code"),
    ],
)
def test_malformed_responses(text: str, status: int, field: str | None) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_response(text)
    assert (info.value.status_code, info.value.field) == (status, field), str(info.value)


def test_decode_seed_responses() -> None:
    assert decode_response(
        '{"type": "chunk", "data": "aSDinaTvuI8gbWludGxpZnk=", "done": false, "status_code": 206,'
        ' "step_time": 123, "context_id": "happy-monkeys-fly"}'
    ) == Chunk("happy-monkeys-fly", b"i \xe2\x9d\xa4\xef\xb8\x8f mintlify", 123.0)
    assert decode_response('{"type":"done","done":true,"status_code":206,"context_id":"x"}') == Done("x")
    legacy = decode_response('{"type": "error", "done": true, "error": "boom", "status_code": 500}')
    assert legacy == ErrorMessage(500, "Error", "boom", None, "boom")
    sdk4 = decode_response('{"type": "error", "done": true, "title": "T", "message": "M", "context_id": "c"}')
    assert sdk4 == ErrorMessage(500, "T", "M", "c") and sdk4.error == "T: M"


def test_decode_response_has_no_size_limit() -> None:
    audio = bytes(range(256)) * 1024  # 256 KiB: one second of 48 kHz float audio is more
    assert decode_response(encode(Chunk("c", audio))) == Chunk("c", audio)


# --- round trips and fuzzing ---------------------------------------------------------------------

ids = st.text(min_size=1, max_size=20)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
small_text = st.text(max_size=30)
flush_ids = st.none() | st.integers(1, 10**6)

voices = st.one_of(
    st.none(),
    ids,
    st.builds(
        Voice,
        mode=st.just("id"),
        id=ids,
        experimental_controls=st.none()
        | st.builds(
            ExperimentalControls,
            speed=st.none() | st.sampled_from(["slowest", "slow", "normal", "fast", "fastest"]) | st.floats(-1, 1),
            emotion=st.lists(st.sampled_from(["anger", "positivity:high", "curiosity", "sadness:lowest"])).map(tuple),
        ),
    ),
    st.builds(Voice, mode=st.just("embedding"), embedding=st.lists(finite, max_size=5).map(tuple)),
)

requests = st.builds(
    GenerationRequest,
    context_id=ids,
    transcript=small_text,
    continue_=st.booleans(),
    model_id=st.none() | small_text,
    voice=voices,
    language=st.none() | st.sampled_from(["en", "fr", "de"]),
    output_format=st.none() | st.builds(OutputFormat, st.sampled_from(ENCODINGS), st.sampled_from(SAMPLE_RATES)),
    add_timestamps=st.booleans(),
    add_phoneme_timestamps=st.booleans(),
    use_normalized_timestamps=st.none() | st.booleans(),
    max_buffer_delay_ms=st.none() | st.integers(0, 5000),
    generation_config=st.none()
    | st.builds(GenerationConfig, speed=st.none() | finite, volume=st.none() | finite, emotion=st.none() | small_text),
    flush=st.booleans(),
    pronunciation_dict_id=st.none() | small_text,
    speed=st.none() | st.sampled_from(["slow", "normal", "fast"]),
    stream=st.none() | st.booleans(),
    duration=st.none() | finite,
    use_original_timestamps=st.none() | st.booleans(),
)


@st.composite
def timestamps(draw: st.DrawFn, cls: type) -> object:
    labels = draw(st.lists(small_text, max_size=5))
    start = tuple(draw(st.lists(finite, min_size=len(labels), max_size=len(labels))))
    end = tuple(draw(st.lists(finite, min_size=len(labels), max_size=len(labels))))
    return cls(draw(ids), tuple(labels), start, end, draw(flush_ids), draw(st.integers(100, 599)))


server_messages = st.one_of(
    st.builds(Chunk, ids, st.binary(max_size=64), finite, flush_ids, st.integers(100, 599)),
    timestamps(WordTimestamps),
    timestamps(PhonemeTimestamps),
    st.builds(FlushDone, ids, st.integers(1, 10**6), st.integers(100, 599)),
    st.builds(Done, ids, st.integers(100, 599)),
    st.builds(ErrorMessage, st.integers(100, 599), small_text, small_text, st.none() | ids, small_text),
)


@settings(max_examples=300, deadline=None)
@given(requests)
def test_request_round_trip(req: GenerationRequest) -> None:
    assert decode_request(encode(req), Limits(max_message_bytes=10**6)) == req


@settings(max_examples=50, deadline=None)
@given(ids)
def test_cancel_round_trip(context_id: str) -> None:
    assert decode_request(encode(CancelRequest(context_id))) == CancelRequest(context_id)


@settings(max_examples=300, deadline=None)
@given(server_messages)
def test_server_message_round_trip(msg: object) -> None:
    assert decode_response(encode(msg)) == msg  # type: ignore[arg-type]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
keys = st.sampled_from(
    [
        "context_id",
        "transcript",
        "voice",
        "output_format",
        "generation_config",
        "continue",
        "flush",
        "cancel",
        "type",
        "data",
        "flush_id",
        "word_timestamps",
        "phoneme_timestamps",
        "max_buffer_delay_ms",
        "speed",
        "status_code",
        "mode",
        "id",
        "embedding",
        "__experimental_controls",
        "encoding",
        "sample_rate",
        "container",
        "words",
        "start",
        "end",
    ]
)
protocolish = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 50000)
    | st.floats()
    | st.sampled_from(["raw", "pcm_s16le", "chunk", "id", "c", "", "fast"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=200), json_values.map(json.dumps), protocolish.map(json.dumps)))
def test_fuzz_only_protocol_errors_escape(text: str) -> None:
    for decode in (decode_request, decode_response):
        try:
            decode(text)
        except ProtocolError as exc:
            assert exc.status_code in (400, 413, 422)
    assert context_id_of(text) is None or isinstance(context_id_of(text), str)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=50))
def test_fuzz_bytes(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_request(data)


# --- chunk data: strict base64, exactly what the former regex pre-check accepted ----------------


@pytest.mark.parametrize(
    "data",
    [
        "AAAA\n",  # trailing newline (a `$` regex would have let it through)
        "AA\nAA",  # MIME-style line break inside
        "AA\r\nAA",
        "AA AA",
        " AAAA",
        "AA\tAA",
        "AAAA-_",  # the URL-safe alphabet
        "AAé=",  # non-ASCII
        "AAA",  # missing padding
        "AA=",
        "A===",
        "AA===",  # excess padding
        "AA==AA==",  # padding in the middle (two concatenated encodings)
        "=AAA",
        "AA=A",
        "AAAA\x00",
    ],
)
def test_chunk_data_rejects_non_strict_base64(data: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_response(json.dumps({"type": "chunk", "context_id": "c", "data": data}))
    assert (info.value.status_code, info.value.field, str(info.value)) == (400, "data", "data is not valid base64")


@pytest.mark.parametrize(
    ("data", "audio"),
    [
        ("", b""),
        ("AA==", b"\x00"),
        ("AAA=", b"\x00\x00"),
        ("AAAA", b"\x00\x00\x00"),
        ("+/+/", b"\xfb\xff\xbf"),
        # CPython's strict mode (and the former ``={0,2}`` regex) tolerate stray padding after a full quantum.
        ("AAAA=", b"\x00\x00\x00"),
        ("AAAA==", b"\x00\x00\x00"),
    ],
)
def test_chunk_data_accepts_strict_base64(data: str, audio: bytes) -> None:
    text = json.dumps({"type": "chunk", "context_id": "c", "data": data})
    assert decode_response(text) == Chunk("c", audio)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 100), st.sampled_from(["\n", " ", "\r\n", "-", "_", "é", "\x00", "==="]))
def test_chunk_data_round_trips_and_any_insertion_is_refused(audio: bytes, where: int, junk: str) -> None:
    data = base64.b64encode(audio).decode("ascii")
    assert decode_response(json.dumps({"type": "chunk", "context_id": "c", "data": data})).audio == audio  # type: ignore[union-attr]
    spoiled = data[: where % (len(data) + 1)] + junk + data[where % (len(data) + 1) :]
    with pytest.raises(ProtocolError) as info:
        decode_response(json.dumps({"type": "chunk", "context_id": "c", "data": spoiled}))
    assert (info.value.status_code, info.value.field) == (400, "data")
