"""A blueprint serving the stats of every worker from inside a Flask app.

::

    from mmstats_flask.blueprint import make_blueprint
    app.register_blueprint(make_blueprint(), url_prefix="/stats")
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from mmstats import current_request, exposition


def make_blueprint(name: str = "mmstats") -> Blueprint:
    """Return a blueprint with ``/metrics`` for the app's stats directory."""
    blueprint = Blueprint(name, __name__)

    @blueprint.route("/metrics")
    def metrics() -> Response:
        recorded = current_request()
        if recorded is not None:
            recorded.ignore()  # every scrape shows the same totals
        body, content_type = exposition(
            current_app.config.get("MMSTATS_DIR"), request.headers.get("Accept")
        )
        response = Response(body, content_type=content_type)
        response.headers["Cache-Control"] = "no-store"
        return response

    return blueprint
