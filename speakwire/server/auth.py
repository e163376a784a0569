"""Handshake admission: the path, the API key in any of the four places clients put it, and redaction.

Clients present the key in four ways (protocol.md): SDK 4.x sends ``Authorization: Bearer <key>``,
pipecat and livekit send ``X-API-Key``, SDK 2.x puts ``?api_key=`` in the URL and browsers use
``?access_token=``. Any of them is accepted; the comparison is constant-time so response timing does
not leak how much of a guess was right. The version (``Cartesia-Version`` header in any casing, or
``?cartesia_version``) is never checked: every client pins a different date.

The key travels in the request line for the query forms, so anything that logs the request could
leak it: :class:`RedactingLogger` scrubs it from every record of the server's logger.

Browsers put an ``Origin`` header on every WebSocket handshake; other clients (the official SDK,
pipecat, our own) send none. A server without a key would otherwise talk to any web page the
user opens, so handshakes with an ``Origin`` are refused unless it is on the server's allow-list;
:func:`normalize_origin` checks an entry of that list.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from speakwire.redact import RedactingLogger

__all__ = ["TTS_PATH", "Admission", "RedactingLogger", "admit", "normalize_origin", "presented_keys"]

#: The one path the server answers on.
TTS_PATH = "/tts/websocket"

_QUERY_KEYS = ("api_key", "access_token")


@dataclass(frozen=True, slots=True)
class Admission:
    """The handshake verdict: ``status`` 101 admits, 401 and 404 refuse with ``reason``."""

    status: int
    reason: str

    @property
    def admitted(self) -> bool:
        """True when the WebSocket upgrade may go ahead."""
        return self.status == 101


def presented_keys(headers: Iterable[tuple[str, str]], query: str) -> list[str]:
    """Every credential the request carries: ``X-API-Key``, ``Authorization: Bearer``, query keys."""
    keys: list[str] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == "x-api-key":
            keys.append(value.strip())
        elif lowered == "authorization":
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                keys.append(token.strip())
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in _QUERY_KEYS:
            keys.append(value)
    return keys


def admit(path: str, headers: Iterable[tuple[str, str]], api_key: str | None) -> Admission:
    """Decide a handshake for request target ``path`` (path plus query) against ``api_key``.

    Without an ``api_key`` every request to :data:`TTS_PATH` is admitted. Reasons never echo
    what the client sent.
    """
    target = urlsplit(path)
    if target.path.rstrip("/") != TTS_PATH:
        return Admission(404, f"Not Found: the TTS WebSocket is at {TTS_PATH}")
    if api_key is None:
        return Admission(101, "Switching Protocols")
    expected = api_key.encode()
    # Compare against every presented key (no early exit) so timing does not tell which one matched.
    matched = False
    for key in presented_keys(headers, target.query):
        matched |= hmac.compare_digest(key.encode(), expected)
    if not matched:
        return Admission(
            401,
            "Unauthorized: send the API key as X-API-Key, Authorization: Bearer, ?api_key or ?access_token",
        )
    return Admission(101, "Switching Protocols")


def normalize_origin(origin: str) -> str:
    """An allowed origin as browsers send it: ``scheme://host[:port]``, lower case, no slash.

    ``"https://App.example.com:443/"`` -> ``"https://app.example.com"``. Raises :class:`ValueError`
    naming the value for anything with a path, query, credentials or no host, which no
    ``Origin`` header can equal (``"null"``, sent by sandboxed pages and ``file:`` URLs, is refused
    too: any such page would be let in).
    """
    if not isinstance(origin, str):
        raise ValueError(f"allowed origin must be a string like 'https://app.example.com', got {origin!r}")
    parts = urlsplit(origin.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
        or port == -1
        or parts.username is not None
        or parts.password is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ValueError(
            f"allowed origin {origin!r} is not of the form scheme://host[:port] (like 'https://app.example.com')"
        )
    scheme, host = parts.scheme.lower(), parts.hostname
    host = f"[{host}]" if ":" in host else host
    # Browsers leave the scheme's default port out of the header.
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"
