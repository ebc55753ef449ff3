"""Fixtures of the service's tests: an app on SQLite or PostgreSQL, users, a served process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from glob import glob
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service's tests need the [api] extra")

from fastapi.testclient import TestClient

from tsphot import demo
from tsphot.api import auth
from tsphot.api.app import create_app
from tsphot.api.config import ServerConfig

RES = "/api/v1/time_series_photometry_tools"


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- PostgreSQL


def _pg_bin() -> Path | None:
    found = sorted(glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server (Debian's binaries) on a loopback port, for the session."""
    bindir = _pg_bin()
    if bindir is None or not (bindir / "initdb").exists():
        pytest.skip(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): "
            "apt-get install postgresql"
        )
    root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="tsphot-pg-"))
    prefix: list[str] = []
    if root:  # initdb and postgres refuse to run as root: run them as the package's user
        if shutil.which("runuser") is None:
            pytest.skip("running as root and no `runuser` to start PostgreSQL as another user")
        shutil.chown(base, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data = base / "data"
    port = free_port()
    subprocess.run(
        [
            *prefix,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "tsphot",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [
            *prefix,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            opts,
            "-l",
            str(base / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [
                *prefix,
                str(bindir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "tsphot",
                "tsphot",
            ],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg://tsphot@127.0.0.1:{port}/tsphot"
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def fresh_database(request, backend: str) -> str | None:
    """A database URL: None (SQLite in the data dir), or a new database on the PostgreSQL
    server of the session."""
    if backend == "sqlite":
        return None
    url = request.getfixturevalue("postgres_url")
    # a fresh database per test on the session's server
    import sqlalchemy as sa

    name = f"t{time.time_ns()}"
    eng = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    eng.dispose()
    return url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=BACKENDS)
def database(request):
    """A database for one test: SQLite, or a fresh PostgreSQL database."""
    return fresh_database(request, request.param)


# ----------------------------------------------------------------------------- the app


@dataclass
class Api:
    """A test client on an app, with helpers for users."""

    client: TestClient
    cfg: ServerConfig
    app: object

    def user(self, name: str, admin: bool = False, quota_bytes: int | None = None) -> dict:
        """Headers with a new user's token."""
        with self.app.state.tsphot.sm() as s:
            token = auth.add_user(s, name, admin=admin, quota_bytes=quota_bytes)
        return {"Authorization": f"Bearer {token}"}


def make_api(tmp_path: Path, database: str | None, start_jobs: bool, **cfg_kw) -> Api:
    """An app over a temporary data dir (and the given database)."""
    cfg = ServerConfig(
        data_dir=tmp_path / "data", database_url=database, poll_seconds=0.2, **cfg_kw
    )
    app = create_app(cfg, start_jobs=start_jobs)
    return Api(TestClient(app), cfg, app)


def wait_done(client, headers: dict, run_id: str, timeout: float = 600) -> dict:
    """Poll a run until it is done or failed; return its JSON."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        j = client.get(f"{RES}/{run_id}", headers=headers).json()
        if j["status"] in ("done", "failed"):
            return j
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} not finished after {timeout} s: {j}")


def run_body(small_night_base: Path, truth, **settings) -> dict:
    """The API body of a run of the small simulated night (files under the data root)."""
    from tsphot.settings import make_settings

    s = make_settings(small_night_base / "night" / "tsphot.toml")
    science = {
        "targets": [t.model_dump(exclude_none=True) for t in s.targets],
        "checks": [t.model_dump(exclude_none=True) for t in s.checks],
        "aperture": s.aperture,
        "annulus": list(s.annulus),
        "site": list(s.site),
        "aperture_diameter_m": s.aperture_diameter_m,
        "transit": demo.transit_guess(truth).model_dump(),
        **settings,
    }
    return {
        "name": "small night",
        "settings": science,
        "exposures": {"paths": ["night/raw/sci_*.fits"]},
        "bias": {"paths": ["night/raw/bias_*.fits"]},
        "dark": {"paths": ["night/raw/dark_*.fits"]},
        "flat": {"paths": ["night/raw/flat_*.fits"]},
    }


class Served:
    """`tsphot serve` in a subprocess."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.args = args
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the server and wait until it answers."""
        import httpx

        exe = [sys.executable, "-m", "tsphot.cli"]
        log = open(self.data_dir.parent / f"serve-{time.time_ns()}.log", "wb")
        self.proc = subprocess.Popen(
            [*exe, "serve", "--data-dir", str(self.data_dir), "--port", str(self.port), *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for _ in range(300):
            if self.proc.poll() is not None:
                raise AssertionError(f"tsphot serve exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("tsphot serve did not answer within 30 s")

    def kill9(self) -> None:
        """kill -9 the server."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """Stop the server politely."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
