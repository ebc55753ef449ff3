"""Request and response bodies. A run's JSON is its record's JSON (``tsphot.records``), with
the service's own fields (owner, progress) added beside the record's."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model

from tsphot import records as rec
from tsphot.settings import Settings

# The settings a client may give. Anything naming a file on the server (frames, calibration,
# masters, AstroImageJ files, the output folder) or how the server runs work (executor, workers,
# scheduler, resume) is the server's; a new setting joins the API only by being listed here.
CLIENT_SETTINGS = (
    "targets",
    "comps",
    "checks",
    "aperture",
    "radii",
    "annulus",
    "ellipticity",
    "position_angle",
    "site",
    "aperture_diameter_m",
    "gain",
    "read_noise",
    "saturation",
    "max_comps",
    "centroid_box",
    "max_shift",
    "detect_sigma",
    "clean_cosmics",
    "outlier_sigma",
    "min_transparency",
    "time_keyword_is",
    "transit",
    "detrend",
    "seed",
    "exports",
    "observer_code",
    "aavso_filter",
    "aavso_chart",
    "obstype",
    "exoplanet_name",
)

RunSettings: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "RunSettings",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Science settings of a run (targets, comparisons, apertures, calibration, fit); "
    "the same names and defaults as `tsphot run` and its TOML file.",
    **{
        name: (field.annotation, field)
        for name, field in Settings.model_fields.items()
        if name in CLIENT_SETTINGS
    },
)


class FileSet(BaseModel):
    """Files of one kind: ids of the caller's uploads and/or paths under the data root."""

    model_config = ConfigDict(extra="forbid")

    uploads: list[uuid.UUID] = Field(default_factory=list, max_length=100_000)
    paths: list[str] = Field(
        default_factory=list,
        max_length=10_000,
        description="files, folders or globs relative to the server's data root",
    )


class RunCreate(BaseModel):
    """A new run: its settings and its exposures (and optional raw calibration frames)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=200)
    settings: RunSettings = Field(default_factory=RunSettings)  # type: ignore[valid-type]
    exposures: FileSet
    bias: FileSet = Field(default_factory=FileSet)
    dark: FileSet = Field(default_factory=FileSet)
    flat: FileSet = Field(default_factory=FileSet)


class Progress(BaseModel):
    """Frames measured so far, of the run's total (0 of 0 before the headers are read)."""

    done: int
    total: int


class Run(rec.TimeSeriesPhotometryTool):
    """A run: the TimeSeriesPhotometryTool record, plus its owner and progress."""

    owner: str
    progress: Progress
    attempt: int = Field(0, description="how many times a worker has taken the run up")


class UploadOut(BaseModel):
    """An uploaded exposure."""

    id: uuid.UUID
    sha256: str
    size_bytes: int
    filename: str
    created: dt.datetime
    owner: str
    deduplicated: bool = Field(False, description="the caller had uploaded these bytes before")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list."""

    items: list[T]
    total: int
    limit: int
    offset: int


class Message(BaseModel):
    """An error or notice, said in words."""

    detail: str


class Health(BaseModel):
    """The service is up; its version and database kind."""

    status: Literal["ok"] = "ok"
    version: str
    database: str


def run_view(row: Any, owner: str) -> Run:
    """The API view of a run's row."""
    data = {name: row._mapping[name] for name in rec.TimeSeriesPhotometryTool.model_fields}
    return Run.model_validate(
        {
            **data,
            "owner": owner,
            "attempt": row.attempt,
            "progress": {"done": row.progress_done, "total": row.progress_total},
        }
    )
