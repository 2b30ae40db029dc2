"""Helpers for the capabilities' ``register(sub)`` functions (see ``rtrai.cli``)."""

from __future__ import annotations

import argparse


def nested(sub, name: str, help: str, metavar: str = "COMMAND"):  # noqa: A002 - argparse's own keyword
    """The sub-parsers of ``rtrai NAME ...``, created once and shared by every capability that adds to it
    (``rtrai dose train`` and ``rtrai dose evaluate`` come from different packages)."""
    parser = sub.choices.get(name)
    if parser is None:
        parser = sub.add_parser(name, help=help)
    for action in parser._actions:  # noqa: SLF001 - argparse offers no public way to reach existing sub-parsers
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return action
    return parser.add_subparsers(dest=f"{name}_command", metavar=metavar, required=True)
