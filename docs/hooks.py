"""MkDocs hook: the command-line reference, rendered from tether's argparse parser at build
time, so the page is the `--help` users see and cannot fall behind it. A page holding the line
`<!-- tether-cli -->` gets `tether --help` and every subcommand's help in its place."""

from __future__ import annotations

import argparse
import os
from typing import Any

MARKER = "<!-- tether-cli -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render_cli())


def render_cli() -> str:
    """`tether --help`, then each subcommand's, as one section each, 100 columns wide."""
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal's width; fix it for the page
    from tether.cli import build_parser

    parser = build_parser()
    sections = [_section("tether", parser)]
    sections += [_section(f"tether {name}", sub) for name, sub in _subcommands(parser).items()]
    return "\n\n".join(sections)


def _section(title: str, parser: argparse.ArgumentParser) -> str:
    return f"## {title}\n\n```text\n{parser.format_help().rstrip()}\n```"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise RuntimeError("tether's parser has no subcommands: the CLI page would be empty")
