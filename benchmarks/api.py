"""The service's cost: a night through the API against `tsphot run`, and clients polling.

1. Simulate a night (150 frames of 1024x1024 px by default).
2. Reduce it with `tsphot run` (a subprocess), timed.
3. Reduce it through `tsphot serve` (SQLite, the night under --data-root): POST the run, poll
   until done; the time from the POST to the client seeing `done` against step 2. Steps 2 and
   3 alternate `--repeats` times (3), so a change in the machine's load falls on both. Wall
   and CPU seconds (the CLI and its frame-measuring processes; the server, the run's worker
   and its processes): on a shared machine the CPU seconds are the steadier comparison.
4. Restart the server with the run workers at `--run-nice` (10), start the same run again and,
   while it goes, let N clients (50) each poll every `--interval` s (1): GET the running run's
   status, GET a page of 100 results of the finished run. Latency p50/p99 and errors.

Usage: .venv/bin/python benchmarks/api.py [--frames 150] [--repeats 3] [--clients 50]
       [--interval 1] [--run-nice 10] [--work DIR]
Only loopback addresses are used; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from tsphot import synthetic
from tsphot.settings import make_settings

RES = "/api/v1/time_series_photometry_tools"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body_for(night: Path) -> dict:
    """The API body equal to the night's tsphot.toml."""
    s = make_settings(night / "tsphot.toml")
    science = {
        "targets": [t.model_dump(exclude_none=True) for t in s.targets],
        "checks": [t.model_dump(exclude_none=True) for t in s.checks],
        "aperture": s.aperture,
        "annulus": list(s.annulus),
        "site": list(s.site),
        "aperture_diameter_m": s.aperture_diameter_m,
    }
    rel = night.name
    return {
        "name": "benchmark",
        "settings": science,
        "exposures": {"paths": [f"{rel}/raw/sci_*.fits"]},
        "bias": {"paths": [f"{rel}/raw/bias_*.fits"]},
        "dark": {"paths": [f"{rel}/raw/dark_*.fits"]},
        "flat": {"paths": [f"{rel}/raw/flat_*.fits"]},
    }


def wait_done(url: str, h: dict, rid: str, limit_s: float = 3600) -> dict:
    """Poll a run every 0.2 s until it ends."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        j = httpx.get(f"{url}{RES}/{rid}", headers=h, timeout=30).json()
        if j["status"] in ("done", "failed"):
            return j
        time.sleep(0.2)
    raise SystemExit(f"run {rid} did not finish within {limit_s} s")


class _Conn:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams: the harness must cost far
    less than the server it measures (httpx's async client costs ~10 ms of CPU a request)."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, target: str) -> tuple[int, bytes]:
        """GET target; return the status code and body."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {self.token}\r\n\r\n".encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(
            int(v)
            for k, _, v in (ln.partition(":") for ln in lines[1:])
            if k.lower() == "content-length"
        )
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        """Close the connection."""
        if self.writer is not None:
            self.writer.close()


async def clients(
    url: str, token: str, running: str, finished: str, n: int, interval: float, limit_s: float
) -> dict:
    """n clients, each every `interval` s: poll the running run, read the finished one's results."""
    lat: list[float] = []
    errors: list[str] = []
    stop = asyncio.Event()
    host, port = url.split("//")[1].split(":")

    async def one(k: int) -> None:
        conn = _Conn(host, int(port), token)
        try:
            await asyncio.sleep(interval * k / n)  # spread the clients over one interval
            i = 0
            while not stop.is_set() and i < 100_000:
                i += 1
                t_round = time.perf_counter()
                for target in (
                    f"{RES}/{running}",
                    f"{RES}/{finished}/results?limit=100&offset={(k * 100 + i * 700) % 3000}",
                ):
                    t = time.perf_counter()
                    try:
                        code, body = await conn.get(target)
                        if code != 200:
                            errors.append(f"{code} {target}")
                        elif target.endswith(running) and (
                            b'"status":"done"' in body or b'"status":"failed"' in body
                        ):
                            stop.set()
                    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                        errors.append(f"{type(exc).__name__} {target}")
                        conn.close()
                        conn = _Conn(host, int(port), token)
                    lat.append(time.perf_counter() - t)
                await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t_round)))
        finally:
            conn.close()

    async def timer() -> None:
        await asyncio.sleep(limit_s)
        stop.set()

    t0 = time.monotonic()
    tick = asyncio.create_task(timer())
    await asyncio.gather(*(one(k) for k in range(n)))
    tick.cancel()
    ms = np.array(lat) * 1e3
    return {
        "clients": n,
        "interval_s": interval,
        "requests": len(lat),
        "seconds": round(time.monotonic() - t0, 1),
        "req_per_s": round(len(lat) / (time.monotonic() - t0), 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p90_ms": round(float(np.percentile(ms, 90)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(float(ms.max()), 1),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
    }


def _serve(exe: list[str], data: Path, root: Path, *extra: str) -> tuple[str, subprocess.Popen]:
    """Start `tsphot serve` on a free loopback port; wait until it answers."""
    port = _port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            *exe,
            "serve",
            "--data-dir",
            str(data),
            "--data-root",
            str(root),
            "--port",
            str(port),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(600):
        try:
            httpx.get(url + "/api/v1/health", timeout=1)
            return url, server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("tsphot serve did not start")


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (and theirs, once waited for)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _cli_run(exe: list[str], night: Path, out: Path) -> tuple[float, float]:
    """`tsphot run` of the night into out (removed first); its wall and CPU seconds (the CLI
    and its frame-measuring processes)."""
    shutil.rmtree(out, ignore_errors=True)
    t, c = time.monotonic(), _children_cpu()
    subprocess.run(
        [*exe, "run", "--config", str(night / "tsphot.toml"), "--out", str(out), "--quiet"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.monotonic() - t, _children_cpu() - c


def _tree_cpu(server: psutil.Process) -> float:
    """CPU seconds of the server and of its run workers it has reaped (with their children)."""
    t = server.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _api_run(url: str, h: dict, body: dict, server: psutil.Process) -> tuple[str, float, float]:
    """The night through the API: from the POST to the client seeing `done`; the run's id, the
    wall seconds and the CPU seconds of the server and the run's worker (once reaped)."""
    c = _tree_cpu(server)
    t = time.monotonic()
    r = httpx.post(url + RES, headers=h, json=body, timeout=60)
    r.raise_for_status()
    rid = r.json()["id"]
    run = wait_done(url, h, rid)
    wall = time.monotonic() - t
    if run["status"] != "done":
        raise SystemExit(f"the API run failed: {run['reason']}")
    # the worker's CPU reaches the server's children times when the dispatcher reaps it
    for _ in range(100):
        if not server.children():
            break
        time.sleep(0.1)
    return rid, wall, _tree_cpu(server) - c


def _loadavg() -> list[float]:
    with open("/proc/loadavg") as fh:
        return [float(v) for v in fh.read().split()[:3]]


def main() -> None:
    """Run the measurements and print them as JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument(
        "--repeats", type=int, default=3, help="CLI and API runs, alternated, for the overhead"
    )
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--interval", type=float, default=1.0, help="each client's poll period (s)")
    p.add_argument("--run-nice", type=int, default=10, help="run workers' niceness in step 4")
    p.add_argument("--work", help="work folder (default: a temporary one, removed)")
    a = p.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="tsphot-bench-api-"))
    out: dict = {"frames": a.frames, "size": a.size, "loadavg_start": _loadavg()}
    try:
        night = work / "night"
        if not (night / "tsphot.toml").exists():
            t = time.monotonic()
            synthetic.simulate_night(
                night, synthetic.SimConfig(n_frames=a.frames, size=(a.size,) * 2)
            )
            out["simulate_s"] = round(time.monotonic() - t, 1)
        exe = [sys.executable, "-m", "tsphot.cli"]
        data = work / "data"
        shutil.rmtree(data, ignore_errors=True)
        token = subprocess.run(
            [*exe, "users", "--data-dir", str(data), "add", "bench"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()[0]
        h = {"Authorization": f"Bearer {token}"}
        body = body_for(night)
        # the CLI and the API alternate, so that a change in the machine's load falls on both
        cli_s: list[float] = []
        api_s: list[float] = []
        cli_cpu: list[float] = []
        api_cpu: list[float] = []
        url, server = _serve(exe, data, work)
        try:
            ps = psutil.Process(server.pid)
            for k in range(a.repeats):
                wall, cpu = _cli_run(exe, night, work / "cli")
                cli_s.append(wall)
                cli_cpu.append(cpu)
                first, wall, cpu = _api_run(url, h, body, ps)
                api_s.append(wall)
                api_cpu.append(cpu)
                print(
                    f"repeat {k + 1}: tsphot run {cli_s[-1]:.2f} s ({cli_cpu[-1]:.1f} s CPU), "
                    f"API {api_s[-1]:.2f} s ({api_cpu[-1]:.1f} s CPU)",
                    flush=True,
                )
        finally:
            server.terminate()
            server.wait(timeout=60)

        def pct(a_: list[float], b_: list[float]) -> float:
            return round(100 * (float(np.median(a_)) / float(np.median(b_)) - 1), 1)

        out["tsphot_run_s"] = [round(v, 2) for v in cli_s]
        out["api_run_s"] = [round(v, 2) for v in api_s]
        out["api_overhead_pct_median"] = pct(api_s, cli_s)
        out["api_overhead_pct_min"] = round(100 * (min(api_s) / min(cli_s) - 1), 1)
        out["tsphot_run_cpu_s"] = [round(v, 1) for v in cli_cpu]
        out["api_run_cpu_s"] = [round(v, 1) for v in api_cpu]
        out["api_cpu_overhead_pct_median"] = pct(api_cpu, cli_cpu)
        out["loadavg_after_overhead"] = _loadavg()

        url, server = _serve(exe, data, work, "--run-nice", str(a.run_nice))
        try:
            r = httpx.post(url + RES, headers=h, json=body, timeout=60)
            r.raise_for_status()
            second = r.json()["id"]
            out["polling"] = asyncio.run(
                clients(url, token, second, first, a.clients, a.interval, 900)
            )
            out["polling"]["run_nice"] = a.run_nice
            wait_done(url, h, second)
        finally:
            server.terminate()
            server.wait(timeout=60)
        out["loadavg_end"] = _loadavg()
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
