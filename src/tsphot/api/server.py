"""`tsphot serve` and `tsphot users`: start the service, manage accounts and tokens."""

from __future__ import annotations

import argparse
from pathlib import Path

from tsphot.errors import SettingsError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the `serve` and `users` commands to tsphot's command line."""
    s = sub.add_parser("serve", help="run the REST service (time_series_photometry_tools)")
    _common(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (8000)")
    s.add_argument("--workers", type=int, default=1, help="runs executed at once (1)")
    s.add_argument(
        "--data-root",
        help="folder of server-side exposures that runs may name (none: uploads only)",
    )
    s.add_argument("--max-upload-mb", type=float, default=1024, help="per file (1024)")
    s.add_argument("--quota-mb", type=float, default=20480, help="uploads per user (20480)")
    s.add_argument(
        "--run-executor", choices=["serial", "processes", "dask"], help="each run's frame map"
    )
    s.add_argument("--run-workers", type=int, help="processes per run")
    s.add_argument("--scheduler", help="Dask scheduler address for runs (tcp://HOST:PORT)")
    s.add_argument(
        "--run-nice",
        type=int,
        default=0,
        help="niceness of run workers (e.g. 10: requests stay fast while runs take the CPU)",
    )
    s.add_argument("--lease-seconds", type=float, default=15.0, help=argparse.SUPPRESS)

    u = sub.add_parser("users", help="accounts and API tokens of the service")
    _common(u)
    usub = u.add_subparsers(dest="users_command", required=True)
    a = usub.add_parser("add", help="create a user and print their token (shown once)")
    a.add_argument("name")
    a.add_argument("--admin", action="store_true", help="sees and changes every run")
    a.add_argument("--quota-mb", type=float, help="upload quota (default: the server's)")
    t = usub.add_parser("token", help="print a new token for a user (shown once)")
    t.add_argument("name")
    r = usub.add_parser("revoke", help="remove every token of a user")
    r.add_argument("name")
    usub.add_parser("list", help="list the users")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        help="service data: database (SQLite default), uploads, runs (default ./tsphot-data, "
        "or $TSPHOT_DATA_DIR)",
    )
    p.add_argument(
        "--database",
        help="database URL: sqlite:///FILE or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB "
        "(default SQLite in the data dir, or $TSPHOT_DATABASE)",
    )


def _config(a: argparse.Namespace, **extra: object):
    from tsphot.api.config import config_from_env

    return config_from_env(
        data_dir=Path(a.data_dir) if a.data_dir else None, database_url=a.database, **extra
    )


def cmd_serve(a: argparse.Namespace) -> int:
    """Run the service until interrupted."""
    try:
        import uvicorn

        from tsphot.api.app import create_app
    except ImportError as exc:
        raise SettingsError(
            f"the service needs the [api] extra ({exc.name} is missing): pip install 'tsphot[api]'"
        ) from None
    if a.workers < 1:
        raise SettingsError("--workers must be 1 or more")
    if a.data_root and not Path(a.data_root).is_dir():
        raise SettingsError(f"--data-root {a.data_root}: no such folder")
    _check_run_options(a)
    cfg = _config(
        a,
        data_root=Path(a.data_root) if a.data_root else None,
        workers=a.workers,
        max_upload_bytes=int(a.max_upload_mb * 2**20),
        quota_bytes=int(a.quota_mb * 2**20),
        run_executor=a.run_executor,
        run_workers=a.run_workers,
        scheduler=a.scheduler,
        run_nice=a.run_nice,
        lease_seconds=a.lease_seconds,
    )
    app = create_app(cfg)
    shown = cfg.url if cfg.database_url is None else cfg.url.split("@")[-1]
    print(f"tsphot serve: data in {cfg.data_dir}, database {shown}", flush=True)
    print(f"tsphot serve: http://{a.host}:{a.port}/docs", flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=False)
    return 0


def _check_run_options(a: argparse.Namespace) -> None:
    """Refuse run options this tsphot's pipeline cannot take, before any run is accepted."""
    from pydantic import ValidationError

    from tsphot.settings import Settings

    if a.scheduler and "scheduler" not in Settings.model_fields:
        raise SettingsError("--scheduler: this tsphot's pipeline cannot use a Dask cluster yet")
    if a.run_executor:
        try:
            Settings(executor=a.run_executor)
        except ValidationError:
            raise SettingsError(
                f"--run-executor {a.run_executor}: not an executor this tsphot's pipeline has"
            ) from None
    if a.run_workers is not None and a.run_workers < 1:
        raise SettingsError("--run-workers must be 1 or more")


def cmd_users(a: argparse.Namespace) -> int:
    """Manage users and tokens."""
    from sqlalchemy import func, select

    from tsphot.api import auth
    from tsphot.api.db import open_database
    from tsphot.api.models import Token, User

    cfg = _config(a)
    cfg.prepare()
    _, sm = open_database(cfg.url)
    with sm() as s:
        if a.users_command == "add":
            quota = int(a.quota_mb * 2**20) if a.quota_mb is not None else None
            token = auth.add_user(s, a.name, admin=a.admin, quota_bytes=quota)
            print(token)
            print(
                f"user {a.name!r} created{' (admin)' if a.admin else ''}; the token above is "
                "shown only now: keep it",
                flush=True,
            )
        elif a.users_command == "token":
            print(auth.add_token(s, a.name))
        elif a.users_command == "revoke":
            print(f"{auth.revoke_tokens(s, a.name)} token(s) of {a.name!r} revoked")
        else:
            rows = s.execute(
                select(User.name, User.is_admin, func.count(Token.id))
                .outerjoin(Token, Token.user_id == User.id)
                .group_by(User.id)
                .order_by(User.name)
            ).all()
            for name, admin, n in rows:
                print(f"{name}\t{'admin' if admin else 'user'}\t{n} token(s)")
    return 0
