"""Checkpoint: records round-trip exactly, torn or corrupt tails are cut, a killed run resumes."""

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from tsphot import measure, pipeline, store, synthetic
from tsphot.register import Transform
from tsphot.settings import make_settings


def _result(index: int, seed: int = 0) -> pipeline.FrameResult:
    rng = np.random.default_rng(seed)
    cols = pipeline._empty_columns(5, 2)
    cols["flux"] = rng.normal(1e4, 100, (5, 2))
    cols["flux"][2, 1] = np.nan
    cols["x"] = rng.uniform(0, 100, 5).astype(np.float32)
    cols["saturated"][1] = True
    cols["obj_status"] = np.array(["ok", "saturated", "ok", "off_frame", "ok"], dtype=object)
    return pipeline.FrameResult(
        index=index,
        path=f"/night/sci_{index:04d}.fits",
        transform=Transform((1.0, 1e-5, -1e-5, 1.0), (0.1 + index, -2.0 / 3.0), 40, 0.031),
        fwhm=np.float32(3.217),
        sky_level=float(np.pi),
        n_sources=123,
        columns=cols,
        sha256=f"{index:064x}",
    )


def _same(a: pipeline.FrameResult, b: pipeline.FrameResult) -> None:
    assert (a.status, a.reason, a.n_sources, a.transform) == (
        b.status,
        b.reason,
        b.n_sources,
        b.transform,
    )
    assert type(a.fwhm) is type(b.fwhm) and a.fwhm == b.fwhm
    assert a.sky_level == b.sky_level
    assert a.columns.keys() == b.columns.keys()
    for k in a.columns:
        assert a.columns[k].dtype == b.columns[k].dtype, k
        assert a.columns[k].shape == b.columns[k].shape, k
        if a.columns[k].dtype.kind == "f":
            np.testing.assert_array_equal(a.columns[k], b.columns[k])  # NaN == NaN here
        else:
            assert a.columns[k].tolist() == b.columns[k].tolist(), k


def _write(path, plan_key: str, results) -> None:
    with store.Checkpoint(path, plan_key, resume=False) as ck:
        for r in results:
            ck.append(r.sha256, *pipeline._record_of(r))


def test_records_round_trip_exactly(tmp_path):
    path = tmp_path / store.CHECKPOINT_NAME
    rs = [_result(i, seed=i) for i in range(4)]
    _write(path, "planA", rs)
    ck = store.Checkpoint(path, "planA", resume=True)
    ck.close()
    assert len(ck.saved) == 4
    for r in rs:
        info = pipeline.FrameInfo(path=r.path, index=r.index)
        _same(r, pipeline._result_from_record(ck.saved[r.sha256], info))


def test_other_plan_ignored_and_fresh_run_starts_empty(tmp_path):
    path = tmp_path / store.CHECKPOINT_NAME
    _write(path, "planA", [_result(0)])
    ck = store.Checkpoint(path, "planB", resume=True)
    ck.close()
    assert ck.saved == {}
    ck = store.Checkpoint(path, "planA", resume=False)  # no --resume: start afresh
    ck.close()
    assert store.read_records(path) == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_torn_or_corrupt_tail_is_cut_and_appending_goes_on(tmp_path, damage):
    path = tmp_path / store.CHECKPOINT_NAME
    _write(path, "p", [_result(i) for i in range(3)])
    size = path.stat().st_size
    blob = bytearray(path.read_bytes())
    if damage == "truncate":  # a process killed in the middle of a write
        blob = blob[: size - 100]
    elif damage == "flip":  # a bit flipped in the last record's payload
        blob[size - 50] ^= 0x01
    else:  # power cut: junk after the last record
        blob += b"\x00" * 37
    path.write_bytes(bytes(blob))
    ck = store.Checkpoint(path, "p", resume=True)
    expect = 3 if damage == "garbage" else 2
    assert len(ck.saved) == expect
    ck.append(_result(9).sha256, *pipeline._record_of(_result(9)))
    ck.close()
    recs = store.read_records(path)
    assert len(recs) == expect + 1 and recs[-1]["sha256"] == _result(9).sha256


def test_not_a_checkpoint_is_replaced(tmp_path):
    path = tmp_path / store.CHECKPOINT_NAME
    path.write_text("hello")
    ck = store.Checkpoint(path, "p", resume=True)
    ck.close()
    assert ck.saved == {} and store.read_records(path) == []


def _plan(**kw) -> pipeline.Plan:
    base = pipeline.Plan(
        objects=[pipeline.PlanObject("T1", "target", 10.5, 20.25)],
        ref_path="/a/ref.fits",
        ref_xy=np.array([[1.0, 2.0], [3.0, 4.0]]),
        apertures=measure.Apertures((5.0,), (10.0, 15.0)),
        masters_file=None,
        gain=1.5,
        saturation=60000.0,
        detect_sigma=5.0,
        centroid_box=11,
        max_shift=3.0,
        shape=(100, 100),
    )
    return replace(base, **kw)


def test_plan_key_follows_what_affects_measurement(tmp_path):
    key = store.plan_key(_plan())
    assert store.plan_key(_plan()) == key
    assert store.plan_key(_plan(ref_path="/moved/ref.fits")) == key  # a moved night resumes
    assert store.plan_key(_plan(apertures=measure.Apertures((6.0,), (10.0, 15.0)))) != key
    assert store.plan_key(_plan(gain=1.6)) != key
    assert store.plan_key(_plan(ref_xy=np.array([[1.0, 2.0], [3.0, 4.5]]))) != key
    m1, m2 = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(m1, flat=np.ones((4, 4)))
    np.savez(m2, flat=np.ones((4, 4)))
    assert store.plan_key(_plan(masters_file=str(m1))) == store.plan_key(
        _plan(masters_file=str(m2))
    )
    np.savez(m2, flat=np.full((4, 4), 1.01))
    assert store.plan_key(_plan(masters_file=str(m1))) != store.plan_key(
        _plan(masters_file=str(m2))
    )


# ----------------------------------------------------------------------------- kill -9 and resume

N = 40


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    cfg = synthetic.SimConfig(n_frames=N, size=(256, 256), n_stars=60, seed=11)
    truth = synthetic.simulate_night(base / "night", cfg, workers=2)
    return base, truth


def _tables(out):
    return {
        name: (out / name).read_bytes()
        for name in ("results.ecsv", "lightcurve_T1.ecsv", "lightcurve_T1.csv")
    }


@pytest.fixture(scope="module")
def whole(night):
    """An uninterrupted run with the night's own tsphot.toml (as the command line gives)."""
    base, _ = night
    out = base / "whole"
    pipeline.run(make_settings(base / "night" / "tsphot.toml", out=str(out), quiet=True))
    return out


def test_killed_run_resumes_to_identical_results(night, whole):
    base, _ = night
    toml = base / "night" / "tsphot.toml"
    out = base / "killed"
    cmd = [
        sys.executable,
        "-m",
        "tsphot.cli",
        "run",
        "--config",
        str(toml),
        "--out",
        str(out),
        "--executor",
        "serial",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ck = out / store.CHECKPOINT_NAME
    saved = 0
    try:
        while proc.poll() is None:
            # reading while the run appends: a half-written last record is simply not counted
            saved = len(store.read_records(ck)) if ck.exists() else 0
            if saved >= 5:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert 5 <= saved < N
    assert not (out / "results.ecsv").exists()  # killed before any product was written

    s = make_settings(toml, out=str(out), quiet=True, executor="processes", workers=2, resume=True)
    summary = pipeline.run(s)
    # nothing measured was lost: every frame in the checkpoint at the kill was reused
    assert saved <= summary["frames_resumed"] < N
    assert summary["frames_ok"] == N
    assert _tables(out) == _tables(whole)  # byte for byte


def test_resume_reuses_only_measurements_of_the_same_settings(night, whole, tmp_path):
    base, _ = night
    toml = base / "night" / "tsphot.toml"
    out = tmp_path / "out"
    shutil.copytree(whole, out)  # a finished run, moved elsewhere
    s = make_settings(toml, out=str(out), quiet=True, resume=True, outlier_sigma=4.0)
    assert pipeline.run(s)["frames_resumed"] == N  # reduce-only settings: everything reused
    s = make_settings(toml, out=str(out), quiet=True, resume=True, aperture=6.5)
    assert pipeline.run(s)["frames_resumed"] == 0  # another aperture: measured afresh


@pytest.mark.parametrize("suffix", [".fits", ".fits.gz"])
def test_frames_hashed_as_read_plain_or_compressed(tmp_path, suffix):
    from astropy.io import fits

    from tsphot import ingest

    data = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10)
    path = tmp_path / f"f{suffix}"
    fits.PrimaryHDU(data).writeto(path)
    pix, _, sha = ingest.read_pixels_sha256(str(path))
    np.testing.assert_array_equal(pix, data)
    assert sha == ingest.file_sha256(str(path))
