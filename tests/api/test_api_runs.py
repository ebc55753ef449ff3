"""A run through the API gives the very result table `tsphot run` gives, on SQLite and on
PostgreSQL; its records and products can be read back."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from astropy.table import Table

from conftest import BACKENDS, RES, fresh_database, make_api, run_body, wait_done
from tsphot import records as rec

SKIP = {"id", "tool_id", "object_id"}  # drawn per run; everything else must match


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return a == b


def _key(r):
    return (r["frame"], r["object"])


@pytest.fixture(scope="module", params=BACKENDS)
def finished(request, small_night, small_run, tmp_path_factory):
    """The small night run through the API (server-side paths under the data root), once per
    database backend."""
    base, truth = small_night
    tmp_path = tmp_path_factory.mktemp("api-run")
    database = fresh_database(request, request.param)
    api = make_api(tmp_path, database, start_jobs=True, data_root=base, run_executor="processes")
    with api.client:
        h = api.user("alice")
        r = api.client.post(RES, headers=h, json=run_body(base, truth))
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["status"] == "pending" and created["owner"] == "alice"
        run = wait_done(api.client, h, created["id"])
        yield api, h, run


def test_api_run_matches_tsphot_run(finished, small_run):
    api, h, run = finished
    assert run["status"] == "done", run["reason"]
    assert run["progress"]["done"] == run["progress"]["total"] == 30
    cli_recs, cli_results = rec.load_run(small_run[0])

    # JSON pages of result records, every field but the per-run ids equal
    items, offset = [], 0
    while True:
        page = api.client.get(
            f"{RES}/{run['id']}/results", headers=h, params={"limit": 250, "offset": offset}
        ).json()
        items += page["items"]
        offset += 250
        if offset >= page["total"]:
            break
    assert len(items) == len(cli_results) == page["total"]
    got = sorted(
        (rec.TimeSeriesPhotometryToolResult.model_validate(i) for i in items),
        key=lambda r: (r.frame, r.object),
    )
    want = sorted(cli_results, key=lambda r: (r.frame, r.object))
    for g, w in zip(got, want, strict=True):
        assert g.tool_id.hex == run["id"].replace("-", "")
        for name in rec.TimeSeriesPhotometryToolResult.model_fields:
            if name not in SKIP:
                assert _same(getattr(g, name), getattr(w, name)), (name, g.object, g.frame)

    # the ECSV table against the run folder's results.ecsv, column by column
    r = api.client.get(f"{RES}/{run['id']}/results", headers=h, params={"format": "ecsv"})
    assert r.status_code == 200
    api_t = Table.read(r.text, format="ascii.ecsv")
    cli_t = Table.read(small_run[0] / "results.ecsv")
    api_t.sort(["frame", "object"])
    cli_t.sort(["frame", "object"])
    common = [c for c in cli_t.colnames if c in api_t.colnames]
    assert len(common) >= 25
    for c in common:
        a, b = np.asarray(api_t[c]), np.asarray(getattr(cli_t[c], "value", cli_t[c]))
        if a.dtype.kind in "fiub" and b.dtype.kind in "fiub":  # (sky_area: int vs pix float)
            np.testing.assert_array_equal(a.astype(float), b.astype(float), err_msg=c)
        else:
            assert list(a.astype(str)) == list(b.astype(str)), c

    # the objects and light curve are the run folder's
    objs = api.client.get(f"{RES}/{run['id']}/objects", headers=h).json()
    assert {o["name"] for o in objs} == {o.name for o in cli_recs.objects}
    lc = api.client.get(f"{RES}/{run['id']}/lightcurves/T1", headers=h)
    api_lc = Table.read(lc.text, format="ascii.ecsv")
    cli_lc = Table.read(small_run[0] / "lightcurve_T1.ecsv")
    np.testing.assert_array_equal(np.asarray(api_lc["rel_flux"]), np.asarray(cli_lc["rel_flux"]))


def test_api_records_and_products(finished):
    api, h, run = finished
    c, rid = api.client, run["id"]
    assert run["n_exposures"] == 30 and run["started"] and run["finished"]
    stack = c.get(f"{RES}/{rid}/exposure_stack", headers=h).json()
    assert len(stack["exposures"]) == 30 and stack["tool_id"] == rid
    # the bundle is written on first request and recorded as the run's stack file, once
    assert c.get(f"{RES}/{rid}/stack_files", headers=h).json() == []
    b = c.get(f"{RES}/{rid}/bundle", headers=h)
    assert b.status_code == 200 and b.content[:2] == b"PK"
    assert c.get(f"{RES}/{rid}/bundle", headers=h).content == b.content
    files = c.get(f"{RES}/{rid}/stack_files", headers=h).json()
    assert len(files) == 1 and files[0]["format"] == "zip" and not files[0]["with_data"]
    assert hashlib.sha256(b.content).hexdigest() == files[0]["sha256"]
    assert c.get(f"{RES}/{rid}", headers=h).json()["stack_file_ids"] == [files[0]["id"]]
    png = c.get(f"{RES}/{rid}/plots/lightcurve.png", headers=h)
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert c.get(f"{RES}/{rid}/plots/nothing.png", headers=h).status_code == 404
    rep = c.get(f"{RES}/{rid}/report.html", headers=h)
    assert rep.status_code == 200 and "<html" in rep.text.lower()
    assert (
        "sandbox" in rep.headers["content-security-policy"]
        or "default-src" in (rep.headers["content-security-policy"])
    )
    csv = c.get(f"{RES}/{rid}/lightcurves/T1", headers=h, params={"format": "csv"})
    assert csv.status_code == 200 and csv.text.splitlines()[0].startswith("BJD_TDB")
    assert c.get(f"{RES}/{rid}/lightcurves/NOPE", headers=h).status_code == 404
    # filters and pages
    t1 = c.get(f"{RES}/{rid}/results", headers=h, params={"object": "T1", "limit": 7}).json()
    assert t1["total"] == 30 and len(t1["items"]) == 7
    assert {i["object"] for i in t1["items"]} == {"T1"}
    ok = c.get(f"{RES}/{rid}/results", headers=h, params={"status": "ok", "limit": 1}).json()
    assert 0 < ok["total"] <= c.get(f"{RES}/{rid}/results", headers=h).json()["total"]
    listed = c.get(RES, headers=h, params={"status": "done"}).json()
    assert [r["id"] for r in listed["items"]] == [rid]
    assert c.get(RES, headers=h, params={"status": "running"}).json()["total"] == 0
    # deleting a finished run removes it and its files
    assert c.delete(f"{RES}/{rid}", headers=h).status_code == 204
    assert c.get(f"{RES}/{rid}", headers=h).status_code == 404
    assert not api.cfg.run_dir(rid).exists()


@pytest.mark.heavy  # a Dask cluster and a whole run: about a minute on 2 cores
def test_api_run_on_a_dask_cluster(small_night, small_run, tmp_path):
    """A server configured with a Dask scheduler measures each run's frames on that cluster
    (its workers, not the run's worker process), and the results are `tsphot run`'s."""
    distributed = pytest.importorskip("distributed", reason="the Dask tests need dask[distributed]")
    base, truth = small_night
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        api = make_api(
            tmp_path,
            None,
            start_jobs=True,
            data_root=base,
            run_executor="dask",
            scheduler=cluster.scheduler_address,
        )
        with api.client:
            h = api.user("alice")
            r = api.client.post(RES, headers=h, json=run_body(base, truth))
            assert r.status_code == 201, r.text
            assert r.json()["settings"]["scheduler"] == cluster.scheduler_address
            run = wait_done(api.client, h, r.json()["id"])
            assert run["status"] == "done", run["reason"]
            # the frames went through the cluster: its worker ran the measuring tasks
            prefixes = cluster.scheduler.task_prefixes
            chunks = [tp for name, tp in prefixes.items() if "run_chunk" in name]
            assert chunks and chunks[0].duration_average > 0, list(prefixes)
            table = api.client.get(
                f"{RES}/{run['id']}/results", headers=h, params={"format": "ecsv"}
            ).text
    api_t = Table.read(table, format="ascii.ecsv")
    cli_t = Table.read(small_run[0] / "results.ecsv")
    api_t.sort(["frame", "object"])
    cli_t.sort(["frame", "object"])
    for c in ("frame", "object", "flux", "flux_err", "status"):
        a, b = np.asarray(api_t[c]), np.asarray(getattr(cli_t[c], "value", cli_t[c]))
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(a, b, err_msg=c)
        else:
            assert list(a.astype(str)) == list(b.astype(str)), c
