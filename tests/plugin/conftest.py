"""Fixtures for the plugin tests: one espeak engine per session, shared by the local servers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from speakwire.server.espeak import EspeakEngine


@pytest.fixture(scope="session")
def tts_engine() -> Iterator[EspeakEngine]:
    """The offline engine behind every local server these tests start (loading it costs ~0.2 s)."""
    with EspeakEngine() as engine:
        yield engine


class RecordingProxy:
    """A loopback WebSocket relay that records every JSON message a client sends to ``upstream``.

    It lets a test assert on exactly what went over the wire (one message per token,
    ``continue`` flags, flushes, cancels) while the real server does the speaking. ``log`` keeps
    both directions in the order the proxy saw them, as ``("sent" | "received", context_id,
    what)``: a sent message's fields, or a received message's ``type``.

    ``corrupt_chunk=n`` replaces the audio of the first context's ``n``-th chunk (1-based) with
    text that is not base64, as a broken server would send it; :attr:`corrupted` then names that
    context and :attr:`chunk_bytes` holds the decoded sizes of its chunks relayed intact before.
    """

    def __init__(self, upstream: str, *, corrupt_chunk: int | None = None) -> None:
        self.upstream = upstream
        self.sent: list[dict[str, Any]] = []
        self.log: list[tuple[str, str | None, Any]] = []
        self.corrupted: str | None = None
        self.chunk_bytes: list[int] = []
        self._corrupt_chunk = corrupt_chunk
        self._chunks_seen = 0
        self._server: Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = next(iter(self._server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/tts/websocket"

    async def __aenter__(self) -> RecordingProxy:
        self._server = await serve(self._relay, "127.0.0.1", 0, compression=None)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _relay(self, client: ServerConnection) -> None:
        async with connect(self.upstream, compression=None, max_size=None) as upstream:

            async def down() -> None:
                async for message in upstream:
                    if isinstance(message, str):
                        received = json.loads(message)
                        self.log.append(("received", received.get("context_id"), received.get("type")))
                        if received.get("type") == "chunk":
                            message = self._maybe_corrupt(received, message)
                    await client.send(message)

            task = asyncio.create_task(down())
            try:
                async for message in client:
                    sent = json.loads(message)
                    self.sent.append(sent)
                    self.log.append(("sent", sent.get("context_id"), sent))
                    await upstream.send(message)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await task

    def _maybe_corrupt(self, chunk: dict[str, Any], message: str) -> str:
        if self._corrupt_chunk is None:
            return message
        if self.corrupted is None:
            self.corrupted = chunk["context_id"]
        if chunk["context_id"] != self.corrupted:
            return message
        self._chunks_seen += 1
        if self._chunks_seen < self._corrupt_chunk:
            self.chunk_bytes.append(len(base64.b64decode(chunk["data"])))
        elif self._chunks_seen == self._corrupt_chunk:
            return json.dumps({**chunk, "data": "%%% not base64 %%%"})
        return message

    def for_context(self, context_id: str) -> list[dict[str, Any]]:
        """The messages sent for ``context_id``, in order."""
        return [m for m in self.sent if m.get("context_id") == context_id]
