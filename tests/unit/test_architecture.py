"""The shape of the code, kept true: layering, no import cycle, no monolith, the README layout."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

PACKAGE = ROOT / "module" / "edgeinfer"
#: A guard against a new monolith, not a size to fit: split a file when it carries two concepts.
MAX_FILE_LINES = 700


def test_no_module_imports_from_a_layer_above_it() -> None:
    """pyproject.toml's import-linter contracts: cli > tools > app > updates|mqtt > serving >
    pipeline > model > vision > runtimes > config|observability > manifest > topics > errors,
    and the layers inside manifest/ and model/."""
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
    assert "Contracts: 3 kept, 0 broken." in done.stdout


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
    assert lines <= MAX_FILE_LINES, f"{lines} lines: a new monolith (at most {MAX_FILE_LINES})"


def test_the_largest_modules_are_printed_for_information(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sizes = sorted(((len(p.read_text().splitlines()), p) for p in _modules()), reverse=True)
    with capsys.disabled():
        print(
            "\nlargest modules:", ", ".join(f"{p.relative_to(PACKAGE)} {n}" for n, p in sizes[:8])
        )
    assert sizes, "no modules found under module/edgeinfer"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _internal_imports(path: Path, modules: set[str]) -> set[str]:
    """Every edgeinfer module that `path` imports, anywhere in it (type-only imports too)."""
    here = _module_name(path)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = here.split(".") if path.name == "__init__.py" else here.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in modules else base)
    return (found & modules) - {here}


def test_no_module_takes_part_in_an_import_cycle() -> None:
    """Type-only imports count: a cycle hidden behind TYPE_CHECKING is still two rooms in one."""
    paths = {_module_name(p): p for p in _modules()}
    graph = {name: _internal_imports(path, set(paths)) for name, path in paths.items()}
    cycles: list[list[str]] = []
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        order[node] = low[node] = len(order)
        stack.append(node)
        for other in graph[node]:
            if other not in order:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], order[other])
        if low[node] == order[node]:
            component = [stack.pop()]
            while component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in graph:
        if name not in order:
            visit(name)
    assert cycles == [], f"import cycles: {cycles}"


def test_nothing_in_the_project_cites_a_file_it_does_not_have() -> None:
    """The public contract is the project's own docs; no docstring points outside the checkout."""
    cited = [
        f"{path.relative_to(ROOT)}"
        for folder in ("module", "tests", "benchmarks", "docs", "deployment", "models")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in {".py", ".md", ".toml", ".yaml", ".yml", ".json"}
        and path.is_file()
        and "SPEC" + ".md" in path.read_text(errors="replace")
    ]
    assert cited == [], f"these mention a SPEC file the project does not ship: {cited}"


def _layout_entries() -> set[str]:
    """The names under `module/edgeinfer/` in the README's "Layout" block."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    names: set[str] = set()
    inside = False
    for line in block.splitlines():
        if line.startswith("module/edgeinfer/"):
            inside = True
            continue
        if inside and line and not line.startswith(" "):
            break
        head = line.strip().split("  ", 1)[0]
        if inside and line.startswith("  ") and not line.startswith("   ") and head:
            names |= {item.strip() for item in head.split(",") if item.strip()}
    return names


def test_the_readme_layout_names_every_top_level_folder_and_module() -> None:
    actual = {
        f"{p.name}/" if p.is_dir() else p.name
        for p in PACKAGE.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and p.name != "__init__.py")
    }
    assert _layout_entries() == actual


def test_every_file_and_folder_the_readme_layout_names_is_in_the_package() -> None:
    """A module moved or renamed is renamed in the layout too (the top level is checked
    above; this checks the files and sub-folders each line names)."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    package = block.split("module/edgeinfer/", 1)[1].split("\nmodels/", 1)[0]
    files = {p.name for p in PACKAGE.rglob("*.py")}
    folders = {f"{p.name}/" for p in PACKAGE.rglob("*") if (p / "__init__.py").exists()}
    named = set(re.findall(r"\b[a-z_]+\.py\b", package))
    named_folders = set(re.findall(r"\b[a-z_]+/(?=[\s:(,)])", package))  # not deploy/status
    assert named - files == set(), f"the layout names files the package lacks: {named - files}"
    missing = named_folders - folders - {"static/", "data/"}
    assert missing == set(), f"the layout names folders the package lacks: {missing}"


def test_every_top_level_room_is_in_a_layer_and_few_modules_stand_loose() -> None:
    """A module outside every layer is one nothing checks (streamplan.py was); loose
    modules at the top are where features stop having a folder."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["name"] == "layers")["layers"]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    rooms = {
        f"edgeinfer.{p.stem}"
        for p in PACKAGE.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and p.stem not in {"__init__", "__main__"})
    }
    assert rooms - named == set(), f"in no layer: {sorted(rooms - named)}"
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= 4, f"loose modules at the package's top: {loose}"
