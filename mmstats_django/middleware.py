"""Django middleware that records every request into the worker's stats file.

Put it first in ``MIDDLEWARE`` so that it sees the response every other
middleware produced, with the status the client receives.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import MiddlewareNotUsed
from django.http import HttpRequest, HttpResponseBase

from mmstats import RequestRecorder, resolve_directory
from mmstats._recorder import Request

from . import conf, instrument

log = logging.getLogger("mmstats.django")

# The status of a request cancelled before its response was sent (under
# ASGI, when its client disconnects), as nginx logs it.
CLIENT_CLOSED_REQUEST = 499

_recorders: dict[tuple[Any, ...], RequestRecorder] = {}
# View names by view function: a URLconf hands out the same few functions
# again and again.  Bounded, for views made on the fly.
_view_names: dict[Any, str] = {}
_VIEW_NAMES_MAX = 1000


def get_recorder(config: conf.Config) -> RequestRecorder:
    """Return this process's recorder for a configuration.

    A directory or name left to the environment is resolved first, so a
    changed ``MMSTATS_DIR`` or ``MMSTATS_NAME`` gets a recorder of its own.
    """
    key = (
        config,
        resolve_directory(config.directory)[0],
        config.name or os.environ.get("MMSTATS_NAME"),
    )
    recorder = _recorders.get(key)
    if recorder is None:
        recorder = _recorders.setdefault(
            key,
            RequestRecorder(
                config.directory,
                config.name,
                slow_seconds=config.slow_seconds,
                slow_log_size=config.slow_log_size,
                label_limit=config.label_limit,
                directory_source="MMSTATS['DIR'] in your settings",
            ),
        )
    return recorder


def view_name(view_func: Any) -> str:
    """Return the dotted path of a view function or class-based view."""
    target = getattr(view_func, "view_class", None) or getattr(view_func, "cls", None)
    target = target or view_func
    module = getattr(target, "__module__", None) or ""
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{qualname}" if module else qualname


def _new_view_name(view_func: Any) -> str:
    """Return :func:`view_name` of ``view_func``, kept for the next request."""
    name = view_name(view_func)
    try:
        if len(_view_names) < _VIEW_NAMES_MAX:
            _view_names[view_func] = name
    except TypeError:  # an unhashable view: named on each request
        pass
    return name


class StatsMiddleware:
    """Record count, status, time, queries, view and slot of each request."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        config = conf.get_config()
        if not config.enabled:
            raise MiddlewareNotUsed("MMSTATS['ENABLED'] is False")
        self.get_response = get_response
        self.recorder = get_recorder(config)
        instrument.install()
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
            # A sync process_view would cost a thread hop on every request.
            self.process_view = self._process_view_async  # type: ignore[method-assign,assignment]

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        recorder = self.recorder
        recorded = request._mmstats = recorder.start(  # type: ignore[attr-defined]
            request.method or "", request.path
        )
        try:
            response = self.get_response(request)
        except BaseException as exc:
            recorder.finish(recorded, 500, exc)
            raise

        try:
            streaming, status = response.streaming, response.status_code
        except AttributeError:  # not a response: Django's handler fails on it
            streaming = getattr(response, "streaming", False)
            status = getattr(response, "status_code", 500)
        if streaming:
            return self._follow(recorded, response)
        recorder.finish(recorded, status)
        return response

    async def __acall__(self, request: HttpRequest) -> Any:
        recorded = request._mmstats = self.recorder.start(  # type: ignore[attr-defined]
            request.method or "", request.path
        )
        try:
            get_response: Callable[[HttpRequest], Awaitable[Any]] = self.get_response
            response = await get_response(request)
        except asyncio.CancelledError:
            # Django 5 cancels a view whose client disconnected: nothing was
            # sent, and it is no server error.  Recorded as nginx logs it.
            self.recorder.finish(recorded, CLIENT_CLOSED_REQUEST)
            raise
        except BaseException as exc:
            self.recorder.finish(recorded, 500, exc)
            raise

        if getattr(response, "streaming", False):
            return self._follow(recorded, response)
        self.recorder.finish(recorded, getattr(response, "status_code", 500))
        return response

    def process_view(
        self, request: HttpRequest, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> None:
        """Name the view in the request's record and slot."""
        try:
            recorded = request._mmstats  # type: ignore[attr-defined]
        except AttributeError:  # a request this middleware did not see
            return
        try:
            try:
                name = _view_names.get(view_func) or _new_view_name(view_func)
            except TypeError:  # an unhashable view
                name = _new_view_name(view_func)
            recorded.set_view(name)
        except Exception:
            log.exception("mmstats could not name a view")

    async def _process_view_async(
        self, request: HttpRequest, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> None:
        StatsMiddleware.process_view(self, request, view_func, view_args, view_kwargs)

    def _follow(
        self, recorded: Request, response: HttpResponseBase
    ) -> HttpResponseBase:
        """Finish the request when the server is done with a streamed body."""
        try:
            _Stream(self.recorder, recorded, response, self.is_async).watch()
        except Exception:
            log.exception("mmstats could not follow a streamed response")
            self.recorder.finish(recorded, response.status_code)
        return response


class _Stream:
    """Follow a streamed body: the request ends when the server is done.

    Under WSGI the server calls ``close()`` on the response, even after an
    error.  Under ASGI an error or a client disconnect skips ``close()``,
    so the end of the body ends the request there.
    """

    __slots__ = ("recorder", "recorded", "response", "asgi", "sent", "exception")

    def __init__(
        self, recorder: RequestRecorder, recorded: Request, response: Any, asgi: bool
    ) -> None:
        self.recorder = recorder
        self.recorded = recorded
        self.response = response
        self.asgi = asgi
        self.sent = False
        self.exception: BaseException | None = None

    def watch(self) -> None:
        """Wrap the body and ``close()`` of the response."""
        response = self.response
        # A FileResponse keeps its file, so that wsgi.file_wrapper can still
        # send it with sendfile(); reading a file is not where errors happen.
        if getattr(response, "file_to_stream", None) is None:
            if response.is_async:
                response.streaming_content = self._aiterate(response.streaming_content)
            else:
                response.streaming_content = self._iterate(response.streaming_content)

        close = response.close

        def close_and_record() -> None:
            try:
                close()
            finally:
                self.finish()

        response.close = close_and_record

    def _iterate(self, content: Iterable[bytes]) -> Iterator[bytes]:
        try:
            for chunk in content:
                self.sent = True
                yield chunk
        except Exception as exc:
            self.exception = exc
            self.finish()
            raise
        if self.asgi:
            self.finish()

    async def _aiterate(self, content: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in content:
                self.sent = True
                yield chunk
        except Exception as exc:
            self.exception = exc
            raise
        finally:
            # Also on aclose() after a client disconnect.
            self.finish()

    def finish(self) -> None:
        """Finish the request with the status the client received."""
        status = self.response.status_code
        # Under WSGI the headers go out with the first chunk: an error before
        # it becomes the server's 500.  ASGI sends the headers before the body.
        if self.exception is not None and not self.sent and not self.asgi:
            status = 500
        self.recorder.finish(self.recorded, status, self.exception)
