"""The web page end to end in headless Chromium (Debian's, driven by Playwright): sign in,
upload a simulated night, place the target by clicking on the reference frame, start, wait,
read the light curve the page shows, download its CSV and compare both with the API's; and the
page's messages for a failed upload, a failed run and a server that does not answer.

Screenshots of each step go to the test's temporary folder (and to $TSPHOT_WEB_SHOTS if set:
that is how docs/ gets the README's pictures)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the page is served by the [api] extra")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "Debian's chromium is not installed (/usr/bin/chromium): apt-get install chromium "
        "(.ci/run does it)",
        allow_module_level=True,
    )
playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is a test extra")

import httpx  # noqa: E402
from astropy.table import Table  # noqa: E402

from tsphot import synthetic  # noqa: E402

# the API tests' served-process helper (tests/api/conftest.py), loaded under its own name
_spec = importlib.util.spec_from_file_location(
    "tsphot_api_fixtures", Path(__file__).parents[1] / "api" / "conftest.py"
)
_api = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _api  # (dataclasses look their module up there)
_spec.loader.exec_module(_api)
Served, RES = _api.Served, _api.RES

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN_TIMEOUT_MS = 150_000
CLOUD_FRAME = 12


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A 20-frame, 256x256 px night with a transit, a check star, a saturated star and one
    frame of pure cloud (frame 12), which the run rejects."""
    base = tmp_path_factory.mktemp("webnight")
    cfg = synthetic.SimConfig(
        n_frames=20,
        size=(256, 256),
        n_stars=60,
        seed=7,
        exptime=120.0,
        cadence=360.0,
        cloud_frame=CLOUD_FRAME,
        n_bias=3,
        n_dark=2,
        n_flat=3,
    )
    truth = synthetic.simulate_night(base / "night", cfg)
    return base / "night", truth


def _token(data_dir: Path, name: str) -> str:
    """A user's token, made the way an administrator does (`tsphot users add`)."""
    out = subprocess.run(
        [sys.executable, "-m", "tsphot.cli", "users", "--data-dir", str(data_dir), "add", name],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.splitlines()[0].strip()


@pytest.fixture(scope="module")
def server(tmp_path_factory, night):
    """`tsphot serve` on a loopback port over SQLite, with one user; the night's folder is
    its data root (for the page's "folder on the server")."""
    base = tmp_path_factory.mktemp("webserve")
    data = base / "data"
    token = _token(data, "alice")
    root = night[0].parent
    srv = Served(data, "--run-executor", "serial", "--data-root", str(root))
    srv.start()
    try:
        yield srv, token
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, headless, with no network but loopback (no Playwright download)."""
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class Shots:
    """Screenshots of each step, to the test's folder (and $TSPHOT_WEB_SHOTS if set)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.extra = (
            Path(os.environ["TSPHOT_WEB_SHOTS"]) if "TSPHOT_WEB_SHOTS" in os.environ else None
        )
        self.taken: list[Path] = []

    def __call__(self, page, name: str, full_page: bool = True) -> None:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        self.taken.append(path)
        if self.extra is not None:
            self.extra.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.extra / path.name)


def _page(browser, url: str, viewport=(1280, 800)):
    ctx = browser.new_context(
        viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=True
    )
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    offsite: list[str] = []
    page.on(
        "request",
        lambda r: None if r.url.startswith((url, "data:", "blob:")) else offsite.append(r.url),
    )
    page.goto(url + "/")
    return ctx, page, errors, offsite


def _sign_in(page, token: str) -> None:
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("#runs")


def _star(truth, name: str) -> tuple[float, float]:
    """A star's true position on the first exposure (0-based px)."""
    sid = int(np.flatnonzero(np.asarray(truth.stars["name"]) == name)[0])
    f = truth.frames
    row = f[(np.asarray(f["frame"]) == 0) & (np.asarray(f["star"]) == sid)][0]
    return float(row["x"]), float(row["y"])


def _canvas_point(page, x: float, y: float) -> tuple[float, float]:
    """Where frame pixel (x, y) is on the screen, from the transform the canvas reports."""
    d = page.eval_on_selector("#ref-canvas", "c => ({...c.dataset})")
    box = page.locator("#ref-canvas").bounding_box()
    s, ox, oy = float(d["scale"]), float(d["ox"]), float(d["oy"])
    return box["x"] + ox + s * (x + 0.5), box["y"] + oy + s * (y + 0.5)


def test_page_runs_a_night_end_to_end(server, browser, night, tmp_path):
    srv, token = server
    night_dir, truth = night
    shots = Shots(tmp_path)
    ctx, page, errors, offsite = _page(browser, srv.url)
    try:
        page.wait_for_selector("#signin")
        shots(page, "sign-in")
        _sign_in(page, token)
        shots(page, "runs-empty")

        # 1. upload the exposures (and the calibration frames later) through the file input
        page.get_by_role("link", name="New run", exact=True).first.click()
        sci = sorted(str(p) for p in (night_dir / "raw").glob("sci_*.fits"))
        assert len(sci) == 20
        page.set_input_files("#files", sci)
        page.wait_for_function(
            "n => document.querySelectorAll('#upload-list li.ok').length === n", arg=len(sci)
        )
        page.wait_for_selector("#ref-canvas[data-scale]")
        info = page.inner_text("#ref-info")
        assert "sci_0000.fits" in info and "256×256" in info, info

        # 2. the saturated star is said so under the cursor; a click places the target
        page.locator("#ref-canvas").scroll_into_view_if_needed()
        sx, sy = _star(truth, "SAT")
        page.mouse.move(*_canvas_point(page, sx, sy))
        assert "SATURATED" in page.inner_text("#cursor-info")
        tx, ty = _star(truth, "T1")
        page.mouse.move(*_canvas_point(page, tx, ty))
        cursor = page.inner_text("#cursor-info")
        assert "FWHM" in cursor and "SATURATED" not in cursor, cursor
        page.mouse.click(*_canvas_point(page, tx, ty))
        row = page.locator("#objects-body tr").first
        assert row.get_attribute("data-role") == "target"
        gx = float(row.locator("input.obj-x").input_value())
        gy = float(row.locator("input.obj-y").input_value())
        assert abs(gx - tx) < 1.0 and abs(gy - ty) < 1.0, ((gx, gy), (tx, ty))
        assert page.locator("#objects-body input.obj-name").first.input_value() == "T1"
        # the next click places a comparison star (and turns "choose automatically" off);
        # removing it and turning it back on leaves the choice to the ensemble
        cx, cy = _star(truth, "C1")
        page.mouse.click(*_canvas_point(page, cx, cy))
        comp = page.locator("#objects-body tr").nth(1)
        assert comp.get_attribute("data-role") == "comp"
        assert abs(float(comp.locator("input.obj-x").input_value()) - cx) < 1.0
        assert not page.is_checked("#auto-comps")
        page.get_by_role("button", name="remove C1").click()
        page.check("#auto-comps")
        assert page.locator("#objects-body tr").count() == 1
        # a check star by keyboard-typed position (the form's keyboard path)
        kx, ky = _star(truth, "CHK")
        page.select_option("#add-role", "check")
        page.fill("#add-x", f"{kx:.2f}")
        page.fill("#add-y", f"{ky:.2f}")
        page.get_by_role("button", name="Add by position").click()
        page.locator("#objects-body input.obj-name").nth(1).fill("CHK")
        page.locator("#objects-body input.obj-name").nth(1).dispatch_event("change")

        # 3. calibration frames, site, observer code, then start
        raw = night_dir / "raw"
        page.set_input_files("#cal-bias", sorted(str(p) for p in raw.glob("bias_*.fits")))
        page.set_input_files("#cal-dark", sorted(str(p) for p in raw.glob("dark_*.fits")))
        page.set_input_files("#cal-flat", sorted(str(p) for p in raw.glob("flat_*.fits")))
        lat, lon, elev = truth.config.site
        page.get_by_label("Latitude (deg, north +)").fill(str(lat))
        page.get_by_label("Longitude (deg, east +)").fill(str(lon))
        page.get_by_label("Elevation (m)").fill(str(elev))
        page.get_by_label("AAVSO observer code").fill("TST01")
        page.get_by_label("Name of the run").fill("simulated night")
        # the simulated night's own apertures (its tsphot.toml), as the API tests use
        page.get_by_label("Aperture radius (px)").fill("8")
        page.get_by_label("Annulus inner radius (px)").fill("15")
        page.get_by_label("Annulus outer radius (px)").fill("25")
        # the circles follow the radius fields: the canvas changes when the radius does
        before = page.eval_on_selector("#ref-canvas", "c => c.toDataURL()")
        page.get_by_label("Aperture radius (px)").fill("10")
        assert page.eval_on_selector("#ref-canvas", "c => c.toDataURL()") != before
        page.get_by_label("Aperture radius (px)").fill("8")
        page.locator("#ref-canvas").scroll_into_view_if_needed()
        shots(page, "new-run")
        # every form control has a name a screen reader says (a label, or aria-label)
        unnamed = page.evaluate(
            """[...document.querySelectorAll('input, select, button, canvas')]
                 .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                              && !e.textContent.trim())
                 .map(e => e.outerHTML.slice(0, 80))"""
        )
        assert not unnamed, unnamed
        # the form is usable from the keyboard: Tab reaches the start button
        page.focus("#run-name")
        for _ in range(5):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "start":
                break
        assert page.evaluate("document.activeElement.id") == "start"
        page.get_by_role("button", name="Start the run").click()
        page.wait_for_selector("#run-progress, #start-failed", timeout=60_000)
        assert page.locator("#start-failed").count() == 0, page.inner_text("#start-failed")
        assert not errors, errors
        run_id = page.url.rsplit("/", 1)[-1]
        # live progress: frames measured of the night's 20, while the run goes
        page.wait_for_function(
            "() => /^[1-9][0-9]* of 20 frames measured/.test("
            "document.querySelector('#run-progress-text')?.textContent || '')",
            timeout=RUN_TIMEOUT_MS,
        )
        shots(page, "run-progress")

        # 4. wait for the run; the light curve, its table, the stars, plots and downloads
        page.wait_for_selector(
            "#run-results[data-ready=true], #run-error", timeout=RUN_TIMEOUT_MS, state="attached"
        )
        assert page.locator("#run-error").count() == 0, page.inner_text("#run-error")
        page.wait_for_function("() => document.querySelector('#plot-noise')?.complete")
        page.wait_for_function("() => document.querySelector('#plot-conditions')?.complete")
        shots(page, "light-curve")
        # the cloudy frame is rejected, and the page says why
        rej = page.eval_on_selector_all(
            "#rejected-table tbody tr", "rows => rows.map(r => ({...r.dataset}))"
        )
        assert len(rej) == 1 and rej[0]["frame"] == str(CLOUD_FRAME), rej
        assert rej[0]["file"] == "sci_0012.fits" and "cannot register" in rej[0]["reason"], rej
        assert str(srv.data_dir) not in rej[0]["reason"]  # no server folder shown

        h = {"Authorization": f"Bearer {token}"}
        run = httpx.get(f"{srv.url}{RES}/{run_id}", headers=h).json()
        assert run["status"] == "done", run["reason"]
        api_csv = httpx.get(
            f"{srv.url}{RES}/{run_id}/lightcurves/T1", params={"format": "csv"}, headers=h
        )
        api_lc = Table.read(api_csv.text, format="ascii.csv")
        shown = page.eval_on_selector_all(
            "#lc-table tbody tr", "rows => rows.map(r => ({...r.dataset}))"
        )
        assert len(shown) == len(api_lc) == 20
        for d, r in zip(shown, api_lc, strict=True):
            assert float(d["bjd"]) == float(r["BJD_TDB"])
            for key, col in (("flux", "rel_flux"), ("err", "rel_flux_err")):
                want = float(r[col]) if str(r[col]) not in ("", "--") else float("nan")
                got = float(d[key]) if d[key] else float("nan")
                assert got == want or (np.isnan(got) and np.isnan(want)), (key, d, r)
        # the transit is there: the page's points dip by about the simulated depth
        flux = np.array([float(d["flux"]) for d in shown if d["flux"]])
        depth = truth.config.transit_depth
        assert np.nanmax(flux) - np.nanmin(flux) > 0.5 * depth

        # dragging across the plot zooms into that stretch of time; "Reset zoom" undoes it
        n_all = page.locator("#lc-chart circle.pt").count()
        assert n_all == sum(str(v) == "True" for v in api_lc["valid"]) == 19  # not the cloud
        plot = page.locator("#lc-chart svg").bounding_box()
        y_mid = plot["y"] + plot["height"] / 2
        page.mouse.move(plot["x"] + plot["width"] * 0.3, y_mid)
        page.mouse.down()
        page.mouse.move(plot["x"] + plot["width"] * 0.6, y_mid, steps=5)
        page.mouse.up()
        assert 0 < page.locator("#lc-chart circle.pt").count() < n_all
        page.get_by_role("button", name="Reset zoom").click()
        assert page.locator("#lc-chart circle.pt").count() == n_all
        # hover shows a point's frame, time and error; a click shows its frame's cut-out
        pt = page.locator("#lc-chart circle.pt").nth(5)
        pt.hover()
        tip = page.inner_text("#lc-chart-tip")
        assert "frame" in tip and "BJD_TDB" in tip and "±" in tip, tip
        pt.click()
        page.wait_for_selector("#cutout svg circle.ap")
        assert page.locator("#cutout circle").count() == 3
        cap = page.inner_text("#cutout figcaption")
        assert cap.startswith("Frame "), cap

        # the ensemble table, the check star's curve
        ens = page.locator("#ensemble-table tbody tr")
        objs = httpx.get(f"{srv.url}{RES}/{run_id}/objects", headers=h).json()
        assert ens.count() == sum(o["role"] == "comp" for o in objs) > 2
        assert page.locator("#check-chart-CHK").count() == 1
        assert page.locator("#comp-chart").count() == 1

        # the CSV download equals the API's light curve
        with page.expect_download() as dl:
            page.click("#dl-lc-T1-csv")
        got = Path(dl.value.path()).read_bytes()
        assert got == api_csv.content
        # every export format has its download, and the bundle downloads as a zip
        names = {f["name"] for f in httpx.get(f"{srv.url}{RES}/{run_id}/exports", headers=h).json()}
        for must in ("lightcurve_T1.fits", "lightcurve_T1.parquet", "measurements_aij.tbl",
                     "aavso_extended.txt", "aavso_exoplanet_T1.txt"):  # fmt: skip
            assert must in names, names
        buttons = page.eval_on_selector_all("#downloads button", "b => b.map(x => x.id)")
        assert sum(b.startswith("dl-export-") for b in buttons) == len(names)
        with page.expect_download() as dl:
            page.click("#dl-bundle")
        assert Path(dl.value.path()).read_bytes()[:2] == b"PK"

        # the same page on a phone-size screen
        page.set_viewport_size({"width": 390, "height": 844})
        shots(page, "light-curve-phone")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390 + 1, width  # nothing wider than the screen
        assert not errors, errors
        assert not offsite, offsite  # everything came from the server itself
    finally:
        ctx.close()


def test_page_says_why_an_upload_and_a_run_failed(server, browser, night, tmp_path):
    srv, token = server
    night_dir, _ = night
    shots = Shots(tmp_path)
    ctx, page, errors, _ = _page(browser, srv.url, viewport=(390, 844))
    try:
        page.wait_for_selector("#signin")
        # a mistyped token is refused in words
        page.get_by_label("API token").fill(token[:-3] + "xyz")
        page.get_by_role("button", name="Sign in").click()
        refused = page.wait_for_selector("#signin-error .error")
        assert "not recognised" in refused.inner_text(), refused.inner_text()
        _sign_in(page, token)
        page.goto(srv.url + "/#/new")
        # exposures from a folder on the server: browse to it, use it, see its reference frame
        page.get_by_label("a folder on the server").check()
        page.get_by_role("button", name="Browse").click()
        page.get_by_role("button", name="📁 night").click()
        page.get_by_role("button", name="📁 raw").click()
        page.wait_for_function("() => document.querySelector('#folder').value === 'night/raw'")
        page.get_by_label("Folder (or glob) under the server's data root").fill(
            "night/raw/sci_*.fits"
        )
        page.get_by_role("button", name="Use these exposures").click()
        page.wait_for_selector("#ref-canvas[data-scale]")
        assert "sci_0000.fits (the first of 20 exposure(s)" in page.inner_text("#ref-info")
        shots(page, "server-folder")
        page.get_by_label("files uploaded from this computer").check()
        # a file that is no exposure, dropped on the page (drag and drop)
        drop = page.evaluate_handle(
            """text => {
                 const dt = new DataTransfer();
                 dt.items.add(new File([text], "notes.fits"));
                 return dt;
               }""",
            "these are notes, not an exposure\n" * 40,
        )
        page.dispatch_event("#drop", "drop", {"dataTransfer": drop})
        msg = page.wait_for_selector("#upload-failed")
        text = msg.inner_text()
        assert "notes.fits" in text and "not a FITS file" in text, text
        assert "refused" in page.inner_text("#upload-list li.failed")
        shots(page, "upload-failed")

        # a run that fails: its target is outside the frame (made through the API)
        h = {"Authorization": f"Bearer {token}"}
        first = night_dir / "raw" / "sci_0000.fits"
        with open(first, "rb") as fh:
            up = httpx.post(f"{srv.url}/api/v1/uploads", headers=h, files={"file": fh}).json()
        body = {
            "name": "target off the frame",
            "settings": {"targets": [{"name": "T1", "x": 900.0, "y": 900.0}]},
            "exposures": {"uploads": [up["id"]]},
        }
        r = httpx.post(f"{srv.url}{RES}", headers=h, json=body)
        assert r.status_code == 201, r.text
        page.goto(f"{srv.url}/#/runs/{r.json()['id']}")
        err = page.wait_for_selector("#run-error", timeout=60_000)
        text = err.inner_text()
        assert text.startswith("This run failed:") and "outside the reference frame" in text, text
        shots(page, "run-failed")
        page.goto(srv.url + "/#/")
        page.wait_for_selector(f"#runs-body tr[data-run='{r.json()['id']}'] .badge.failed")
        assert not errors, errors
    finally:
        ctx.close()


def test_page_says_when_the_server_does_not_answer(browser, night, tmp_path_factory, tmp_path):
    night_dir, _ = night
    base = tmp_path_factory.mktemp("webdown")
    token = _token(base / "data", "bob")
    srv = Served(base / "data")
    srv.start()
    shots = Shots(tmp_path)
    ctx, page, errors, _ = _page(browser, srv.url)
    try:
        page.wait_for_selector("#signin")
        _sign_in(page, token)
        page.get_by_role("link", name="New run", exact=True).first.click()
        page.wait_for_selector("#files")
        srv.kill9()  # the server dies (a graceful stop would wait for the page's connections)
        # acting on the page: uploading a file to a server that is gone
        page.set_input_files("#files", [str(night_dir / "raw" / "sci_0000.fits")])
        banner = page.wait_for_selector("#banner:not([hidden])", timeout=20_000)
        assert "does not answer" in banner.inner_text()
        page.wait_for_selector("#upload-failed")
        assert "does not answer" in page.inner_text("#upload-failed")
        # and the list of runs says so too, rather than showing nothing
        page.get_by_role("link", name="Runs", exact=True).click()
        page.wait_for_selector("#runs")
        assert page.is_visible("#banner") and "tsphot serve" in page.inner_text("#banner")
        shots(page, "server-down")
        assert not errors, errors
    finally:
        ctx.close()
        srv.stop()
