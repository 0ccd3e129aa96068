"""README.id.md, the quick start in Bahasa Indonesia, kept in step with README.md.

Each of its sections names the English section it follows (`<!-- en: <heading> -->`). In each pair the
code blocks must hold the same commands and config lines, in the same order (comments stripped: they
are translated), and every command quoted inline in the Indonesian text must be one the English
section gives. A command changed in README.md without README.id.md fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EN_README = ROOT / "README.md"
ID_README = ROOT / "README.id.md"
FENCE_RE = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", re.M | re.S)
INLINE_RE = re.compile(r"`([^`\n]+)`")
COMMAND_PREFIXES = ("parcelbox ", ".venv/", "make ", "sudo ", "pip ")
MAP_RE = re.compile(r"<!-- en: (.+?) -->")
# The quick start the issue asks for: trying it without hardware, building a box, pairing WhatsApp,
# the dashboard on a phone.
REQUIRED = {"Try it without hardware (5 minutes)", "Build a box", "WhatsApp alerts", "Dashboard"}


def sections(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        heading, _, body = part.partition("\n")
        out[heading.strip()] = body
    return out


def strip_comment(line: str) -> str:
    # Shell and TOML comments: a "#" at the start or after whitespace (never inside a URL or a value).
    return re.sub(r"(^|\s+)#(\s.*)?$", "", line).rstrip()


def blocks(body: str) -> list[tuple[str, list[str]]]:
    out = []
    for m in FENCE_RE.finditer(body):
        lines = [strip_comment(x.strip()) for x in m.group(2).splitlines()]
        out.append((m.group(1), [x for x in lines if x]))
    return out


def inline_commands(body: str) -> set[str]:
    prose = FENCE_RE.sub("", body)
    return {c for c in INLINE_RE.findall(prose) if c.startswith(COMMAND_PREFIXES)}


def pairs() -> list[tuple[str, str, str]]:
    en = sections(EN_README.read_text(encoding="utf-8"))
    out = []
    for heading, body in sections(ID_README.read_text(encoding="utf-8")).items():
        m = MAP_RE.search(body)
        if m:
            assert m.group(1) in en, (
                f"README.id.md '{heading}' follows a missing English section {m.group(1)!r}"
            )
            out.append((heading, body, en[m.group(1)]))
    return out


def test_readme_id_covers_the_quick_start() -> None:
    followed = {MAP_RE.search(body).group(1) for _, body, _ in pairs()}  # type: ignore[union-attr]
    assert REQUIRED <= followed


def test_code_blocks_match_the_english_readme() -> None:
    for heading, id_body, en_body in pairs():
        assert blocks(id_body) == blocks(en_body), (
            f"README.id.md '{heading}': code blocks differ from README.md"
        )


def test_inline_commands_are_ones_the_english_readme_gives() -> None:
    for heading, id_body, en_body in pairs():
        en_cmds = inline_commands(en_body) | {line for _, lines in blocks(en_body) for line in lines}
        extra = inline_commands(id_body) - en_cmds
        assert not extra, f"README.id.md '{heading}': commands not in README.md: {sorted(extra)}"
        assert inline_commands(id_body), heading  # the prose names its commands too


def test_each_readme_links_the_other_at_the_top() -> None:
    assert "[Bahasa Indonesia](README.id.md)" in EN_README.read_text(encoding="utf-8").split("\n## ", 1)[0]
    assert "[English](README.md)" in ID_README.read_text(encoding="utf-8").split("\n## ", 1)[0]


def test_the_check_catches_a_changed_command() -> None:
    """The comparison is strict enough: one changed flag in a block is a difference."""
    body = "```sh\nparcelbox flash ports   # lists ports\n```\n"
    assert blocks(body) == [("sh", ["parcelbox flash ports"])]
    assert blocks(body) != blocks(body.replace("ports", "port"))
    assert blocks("```toml\nkey = 1   # catatan\n# baris komentar\n```\n") == [("toml", ["key = 1"])]
