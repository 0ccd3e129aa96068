"""Guards on the firmware's shape: no file shadows a board module, and only main.py / boot.py
touch the board's hardware modules (the rest take hardware as arguments)."""

from __future__ import annotations

import ast
from pathlib import Path

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"
BOARD_MODULES = {
    "camera",
    "machine",
    "network",
    "esp32",
    "time",
    "json",
    "os",
    "gc",
    "sys",
    "umqtt",
    "ntptime",
}
HARDWARE = {"machine", "network", "esp32", "camera", "umqtt", "ntptime"}


def _imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_firmware_file_shadows_a_board_module():
    for p in FIRMWARE.rglob("*.py"):
        assert p.stem not in BOARD_MODULES and not p.stem.startswith("umqtt"), p


def test_logic_modules_never_import_hardware_modules():
    for p in FIRMWARE.glob("*.py"):
        if p.name in ("main.py", "boot.py"):
            continue
        bad = _imports(ast.parse(p.read_text())) & HARDWARE
        assert not bad, f"{p.name} imports {bad}"


def test_main_imports_hardware_only_inside_functions():
    tree = ast.parse((FIRMWARE / "main.py").read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            top |= _imports(node)
    assert not top & HARDWARE, top
