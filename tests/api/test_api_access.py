"""Who may do what: tokens, other users' runs and uploads, paths outside the data root, upload
limits, quota, non-FITS files, and 422s that name the field. No run is executed here."""

from __future__ import annotations

import gzip
import io
import os
import uuid

import numpy as np
import pytest
from astropy.io import fits

from conftest import RES, make_api
from tsphot.api import models as m

UP = "/api/v1/uploads"


def _fits_bytes(value: int = 1, shape=(16, 16)) -> bytes:
    buf = io.BytesIO()
    fits.PrimaryHDU(np.full(shape, value, dtype=np.uint16)).writeto(buf)
    return buf.getvalue()


@pytest.fixture
def api(tmp_path, database):
    root = tmp_path / "root"
    (root / "night").mkdir(parents=True)
    for k in range(3):
        (root / "night" / f"f{k}.fits").write_bytes(_fits_bytes(k))
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "s.fits").write_bytes(_fits_bytes(9))
    os.symlink(secret / "s.fits", root / "night" / "escape.fits")
    os.symlink(secret, root / "outside")
    a = make_api(
        tmp_path,
        database,
        start_jobs=False,
        data_root=root,
        max_upload_bytes=20_000,
        quota_bytes=40_000,
    )
    with a.client:
        yield a


def _body(**kw):
    return {"exposures": {"paths": ["night/f0.fits"]}, **kw}


def test_tokens(api):
    c = api.client
    assert c.get("/api/v1/health").status_code == 200
    assert c.get("/api/v1/openapi.json").status_code == 200
    r = c.get(RES)
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = c.get(RES, headers={"Authorization": "Bearer tsp_not-a-token"})
    assert r.status_code == 401 and "not recognised" in r.json()["detail"]
    assert c.get(RES, headers={"Authorization": "Basic dTpw"}).status_code == 401
    assert (
        c.post(UP, content=_fits_bytes(), headers={"Content-Type": "application/fits"}).status_code
        == 401
    )
    h = api.user("alice")
    assert c.get(RES, headers=h).json() == {"items": [], "total": 0, "limit": 50, "offset": 0}
    # tokens are stored hashed: the clear text is nowhere in the database
    token = h["Authorization"].split()[1]
    with api.app.state.tsphot.sm() as s:
        stored = [t.token_hash for t in s.query(m.Token)]
    assert token not in stored and len(stored) == 1 and len(stored[0]) == 64


def test_isolation_between_users_and_admin(api):
    c = api.client
    alice, bob, root = api.user("alice"), api.user("bob"), api.user("root", admin=True)
    r = c.post(RES, headers=alice, json=_body(name="alice's"))
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    for path in ("", "/objects", "/results", "/exposure_stack", "/report.html", "/bundle"):
        r = c.get(f"{RES}/{rid}{path}", headers=bob)
        assert r.status_code == 404 and "no run" in r.json()["detail"], path
    assert c.delete(f"{RES}/{rid}", headers=bob).status_code == 404
    assert c.get(RES, headers=bob).json()["total"] == 0
    assert c.get(RES, headers=root).json()["total"] == 1
    assert c.get(RES, headers=root, params={"owner": "bob"}).json()["total"] == 0
    assert c.get(f"{RES}/{rid}", headers=root).json()["owner"] == "alice"
    # products of an unfinished run: 409, said why
    r = c.get(f"{RES}/{rid}/report.html", headers=alice)
    assert r.status_code == 409 and "pending" in r.json()["detail"]
    # uploads are private too
    up = c.post(UP, headers=alice, files={"file": ("a.fits", _fits_bytes(5))}).json()
    assert c.get(f"{UP}/{up['id']}", headers=bob).status_code == 404
    r = c.post(RES, headers=bob, json={"exposures": {"uploads": [up["id"]]}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "exposures", "uploads", 0]
    # cancel a pending run: failed, with who cancelled it; then delete it
    r = c.delete(f"{RES}/{rid}", headers=alice)
    assert r.status_code == 200 and r.json()["status"] == "failed"
    assert r.json()["reason"] == "cancelled by alice"
    assert c.delete(f"{RES}/{rid}", headers=alice).status_code == 204


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("../secret/s.fits", "'..' is not allowed"),
        ("night/../../secret/s.fits", "'..' is not allowed"),
        ("night/escape.fits", "outside the data root"),
        ("outside/s.fits", "outside the data root"),
        ("outside", "outside the data root"),
        ("night/*.fits", "outside the data root"),  # the glob takes in the symlink
        ("night/none.fits", "no such file"),
        ("none/*.fits", "matches no file"),
    ],
)
def test_paths_confined_to_the_data_root(api, path, why):
    h = api.user("alice")
    r = api.client.post(RES, headers=h, json={"exposures": {"paths": ["night/f1.fits", path]}})
    assert r.status_code == 422, r.text
    d = r.json()["detail"][0]
    assert d["loc"] == ["body", "exposures", "paths", 1]
    assert why in d["msg"]
    assert str(api.cfg.data_root) not in d["msg"]  # the server's folders are not named
    assert not any(api.cfg.runs_dir.iterdir())  # nothing left behind


def test_absolute_path_is_taken_inside_the_root(api):
    h = api.user("alice")
    r = api.client.post(RES, headers=h, json={"exposures": {"paths": ["/night/f2.fits"]}})
    assert r.status_code == 201, r.text
    assert r.json()["settings"]["frames"] == [str(api.cfg.data_root / "night" / "f2.fits")]


def test_uploads(api):
    c = api.client
    h = api.user("alice")
    data = _fits_bytes(3)
    r = c.post(UP, headers=h, files={"file": ("../../odd name.fits", data)})
    assert r.status_code == 201, r.text
    up = r.json()
    assert up["filename"] == "odd_name.fits" and up["size_bytes"] == len(data)
    # the same bytes again: the same upload, 200, stored once
    r = c.post(UP, headers=h, files={"file": ("again.fits", data)})
    assert r.status_code == 200 and r.json()["id"] == up["id"] and r.json()["deduplicated"]
    blobs = [p for p in api.cfg.uploads_dir.rglob("*") if p.is_file()]
    assert len(blobs) == 1
    # another user uploading the same bytes gets their own upload over the same file
    r = c.post(UP, headers=api.user("bob"), files={"file": ("b.fits", data)})
    assert r.status_code == 201 and r.json()["id"] != up["id"]
    assert len([p for p in api.cfg.uploads_dir.rglob("*") if p.is_file()]) == 1
    # gzip-compressed FITS and a raw body are fine
    r = c.post(UP, headers=h, files={"file": ("g.fits.gz", gzip.compress(_fits_bytes(4)))})
    assert r.status_code == 201, r.text
    r = c.post(
        UP,
        headers={**h, "Content-Type": "application/fits"},
        content=_fits_bytes(6),
        params={"filename": "raw.fits"},
    )
    assert r.status_code == 201 and r.json()["filename"] == "raw.fits"
    # a run from uploads: the files are linked into the run's inputs under their names
    r = c.post(RES, headers=h, json={"exposures": {"uploads": [up["id"]]}})
    assert r.status_code == 201
    frames = r.json()["settings"]["frames"]
    assert frames[0].endswith("/inputs/frames/odd_name.fits")
    listed = c.get(UP, headers=h).json()
    assert listed["total"] == 3
    assert c.delete(f"{UP}/{up['id']}", headers=h).status_code == 204
    assert c.get(f"{UP}/{up['id']}", headers=h).status_code == 404


def test_upload_refusals(api):
    c = api.client
    h = api.user("alice")
    r = c.post(UP, headers=h, files={"file": ("big.fits", _fits_bytes(1, (200, 200)))})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = c.post(UP, headers=h, files={"file": ("notes.fits", b"hello, I am not FITS" * 100)})
    assert r.status_code == 422
    d = r.json()["detail"][0]
    assert (
        d["loc"] == ["body", "file"] and "not a FITS file" in d["msg"] and "notes.fits" in d["msg"]
    )
    r = c.post(
        UP,
        headers=h,
        files={"file": ("broken.fits", b"SIMPLE  =                    T" + b" " * 50)},
    )
    assert r.status_code == 422 and "END" in r.json()["detail"][0]["msg"]
    r = c.post(UP, headers=h, files={"other": ("x.fits", _fits_bytes())})
    assert r.status_code == 422 and "no form field 'file'" in r.json()["detail"][0]["msg"]
    r = c.post(UP, headers={**h, "Content-Type": "text/plain"}, content=b"x")
    assert r.status_code == 415
    r = c.post(UP, headers=h, files={"file": ("e.fits", b"")})
    assert r.status_code == 422 and "empty" in r.json()["detail"][0]["msg"]
    # nothing half-written is left behind
    assert not any((api.cfg.uploads_dir / "tmp").iterdir())
    # the quota: 40 000 bytes; each file is 5 760 bytes
    for k in range(6):
        assert (
            c.post(UP, headers=h, files={"file": (f"q{k}.fits", _fits_bytes(10 + k))}).status_code
            == 201
        )
    r = c.post(UP, headers=h, files={"file": ("q.fits", _fits_bytes(99))})
    assert r.status_code == 413 and "quota" in r.json()["detail"]
    # bob has his own quota
    assert (
        c.post(UP, headers=api.user("bob"), files={"file": ("q.fits", _fits_bytes(99))}).status_code
        == 201
    )


def test_422_names_the_field(api):
    c = api.client
    h = api.user("alice")
    cases = [
        ({"exposures": {"paths": ["night/f0.fits"]}, "setings": {}}, ["body", "setings"]),
        (_body(settings={"aperture": "wide"}), ["body", "settings", "aperture"]),
        (_body(settings={"annulus": [20, 10]}), ["body", "settings", "annulus"]),
        (_body(settings={"frames": ["/etc/passwd"]}), ["body", "settings", "frames"]),
        (_body(settings={"masters": "/etc/passwd"}), ["body", "settings", "masters"]),
        (_body(settings={"targets": [{"name": "T", "x": 1}]}), ["body", "settings", "targets", 0]),
        ({"exposures": {}}, ["body", "exposures"]),
        ({"exposures": {"uploads": ["not-a-uuid"]}}, ["body", "exposures", "uploads", 0]),
    ]
    for body, loc in cases:
        r = c.post(RES, headers=h, json=body)
        assert r.status_code == 422, (body, r.text)
        locs = [d["loc"][: len(loc)] for d in r.json()["detail"]]
        assert loc in locs, (body, r.json())
    big = b'{"name": "' + b"x" * (17 << 20) + b'"}'
    r = c.post(RES, headers={**h, "Content-Type": "application/json"}, content=big)
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    r = c.post(RES, headers={**h, "Content-Type": "application/json"}, content=b"{not json")
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    assert c.get(f"{RES}/not-an-id", headers=h).status_code == 422
    assert c.get(f"{RES}/{uuid.uuid4()}", headers=h).status_code == 404
    assert c.get(RES, headers=h, params={"status": "sleeping"}).status_code == 422
    assert c.get(RES, headers=h, params={"limit": 0}).status_code == 422


def test_data_root_absent_refuses_paths(tmp_path, database):
    a = make_api(tmp_path, database, start_jobs=False)
    with a.client:
        h = a.user("alice")
        r = a.client.post(RES, headers=h, json=_body())
        assert r.status_code == 422 and "no data root" in r.json()["detail"][0]["msg"]
