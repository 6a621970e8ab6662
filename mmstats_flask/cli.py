"""``flask mmstats``: the mmstats command line, reading the app's directory.

The group's callback loads the app and takes ``MMSTATS_DIR`` from its
config; its subcommands are the very command objects of ``mmstats``.
"""

from __future__ import annotations

import os
import sys

import click
from flask import current_app
from flask.cli import with_appcontext

from mmstats._stats import broken_rule
from mmstats.cli import EXIT_USAGE, CliContext, MmstatsGroup, cli
from mmstats_flask import _bad

__all__ = ["mmstats_command"]


class _ConfigError(click.ClickException):
    """A bad ``MMSTATS_DIR`` in the app's config: one line, status 2."""

    exit_code = EXIT_USAGE


@click.group(
    "mmstats",
    cls=MmstatsGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=cli.epilog,
)
@click.option(
    "--dir",
    "directory",
    metavar="DIR",
    help="Stats directory, for any subcommand (its own --dir wins).",
)
@with_appcontext
@click.pass_context
def mmstats_command(ctx: click.Context, directory: str | None) -> None:
    """Show the stats every worker of this app writes (see `mmstats --help`).

    The stats directory is --dir, else the app's MMSTATS_DIR, else
    $MMSTATS_DIR, else a private per-user default.
    """
    # The subcommands find a --dir given here themselves.
    directory = current_app.config.get("MMSTATS_DIR")
    # The app need not use MmStats (the command comes by an entry point), so
    # nothing has checked the value yet.
    rule = broken_rule("directory", directory)
    if rule is not None:
        raise _ConfigError(str(_bad("MMSTATS_DIR", directory, rule)))
    ctx.obj = CliContext(
        out=sys.stdout,
        err=sys.stderr,
        directory=os.fspath(directory) if directory is not None else None,
    )


for _name, _command in cli.commands.items():
    mmstats_command.add_command(_command, _name)
