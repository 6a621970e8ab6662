"""Views serving the stats of every worker from inside a Django app.

None of them is counted in the request metrics, so every scrape and every
poll of the page shows the same totals, whichever worker answers it.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from mmstats import current_request, exposition, json_document, live_page

from . import conf

# Pages polling within this many seconds of each other share one read.
JSON_MAX_AGE = 2.0


def _not_counted() -> None:
    recorded = current_request()
    if recorded is not None:
        recorded.ignore()


def metrics(request: HttpRequest) -> HttpResponse:
    """Answer a Prometheus scrape with every worker of the stats directory."""
    _not_counted()
    body, content_type = exposition(
        conf.get_config().directory, request.headers.get("Accept")
    )
    response = HttpResponse(body, content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response


def page(request: HttpRequest) -> HttpResponse:
    """Serve the live page; it polls ``api/json`` next to it."""
    _not_counted()
    body, headers = live_page()
    response = HttpResponse(body)
    for name, value in headers:
        response[name] = value
    return response


def api_json(request: HttpRequest) -> HttpResponse:
    """Answer with the ``mmstats json`` document of the stats directory."""
    _not_counted()
    try:
        body = json_document(
            conf.get_config().directory, request.GET, max_age=JSON_MAX_AGE
        )
    except ValueError as exc:
        return HttpResponse(
            f"{exc}\n", status=400, content_type="text/plain; charset=utf-8"
        )
    response = HttpResponse(body, content_type="application/json")
    response["Cache-Control"] = "no-store"
    return response
