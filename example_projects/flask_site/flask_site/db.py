"""Database engine and per-request sessions, kept in ``app.extensions``."""

from pathlib import Path
from typing import Any

from flask import Flask, current_app, g
from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from .models import Base

EXTENSION_KEY = "flask_site.db"


class Database:
    """The engine and session factory of one app."""

    def __init__(self, url: str) -> None:
        self.engine = _create_engine(url)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    def create_tables(self) -> None:
        """Create the tables that do not exist yet."""
        Base.metadata.create_all(self.engine)


def init_app(app: Flask) -> None:
    """Create the app's :class:`Database` and close sessions after requests."""
    app.extensions[EXTENSION_KEY] = Database(app.config["DATABASE_URL"])
    app.teardown_appcontext(_close_session)


def get_database(app: Flask | None = None) -> Database:
    """Return the :class:`Database` of *app*, or of the current app."""
    target = current_app if app is None else app
    database: Database = target.extensions[EXTENSION_KEY]
    return database


def get_session() -> Session:
    """Return the session of the current app context, opening it if needed."""
    if "db_session" not in g:
        g.db_session = get_database().sessionmaker()
    session: Session = g.db_session
    return session


def _close_session(exc: BaseException | None) -> None:
    session: Session | None = g.pop("db_session", None)
    if session is not None:
        session.close()


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    options: dict[str, Any] = {}

    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            # Each connection to an in-memory database sees its own empty
            # database, so all threads must share one connection.
            options["poolclass"] = StaticPool
            options["connect_args"] = {"check_same_thread": False}
        else:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # Several pre-fork workers share one file: wait for a lock
            # instead of failing at once with "database is locked".
            options["connect_args"] = {"timeout": 20}

    return create_engine(parsed, **options)
