"""The database: the Alembic migrations build exactly the models' schema, and each of the five
records goes in and comes out unchanged (NaN, ±inf and None kept apart, times in UTC)."""

from __future__ import annotations

import json
import math
import uuid

import pytest
from sqlalchemy import insert, select

from tsphot import records as rec
from tsphot.api import models as m
from tsphot.api.db import open_database


def _url(tmp_path, database):
    return database or f"sqlite:///{tmp_path / 'db.sqlite'}"


def test_migrations_match_the_models(tmp_path, database):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine, _ = open_database(_url(tmp_path, database))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), m.Base.metadata)
    assert diff == [], f"the models changed without a migration: {diff}"
    engine.dispose()


def _same(a, b) -> bool:
    if isinstance(a, dict | list):  # nested NaN: compare as JSON text, where NaN is NaN
        return json.dumps(a, default=str, sort_keys=True) == json.dumps(
            b, default=str, sort_keys=True
        )
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def test_records_round_trip(tmp_path, database):
    engine, sm = open_database(_url(tmp_path, database))
    tool = rec.TimeSeriesPhotometryTool(
        name="r",
        settings={"aperture": 8.0, "nested": {"nan": float("nan")}},
        summary={"rms": float("inf")},
        aperture_radius=float("nan"),
    )
    tool.mark_failed("because")
    tid = tool.id
    objects = [
        rec.TimeSeriesPhotometryToolObject(
            tool_id=tid,
            name="T1",
            role="target",
            x=1.5,
            y=float("nan"),
            weight=None,
            rms=float("-inf"),
            used=None,
        )
    ]
    stack = rec.TimeSeriesPhotometryToolExposureStack(
        tool_id=tid,
        exposures=[rec.StackExposure(order=0, path="a.fits", jd_utc_mid=float("nan"))],
    )
    sf = rec.TimeSeriesPhotometryStackFile(tool_id=tid, path="b.zip", sha256="0" * 64, size_bytes=3)
    result = rec.TimeSeriesPhotometryToolResult(
        tool_id=tid,
        object_id=uuid.uuid4(),
        object="T1",
        role="target",
        frame=3,
        file="a.fits",
        flux=float("nan"),
        flux_err=None,
        mag=float("inf"),
        sky_area=None,
        saturated=True,
        status="off_frame",
        reason="outside",
    )
    with sm.begin() as s:
        s.execute(m.User.__table__.insert().values(id=1, name="u", is_admin=False))
        s.execute(insert(m.tools).values(**m.to_row(tool), owner_id=1))
        for r in (*objects, stack, sf, result):
            s.execute(insert(m.RECORD_TABLES[type(r)]).values(**m.to_row(r)))
    with sm() as s:
        for r in (tool, *objects, stack, sf, result):
            table = m.RECORD_TABLES[type(r)]
            row = s.execute(select(table).where(table.c.id == r.id)).one()
            back = m.from_row(type(r), row)
            for name in type(r).model_fields:
                assert _same(getattr(back, name), getattr(r, name)), (type(r).__name__, name)
            assert back.to_json() == r.to_json()
    engine.dispose()


def test_bad_database_url_is_named(tmp_path):
    from tsphot.errors import SettingsError

    with pytest.raises(SettingsError, match="only SQLite"):
        open_database("mysql://x@localhost/db")
    with pytest.raises(SettingsError, match="not a database URL"):
        open_database("::::")
