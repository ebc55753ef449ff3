"""What the web page asks of the API beyond the records: the reference frame of a set of
exposures with its stars (against the simulator's truth), pictures, the data root's folders, a
run's progress with its rejected frames."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from conftest import RES, make_api
from tsphot import pipeline
from tsphot.api import jobs

PIL = pytest.importorskip("PIL.Image", reason="pillow comes with matplotlib")


def _true_xy(truth, name: str, frame: int = 0) -> tuple[float, float]:
    sid = int(np.flatnonzero(np.asarray(truth.stars["name"]) == name)[0])
    f = truth.frames
    row = f[(np.asarray(f["frame"]) == frame) & (np.asarray(f["star"]) == sid)][0]
    return float(row["x"]), float(row["y"])


def _nearest(stars: list[dict], x: float, y: float) -> tuple[dict, float]:
    d = [np.hypot(s["x"] - x, s["y"] - y) for s in stars]
    k = int(np.argmin(d))
    return stars[k], float(d[k])


@pytest.fixture
def api(tmp_path, small_night):
    base, _ = small_night
    a = make_api(tmp_path, None, start_jobs=False, data_root=base)
    with a.client:
        yield a, a.user("alice")


def test_reference_frame_and_its_stars_match_the_truth(api, small_night):
    a, h = api
    base, truth = small_night
    raw = sorted((base / "night" / "raw").glob("sci_*.fits"))
    # uploads given newest first: the reference is still the first by mid-exposure time
    ids = []
    for p in reversed(raw[:6]):
        with open(p, "rb") as fh:
            ids.append(a.client.post("/api/v1/uploads", headers=h, files={"file": fh}).json()["id"])
    r = a.client.post("/api/v1/reference", headers=h, json={"uploads": ids})
    assert r.status_code == 200, r.text
    ref = r.json()
    assert ref["filename"] == "sci_0000.fits" and ref["upload"] == ids[5] and ref["index"] == 5
    assert (ref["width"], ref["height"], ref["bin"], ref["n_files"]) == (256, 256, 1, 6)
    # the target is found within half a pixel of its true position, with about its true FWHM
    tx, ty = _true_xy(truth, "T1")
    star, d = _nearest(ref["stars"], tx, ty)
    assert d < 0.5 and not star["saturated"]
    fwhm0 = truth.config.fwhm_start
    assert abs(star["fwhm"] - fwhm0) < 0.25 * fwhm0, (star["fwhm"], fwhm0)
    assert abs(ref["fwhm"] - fwhm0) < 0.25 * fwhm0, (ref["fwhm"], fwhm0)
    # the saturated star is said to be, and its peak is at the ADC's limit
    sx, sy = _true_xy(truth, "SAT")
    sat, d = _nearest(ref["stars"], sx, sy)
    assert d < 1.5 and sat["saturated"] and sat["peak"] >= truth.config.saturation_adu
    # no hot pixel is taken for a star: every star listed is near a true star
    xs, ys = np.asarray(truth.stars["x"], float), np.asarray(truth.stars["y"], float)
    for s in ref["stars"]:
        assert np.min(np.hypot(xs - s["x"], ys - s["y"])) < 3.0, s

    # the same through the data root, and its picture (zscaled, 8-bit, the frame's size)
    r2 = a.client.post("/api/v1/reference", headers=h, json={"paths": ["night/raw/sci_*.fits"]})
    assert r2.status_code == 200 and r2.json()["path"] == "night/raw/sci_0000.fits"
    assert r2.json()["stars"] == ref["stars"]
    png = a.client.get("/api/v1/files/image.png", headers=h, params={"path": r2.json()["path"]})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    img = PIL.open(io.BytesIO(png.content))
    assert img.size == (256, 256) and img.mode == "L"
    assert float(png.headers["X-Zscale-Low"]) < float(png.headers["X-Zscale-High"])
    pix = np.asarray(img)
    assert pix[round(ty), round(tx)] == 255  # the target's core is above the stretch
    small = a.client.get(f"/api/v1/uploads/{ids[0]}/image.png", headers=h, params={"bin": 2})
    assert PIL.open(io.BytesIO(small.content)).size == (128, 128)


def test_reference_and_folders_refuse_what_they_cannot_use(api, tmp_path):
    a, h = api
    assert a.client.post("/api/v1/reference", headers=h, json={}).status_code == 422
    r = a.client.post("/api/v1/reference", headers=h, json={"paths": ["../etc"]})
    assert r.status_code == 422 and "'..'" in r.json()["detail"][0]["msg"]
    bias_only = {"paths": ["night/raw/bias_*.fits"]}
    r = a.client.post("/api/v1/reference", headers=h, json=bias_only)
    assert r.status_code == 422 and "no usable science exposure" in r.json()["detail"][0]["msg"]
    assert str(a.cfg.data_root) not in r.json()["detail"][0]["msg"]  # the client's names only
    # a FITS file without an image: its picture is refused naming it, not the server's copy
    from astropy.io import fits

    empty = tmp_path / "header_only.fits"
    fits.PrimaryHDU().writeto(empty)
    with open(empty, "rb") as fh:
        up0 = a.client.post("/api/v1/uploads", headers=h, files={"file": fh}).json()
    r = a.client.get(f"/api/v1/uploads/{up0['id']}/image.png", headers=h)
    msg = r.json()["detail"][0]["msg"]
    assert r.status_code == 422 and "header_only.fits" in msg and str(a.cfg.data_dir) not in msg
    r = a.client.post("/api/v1/reference", headers=h, json={"uploads": [up0["id"]]})
    msg = r.json()["detail"][0]["msg"]
    assert r.status_code == 422 and str(a.cfg.data_dir) not in msg, msg
    other = a.user("bob")
    with open(a.cfg.data_root / "night" / "raw" / "sci_0001.fits", "rb") as fh:
        up = a.client.post("/api/v1/uploads", headers=other, files={"file": fh}).json()
    r = a.client.post("/api/v1/reference", headers=h, json={"uploads": [up["id"]]})
    assert r.status_code == 422 and "no upload" in r.json()["detail"][0]["msg"]  # bob's
    assert a.client.get(f"/api/v1/uploads/{up['id']}/image.png", headers=h).status_code == 404

    root = a.client.get("/api/v1/files", headers=h).json()
    assert (
        root["path"] == ""
        and {"name": "night", "kind": "folder", "size_bytes": None} in (root["entries"])
    )
    raw = a.client.get("/api/v1/files", headers=h, params={"path": "night/raw"}).json()
    names = [e["name"] for e in raw["entries"] if e["kind"] == "fits"]
    assert "sci_0000.fits" in names and "bias_000.fits" in names
    for bad in ("..", "night/../..", "nothing"):
        assert a.client.get("/api/v1/files", headers=h, params={"path": bad}).status_code == 422
    assert a.client.get("/api/v1/files", params={"path": ""}).status_code == 401


def test_progress_of_a_pending_run_and_the_rejected_frames_a_worker_reports(api, tmp_path):
    a, h = api
    body = {
        "settings": {"targets": [{"name": "T1", "x": 94.1, "y": 134.3}]},
        "exposures": {"paths": ["night/raw/sci_000*.fits"]},
    }
    run = a.client.post(RES, headers=h, json=body).json()
    prog = a.client.get(f"{RES}/{run['id']}/progress", headers=h).json()
    assert prog == {"status": "pending", "reason": "", "done": 0, "total": 0, "rejected": []}
    assert a.client.get(f"{RES}/{run['id']}/exports", headers=h).status_code == 409
    cut = a.client.get(f"{RES}/{run['id']}/frames/0/cutout.png?x=10&y=10", headers=h)
    assert cut.status_code == 409

    # the worker's progress hook writes each rejected frame (file name, no server folder)
    out = a.cfg.run_dir(run["id"]) / "progress.json"
    seen: list[tuple[int, int]] = []
    saved = pipeline._progress
    try:
        jobs._install_progress(lambda d, t, force=False: seen.append((d, t)), out)
        step = pipeline._progress(3, True, "measuring")
        folder = "/srv/hidden/place"
        step(pipeline.FrameResult(0, f"{folder}/a.fits"))
        step(pipeline.FrameResult(1, f"{folder}/b.fits", "failed", f"{folder}/b.fits: cloud"))
        step(pipeline.FrameResult(2, f"{folder}/c.fits"))
        step(None)
    finally:
        pipeline._progress = saved
    assert seen[-1] == (3, 3)
    assert json.loads(out.read_text())["rejected"] == [
        {"frame": 1, "file": "b.fits", "status": "failed", "reason": "b.fits: cloud"}
    ]
    prog = a.client.get(f"{RES}/{run['id']}/progress", headers=h).json()
    assert prog["rejected"] == [
        {"frame": 1, "file": "b.fits", "status": "failed", "reason": "b.fits: cloud"}
    ]
