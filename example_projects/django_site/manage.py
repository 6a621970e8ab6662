#!/usr/bin/env python3
"""Run Django's command-line utility for the django_site example project."""

import os
import sys


def main() -> None:
    """Run an administrative task such as ``migrate`` or ``mmstats show``."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
