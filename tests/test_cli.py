"""The command line as a whole: help everywhere, consistent flags."""

from __future__ import annotations

import argparse

from hwlat.cli import build_parser


def _commands(parser: argparse.ArgumentParser, prefix: str = "hwlat"):
    """Every (name, parser) of the command tree, leaves and groups."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub, helps.get(name)
                yield from _commands(sub, f"{prefix} {name}")


def test_every_command_and_option_has_help() -> None:
    missing = []
    for name, parser, help_text in _commands(build_parser()):
        if not help_text:
            missing.append(name)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.dest == "help":
                continue
            if not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_commands_that_write_a_file_take_dash_o_and_out() -> None:
    writers = {
        "hwlat db export",
        "hwlat table export",
        "hwlat train",
        "hwlat search",
        "hwlat quickstart",
        "hwlat quantize",
    }
    for name, parser, _ in _commands(build_parser()):
        outs = [a for a in parser._actions if a.dest == "out"]
        if name in writers:
            assert outs and {"-o", "--out"} <= set(outs[0].option_strings), name
