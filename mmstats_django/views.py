"""Views serving the stats of every worker from inside a Django app."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from mmstats import current_request, exposition

from . import conf


def metrics(request: HttpRequest) -> HttpResponse:
    """Answer a Prometheus scrape with every worker of the stats directory.

    The scrape itself is left out of the request metrics, so every scrape
    shows the same totals, whichever worker answers it.
    """
    recorded = current_request()
    if recorded is not None:
        recorded.ignore()
    body, content_type = exposition(
        conf.get_config().directory, request.headers.get("Accept")
    )
    response = HttpResponse(body, content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response
