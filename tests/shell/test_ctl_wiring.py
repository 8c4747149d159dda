"""How ``daydreamctl`` wires its verb modules: each is imported only when one of its verbs is used."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from daydreamd.cli.main import LAZY_VERBS, cli

VERB_MODULES = sorted(set(LAZY_VERBS.values()))


@pytest.mark.parametrize("module", VERB_MODULES)
def test_lazy_verbs_names_exactly_what_each_module_registers(module: str) -> None:
    """A verb missing from LAZY_VERBS would be unknown; one too many would list a verb that is not there."""
    group = click.Group()
    importlib.import_module(module).register(group)
    assert sorted(group.commands) == sorted(name for name, owner in LAZY_VERBS.items() if owner == module)


def test_starting_loads_no_verb_module_and_a_verb_loads_only_its_own() -> None:
    """``daydreamctl status`` imports daydreamd.cli.live and none of the other verb modules."""
    loaded = f"sorted(m for m in sys.modules if m in {set(VERB_MODULES)!r})"
    code = (
        "import sys, click; from daydreamd.cli.main import cli; "
        f"before = {loaded}; cli.get_command(click.Context(cli), 'status'); print(before, {loaded})"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] ['daydreamd.cli.live']"


def test_help_lists_every_verb() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert set(LAZY_VERBS) | {"validate", "cohort", "parse", "render"} == listed


def test_an_unknown_verb_is_matched_against_the_lazy_ones_too() -> None:
    result = CliRunner().invoke(cli, ["stat"])
    assert result.exit_code == 2
    assert "No such command 'stat'. Did you mean 'status'?" in result.stderr
