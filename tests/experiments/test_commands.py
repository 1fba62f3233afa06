"""``speechxfer --help`` lists every command; every tool's ``--help`` shows an example command."""

from __future__ import annotations

import importlib

import pytest

from experiments.commands import TOOLS, TRAINING, overview
from experiments.entry import main


def test_overview_lists_every_command_once(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert text == overview() + "\n"
    command_lines = [line.split()[0] for line in text.splitlines() if line.startswith("  ") and
                     not line.strip().startswith("speechxfer")]
    assert command_lines == [*TRAINING, *TOOLS]


def test_no_arguments_prints_the_overview_and_fails(capsys):
    assert main([]) == 2
    assert "transcribe" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_each_tool_help_has_an_example(name, capsys):
    with pytest.raises(SystemExit) as done:
        importlib.import_module(TOOLS[name]).main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: speechxfer {name}")
    examples = [line for line in text.splitlines() if line.strip().startswith(f"speechxfer {name} ")]
    assert examples, text
