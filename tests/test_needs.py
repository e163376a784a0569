"""tests/needs.py: a missing tool skips a test, except under CI, where it fails it."""

from __future__ import annotations

import pytest

from tests.needs import missing, module


def test_missing_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no_such_module_xyz is not installed"):
        module("no_such_module_xyz", "pip install it")


def test_missing_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"sox is gone \(CI=true"):
        missing("sox is gone")


def test_module_returns_what_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert module("json", "stdlib").dumps([1]) == "[1]"
