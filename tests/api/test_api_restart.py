"""kill -9 of `tsphot serve` in the middle of a run: its worker dies with it, and after a
restart the run is taken up again and finishes with the results of an uninterrupted run."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from conftest import RES, Served, run_body
from tsphot import records as rec
from tsphot.settings import Settings


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (killed, not yet reaped by init) counts as dead
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait(pred, timeout: float, what: str):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout} s")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_kill_9_mid_run_then_restart(small_night, small_run, tmp_path):
    base, truth = small_night
    data = tmp_path / "data"
    data.mkdir()
    token = subprocess.run(
        [sys.executable, "-m", "tsphot.cli", "users", "--data-dir", str(data), "add", "alice"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[0]
    h = {"Authorization": f"Bearer {token}"}
    args = ("--data-root", str(base))
    server = Served(data, *args)
    server.start()
    try:
        r = httpx.post(server.url + RES, headers=h, json=run_body(base, truth), timeout=30)
        assert r.status_code == 201, r.text
        rid = r.json()["id"]

        def measuring():
            j = httpx.get(f"{server.url}{RES}/{rid}", headers=h, timeout=10).json()
            assert j["status"] in ("pending", "running"), j
            return j if j["progress"]["done"] >= 3 else None

        before = _wait(measuring, 300, "3 frames measured")
        assert before["status"] == "running"
        log = (data / "runs" / rid / "worker.log").read_text()
        assert "attempt 1" in log
        import sqlalchemy as sa

        eng = sa.create_engine(f"sqlite:///{data / 'tsphot.db'}")
        with eng.connect() as c:
            worker = c.execute(sa.text("select worker_pid from tools")).scalar()
        assert worker and _alive(worker)
        server.kill9()
        _wait(lambda: not _alive(worker), 30, "the worker's death with its server")
        eng.dispose()
    finally:
        server.stop()

    server = Served(data, *args)
    server.start()
    try:

        def finished():
            j = httpx.get(f"{server.url}{RES}/{rid}", headers=h, timeout=10).json()
            return j if j["status"] in ("done", "failed") else None

        run = _wait(finished, 600, "the resumed run's end")
        assert run["status"] == "done", run["reason"]
        assert run["attempt"] == 2  # taken up again, not started as a new run
        log = (data / "runs" / rid / "worker.log").read_text()
        assert "attempt 2 (resuming)" in log
        if "resume" in Settings.model_fields:  # the pipeline keeps a checkpoint: it was used
            assert re.search(r"resuming: [1-9]\d* of 30 frames", log), log[-2000:]
        items = []
        while True:
            page = httpx.get(
                f"{server.url}{RES}/{rid}/results",
                headers=h,
                params={"limit": 1000, "offset": len(items)},
                timeout=30,
            ).json()
            items += page["items"]
            if len(items) >= page["total"]:
                break
    finally:
        server.stop()
    _, want = rec.load_run(small_run[0])
    got = sorted(
        (rec.TimeSeriesPhotometryToolResult.model_validate(i) for i in items),
        key=lambda r: (r.frame, r.object),
    )
    want = sorted(want, key=lambda r: (r.frame, r.object))
    assert len(got) == len(want)
    skip = {"id", "tool_id", "object_id"}
    for g, w in zip(got, want, strict=True):
        for name in rec.TimeSeriesPhotometryToolResult.model_fields:
            if name in skip:
                continue
            a, b = getattr(g, name), getattr(w, name)
            same = a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))
            assert same, (name, g.object, g.frame, a, b)
