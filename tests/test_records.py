"""The seed's five records: validation, lossless JSON and Table round trips, a run's records."""

import json
import math
import uuid

import pytest
from astropy.table import Table
from pydantic import ValidationError

from tsphot import pipeline, records
from tsphot.errors import SettingsError
from tsphot.records import (
    RunStatus,
    StackExposure,
    TimeSeriesPhotometryStackFile,
    TimeSeriesPhotometryTool,
    TimeSeriesPhotometryToolExposureStack,
    TimeSeriesPhotometryToolObject,
    TimeSeriesPhotometryToolResult,
)
from tsphot.settings import ObjectSpec

TOOL = TimeSeriesPhotometryTool(name="night", settings={"aperture": 5.0, "targets": [{"x": 1}]})
TID = TOOL.id


def examples() -> list[records.Record]:
    """One of each record, with the awkward values: NaN, ±inf, None, nested data, times."""
    tool = TOOL.model_copy(deep=True)
    tool.mark_running()
    tool.aperture_radius = float("nan")
    tool.summary = {"rms": [0.001, None], "ok": True}
    obj = TimeSeriesPhotometryToolObject(
        id=records.child_id(TID, "object/T1"),
        tool_id=TID,
        name="T1",
        role="target",
        x=10.5,
        y=-0.25,
        rms=float("inf"),
        expected=float("-inf"),
        catalog_mag=None,
    )
    stack = TimeSeriesPhotometryToolExposureStack(
        tool_id=TID,
        exposures=[
            StackExposure(
                order=0,
                path="/a/b.fits",
                sha256="ab" * 32,
                jd_utc_mid=2458107.5,
                header={"filter": "V", "shape": [10, 20]},
            ),
            StackExposure(
                order=1,
                path="/a/c.fits",
                status="missing",
                reason="not found",
                jd_utc_mid=float("nan"),
            ),
        ],
        reference_order=0,
    )
    sf = TimeSeriesPhotometryStackFile(
        tool_id=TID, stack_id=stack.id, path="/x/b.zip", sha256="cd" * 32, size_bytes=123
    )
    res = TimeSeriesPhotometryToolResult(
        tool_id=TID,
        object_id=obj.id,
        object="T1",
        role="target",
        frame=3,
        file="b.fits",
        jd_utc=2458107.51234567,
        flux=float("nan"),
        mag=None,
        saturated=True,
        status="saturated",
        reason="peak pixel at the saturation level — excluded",
    )
    return [tool, obj, stack, sf, res]


@pytest.mark.parametrize("rec", examples(), ids=lambda r: type(r).__name__)
def test_json_round_trip_is_lossless(rec):
    text = rec.to_json()
    json.loads(text)  # strict JSON: no bare NaN or Infinity
    assert "NaN" not in text.replace('"NaN"', "")
    back = type(rec).from_json(text)
    assert back.to_json() == text
    assert back.schema_version == records.SCHEMA_VERSION
    for name in type(rec).model_fields:
        a, b = getattr(rec, name), getattr(back, name)
        if isinstance(a, float) and math.isnan(a):
            assert isinstance(b, float) and math.isnan(b)
        elif name != "exposures":  # holds a NaN; equal as JSON above
            assert a == b, name


@pytest.mark.parametrize("fmt", [None, "ascii.ecsv", "parquet"])
@pytest.mark.parametrize("rec", examples(), ids=lambda r: type(r).__name__)
def test_table_round_trip_is_lossless(rec, fmt, tmp_path):
    other = rec.model_copy(update={"id": uuid.uuid4()})
    table = records.to_table([rec, other])
    assert len(table) == 2 and table.meta["record_kind"] == rec.kind
    if fmt is not None:
        path = tmp_path / f"t.{fmt.split('.')[-1]}"
        table.write(path, format=fmt)
        table = Table.read(path, format=fmt)
    back = records.from_table(table, type(rec))
    assert [b.to_json() for b in back] == [rec.to_json(), other.to_json()]


def test_table_of_the_wrong_kind_refused():
    table = records.to_table([examples()[1]])
    with pytest.raises(ValueError, match="'object' records"):
        records.from_table(table, TimeSeriesPhotometryToolResult)


def test_validation():
    with pytest.raises(ValidationError, match="failed run needs a reason"):
        TimeSeriesPhotometryTool(status="failed")
    with pytest.raises(ValidationError, match=r"schema version 2\.0"):
        TimeSeriesPhotometryTool(schema_version="2.0")
    with pytest.raises(ValidationError):
        TimeSeriesPhotometryToolObject(tool_id=TID, name="X", role="planet", x=1, y=1)
    with pytest.raises(ValidationError, match="extra"):
        TimeSeriesPhotometryToolResult.model_validate(
            {**examples()[4].model_dump(), "colour": "red"}
        )


def test_status_life_cycle():
    t = TimeSeriesPhotometryTool()
    assert t.status == RunStatus.pending and t.created.tzinfo is not None
    t.mark_running()
    assert t.status == RunStatus.running and t.started >= t.created
    t.mark_failed("disk full")
    assert (t.status, t.reason) == (RunStatus.failed, "disk full") and t.finished >= t.started
    t.mark_done()
    assert t.status == RunStatus.done and t.reason == ""


def test_child_ids_are_stable():
    a = records.child_id(TID, "object/T1")
    assert a == records.child_id(TID, "object/T1")
    assert a != records.child_id(TID, "object/T2")
    assert a != records.child_id(uuid.uuid4(), "object/T1")


def test_a_run_writes_its_records(small_run):
    run_dir, summary = small_run
    recs, results = records.load_run(run_dir)
    tool = recs.tool
    assert tool.status == RunStatus.done and tool.finished is not None
    assert tool.n_exposures == summary["frames"] and tool.n_exposures_ok == summary["frames_ok"]
    assert tool.settings["observer_code"] == "TST01"
    assert {o.name for o in recs.objects} >= {"T1", "CHK"}
    assert [o.id for o in recs.objects] == tool.object_ids
    comps = [o for o in recs.objects if o.role == "comp"]
    assert sum(o.used for o in comps) == summary["comps_used"]
    assert all(o.weight is not None for o in comps)
    assert recs.stack is not None and recs.stack.id == tool.stack_id
    assert len(recs.stack.exposures) == summary["frames"]
    assert all(e.sha256 and len(e.sha256) == 64 for e in recs.stack.exposures)
    assert recs.stack.exposures[0].header["filter"] == "V"
    res = Table.read(run_dir / "results.ecsv")
    assert len(results) == len(res)
    r = results[0]
    assert r.tool_id == tool.id and r.object_id == records.child_id(tool.id, f"object/{r.object}")
    assert r.flux == pytest.approx(float(res["flux"][0]))
    # the same run read twice gives the same ids
    _, again = records.load_run(run_dir)
    assert [x.id for x in again] == [x.id for x in results]
    # every record of the run survives JSON and a Table
    for rec in [tool, *recs.objects, recs.stack, *results[:50]]:
        assert type(rec).from_json(rec.to_json()).to_json() == rec.to_json()
    back = records.from_table(records.to_table(results[:50]), TimeSeriesPhotometryToolResult)
    assert [b.to_json() for b in back] == [x.to_json() for x in results[:50]]


def test_a_failed_run_says_why(small_night, tmp_path):
    base, truth = small_night
    from tsphot import demo

    settings = demo.settings_for(base / "night", tmp_path / "out", truth, quiet=True)
    settings.targets = [ObjectSpec(name="Far", x=900.0, y=40.0)]
    with pytest.raises(SettingsError):
        pipeline.run(settings)
    recs = records.RunRecords.read(tmp_path / "out" / "records.json")
    assert recs.tool.status == RunStatus.failed
    assert "'Far' at (900.0, 40.0) px is outside" in recs.tool.reason
