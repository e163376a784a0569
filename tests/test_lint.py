"""The tree is ruff clean and the layers point one way (checked on the source, not by convention)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "speakwire"

# What each layer may not import (directly). dsp and protocol are pure; only plugin imports pipecat.
FORBIDDEN = {
    "dsp": {"asyncio", "websockets", "aiortc", "av", "pipecat", "aiohttp", "speakwire.protocol",
            "speakwire.transport", "speakwire.plugin", "speakwire.server", "socket"},
    "protocol": {"asyncio", "websockets", "aiortc", "av", "pipecat", "aiohttp", "speakwire.transport",
                 "speakwire.plugin", "speakwire.server", "socket", "threading"},
    "transport": {"pipecat", "speakwire.plugin", "speakwire.server"},
    "server": {"pipecat", "aiortc", "speakwire.plugin", "speakwire.transport"},
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(layer: str) -> None:
    offenders = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in _imports(path):
            for banned in FORBIDDEN[layer]:
                if name == banned or name.startswith(banned + "."):
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (it comes with the [test] extra)")
    targets = [name for name in ("speakwire", "tests", "benchmarks", "examples") if (ROOT / name).is_dir()]
    result = subprocess.run([ruff, "check", *targets], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
