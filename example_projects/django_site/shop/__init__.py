"""Example shop app: a few models and views that exercise mmstats."""
