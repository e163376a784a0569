"""Keeping credentials out of logs and error text.

An API key can reach a log in several spellings: as given, and percent-encoded in a URL's query
(a key with ``/``, ``+`` or ``=`` appears as ``%2F``, ``%2B``, ``%3D`` in a handshake's request
line). :func:`secret_forms` lists them all, longest first so that no form is left half replaced by
a shorter one, and :class:`RedactingLogger` scrubs them from every record, tracebacks included.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import quote, quote_plus

__all__ = ["REDACTED", "RedactingLogger", "scrub", "secret_forms"]

#: What a credential is replaced with.
REDACTED: Final = "***"


def secret_forms(secrets: Iterable[str | None]) -> tuple[str, ...]:
    """Every spelling of each non-empty secret a log line can carry, longest first."""
    forms = {
        form
        for secret in secrets
        if secret
        for form in (secret, quote(secret), quote(secret, safe=""), quote_plus(secret))
    }
    return tuple(sorted(forms, key=len, reverse=True))


def scrub(text: str, forms: tuple[str, ...]) -> str:
    """``text`` with every form in ``forms`` (from :func:`secret_forms`) replaced by ``***``."""
    for form in forms:
        text = text.replace(form, REDACTED)
    return text


class RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that scrubs ``secrets`` from each fully formatted message before a handler sees it.

    An exception attached with ``exc_info`` is formatted here and scrubbed with the message, since
    its text can quote a URL with the key: with ``tracebacks=False`` as ``"<msg>: Type: text"``,
    with ``tracebacks=True`` as the whole traceback. The record then carries no exc_info.
    """

    def __init__(
        self, logger: logging.Logger, secrets: str | Iterable[str | None] | None, *, tracebacks: bool = False
    ) -> None:
        super().__init__(logger, {})
        self._forms = secret_forms([secrets] if isinstance(secrets, str) or secrets is None else secrets)
        self._tracebacks = tracebacks

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Log with the secrets scrubbed from the formatted message (and its exception)."""
        if not self.isEnabledFor(level):
            return
        if self._forms:
            try:
                text = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                text = " ".join(map(str, (msg, *args)))
            exc_info = kwargs.pop("exc_info", None)
            if exc_info:
                if exc_info is True:
                    exc_info = sys.exc_info()
                if isinstance(exc_info, BaseException):
                    exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
                if isinstance(exc_info, tuple) and exc_info[1] is not None:
                    if self._tracebacks:
                        text += "\n" + "".join(traceback.format_exception(*exc_info)).rstrip("\n")
                    else:
                        text += f": {type(exc_info[1]).__name__}: {exc_info[1]}"
            msg, args = scrub(text, self._forms), ()
        self.logger.log(level, msg, *args, **kwargs)
