"""The command line's public entry points, for the Django and Flask commands.

``cli`` is the click group behind ``mmstats``, ``manage.py mmstats`` and
``flask mmstats``; hosts pass a :class:`CliContext` with their streams and
stats directory.  Importing this module imports click and rich, so the core
package does not import it.
"""

from __future__ import annotations

from ._cli import (
    EXIT_STATUSES,
    EXIT_USAGE,
    CliContext,
    MmstatsGroup,
    cli,
    invoke,
    main,
    run,
    subcommand_help,
)

__all__ = [
    "EXIT_STATUSES",
    "EXIT_USAGE",
    "CliContext",
    "MmstatsGroup",
    "cli",
    "invoke",
    "main",
    "run",
    "subcommand_help",
]
