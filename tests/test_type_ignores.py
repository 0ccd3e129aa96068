"""Issue 17: `make lint` runs mypy, and every `# type: ignore` left in gateway/ and tools/ names its
error code and says why (a comment on the same line or the line above)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORE = re.compile(r"#\s*type:\s*ignore(\[[^\]]+\])?(.*)$")


def test_every_type_ignore_has_a_code_and_a_reason() -> None:
    bare = []
    for path in sorted([*ROOT.glob("gateway/**/*.py"), *ROOT.glob("tools/**/*.py")]):
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            m = IGNORE.search(line)
            if m is None:
                continue
            has_code = m.group(1) is not None
            reason_after = "#" in m.group(2)
            reason_above = i > 0 and lines[i - 1].strip().startswith("#")
            if not (has_code and (reason_after or reason_above)):
                bare.append(f"{path.relative_to(ROOT)}:{i + 1}: {line.strip()}")
    assert bare == []


def test_make_lint_runs_mypy_on_gateway_and_tools() -> None:
    makefile = (ROOT / "Makefile").read_text()
    lint = makefile[makefile.index("\nlint:") :].split("\n\n")[0]
    assert "ruff check" in lint and "mypy" in lint
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert mypy["files"] == ["gateway", "tools"] and mypy["warn_unused_ignores"] is True
