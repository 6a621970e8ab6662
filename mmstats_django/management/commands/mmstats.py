"""``manage.py mmstats``: the mmstats command line inside a Django project.

A thin :class:`BaseCommand` that hands its arguments to the click group of
``mmstats``, with the command's own stdout and stderr and the directory of
``settings.MMSTATS["DIR"]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

import click
from django.core.management.base import (
    BaseCommand,
    CommandError,
    CommandParser,
    DjangoHelpFormatter,
    OutputWrapper,
)

from mmstats import MmstatsError
from mmstats.cli import EXIT_USAGE, CliContext, invoke, subcommand_help

from ...checks import MIDDLEWARE_PATH
from ...conf import get_config


class _HelpFormatter(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Django's option order, with the subcommand list kept as written."""


class _Stream:
    """A plain text stream over Django's OutputWrapper.

    OutputWrapper adds a newline to every write that lacks one, which would
    break rich's output; writing with ``ending=""`` passes text unchanged.
    """

    def __init__(self, wrapper: OutputWrapper) -> None:
        self._wrapper = wrapper

    def write(self, text: str) -> int:
        self._wrapper.write(text, ending="")
        return len(text)

    def flush(self) -> None:
        self._wrapper.flush()

    def isatty(self) -> bool:
        return bool(self._wrapper.isatty())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapper, name)


class Command(BaseCommand):
    help = "Show the stats every worker of this project writes."
    requires_system_checks: list[str] = []
    requires_migrations_checks = False

    def create_parser(
        self, prog_name: str, subcommand: str, **kwargs: Any
    ) -> CommandParser:
        program = os.path.basename(prog_name) or "manage.py"
        if program == "__main__.py":  # as Django's own usage line does
            program = "python -m django"
        prog = f"{program} {subcommand}"
        kwargs.setdefault("formatter_class", _HelpFormatter)
        kwargs.setdefault("epilog", subcommand_help(prog))
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        self._prog = prog

        def one_line(message: str) -> NoReturn:
            # As the subcommands' usage errors read, not argparse's usage
            # block (manage.py mmstats --dir, without its value).
            text = f"{message}; see '{prog} --help'."
            if not parser.called_from_command_line:
                raise CommandError(text, returncode=EXIT_USAGE)
            sys.stderr.write(f"CommandError: {text}\n")
            sys.exit(EXIT_USAGE)

        parser.error = one_line
        return parser

    def add_arguments(self, parser: CommandParser) -> None:
        # Before the subcommand, as `mmstats --dir DIR show` takes it; after
        # it, --dir is the subcommand's own, in the arguments handed on.
        parser.add_argument(
            "--dir",
            dest="mmstats_dir",
            metavar="DIR",
            help="Stats directory, for any subcommand (its own --dir wins).",
        )
        parser.add_argument(
            "args",
            nargs=argparse.REMAINDER,
            metavar="SUBCOMMAND [OPTIONS]",
            help="show, top, slow, json, clean or dump FILE, with their options.",
        )

    def handle(self, *args: str, **options: Any) -> None:
        prog = getattr(self, "_prog", "manage.py mmstats")
        given, options = _django_options(list(args), options)
        argv = given or ["--help"]
        if options.get("mmstats_dir") is not None:
            argv = ["--dir", options["mmstats_dir"], *argv]
        try:
            status = invoke(argv, self._context(options), prog)
        except (click.ClickException, click.exceptions.Abort, MmstatsError) as exc:
            raise _command_error(exc, prog) from None
        if status:
            raise CommandError(
                f"mmstats exited with status {status}.", returncode=status
            )

    def _context(self, options: dict[str, Any]) -> CliContext:
        """Return the CLI's context: this command's streams and settings."""
        return CliContext(
            out=_Stream(self.stdout),  # type: ignore[arg-type]
            err=_Stream(self.stderr),  # type: ignore[arg-type]
            directory=get_config().directory,
            missing_hint=f"check that {MIDDLEWARE_PATH!r} is in MIDDLEWARE",
            traceback=bool(options.get("traceback")),
            no_color=bool(options.get("no_color")),
        )


# Django's own options, which its users also put after the subcommand
# (``manage.py mmstats show --settings=site.prod``): Django has read
# --settings and --pythonpath from anywhere on the line already; the others
# are taken here, as they are before the subcommand.
_DJANGO_VALUED = {"--settings", "--pythonpath", "--verbosity", "-v"}
_DJANGO_FLAGS = {
    "--traceback": "traceback",
    "--no-color": "no_color",
    "--force-color": "force_color",
    "--skip-checks": "skip_checks",
}


def _django_options(
    args: list[str], options: dict[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    """Return the arguments for mmstats, without Django's own options, and
    the options with those flags set."""
    given: list[str] = []
    options = dict(options)
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0]
        if arg == "--":
            given += args[i:]  # what follows is mmstats', as it stands
            break
        if name in _DJANGO_FLAGS and "=" not in arg:
            options[_DJANGO_FLAGS[name]] = True
        elif name in _DJANGO_VALUED:
            if "=" not in arg:
                i += 1  # the value is the next argument
        elif arg.startswith("-v") and arg[2:].isdigit():
            pass  # -v2
        else:
            given.append(arg)
        i += 1
    return given, options


def _command_error(exc: Exception, prog: str) -> CommandError:
    """Return the one-line CommandError for an error of the CLI."""
    if isinstance(exc, click.UsageError):
        where = exc.ctx.command_path if exc.ctx else prog
        message = exc.format_message().rstrip(".")
        return CommandError(f"{message}; see '{where} --help'.", returncode=EXIT_USAGE)
    if isinstance(exc, click.ClickException):
        return CommandError(exc.format_message(), returncode=exc.exit_code)
    if isinstance(exc, click.exceptions.Abort):
        return CommandError("Aborted.", returncode=130)
    return CommandError(str(exc))
