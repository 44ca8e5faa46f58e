"""The shape of the code, kept true: the layering, and modules and functions that stay small."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

PACKAGE = ROOT / "module" / "edgeinfer"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80


def test_no_module_imports_from_a_layer_above_it() -> None:
    """pyproject.toml's import-linter contract: cli > tools > app > updates|mqtt > serving >
    pipeline > loaded > runtimes > manifest|config|observability > topics > errors."""
    lint = Path(sys.executable).with_name("lint-imports")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "module"))
    done = subprocess.run(
        [str(lint), "--no-cache"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "layers KEPT" in done.stdout


def test_the_pipeline_and_runtimes_import_neither_mqtt_nor_updates_nor_paho() -> None:
    for folder in ("pipeline", "runtimes"):
        for path in (PACKAGE / folder).glob("*.py"):
            for name in _imports(path):
                assert not name.startswith(("edgeinfer.mqtt", "edgeinfer.updates", "paho")), (
                    f"{path.relative_to(ROOT)} imports {name}"
                )


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_is_small_enough_to_read(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_FILE_LINES, f"{lines} lines: split it (at most {MAX_FILE_LINES})"


def test_no_function_is_longer_than_a_screen() -> None:
    long: list[str] = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} {length}")
    assert long == [], f"functions over {MAX_FUNCTION_LINES} lines: {long}"
