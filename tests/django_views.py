"""Views and middleware of the Django test project (see django_urls.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import PermissionDenied
from django.db import connections
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.views import View


class Boom(Exception):
    """The error the exception views raise."""


class MiddlewareError(Exception):
    """The error RaisingMiddleware raises."""


def run_queries(count: int, alias: str = "default") -> None:
    """Run ``count`` trivial queries on one database alias."""
    with connections[alias].cursor() as cursor:
        for i in range(count):
            cursor.execute("SELECT %s", [i])


def ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def status(request: HttpRequest, code: int) -> HttpResponse:
    return HttpResponse(f"status {code}", status=code)


def redirect(request: HttpRequest) -> HttpResponse:
    return HttpResponseRedirect("/ok/")


def not_found(request: HttpRequest) -> HttpResponse:
    raise Http404("no such thing")


def forbidden(request: HttpRequest) -> HttpResponse:
    raise PermissionDenied("not yours")


def boom(request: HttpRequest) -> HttpResponse:
    raise Boom("view failed")


def queries(request: HttpRequest, count: int) -> HttpResponse:
    run_queries(count)
    return HttpResponse(f"{count} queries")


def queries_on_both(request: HttpRequest, count: int) -> HttpResponse:
    run_queries(count, "default")
    run_queries(count, "other")
    return HttpResponse(f"{count} queries on each alias")


def queries_then_boom(request: HttpRequest, count: int) -> HttpResponse:
    run_queries(count)
    raise Boom(f"failed after {count} queries")


def sleep(request: HttpRequest, ms: int) -> HttpResponse:
    time.sleep(ms / 1000)
    return HttpResponse(f"slept {ms} ms")


def mixed(request: HttpRequest, count: int, ms: int) -> HttpResponse:
    """Run half the queries, sleep, run the rest: requests overlap in threads."""
    run_queries(count // 2)
    time.sleep(ms / 1000)
    run_queries(count - count // 2)
    return HttpResponse(f"{count} queries, {ms} ms")


def stream(request: HttpRequest, chunks: int) -> StreamingHttpResponse:
    """Stream ``chunks`` chunks, each after one query and 50 ms."""

    def body() -> Iterator[bytes]:
        for i in range(chunks):
            run_queries(1)
            time.sleep(0.05)
            yield f"chunk {i}\n".encode()

    return StreamingHttpResponse(body())


def stream_boom(request: HttpRequest, after: int) -> StreamingHttpResponse:
    """Stream ``after`` chunks, then fail."""

    def body() -> Iterator[bytes]:
        for i in range(after):
            yield f"chunk {i}\n".encode()
        raise Boom(f"stream failed after {after} chunks")

    return StreamingHttpResponse(body())


async def async_view(request: HttpRequest, count: int) -> HttpResponse:
    await sync_to_async(run_queries)(count)
    return HttpResponse(f"async, {count} queries")


async def async_sleep(request: HttpRequest, ms: int) -> HttpResponse:
    await asyncio.sleep(ms / 1000)
    return HttpResponse("slept")


async def async_boom(request: HttpRequest) -> HttpResponse:
    raise Boom("async view failed")


async def async_stream(request: HttpRequest, chunks: int) -> StreamingHttpResponse:
    async def body() -> AsyncIterator[bytes]:
        for i in range(chunks):
            await sync_to_async(run_queries)(1)
            yield f"chunk {i}\n".encode()

    return StreamingHttpResponse(body())


class ItemView(View):
    def get(self, request: HttpRequest, pk: int) -> HttpResponse:
        return HttpResponse(f"item {pk}")


class RaisingMiddleware:
    """Raise for paths under /mw-raise/ before the view runs."""

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path.startswith("/mw-raise/"):
            raise MiddlewareError("middleware failed")
        return self.get_response(request)  # type: ignore[no-any-return]


class ShortCircuitMiddleware:
    """Answer 429 for paths under /mw-early/ without calling the view."""

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path.startswith("/mw-early/"):
            return HttpResponse("too many", status=429)
        return self.get_response(request)  # type: ignore[no-any-return]
