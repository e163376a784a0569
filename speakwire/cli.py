"""The ``speakwire`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _cmd_stretch(args: argparse.Namespace) -> int:
    import numpy as np

    from speakwire.dsp import time_stretch
    from speakwire.wavfile import read_wav, write_wav

    samples, rate = read_wav(args.input)
    if samples.ndim == 2:
        # WSOLA is mono; stretching channels separately would let their splices drift apart.
        samples = samples.mean(axis=1).astype(np.float32)
    out = time_stretch(samples, rate, args.speed)
    write_wav(args.output, out, rate)
    print(
        f"{args.input}: {len(samples) / rate:.3f} s at {rate} Hz -> {args.output}: "
        f"{len(out) / rate:.3f} s (speed {args.speed})"
    )
    return 0


async def _say(text: str, speed: float, sample_rate: int) -> tuple[object, list[tuple[str, float]], float]:
    """Speak ``text`` through the embedded server and the client, stretched locally; return
    (samples, words with their rescaled start times, seconds to the first audio)."""
    import time

    import numpy as np

    from speakwire.dsp import pcm
    from speakwire.dsp.wsola import Stretcher
    from speakwire.protocol.messages import Chunk, OutputFormat, WordTimestamps
    from speakwire.server import TTSServer
    from speakwire.transport.websocket import TTSConnection

    stretcher = Stretcher(sample_rate, speed)
    pieces: list[np.ndarray] = []
    words: list[tuple[str, float]] = []
    first_audio = float("nan")
    async with TTSServer("127.0.0.1", 0) as server, TTSConnection(server.url) as conn:
        # f32 from the server: stretch before quantising, as the pipecat plugin does.
        ctx = conn.context(voice="default", output_format=OutputFormat("pcm_f32le", sample_rate), add_timestamps=True)
        started = time.perf_counter()
        await ctx.push(text)
        await ctx.no_more_inputs()
        async for event in ctx:
            if isinstance(event, Chunk):
                if not pieces:
                    first_audio = time.perf_counter() - started
                pieces.append(stretcher.process(pcm.decode(event.audio, "pcm_f32le")))
            elif isinstance(event, WordTimestamps):
                words.extend(
                    (word, stretcher.output_time(start)) for word, start in zip(event.words, event.start, strict=True)
                )
    pieces.append(stretcher.flush())
    return np.concatenate(pieces), words, first_audio


def _cmd_say(args: argparse.Namespace) -> int:
    import asyncio

    from speakwire.dsp.speed import DEFAULT_POLICY
    from speakwire.wavfile import write_wav

    speed = DEFAULT_POLICY.apply(args.speed)
    samples, words, first_audio = asyncio.run(_say(args.text, speed, args.sample_rate))
    write_wav(args.output, samples, args.sample_rate)
    duration = len(samples) / args.sample_rate  # type: ignore[arg-type]
    print(f"{args.output}: {duration:.2f} s at {args.sample_rate} Hz, speed {speed}, "
          f"first audio after {first_audio * 1000:.1f} ms (embedded espeak-ng server)")
    print("words: " + " ".join(f"{word}@{start:.2f}s" for word, start in words))
    return 0


def _serve_notice(host: str, url: str, described: str, keyed: bool) -> tuple[str, str | None]:
    """The serve command's startup line, and a warning (for stderr) when it is open to a network.

    Without a key, a loopback server is open to this host's users only; bound to any other address
    (``0.0.0.0``, ``::``, a LAN address, a host name), anyone who can reach it may use it.
    """
    import ipaddress

    if keyed:
        return f"speakwire: serving {url} ({described}, API key required)", None
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return f"speakwire: serving {url} ({described}, no API key: anyone on this host may connect)", None
    line = f"speakwire: serving {url} ({described}, no API key: ANYONE WHO CAN REACH {host} MAY CONNECT)"
    warning = (
        f"speakwire: WARNING: --host {host} is not a loopback address and no API key is set, so any machine"
        " that can reach this port may use the server; set --api-key (or $SPEAKWIRE_API_KEY), or bind 127.0.0.1"
    )
    return line, warning


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import os
    import signal

    from speakwire.server import ServerLimits, TTSServer
    from speakwire.server.engine import Engine

    def make_engine() -> tuple[Engine, str]:
        if args.engine == "piper":
            from speakwire.server.piper import PiperEngine

            # --voice defaults to espeak's "en-us": for piper that means the default (joe) voice;
            # anything else is the path of a Piper .onnx model.
            piper = PiperEngine(voice=None if args.voice == "en-us" else args.voice)
            return piper, f"piper-tts {piper.version}, voice {piper.voice}"
        from speakwire.server.espeak import EspeakEngine

        espeak = EspeakEngine(voice=args.voice)
        return espeak, f"espeak-ng {espeak.version}"

    # An empty key (SPEAKWIRE_API_KEY= in an env file) means no key: no client can send an empty one.
    api_key = args.api_key or os.environ.get("SPEAKWIRE_API_KEY") or None
    idle = args.idle_timeout if args.idle_timeout > 0 else None

    async def serve() -> None:
        engine, described = make_engine()
        try:
            server = TTSServer(args.host, args.port, api_key=api_key, engine=engine,
                               limits=ServerLimits(idle_timeout=idle), allowed_origins=args.allow_origin)
            await server.start()
            # SIGTERM (service managers, containers) closes connections cleanly, like Ctrl-C.
            stop = asyncio.Event()
            with contextlib.suppress(NotImplementedError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            line, warning = _serve_notice(args.host, server.url, described, api_key is not None)
            if warning is not None:
                print(warning, file=sys.stderr, flush=True)
            print(line, flush=True)
            try:
                await stop.wait()
            finally:
                await server.close()
        finally:
            engine.close()

    asyncio.run(serve())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.headless:
        from speakwire.plugin.demo.headless import main_headless

        return main_headless(args.out, args.host, 0 if args.port is None else args.port)
    from speakwire.plugin.demo.app import main_serve

    return main_serve(args.host, 8080 if args.port is None else args.port)


def _origin(value: str) -> str:
    from speakwire.server.auth import normalize_origin

    try:
        return normalize_origin(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speakwire", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stretch", help="time-stretch a WAV file, pitch preserved (WSOLA)")
    p.add_argument("input", help="16-bit PCM WAV in")
    p.add_argument("output", help="16-bit PCM WAV out (mono)")
    p.add_argument("--speed", type=float, default=1.25, help="speed factor, 0.5 to 2.0 (default 1.25)")
    p.set_defaults(func=_cmd_stretch)

    p = sub.add_parser("say", help="speak text through the embedded server into a WAV, speed applied locally")
    p.add_argument("text", help="what to say (inline markup such as <break time=\"500ms\"/> works)")
    p.add_argument("output", help="16-bit PCM WAV out")
    p.add_argument("--speed", type=float, default=1.0, help="speed factor, 0.5 to 2.0 (default 1.0)")
    p.add_argument("--sample-rate", type=int, default=24000, choices=[8000, 16000, 22050, 24000, 44100, 48000],
                   help="output sample rate (default 24000)")
    p.set_defaults(func=_cmd_say)

    p = sub.add_parser("serve", help="run the local Cartesia-compatible TTS WebSocket server")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this host only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--engine", choices=["espeak", "piper"], default="espeak", help="speech engine (default espeak)")
    p.add_argument("--voice", default="en-us",
                   help="espeak-ng voice (default en-us); with --engine piper, the path of a .onnx model")
    p.add_argument("--api-key", default=None,
                   help="require this key (default: $SPEAKWIRE_API_KEY; unset: no key needed)")
    p.add_argument("--idle-timeout", type=float, default=300.0,
                   help="close connections idle this many seconds (default 300; 0: never)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="URL", type=_origin,
                   help="let web pages from this origin (like https://app.example.com) connect; repeatable."
                        " Browser pages are refused by default")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("demo", help="the voice-agent demo: a page served on this host, or --headless into a WAV")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this host only)")
    p.add_argument("--port", type=int, default=None,
                   help="port (default 8080; with --headless a free one)")
    p.add_argument("--headless", action="store_true",
                   help="no browser: run the scripted conversation through an in-process WebRTC peer")
    p.add_argument("--out", default="demo.wav",
                   help="with --headless: the WAV of the received audio (default demo.wav)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    from speakwire.errors import SpeakwireError

    try:
        return int(args.func(args))
    except SpeakwireError as exc:
        print(f"speakwire {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
