"""Example Flask app instrumented with mmstats: a small shop on SQLite.

``create_app()`` builds the app; ``flask --app flask_site seed`` creates the
tables and some rows. The database path comes from ``FLASK_SITE_DB`` and the
stats directory from ``MMSTATS_DIR``.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from mmstats_flask import MmStats
from mmstats_flask.blueprint import make_blueprint

from . import db, views
from .seed import seed_command, seed_database

__all__ = ["create_app", "seed_database"]

VAR_DIR = Path(__file__).resolve().parent.parent / "var"


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Create the example app; *config* overrides the defaults below."""
    app = Flask(__name__)
    database_path = os.environ.get("FLASK_SITE_DB", str(VAR_DIR / "shop.sqlite3"))
    app.config.from_mapping(
        # Only for this example: a real site reads its key from the environment.
        SECRET_KEY=os.environ.get(
            "FLASK_SITE_SECRET_KEY", "flask-insecure-mmstats-example-site"
        ),
        DATABASE_URL=f"sqlite:///{database_path}",
        MMSTATS_DIR=os.environ.get("MMSTATS_DIR", str(VAR_DIR / "mmstats")),
        MMSTATS_SLOW_REQUEST_SECONDS=0.5,
    )
    if config is not None:
        app.config.update(config)

    db.init_app(app)
    app.register_blueprint(views.bp)
    # Every worker's stats for Prometheus, at /stats/metrics.
    app.register_blueprint(make_blueprint(), url_prefix="/stats")
    app.cli.add_command(seed_command)
    MmStats().init_app(app)
    return app
