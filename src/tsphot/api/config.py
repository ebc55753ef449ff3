"""Server settings of ``tsphot serve``: where data and the database live, limits, workers."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

MB = 1 << 20


@dataclass
class ServerConfig:
    """Everything the service needs to know; built from ``tsphot serve`` flags or by tests."""

    data_dir: Path = field(default_factory=lambda: Path("tsphot-data"))
    database_url: str | None = None  # None: SQLite file in data_dir (WAL mode)
    data_root: Path | None = None  # server-side exposures a run may name; None: uploads only
    workers: int = 1  # runs executed at once, each in its own worker process
    max_upload_bytes: int = 1024 * MB
    quota_bytes: int = 20 * 1024 * MB  # per user, over their distinct uploads
    run_executor: str | None = None  # executor of each run's frame map (None: tsphot's default)
    run_workers: int | None = None  # processes per run (None: tsphot's default)
    scheduler: str | None = None  # a Dask scheduler address, when the pipeline supports it
    run_nice: int = 0  # niceness of run workers: >0 keeps the API responsive while runs go
    lease_seconds: float = 15.0  # a running run whose server stops renewing is resumed after this
    poll_seconds: float = 0.5

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if self.data_root is not None:
            self.data_root = Path(self.data_root).resolve()

    @property
    def url(self) -> str:
        """The SQLAlchemy database URL (the SQLite default in the data dir if none given)."""
        return self.database_url or f"sqlite:///{self.data_dir / 'tsphot.db'}"

    @property
    def uploads_dir(self) -> Path:
        """Where uploaded files are kept, one file per SHA-256."""
        return self.data_dir / "uploads"

    @property
    def runs_dir(self) -> Path:
        """Where each run's inputs, products and bundle are kept."""
        return self.data_dir / "runs"

    def run_dir(self, run_id: object) -> Path:
        """The folder of one run."""
        return self.runs_dir / str(run_id)

    def prepare(self) -> None:
        """Create the folders the service writes into."""
        for d in (self.data_dir, self.uploads_dir, self.runs_dir, self.uploads_dir / "tmp"):
            d.mkdir(parents=True, exist_ok=True)


def config_from_env(**overrides: object) -> ServerConfig:
    """A config from TSPHOT_DATA_DIR / TSPHOT_DATABASE and explicit values (which win)."""
    kw: dict[str, object] = {}
    if os.environ.get("TSPHOT_DATA_DIR"):
        kw["data_dir"] = Path(os.environ["TSPHOT_DATA_DIR"])
    if os.environ.get("TSPHOT_DATABASE"):
        kw["database_url"] = os.environ["TSPHOT_DATABASE"]
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return ServerConfig(**kw)  # type: ignore[arg-type]
