"""benchmarks/RESULTS.md: each benchmark owns one ``## <title>`` section and rewrites only that one."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def write_section(title: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section headed ``## <title>`` with ``body``, keeping the others."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    heading = f"\n## {title}\n"
    section = f"{heading}\n{body}\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    path.write_text(text)
