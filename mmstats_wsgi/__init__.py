"""WSGI middleware that records every request into the worker's stats file.

Wrap any WSGI application::

    from mmstats_wsgi import StatsMiddleware
    app = StatsMiddleware(app)

The app may name the view serving a request by setting
``environ["mmstats.view"]``: set before the middleware runs (by a router
around it), the view shows in the request's slot at once; set by the app,
it names the view when the request ends.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from mmstats import RequestRecorder
from mmstats._recorder import Request

__all__ = ["StatsMiddleware"]

log = logging.getLogger("mmstats.wsgi")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _status_code(status: str) -> int:
    try:
        return int(status.split(None, 1)[0])
    except (ValueError, IndexError, AttributeError):
        return 0


def _raw_path(environ: dict[str, Any]) -> bytes:
    """Return the request path as sent, without the query string."""
    try:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        # PEP 3333 carries the raw path bytes as latin-1 code points.
        return path.encode("latin-1", "replace")  # type: ignore[no-any-return]
    except Exception:  # a server that broke the rules must not fail the request
        return b""


def _bad_argument(problem: str) -> ValueError:
    return ValueError(f"{problem}; fix this argument of StatsMiddleware.")


class StatsMiddleware:
    """Record each request of ``app``: count, status, time, queries, slot.

    The request ends when the server calls ``close()`` on the response
    iterable, so a streamed body is timed to its last byte.

    :param directory: the stats directory; else ``MMSTATS_DIR``, else a
        private per-user default.
    :param name: the app name in the stats file's name.
    :param slow_seconds: requests at least this long go into the slow ring;
        0 records every request.
    :param slow_log_size: entries in the slow ring.
    :param label_limit: label sets per metric (views, exception classes).
    :param recorder: a recorder to share; the other options are then unused.
    :raises ValueError: an argument is bad; the message names it.
    """

    def __init__(
        self,
        app: WSGIApp,
        directory: str | os.PathLike[str] | None = None,
        name: str | None = None,
        *,
        slow_seconds: float = 1.0,
        slow_log_size: int = 256,
        label_limit: int = 100,
        recorder: RequestRecorder | None = None,
    ) -> None:
        if not callable(app):
            raise _bad_argument(f"app must be a WSGI application, not {app!r}")
        self.app = app
        if recorder is not None:
            if not isinstance(recorder, RequestRecorder):
                raise _bad_argument(
                    f"recorder must be a RequestRecorder, not {recorder!r}"
                )
            self.recorder = recorder
            return

        try:
            self.recorder = RequestRecorder(
                directory,
                name,
                slow_seconds=slow_seconds,
                slow_log_size=slow_log_size,
                label_limit=label_limit,
                directory_source="StatsMiddleware's directory argument",
            )
        except ValueError as exc:
            raise _bad_argument(str(exc)) from None

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        recorder = self.recorder
        request = recorder.start(
            environ.get("REQUEST_METHOD", ""),
            _raw_path(environ),
            environ.get("mmstats.view"),
        )
        environ["mmstats.request"] = request
        response = _Response(recorder, request, environ, start_response)

        try:
            result = self.app(environ, response.start_response)
        except BaseException as exc:
            response.finish(500, exc)
            raise
        response.result = result
        return response


class _Response:
    """The iterable handed to the server; finishes the request on close().

    A body that is not a list goes through a generator, which costs less per
    chunk than a ``__next__`` method and sees the errors of its iteration.
    """

    __slots__ = (
        "_recorder",
        "_request",
        "_environ",
        "_start_response",
        "status",
        "result",
        "_sent",
        "_closed",
    )

    def __init__(
        self,
        recorder: RequestRecorder,
        request: Request,
        environ: dict[str, Any],
        start_response: StartResponse,
    ) -> None:
        self._recorder = recorder
        self._request = request
        self._environ = environ
        self._start_response = start_response
        self.status = 0
        self.result: Iterable[bytes] = ()
        self._sent = False
        self._closed = False

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], object]:
        """Call the server's ``start_response``, noting the status it took."""
        start_response = self._start_response
        if exc_info is None:
            write = start_response(status, headers)
        else:
            # With headers already sent the server re-raises exc_info and
            # the client keeps the first status: note the new one after.
            write = start_response(status, headers, exc_info)
        self.status = _status_code(status)
        return write

    def __iter__(self) -> Iterator[bytes]:
        result = self.result
        # Iterating a list or a tuple cannot fail: the server takes it as it
        # is, without a call into this object for every chunk.
        if type(result) is list or type(result) is tuple:
            return iter(result)
        return self._chunks(result)

    def _chunks(self, result: Iterable[bytes]) -> Iterator[bytes]:
        try:
            for chunk in result:
                self._sent = True
                yield chunk
        except GeneratorExit:  # the server let go of the body: close() ends it
            raise
        except BaseException as exc:
            # Servers send the headers with the first chunk: before it, the
            # server answers 500; after it, the client has the status.  Not
            # every server calls close() after an error, so it ends here.
            self.finish(self.status if self._sent else 500, exc)
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.finish(self.status or 500, None)

    def finish(self, status: int, exc: BaseException | None) -> None:
        """Finish the request with the view the app named, if any."""
        request = self._request
        if request.finished:
            return
        view = self._environ.get("mmstats.view")
        if view:
            try:
                request.set_view(view)
            except Exception:
                log.exception("mmstats could not name a view")
        self._recorder.finish(request, status, exc)
