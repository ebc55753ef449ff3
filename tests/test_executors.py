"""Executors: serial, a process pool and a real two-worker Dask cluster give identical results."""

import pickle
import tracemalloc

import numpy as np
import pytest
from astropy.table import Table

from tsphot import executors, ingest, pipeline, synthetic
from tsphot.errors import SettingsError
from tsphot.settings import make_settings

distributed = pytest.importorskip("distributed")


def _square_plus(x: int, offset: float) -> tuple[int, float]:
    return x, x * x + offset


def _boom(x: int) -> int:
    if x == 3:
        raise RuntimeError("item 3")
    return x


@pytest.mark.parametrize("kind", ["serial", "processes"])
def test_every_item_once_tagged_with_its_position(kind):
    got = dict(executors.map_completed(_square_plus, range(20), 0.5, executor=kind, workers=2))
    assert got == {i: (i, i * i + 0.5) for i in range(20)}
    ordered = list(executors.map_ordered(_square_plus, range(20), 0.5, executor=kind, workers=2))
    assert ordered == [(i, i * i + 0.5) for i in range(20)]


def test_worker_error_reaches_the_caller():
    # measure_frame turns a bad frame into a status; anything else is a bug and must surface
    with pytest.raises(RuntimeError, match="item 3"):
        list(executors.map_completed(_boom, range(8), executor="processes", workers=2))


def test_unknown_executor_and_unreachable_scheduler_named(monkeypatch):
    with pytest.raises(SettingsError, match="executor 'gpu'"):
        executors.Executor("gpu")
    monkeypatch.setattr(executors, "DASK_CONNECT_TIMEOUT_S", 1.0)
    with (
        pytest.raises(SettingsError, match=r"tcp://127\.0\.0\.1:9: cannot connect"),
        executors.Executor("dask", scheduler="tcp://127.0.0.1:9"),
    ):
        pass


N = 12


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    base = tmp_path_factory.mktemp("exec")
    cfg = synthetic.SimConfig(n_frames=N, size=(256, 256), n_stars=60, seed=21)
    synthetic.simulate_night(base / "night", cfg)
    return base


def _products(out):
    return {n: (out / n).read_bytes() for n in ("results.ecsv", "lightcurve_T1.ecsv")}


def _planned(night):
    """The night's frames and plan, as pipeline.run makes them before the map step."""
    s = make_settings(night / "night" / "tsphot.toml", out=str(night / "plan"), quiet=True)
    (night / "plan").mkdir(exist_ok=True)
    frames = ingest.ingest(ingest.expand_inputs(s.frames))
    plan, _ = pipeline.plan_run(s, frames, night / "plan")
    return frames, plan


def test_map_step_identical_on_every_executor(night):
    frames, plan = _planned(night)

    def measured(kind, **kw):
        with executors.Executor(kind, **kw) as ex:
            got = dict(ex.map_completed(pipeline.measure_frame, frames, plan))
        assert sorted(got) == list(range(N))
        return [pipeline._record_of(got[i]) for i in range(N)]

    def same(a, b):
        for (fa, ca), (fb, cb) in zip(a, b, strict=True):
            assert fa == fb
            assert ca.keys() == cb.keys()
            for k in ca:
                assert ca[k].dtype == cb[k].dtype
                assert np.array_equal(ca[k], cb[k], equal_nan=ca[k].dtype.kind == "f"), k

    serial = measured("serial")
    assert sum(f["status"] == "ok" for f, _ in serial) == N
    same(measured("processes", workers=2), serial)
    same(measured("dask", workers=2), serial)  # a local cluster of two worker processes


def test_full_run_on_an_existing_dask_cluster_equals_serial(night):
    toml = night / "night" / "tsphot.toml"

    def run(name, **kw):
        out = night / name
        summary = pipeline.run(make_settings(toml, out=str(out), quiet=True, **kw))
        assert summary["frames_ok"] == N
        return _products(out)

    serial = run("serial", executor="serial")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        assert run("dask", executor="dask", scheduler=cluster.scheduler_address) == serial
    t1 = Table.read(night / "serial" / "lightcurve_T1.ecsv")
    assert len(t1) == N and np.isfinite(t1["rel_flux"]).all()  # real measurements


def test_frame_result_carries_numbers_not_pixels(night):
    # What crosses from a worker to the main process is a few numbers per object: pickled, a
    # FrameResult must stay far below one frame's pixels, whatever the frame size.
    frames, plan = _planned(night)
    r = pipeline.measure_frame(frames[0], plan)
    assert r.status == "ok"
    n_obj, n_r = len(plan.objects), len(plan.apertures.radii)
    n_sky = 0 if plan.sky_xy is None else len(plan.sky_xy)
    assert n_sky > 0  # the empty-sky apertures are measured in every frame too
    for name, col in r.columns.items():
        # one row per object (or per empty-sky aperture), nothing frame-sized
        rows = n_sky if name.startswith("skyap_") else n_obj
        assert np.shape(col)[0] == rows, name
        assert np.size(col) <= rows * max(n_r, 2), name
    size = len(pickle.dumps(r))
    assert size < 4096 + 512 * (n_obj + n_sky), size
    assert size < 0.05 * np.prod(plan.shape) * 4, size  # 5 % of the float32 pixels


def test_main_process_keeps_a_few_kb_per_frame(night):
    # All the main process keeps of a measured frame is its FrameResult; a frame's pixels
    # (256 KB as float32 here) kept per frame anywhere would show as growth per frame.
    frames, plan = _planned(night)
    s = make_settings(night / "night" / "tsphot.toml", out=str(night / "plan"), quiet=True)
    with executors.Executor("serial") as ex:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            results = pipeline.measure_all(s, frames, plan, night / "plan", {}, ex)
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert [r.status for r in results] == ["ok"] * N
    assert kept / N < 24 * 1024, kept / N
