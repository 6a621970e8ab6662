"""Example Django project instrumented with mmstats."""
