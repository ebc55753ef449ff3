"""The seed's five records: typed, validated, versioned, lossless in JSON, convertible to Tables.

``TimeSeriesPhotometryTool``               the run as a whole: settings, status, times, versions
``TimeSeriesPhotometryToolObject``         one target, comparison or check star of a run
``TimeSeriesPhotometryToolExposureStack``  the ordered exposures a run consumed
``TimeSeriesPhotometryStackFile``          a stack bundle file (``tsphot bundle``) bound to a run
``TimeSeriesPhotometryToolResult``         one object in one exposure: time, flux, mag, geometry …

They are what the database and REST API will store and serve, so every record carries
``schema_version``, a UUID ``id`` and the ``tool_id`` of its run. A run's id is drawn once
(uuid4); the ids of its children are derived from it (uuid5 of the run id and a stable key such
as ``object/T1`` or ``result/T1/17``), so the same run always yields the same child ids and a
child can be found again without a lookup table. Times are timezone-aware UTC.

Every record reads and writes JSON losslessly (``model_dump_json`` / ``model_validate_json``;
non-finite floats are written as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, so JSON
stays strict) and converts to and from an astropy ``Table`` (``to_table`` / ``from_table``;
nested values are kept as JSON text in their column).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import numpy as np
from astropy.table import MaskedColumn, Table
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = "1.0"
# Namespace of the derived (uuid5) ids of a run's children.
TSPHOT_NAMESPACE = uuid.UUID("6af84eb7-ee7b-4fbc-9d1e-000000000005")


def _float_out(v: float | None) -> float | str | None:
    if v is None or math.isfinite(v):
        return v
    return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")


# A float that survives strict JSON: NaN and ±inf become strings and are read back as floats.
Float = Annotated[float, PlainSerializer(_float_out, when_used="json")]
OptFloat = Annotated[float | None, PlainSerializer(_float_out, when_used="json")]


def utcnow() -> dt.datetime:
    """Now, timezone-aware UTC, to the microsecond."""
    return dt.datetime.now(dt.timezone.utc)


def child_id(tool_id: uuid.UUID, key: str) -> uuid.UUID:
    """The stable id of a run's child record: uuid5 of the run id and a key."""
    return uuid.uuid5(TSPHOT_NAMESPACE, f"{tool_id}/{key}")


class RunStatus(str, Enum):
    """Where a run is: pending (recorded, not started), running, done, failed (with a reason)."""

    pending = "pending"
    running = "running"
    done = "done"
    failed = "failed"


def _restore_floats(model: type[BaseModel], data: Any) -> Any:
    """Read back the strings that stand for non-finite floats, in float fields only."""
    if not isinstance(data, dict):
        return data
    for key, value in data.items():
        field = model.model_fields.get(key)
        if (
            field is not None
            and isinstance(value, str)
            and value in ("NaN", "Infinity", "-Infinity")
            and "float" in str(field.annotation)
        ):
            data[key] = float(value.replace("Infinity", "inf"))
    return data


class Record(BaseModel):
    """Common base: schema version, id, and JSON/Table conversion."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    kind: ClassVar[str] = "record"

    schema_version: str = SCHEMA_VERSION
    id: uuid.UUID = Field(default_factory=uuid.uuid4)

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: str) -> str:
        major = v.split(".")[0]
        if major != SCHEMA_VERSION.split(".")[0]:
            raise ValueError(
                f"schema version {v} cannot be read by this tsphot (reads {SCHEMA_VERSION})"
            )
        return v

    @model_validator(mode="before")
    @classmethod
    def _json_floats(cls, data: Any) -> Any:
        return _restore_floats(cls, data)

    def to_json(self, **kw: Any) -> str:
        """Strict JSON text of this record."""
        return self.model_dump_json(**kw)

    @classmethod
    def from_json(cls: type[R], text: str | bytes) -> R:
        """Read a record from JSON text."""
        return cls.model_validate_json(text)


R = TypeVar("R", bound=Record)


# ----------------------------------------------------------------------------- the records


class TimeSeriesPhotometryTool(Record):
    """The run as a whole."""

    kind: ClassVar[str] = "tool"

    name: str = ""
    status: RunStatus = RunStatus.pending
    reason: str = Field("", description="why the run failed (empty otherwise)")
    created: dt.datetime = Field(default_factory=utcnow)
    started: dt.datetime | None = None
    finished: dt.datetime | None = None
    tsphot_version: str = ""
    versions: dict[str, str] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict, description="the full settings")
    out_dir: str = ""
    n_exposures: int = 0
    n_exposures_ok: int = 0
    aperture_radius: OptFloat = None
    annulus_inner: OptFloat = None
    annulus_outer: OptFloat = None
    object_ids: list[uuid.UUID] = Field(default_factory=list)
    stack_id: uuid.UUID | None = None
    stack_file_ids: list[uuid.UUID] = Field(default_factory=list)
    summary: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _failed_has_reason(self) -> TimeSeriesPhotometryTool:
        if self.status == RunStatus.failed and not self.reason:
            raise ValueError("a failed run needs a reason")
        return self

    def mark_running(self) -> None:
        """The run has started."""
        self.status, self.started = RunStatus.running, utcnow()

    def mark_done(self) -> None:
        """The run has finished with its products written."""
        self.status, self.finished, self.reason = RunStatus.done, utcnow(), ""

    def mark_failed(self, reason: str) -> None:
        """The run stopped; say why."""
        self.reason = reason or "unknown error"
        self.status, self.finished = RunStatus.failed, utcnow()


class TimeSeriesPhotometryToolObject(Record):
    """One target, comparison or check star of a run, and what became of it."""

    kind: ClassVar[str] = "object"

    tool_id: uuid.UUID
    name: str
    role: Literal["target", "comp", "check"]
    x: Float = Field(..., description="0-based column on the reference frame (px)")
    y: Float = Field(..., description="0-based row on the reference frame (px)")
    ra_deg: OptFloat = None
    dec_deg: OptFloat = None
    coord_source: str = ""
    catalog_mag: OptFloat = None
    pinned: bool = False
    aperture_radius: OptFloat = None
    annulus_inner: OptFloat = None
    annulus_outer: OptFloat = None
    ellipticity: Float = 0.0
    position_angle: Float = 0.0
    used: bool | None = Field(None, description="comparison star kept in the ensemble")
    weight: OptFloat = None
    reason: str = Field("", description="why a comparison star was rejected")
    rms: OptFloat = Field(None, description="achieved scatter (rel. flux, or mag for comps)")
    expected: OptFloat = Field(None, description="predicted scatter, same units as rms")
    frames_measured: int | None = None


class StackExposure(BaseModel):
    """One exposure of a stack: where it was, its hash, its place and its key header values."""

    model_config = ConfigDict(extra="forbid")

    order: int = Field(..., description="frame index in the run (by mid-exposure time)")
    path: str
    sha256: str | None = None
    role: str = "science"
    status: str = "ok"
    reason: str = ""
    jd_utc_mid: OptFloat = None
    exptime: OptFloat = None
    filter: str = ""
    header: dict[str, Any] = Field(default_factory=dict, description="key header values")

    @model_validator(mode="before")
    @classmethod
    def _json_floats(cls, data: Any) -> Any:
        return _restore_floats(cls, data)


class TimeSeriesPhotometryToolExposureStack(Record):
    """The ordered stack of exposures a run consumed."""

    kind: ClassVar[str] = "stack"

    tool_id: uuid.UUID
    exposures: list[StackExposure] = Field(default_factory=list)
    reference_order: int | None = None
    # the run's calibration record: the library, masters and the choice per frame
    calibration: dict[str, Any] = Field(default_factory=dict)


class TimeSeriesPhotometryStackFile(Record):
    """A stack bundle written by ``tsphot bundle``: one file that replays the run."""

    kind: ClassVar[str] = "stack_file"

    tool_id: uuid.UUID
    stack_id: uuid.UUID | None = None
    path: str
    sha256: str
    size_bytes: int
    format: Literal["zip"] = "zip"
    with_data: bool = False
    created: dt.datetime = Field(default_factory=utcnow)
    n_entries: int = 0


class TimeSeriesPhotometryToolResult(Record):
    """One object in one exposure (the seed's result record)."""

    kind: ClassVar[str] = "result"

    tool_id: uuid.UUID
    object_id: uuid.UUID
    object: str
    role: str
    frame: int
    file: str
    jd_utc: OptFloat = None
    bjd_tdb: OptFloat = None
    exptime: OptFloat = None
    airmass: OptFloat = None
    flux: OptFloat = None
    flux_err: OptFloat = None
    mag: OptFloat = None
    mag_err: OptFloat = None
    x: OptFloat = None
    y: OptFloat = None
    aperture_radius: OptFloat = None
    annulus_inner: OptFloat = None
    annulus_outer: OptFloat = None
    ellipticity: OptFloat = None
    position_angle: OptFloat = None
    sky_median: OptFloat = None
    sky_std: OptFloat = None
    sky_area: int | None = None
    peak: OptFloat = None
    saturated: bool = False
    status: str = "ok"
    reason: str = ""


RECORD_TYPES: dict[str, type[Record]] = {
    c.kind: c
    for c in (
        TimeSeriesPhotometryTool,
        TimeSeriesPhotometryToolObject,
        TimeSeriesPhotometryToolExposureStack,
        TimeSeriesPhotometryStackFile,
        TimeSeriesPhotometryToolResult,
    )
}


# ----------------------------------------------------------------------------- tables


def _column_kind(annotation: Any) -> str:
    """How a field is kept in a table column: json, uuid, datetime, enum, float, int, bool, str."""
    text = str(annotation)
    if any(k in text for k in ("dict", "list", "StackExposure")):
        return "json"
    for kind, key in (
        ("uuid", "UUID"),
        ("datetime", "datetime"),
        ("enum", "RunStatus"),
        ("float", "float"),
        ("bool", "bool"),
        ("int", "int"),
    ):
        if key in text:
            return kind
    return "str"


_FILL = {"float": np.nan, "int": 0, "bool": False}


def to_table(records: list[R], cls: type[R] | None = None) -> Table:
    """One row per record: ids, times and statuses as text, nested values as JSON text, and
    None as a masked entry (so None and NaN stay apart). The table's meta names the record
    kind and schema version, which ``from_table`` checks."""
    if cls is None:
        if not records:
            raise ValueError("to_table of no records needs the record class")
        cls = type(records[0])
    t = Table()
    for name, field in cls.model_fields.items():
        kind = _column_kind(field.annotation)
        values: list[Any] = []
        mask: list[bool] = []
        for rec in records:
            v = getattr(rec, name)
            mask.append(v is None)
            if kind == "json":
                v = json.dumps(rec.model_dump(mode="json", include={name})[name])
            elif v is None:
                v = _FILL.get(kind, "")
            elif kind in ("uuid",):
                v = str(v)
            elif kind == "datetime":
                v = v.isoformat()
            elif kind == "enum":
                v = v.value
            values.append(v)
        if not records:
            dtype = {"float": float, "int": int, "bool": bool}.get(kind, str)
            t[name] = np.array([], dtype=dtype)
        elif any(mask):
            t[name] = MaskedColumn(values, mask=mask)
        else:
            t[name] = values
    t.meta["record_kind"] = cls.kind
    t.meta["schema_version"] = SCHEMA_VERSION
    return t


def from_table(table: Table, cls: type[R]) -> list[R]:
    """Records from a table written by ``to_table`` (or read back from ECSV, FITS, Parquet)."""
    kind = table.meta.get("record_kind")
    if kind is not None and kind != cls.kind:
        raise ValueError(f"table holds {kind!r} records, not {cls.kind!r}")
    out = []
    for row in table:
        data: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            if name not in table.colnames:
                continue
            v = row[name]
            if v is np.ma.masked or (np.ma.isMaskedArray(v) and v.mask):
                # text columns hold no None (ECSV reads an empty string back as masked)
                data[name] = "" if _column_kind(field.annotation) == "str" else None
                continue
            v = v.item() if hasattr(v, "item") else v
            if isinstance(v, bytes):
                v = v.decode()
            if _column_kind(field.annotation) == "json":
                v = json.loads(v)
            data[name] = v
        out.append(cls.model_validate(data))
    return out


# ----------------------------------------------------------------------------- a run's records


class RunRecords(BaseModel):
    """All records of one run, as written to ``records.json`` (results come from results.ecsv)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: str = SCHEMA_VERSION
    tool: TimeSeriesPhotometryTool
    objects: list[TimeSeriesPhotometryToolObject] = Field(default_factory=list)
    stack: TimeSeriesPhotometryToolExposureStack | None = None
    stack_files: list[TimeSeriesPhotometryStackFile] = Field(default_factory=list)

    def write(self, path: str | Path) -> None:
        """Write records.json atomically."""
        from tsphot.products.export import atomic_write

        text = self.model_dump_json(indent=2)
        atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def read(cls, path: str | Path) -> RunRecords:
        """Read records.json."""
        return cls.model_validate_json(Path(path).read_text())


def new_tool(settings: Any, name: str = "") -> TimeSeriesPhotometryTool:
    """A pending run record for these settings."""
    from tsphot import __version__
    from tsphot.products.export import versions

    return TimeSeriesPhotometryTool(
        name=name or Path(str(settings.out)).name,
        settings=settings.model_dump(mode="json"),
        out_dir=str(settings.out),
        tsphot_version=__version__,
        versions=versions(),
    )


def records_from_run(
    tool: TimeSeriesPhotometryTool, run: dict[str, Any], out_dir: str = ""
) -> RunRecords:
    """The run's object and stack records from its run.json, bound to the run's record."""
    tid = tool.id
    ap = run.get("apertures", {})
    radius, annulus = ap.get("chosen_radius_px"), ap.get("annulus_px") or [None, None]
    settings = run.get("settings", {})
    objects: list[TimeSeriesPhotometryToolObject] = []
    geometry = {
        "aperture_radius": radius,
        "annulus_inner": annulus[0],
        "annulus_outer": annulus[1],
        "ellipticity": settings.get("ellipticity", 0.0),
        "position_angle": settings.get("position_angle", 0.0),
    }
    for name, o in run.get("objects", {}).items():
        objects.append(
            TimeSeriesPhotometryToolObject(
                id=child_id(tid, f"object/{name}"),
                tool_id=tid,
                name=name,
                role=o["role"],
                x=o.get("x", math.nan),
                y=o.get("y", math.nan),
                ra_deg=o.get("ra_deg"),
                dec_deg=o.get("dec_deg"),
                coord_source=o.get("coord_source") or "",
                catalog_mag=o.get("catalog_mag"),
                rms=o.get("rms_rel_flux"),
                expected=o.get("median_err_rel_flux"),
                frames_measured=o.get("frames_measured"),
                **geometry,
            )
        )
    pinned = {c["name"] for c in settings.get("comps", [])}
    for c in run.get("comparison_stars", []):
        objects.append(
            TimeSeriesPhotometryToolObject(
                id=child_id(tid, f"object/{c['name']}"),
                tool_id=tid,
                name=c["name"],
                role="comp",
                x=c["x"],
                y=c["y"],
                ra_deg=c.get("ra_deg"),
                dec_deg=c.get("dec_deg"),
                catalog_mag=c.get("catalog_mag"),
                pinned=c["name"] in pinned,
                used=c.get("used"),
                weight=c.get("weight"),
                reason=c.get("reason") or "",
                rms=c.get("rms_mag"),
                expected=c.get("expected_mag"),
                **geometry,
            )
        )
    ref = run.get("reference_frame")
    exposures = []
    ref_order = None
    for k, i in enumerate(run.get("inputs", [])):
        if i.get("path") == ref:
            ref_order = k
        exposures.append(
            StackExposure(
                order=k,
                path=i.get("abs_path") or i["path"],
                sha256=i.get("sha256"),
                status=i.get("status", "ok"),
                reason=i.get("reason", ""),
                jd_utc_mid=i.get("jd_utc_mid"),
                exptime=i.get("exptime"),
                filter=i.get("filter") or "",
                header=i.get("header") or {},
            )
        )
    stack = TimeSeriesPhotometryToolExposureStack(
        id=child_id(tid, "stack"),
        tool_id=tid,
        exposures=exposures,
        reference_order=ref_order,
        calibration=_calibration_record(run.get("calibration")),
    )
    tool.object_ids = [o.id for o in objects]
    tool.stack_id = stack.id
    tool.n_exposures = len(exposures)
    tool.n_exposures_ok = sum(e.status == "ok" for e in exposures)
    tool.aperture_radius, tool.annulus_inner, tool.annulus_outer = radius, annulus[0], annulus[1]
    tool.versions = run.get("versions", tool.versions)
    tool.settings = settings or tool.settings
    if out_dir:
        tool.out_dir = out_dir
    return RunRecords(tool=tool, objects=objects, stack=stack)


def results_from_table(table: Table, tool_id: uuid.UUID) -> list[TimeSeriesPhotometryToolResult]:
    """Result records from a results.ecsv table, with ids derived from the run id."""
    out = []
    names = TimeSeriesPhotometryToolResult.model_fields
    for row in table:
        data: dict[str, Any] = {}
        for name, field in names.items():
            if name in table.colnames:
                v = row[name]
                if v is np.ma.masked or (np.ma.isMaskedArray(v) and v.mask):
                    # ECSV reads a column of empty strings back as masked
                    data[name] = "" if _column_kind(field.annotation) == "str" else None
                    continue
                v = getattr(v, "value", v)
                data[name] = v.item() if hasattr(v, "item") else v
        obj = str(data["object"])
        frame = int(data["frame"])
        data["saturated"] = bool(data.get("saturated", False))
        data["tool_id"] = tool_id
        data["object_id"] = child_id(tool_id, f"object/{obj}")
        data["id"] = child_id(tool_id, f"result/{obj}/{frame}")
        out.append(TimeSeriesPhotometryToolResult.model_validate(data))
    return out


def _calibration_record(value: Any) -> dict[str, Any]:
    """The calibration entry of run.json as a dict (older runs wrote a list of steps)."""
    if isinstance(value, dict):
        return value
    return {"steps": list(value or [])}


def load_run(run_dir: str | Path) -> tuple[RunRecords, list[TimeSeriesPhotometryToolResult]]:
    """A run folder's records: records.json and the result records of results.ecsv."""
    run_dir = Path(run_dir)
    recs = RunRecords.read(run_dir / "records.json")
    results: list[TimeSeriesPhotometryToolResult] = []
    if (run_dir / "results.ecsv").exists():
        results = results_from_table(Table.read(run_dir / "results.ecsv"), recs.tool.id)
    return recs, results


__all__ = [
    "SCHEMA_VERSION",
    "RunRecords",
    "RunStatus",
    "StackExposure",
    "TimeSeriesPhotometryStackFile",
    "TimeSeriesPhotometryTool",
    "TimeSeriesPhotometryToolExposureStack",
    "TimeSeriesPhotometryToolObject",
    "TimeSeriesPhotometryToolResult",
    "child_id",
    "from_table",
    "load_run",
    "new_tool",
    "records_from_run",
    "results_from_table",
    "to_table",
]
