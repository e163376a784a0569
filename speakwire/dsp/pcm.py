"""Raw PCM codecs: float32 samples in [-1, 1] <-> bytes in the four wire encodings.

Encodings (the Cartesia ``output_format.encoding`` names):

- ``pcm_f32le``: 32-bit IEEE float, little-endian.
- ``pcm_s16le``: 16-bit signed integer, little-endian. Scale 32768: ``s16 = round(x * 32768)``
  clipped to [-32768, 32767], and ``x = s16 / 32768``. So -1.0 is exact, +1.0 clips to 32767, and
  every s16 value survives decode -> encode bit for bit.
- ``pcm_mulaw`` / ``pcm_alaw``: 8-bit ITU-T G.711 mu-law / A-law, computed from the 16-bit value
  exactly as the ITU-T G.191 reference software does (``ulaw_compress``/``alaw_compress``), via two
  64 Ki-entry lookup tables built once at import. Negative inputs use the one's complement, so both
  laws are symmetric: ``code(-x - 1) == code(x) ^ 0x80``. (CPython's old ``audioop.lin2ulaw``
  floor-shifts negatives instead and differs from G.191 at 508 negative inputs, one code each.)
  mu-law code 0x7F (negative zero) decodes to -0.0, and a float that rounds to a negative zero
  encodes to 0x7F, so ``encode(decode(b)) == b`` for every byte string in either law.

Input rules, the same for every encoding: samples must be real floating point (an integer array is
refused, since reading int16 as floats would be a silent 32768x gain error); values outside
[-1, 1], including the infinities, clip; NaN raises :class:`AudioFormatError` naming the first
NaN's index, so a numerical bug upstream never turns into noise on the line. Decoding
``pcm_f32le`` applies the same rules, so decoded samples always lie in [-1, 1].
Multi-dimensional input is flattened in C order (``(frames, channels)`` becomes interleaved).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from speakwire.errors import AudioFormatError, UnsupportedEncodingError

__all__ = [
    "ENCODINGS",
    "alaw_to_s16",
    "bytes_per_sample",
    "decode",
    "encode",
    "float_to_s16",
    "mulaw_to_s16",
    "s16_to_alaw",
    "s16_to_float",
    "s16_to_mulaw",
    "silence",
]

#: The encodings :func:`encode` and :func:`decode` accept.
ENCODINGS: Final[tuple[str, ...]] = ("pcm_f32le", "pcm_s16le", "pcm_mulaw", "pcm_alaw")

_WIDTH: Final[dict[str, int]] = {"pcm_f32le": 4, "pcm_s16le": 2, "pcm_mulaw": 1, "pcm_alaw": 1}

_S16_SCALE: Final = 32768.0

BytesLike = bytes | bytearray | memoryview


def _g191_mulaw_decode_table() -> np.ndarray:
    # G.191 ulaw_expand, vectorised over the 256 codes.
    code = np.arange(256, dtype=np.int32)
    inverted = ~code & 0xFF
    exponent = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    step = 4 << (exponent + 1)
    magnitude = (0x80 << exponent) + step * mantissa + step // 2 - 4 * 33
    return np.where(code < 0x80, -magnitude, magnitude).astype(np.int16)


def _g191_alaw_decode_table() -> np.ndarray:
    # G.191 alaw_expand, vectorised over the 256 codes.
    code = np.arange(256, dtype=np.int32)
    toggled = (code ^ 0x55) & 0x7F
    exponent = toggled >> 4
    mantissa = (toggled & 0x0F) + np.where(exponent > 0, 16, 0)
    magnitude = ((mantissa << 4) + 8) << np.maximum(exponent - 1, 0)
    return np.where(code > 127, magnitude, -magnitude).astype(np.int16)


def _shifts_below(value: np.ndarray, limit: int) -> np.ndarray:
    # How many right shifts bring value below limit: G.191's per-sample "while" loops, vectorised.
    shifts = np.zeros(value.shape, dtype=np.int32)
    for t in range(8):
        shifts += value >= (limit << t)
    return shifts


def _g191_mulaw_encode_table() -> np.ndarray:
    # G.191 ulaw_compress for every int16, indexed by the value's uint16 bit pattern.
    x = np.arange(65536, dtype=np.int32).astype(np.uint16).view(np.int16).astype(np.int32)
    absno = np.minimum(np.where(x < 0, ~x, x) >> 2, 0x1FFF - 33) + 33
    segno = 1 + _shifts_below(absno >> 6, 1)
    high = 8 - segno
    low = 0x0F - ((absno >> segno) & 0x0F)
    code = (high << 4) | low
    return np.where(x >= 0, code | 0x80, code).astype(np.uint8)


def _g191_alaw_encode_table() -> np.ndarray:
    # G.191 alaw_compress for every int16, indexed by the value's uint16 bit pattern.
    x = np.arange(65536, dtype=np.int32).astype(np.uint16).view(np.int16).astype(np.int32)
    ix = np.where(x < 0, ~x, x) >> 4
    exponent = _shifts_below(ix, 32)
    shifted = ix >> exponent
    code = np.where(ix > 15, (shifted - 16) + ((exponent + 1) << 4), ix)
    code = np.where(x >= 0, code | 0x80, code)
    return (code ^ 0x55).astype(np.uint8)


_MULAW_TO_S16: Final = _g191_mulaw_decode_table()
_ALAW_TO_S16: Final = _g191_alaw_decode_table()
_S16_TO_MULAW: Final = _g191_mulaw_encode_table()
_S16_TO_ALAW: Final = _g191_alaw_encode_table()
# Decoding to float goes straight through a 256-entry float table: one gather, no int pass.
_MULAW_TO_FLOAT: Final = (_MULAW_TO_S16 / _S16_SCALE).astype(np.float32)
_MULAW_TO_FLOAT[0x7F] = -0.0
_ALAW_TO_FLOAT: Final = (_ALAW_TO_S16 / _S16_SCALE).astype(np.float32)
for _table in (_MULAW_TO_S16, _ALAW_TO_S16, _S16_TO_MULAW, _S16_TO_ALAW, _MULAW_TO_FLOAT, _ALAW_TO_FLOAT):
    _table.flags.writeable = False
del _table


def _check_encoding(encoding: str) -> int:
    width = _WIDTH.get(encoding) if isinstance(encoding, str) else None
    if width is None:
        raise UnsupportedEncodingError(
            f"unsupported encoding {encoding!r}; known encodings: {', '.join(ENCODINGS)}"
        )
    return width


def bytes_per_sample(encoding: str) -> int:
    """Bytes one mono sample takes in ``encoding`` (4, 2, 1 or 1)."""
    return _check_encoding(encoding)


def _as_float_samples(samples: npt.ArrayLike) -> np.ndarray:
    array = np.asarray(samples)
    if array.dtype.kind != "f":
        raise AudioFormatError(
            f"samples must be floating point in [-1, 1], got dtype {array.dtype}"
            + ("; use s16_to_float() for int16 PCM" if array.dtype == np.int16 else "")
        )
    array = array.reshape(-1)
    nan = np.isnan(array)
    if nan.any():
        raise AudioFormatError(
            f"samples contain NaN ({int(nan.sum())} of {array.size}, first at index {int(nan.argmax())})"
        )
    return array


def _scaled_s16(samples: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    # Clip first so huge values cannot overflow; scaling by 2**15 is exact in any float width.
    scaled = np.clip(_as_float_samples(samples), -1.0, 1.0) * np.float32(_S16_SCALE)
    np.rint(scaled, out=scaled)
    return scaled, np.minimum(scaled, 32767).astype(np.int16)


def float_to_s16(samples: npt.ArrayLike) -> np.ndarray:
    """Float samples -> int16 (scale 32768, round half to even, clip; NaN raises), flattened."""
    return _scaled_s16(samples)[1]


def s16_to_float(values: npt.ArrayLike) -> np.ndarray:
    """int16 values -> float32 samples ``value / 32768``, in [-1, 1)."""
    return _as_int16(values) * np.float32(1.0 / _S16_SCALE)


def _as_int16(values: npt.ArrayLike) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype != np.int16:
        raise AudioFormatError(f"s16 values must have dtype int16, got {array.dtype}")
    return array.reshape(-1)


def _as_codes(codes: npt.ArrayLike) -> np.ndarray:
    array = np.asarray(codes)
    if array.dtype != np.uint8:
        raise AudioFormatError(f"G.711 codes must have dtype uint8, got {array.dtype}")
    return array.reshape(-1)


def s16_to_mulaw(values: npt.ArrayLike) -> np.ndarray:
    """int16 values -> G.711 mu-law codes (uint8), per ITU-T G.191 ``ulaw_compress``."""
    return _S16_TO_MULAW[_as_int16(values).view(np.uint16)]


def mulaw_to_s16(codes: npt.ArrayLike) -> np.ndarray:
    """G.711 mu-law codes (uint8) -> int16 values, per ITU-T G.191 ``ulaw_expand``."""
    return _MULAW_TO_S16[_as_codes(codes)]


def s16_to_alaw(values: npt.ArrayLike) -> np.ndarray:
    """int16 values -> G.711 A-law codes (uint8), per ITU-T G.191 ``alaw_compress``."""
    return _S16_TO_ALAW[_as_int16(values).view(np.uint16)]


def alaw_to_s16(codes: npt.ArrayLike) -> np.ndarray:
    """G.711 A-law codes (uint8) -> int16 values, per ITU-T G.191 ``alaw_expand``."""
    return _ALAW_TO_S16[_as_codes(codes)]


def encode(samples: npt.ArrayLike, encoding: str) -> bytes:
    """Encode float samples in [-1, 1] as ``encoding`` bytes.

    Out-of-range values clip; NaN raises :class:`AudioFormatError`; an unknown encoding raises
    :class:`UnsupportedEncodingError`.
    """
    _check_encoding(encoding)
    if encoding == "pcm_f32le":
        array = _as_float_samples(samples)
        return np.clip(array, -1.0, 1.0).astype("<f4").tobytes()
    scaled, s16 = _scaled_s16(samples)
    if encoding == "pcm_s16le":
        return s16.astype("<i2").tobytes()
    if encoding == "pcm_alaw":
        return _S16_TO_ALAW[s16.view(np.uint16)].tobytes()
    codes = _S16_TO_MULAW[s16.view(np.uint16)]
    # mu-law has a negative zero (0x7F); keeping the float's sign of zero makes
    # encode(decode(code)) == code hold for all 256 codes.
    codes[(s16 == 0) & np.signbit(scaled)] = 0x7F
    return codes.tobytes()


def _as_byte_view(data: BytesLike) -> memoryview:
    if isinstance(data, str):
        raise TypeError("audio data must be bytes, bytearray or memoryview, not str")
    view = memoryview(data)
    if not view.c_contiguous:
        raise AudioFormatError("audio data must be a contiguous buffer")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def decode(data: BytesLike, encoding: str) -> np.ndarray:
    """Decode ``encoding`` bytes into a new, writable float32 array in [-1, 1].

    Raises :class:`UnsupportedEncodingError` for an unknown encoding, :class:`AudioFormatError`
    when the byte count is not a whole number of samples or (``pcm_f32le``) a value is NaN.
    """
    width = _check_encoding(encoding)
    view = _as_byte_view(data)
    if view.nbytes % width:
        raise AudioFormatError(
            f"{view.nbytes} bytes is not a whole number of {encoding} samples "
            f"({width} bytes each; {view.nbytes % width} trailing bytes)"
        )
    if encoding == "pcm_f32le":
        floats = _as_float_samples(np.frombuffer(view, dtype="<f4"))
        return np.clip(floats, -1.0, 1.0).astype(np.float32)
    if encoding == "pcm_s16le":
        return np.frombuffer(view, dtype="<i2") * np.float32(1.0 / _S16_SCALE)
    table = _MULAW_TO_FLOAT if encoding == "pcm_mulaw" else _ALAW_TO_FLOAT
    return table[np.frombuffer(view, dtype=np.uint8)]


def silence(num_samples: int, encoding: str) -> bytes:
    """``num_samples`` samples of digital silence in ``encoding`` (mu-law 0xFF, A-law 0xD5, else zeros)."""
    width = _check_encoding(encoding)
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if encoding == "pcm_mulaw":
        return b"\xff" * num_samples
    if encoding == "pcm_alaw":
        return b"\xd5" * num_samples
    return bytes(width * num_samples)
