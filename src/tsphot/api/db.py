"""Database engine and schema: SQLite in the data dir (WAL) by default, PostgreSQL by URL;
the schema is created and upgraded by the Alembic migrations shipped in ``migrations/``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from tsphot.errors import SettingsError

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("tsphot.api")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL: readers never wait for the writer; a busy timeout instead of 'database is locked'."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for this URL (sqlite:///FILE or postgresql+psycopg://USER@HOST:PORT/DB)."""
    try:
        u = make_url(url)
    except Exception as exc:
        raise SettingsError(f"--database {url!r}: not a database URL ({exc})") from None
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(u, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if u.get_backend_name() == "postgresql":
        if u.drivername == "postgresql":  # psycopg 3 is the driver this package installs
            u = u.set(drivername="postgresql+psycopg")
        return create_engine(u, pool_pre_ping=True, pool_size=10, max_overflow=20)
    raise SettingsError(
        f"--database {url!r}: only SQLite (sqlite:///FILE) and PostgreSQL "
        "(postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB) are supported"
    )


def alembic_config(url: str) -> Any:
    """An Alembic Config for this database and the shipped migrations."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (creates it in an empty database)."""
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_database(url: str, migrate: bool = True) -> tuple[Engine, sessionmaker[Session]]:
    """Engine and session factory, with the schema upgraded to the newest revision."""
    engine = make_engine(url)
    try:
        if migrate:
            upgrade(engine)
    except SettingsError:
        raise
    except Exception as exc:
        shown = engine.url.render_as_string(hide_password=True)
        raise SettingsError(f"database {shown}: cannot open or migrate it ({exc})") from None
    return engine, sessionmaker(engine, expire_on_commit=False)
