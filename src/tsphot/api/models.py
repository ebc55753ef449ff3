"""SQLAlchemy 2 models: the seed's five records (one column per record field), users, tokens,
uploads. Rows convert to and from the pydantic records of ``tsphot.records`` without loss: NaN and
±inf survive in float columns (SQLite would store NaN as NULL), nested values are JSON text that
keeps NaN, and times come back timezone-aware UTC.

The record tables' columns are derived from the records' fields, so a record and its table cannot
drift apart silently: a changed field changes the metadata, and the migration test then fails
until an Alembic revision follows it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from typing import Any

from pydantic_core import to_jsonable_python
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, UserDefinedType

from tsphot import records as rec
from tsphot.records import _column_kind

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class _SQLiteFloat(UserDefinedType):
    """SQLite's FLOAT column without SQLAlchemy's float coercion of bound values."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "FLOAT"


class FloatNaN(TypeDecorator):
    """A double that keeps NaN: SQLite turns a bound NaN into NULL, so it is stored as 'NaN'."""

    impl = Float(precision=53)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_SQLiteFloat())
        return dialect.type_descriptor(Float(precision=53))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = float(value)
        if math.isnan(value) and dialect.name == "sqlite":
            return "NaN"
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return float(value)  # also reads the text 'NaN' back


class JSONText(TypeDecorator):
    """JSON as text, keeping NaN and ±inf (Python's json reads them back)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else json.dumps(value, allow_nan=True, sort_keys=False)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else json.loads(value)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC time on every database (SQLite hands back naive times)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations name constraints the same way."""

    metadata = MetaData(naming_convention=NAMING)


# ----------------------------------------------------------------------------- accounts


class User(Base):
    """An account; an admin sees and changes every run and upload."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=rec.utcnow)


class Token(Base):
    """An API token, stored as the SHA-256 of its text (the text is shown once)."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(100), default="")
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=rec.utcnow)


class Upload(Base):
    """A user's uploaded exposure; the bytes are kept once per SHA-256 whoever uploads them."""

    __tablename__ = "uploads"
    __table_args__ = (UniqueConstraint("owner_id", "sha256"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(String(255))
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=rec.utcnow)


# ----------------------------------------------------------------------------- records


def _record_column(name: str, annotation: Any) -> Column:
    """The column of one record field, by the same rule the records use for Table columns."""
    kind = _column_kind(annotation)
    nullable = "None" in str(annotation) or kind == "json"
    types = {
        "json": JSONText,
        "uuid": Uuid,
        "datetime": UTCDateTime,
        "enum": lambda: String(16),
        "float": FloatNaN,
        "bool": Boolean,
        "int": Integer,
        "str": Text,
    }
    if name == "id":
        return Column(name, Uuid, primary_key=True)
    if name == "tool_id":
        return Column(
            name, Uuid, ForeignKey("tools.id", ondelete="CASCADE"), nullable=False, index=True
        )
    return Column(name, types[kind](), nullable=nullable)


def _record_table(
    name: str, cls: type[rec.Record], *extra: Any, exclude: tuple[str, ...] = ()
) -> Table:
    cols = [
        _record_column(f, field.annotation)
        for f, field in cls.model_fields.items()
        if f not in exclude
    ]
    return Table(name, Base.metadata, *cols, *extra)


# The run: the record's fields plus what the service needs to own, schedule and resume it.
tools = _record_table(
    "tools",
    rec.TimeSeriesPhotometryTool,
    Column("owner_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("progress_done", Integer, nullable=False, default=0),
    Column("progress_total", Integer, nullable=False, default=0),
    Column("attempt", Integer, nullable=False, default=0),
    Column("resume", Boolean, nullable=False, default=False),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("server_id", String(64), nullable=True),
    Column("server_host", String(255), nullable=True),
    Column("server_pid", Integer, nullable=True),
    Column("worker_pid", Integer, nullable=True),
    Index(None, "owner_id", "status"),
    Index(None, "status", "created"),
)
tool_objects = _record_table("tool_objects", rec.TimeSeriesPhotometryToolObject)
exposure_stacks = _record_table("exposure_stacks", rec.TimeSeriesPhotometryToolExposureStack)
stack_files = _record_table("stack_files", rec.TimeSeriesPhotometryStackFile)
results = _record_table(
    "results",
    rec.TimeSeriesPhotometryToolResult,
    Index(None, "tool_id", "frame", "object"),  # pages in (frame, object) order
    Index(None, "tool_id", "object", "frame"),  # one object's rows
    Index(None, "tool_id", "status"),
)

RECORD_TABLES: dict[type[rec.Record], Table] = {
    rec.TimeSeriesPhotometryTool: tools,
    rec.TimeSeriesPhotometryToolObject: tool_objects,
    rec.TimeSeriesPhotometryToolExposureStack: exposure_stacks,
    rec.TimeSeriesPhotometryStackFile: stack_files,
    rec.TimeSeriesPhotometryToolResult: results,
}


def to_row(record: rec.Record) -> dict[str, Any]:
    """A record as a row of its table (nested values JSON-ready, enums as text)."""
    row: dict[str, Any] = {}
    for name, field in type(record).model_fields.items():
        kind = _column_kind(field.annotation)
        if kind == "json":
            # JSON-ready, but NaN and ±inf in free-form dicts kept (JSONText writes them)
            row[name] = to_jsonable_python(getattr(record, name), inf_nan_mode="constants")
        elif kind == "enum":
            row[name] = getattr(record, name).value
        else:
            row[name] = getattr(record, name)
    return row


def from_row(cls: type[rec.R], row: Any) -> rec.R:
    """The record of a row (a SQLAlchemy Row or a mapping)."""
    data = row._mapping if hasattr(row, "_mapping") else row
    return cls.model_validate({name: data[name] for name in cls.model_fields if name in data})


__all__ = [
    "RECORD_TABLES",
    "Base",
    "Token",
    "Upload",
    "User",
    "exposure_stacks",
    "from_row",
    "results",
    "stack_files",
    "to_row",
    "tool_objects",
    "tools",
]


_RESULT_FIELDS = rec.TimeSeriesPhotometryToolResult.model_fields
_CAST = {"float": float, "int": int, "bool": bool, "str": str}


def result_rows(table: Any, tool_id: uuid.UUID) -> list[dict[str, Any]]:
    """Rows of the results table straight from a results.ecsv Table, column by column: the
    values ``records.results_from_table`` would give (masked → None, or "" for text), without
    building a pydantic record per row (a 150-frame night has thousands of rows)."""
    import numpy as np

    n = len(table)
    cols: dict[str, list[Any]] = {}
    for name, field in _RESULT_FIELDS.items():
        if name in ("schema_version", "id", "tool_id", "object_id") or name not in table.colnames:
            continue
        kind = _column_kind(field.annotation)
        col = table[name]
        mask = np.ma.getmaskarray(col) if hasattr(col, "mask") else np.zeros(n, bool)
        values = np.asarray(getattr(col, "value", col))
        if values.dtype.kind == "S":
            values = values.astype(str)
        cast = _CAST.get(kind, lambda v: v)
        out = [cast(v) for v in values.tolist()]
        if mask.any():
            empty = "" if kind == "str" else None
            out = [empty if k else v for v, k in zip(out, mask.tolist(), strict=True)]
        cols[name] = out
    version = rec.SCHEMA_VERSION
    rows = []
    for i in range(n):
        row = {name: values[i] for name, values in cols.items()}
        obj, frame = str(row["object"]), int(row["frame"])
        row.update(
            schema_version=version,
            id=rec.child_id(tool_id, f"result/{obj}/{frame}"),
            tool_id=tool_id,
            object_id=rec.child_id(tool_id, f"object/{obj}"),
        )
        rows.append(row)
    return rows


def result_json(row: Any) -> dict[str, Any]:
    """A result row as its record's JSON object (what ``model_dump(mode="json")`` gives),
    without building the record: the results page is the service's busiest answer."""
    data = row._asdict()
    out: dict[str, Any] = {}
    for name in _RESULT_FIELDS:
        v = data[name]
        if isinstance(v, float):
            v = rec._float_out(v)
        elif isinstance(v, uuid.UUID):
            v = str(v)
        out[name] = v
    return out
