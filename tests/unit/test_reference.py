"""docs/reference.md names everything the code offers: commands and flags, keys, states, codes."""

from __future__ import annotations

import ast
import dataclasses
import re

import pytest

from edgeinfer.cli.commands import COMMANDS
from edgeinfer.cli.parser import build_parser
from edgeinfer.config import SECTIONS
from edgeinfer.observability.metrics import Metrics
from edgeinfer.updates.states import UpdateState
from tests.support import ROOT

REFERENCE = (ROOT / "docs" / "reference.md").read_text()
PACKAGE = ROOT / "module" / "edgeinfer"


def section(heading: str) -> str:
    """The text under the heading that starts with ``heading``, up to the next heading."""
    match = re.search(rf"^#+ {re.escape(heading)}.*?$(.*?)(?=^#+ |\Z)", REFERENCE, re.M | re.S)
    assert match, f"docs/reference.md has no heading {heading!r}"
    return match.group(1)


def subcommands() -> dict[str, list[str]]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    choices: dict[str, object] = action.choices  # type: ignore[assignment]
    return {
        name: [
            opt
            for act in sub._actions  # type: ignore[attr-defined]
            for opt in act.option_strings
            if opt.startswith("--") and opt != "--help"
        ]
        for name, sub in choices.items()
    }


def test_every_command_is_in_the_reference_table() -> None:
    table = section("Command line")
    assert sorted(subcommands()) == sorted(COMMANDS)
    for name in COMMANDS:
        assert f"`edgeinfer {name}`" in table, name


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_of_a_command_is_documented_under_it(command: str) -> None:
    text = section(f"`edgeinfer {command}")
    for flag in subcommands()[command]:
        assert f"`{flag}" in text, f"{command} {flag}"


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_every_configuration_key_is_documented_in_its_section(name: str) -> None:
    text = section(f"`[{name}]`")
    for field in dataclasses.fields(SECTIONS[name]):
        assert f"| `{field.name}` |" in text, f"{name}.{field.name}"


def test_every_update_state_is_explained() -> None:
    text = section("Reported state")
    for state in UpdateState:
        assert f"| `{state.value}` |" in text, state


def error_codes() -> set[str]:
    """Every code the package raises as ``ReadingError("<code>", ...)``."""
    codes: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "ReadingError"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                codes.add(str(node.args[0].value))
    return codes


def test_every_error_code_is_in_the_error_table() -> None:
    text = section("Error reports")
    codes = error_codes()
    assert {"bad_json", "wrong_shape", "inference_failed"} <= codes
    for code in codes:
        assert f"| `{code}` |" in text, code


def test_every_metric_is_in_the_metrics_table() -> None:
    text = section("HTTP")
    metrics = Metrics()
    for family in metrics.registry.collect():
        name = family.name
        if family.type == "counter":
            name += "_total"
        assert f"`{name}" in text, name
