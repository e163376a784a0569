"""What a test needs from the machine: skip where it is missing, except under CI, which installs it.

`.ci/run` installs every system package and extra the tests use, so under ``CI=true`` a missing tool is
a broken environment and the test fails, naming it; elsewhere the test skips and says why.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def under_ci() -> bool:
    """True when the suite runs under CI (``CI=true``)."""
    return os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> None:
    """Skip for ``reason`` (what is missing and how to install it), or fail under CI."""
    if under_ci():
        pytest.fail(f"{reason} (CI=true: .ci/run installs it, so this is a broken environment)")
    pytest.skip(reason, allow_module_level=True)


def module(name: str, install: str) -> ModuleType:
    """Import ``name``, or :func:`missing` with the ``install`` hint."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"{name} is not installed ({install})")
        raise  # unreachable: missing() raises
