"""A hello-world Flask app, bare or with the mmstats extension.

``BENCH_MIDDLEWARE=mmstats`` in the environment adds the extension to the
app served as ``hello_flask:app``; :func:`make_app` builds either kind.
"""

from __future__ import annotations

import os

from flask import Flask


def make_app(middleware: str = "none") -> Flask:
    """Return a Flask app with one view, with mmstats when asked."""
    app = Flask(__name__)

    @app.route("/")
    def hello() -> str:
        return "Hello, world!\n"

    if middleware == "mmstats":
        from mmstats_flask import MmStats

        app.config["MMSTATS_NAME"] = "bench-flask"
        MmStats(app)
    elif middleware != "none":
        raise ValueError(
            f"BENCH_MIDDLEWARE for Flask is none or mmstats, not {middleware!r}"
        )
    return app


app = make_app(os.environ.get("BENCH_MIDDLEWARE", "none"))
