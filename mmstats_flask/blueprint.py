"""A blueprint serving the stats of every worker from inside a Flask app.

::

    from mmstats_flask.blueprint import make_blueprint
    app.register_blueprint(make_blueprint(), url_prefix="/stats")

gives the live page at ``/stats/``, the JSON document it polls at
``/stats/api/json`` and ``/stats/metrics`` for Prometheus.  None of them is
counted in the request metrics, so every scrape and every poll of the page
shows the same totals, whichever worker answers it.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from mmstats import current_request, exposition, json_document, live_page

# Pages polling within this many seconds of each other share one read.
JSON_MAX_AGE = 2.0


def _not_counted() -> None:
    recorded = current_request()
    if recorded is not None:
        recorded.ignore()


def make_blueprint(name: str = "mmstats") -> Blueprint:
    """Return a blueprint with the live page, ``/api/json`` and ``/metrics``."""
    blueprint = Blueprint(name, __name__)

    @blueprint.route("/")
    def page() -> Response:
        _not_counted()
        body, headers = live_page()
        return Response(body, headers=headers)

    @blueprint.route("/api/json")
    def api_json() -> Response:
        _not_counted()
        try:
            body = json_document(
                current_app.config.get("MMSTATS_DIR"),
                request.args,
                max_age=JSON_MAX_AGE,
            )
        except ValueError as exc:
            return Response(f"{exc}\n", status=400, content_type="text/plain")
        return Response(
            body, content_type="application/json", headers={"Cache-Control": "no-store"}
        )

    @blueprint.route("/metrics")
    def metrics() -> Response:
        _not_counted()
        body, content_type = exposition(
            current_app.config.get("MMSTATS_DIR"), request.headers.get("Accept")
        )
        response = Response(body, content_type=content_type)
        response.headers["Cache-Control"] = "no-store"
        return response

    return blueprint
