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


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speakwire", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stretch", help="time-stretch a WAV file, pitch preserved (WSOLA)")
    p.add_argument("input", help="16-bit PCM WAV in")
    p.add_argument("output", help="16-bit PCM WAV out (mono)")
    p.add_argument("--speed", type=float, default=1.25, help="speed factor, 0.5 to 2.0 (default 1.25)")
    p.set_defaults(func=_cmd_stretch)
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
