"""Every non-Python file inside the `gateway` package is declared as package data.

A non-editable install (`pip install .`, the README's service steps) copies only modules and the
declared package data: the dashboard's pages, script and catalogues were once left out, so the
installed gateway served no dashboard while every test (editable install) passed. Building a wheel
here would download setuptools; reading the declaration is enough to keep it complete.
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_data_file_of_the_gateway_package_is_declared() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = conf["tool"]["setuptools"].get("package-data", {}).get("gateway", [])
    pkg = ROOT / "gateway"
    data = [
        p.relative_to(pkg).as_posix()
        for p in pkg.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    ]
    assert data, "no data files found: the test looks in the wrong place"
    missing = [f for f in data if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert missing == [], f"declare these in [tool.setuptools.package-data] gateway: {missing}"
