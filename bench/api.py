"""REST API latency and throughput, against the same queries run directly in the same run.

* api: the API served by uvicorn in a subprocess (real HTTP on 127.0.0.1), 50 concurrent
  keep-alive clients (asyncio), each with a viewer's bearer token: state-as-of at random
  times (``GET /instruments/{id}/state?at=``: the twin's estimates and the last value of
  every channel), then a telemetry-range query over a random window
  (``GET /instruments/{id}/telemetry?start=&end=&channels=``).
* direct: the same store functions (``estimates_as_of`` + ``as_of``; ``query_range``) with
  the same parameters over psycopg connections, from 50 concurrent threads: what the
  database and the store code take without HTTP, authentication and JSON.

The instrument holds 100 channels at 10 Hz for some hours (written with the store's batch
insert) and a twin estimate of five quantities every second.

Run from the repository root: ``python bench/api.py [--quick]``. It uses
``BEAMTWIN_TEST_DATABASE_URL``, else PostgreSQL on 127.0.0.1:5432, else an embedded one; it
creates and drops a throwaway database. The last lines are the figures::

    api_asof_p99_ms, direct_asof_p99_ms, api_asof_p99_ratio, api_asof_rps, api_range_p99_ratio,
    and with ``--streams N`` (default 60): the state-as-of p99 and rate of a second run beside
    N open state streams (one event a second each), and its p99 over the run without streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import provenance_store as store  # noqa: E402
from beamtwin_cli.embedded import throwaway_database  # noqa: E402

INSTRUMENT = "bench-stem"
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
T0_US = int((T0 - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 1_000_000
N_CHANNELS = 100
RATE_HZ = 10
QUANTITIES = ("defocus", "energy", "convergence_semiangle", "probe_current", "camera_length")
CLIENTS = 50
#: Channels and width of the telemetry-range query.
RANGE_CHANNELS = [f"detector.aux_{c:03d}" for c in (0, 1, 2, 3)]
RANGE_WIDTH = timedelta(minutes=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fill(engine: sa.Engine, hours: float) -> str:
    """The instrument, its channels, telemetry and twin estimates; returns a viewer's token."""
    decls = [
        store.ChannelDeclaration(
            name=f"detector.aux_{c:03d}",
            subsystem="detector",
            quantity="dimensionless",
            canonical_unit="1",
            source_unit="1",
            lower=None,
            upper=None,
            calibration=None,
        )
        for c in range(N_CHANNELS)
    ]
    with engine.begin() as conn:
        store.register_instrument(conn=conn, instrument=store.InstrumentIn(id=INSTRUMENT))
        chans = store.ensure_channels(
            conn=conn, instrument_id=INSTRUMENT, declarations=decls, valid_from=T0
        )
        store.add_api_user(conn=conn, name="bench-viewer", role="viewer")
        store.grant_instrument(conn=conn, name="bench-viewer", instrument_id=INSTRUMENT)
        token = store.create_api_token(conn=conn, name="bench-viewer").token
    ids = np.array([chans[d.name].id for d in decls], dtype=np.int32)
    seconds = int(hours * 3600)
    block_s = 60  # one minute of every channel per batch
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    total = 0
    for lo in range(0, seconds, block_s):
        n = min(block_s, seconds - lo) * RATE_HZ
        times = T0_US + lo * 1_000_000 + np.arange(n, dtype=np.int64) * (1_000_000 // RATE_HZ)
        batch = store.SampleBatch(
            channel_id=np.repeat(ids, n),
            source_time_us=np.tile(times, len(ids)),
            ingest_time_us=np.tile(times + 2_000, len(ids)),
            value=1.0 + 1e-3 * rng.standard_normal(n * len(ids)),
            seq=np.tile(np.arange(n, dtype=np.int64), len(ids)),
        )
        with engine.begin() as conn:
            total += store.insert_samples(conn=conn, batch=batch)
    with engine.begin() as conn:
        for lo in range(0, seconds, 600):
            store.insert_estimates(
                conn=conn,
                estimates=[
                    store.EstimateRecord(
                        instrument_id=INSTRUMENT,
                        quantity=q,
                        time=T0 + timedelta(seconds=s),
                        value=1.0 + s * 1e-3,
                        std=0.1,
                        unit="1",
                        calibration_version="cal-1",
                        twin_version="bench",
                    )
                    for s in range(lo, min(lo + 600, seconds))
                    for q in QUANTITIES
                ],
            )
        conn.execute(sa.text("ANALYZE"))
    print(
        f"# filled {total:,} samples ({N_CHANNELS} channels at {RATE_HZ} Hz for {hours:g} h) "
        f"in {time.perf_counter() - t:.1f} s"
    )
    return token


def random_at(rng: random.Random, hours: float) -> datetime:
    return T0 + timedelta(seconds=rng.uniform(0, hours * 3600))


def random_window(rng: random.Random, hours: float) -> tuple[datetime, datetime]:
    start = T0 + timedelta(seconds=rng.uniform(0, hours * 3600 - RANGE_WIDTH.total_seconds()))
    return start, start + RANGE_WIDTH


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def summary(name: str, latencies: list[float], elapsed: float) -> tuple[float, float]:
    """p99 [ms] and requests per second; prints p50/p99 and the rate."""
    ms = np.array(latencies) * 1e3
    p50, p99 = np.percentile(ms, [50, 99])
    rps = len(ms) / elapsed
    print(f"# {name}: {len(ms)} requests, {rps:,.0f}/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    return float(p99), rps


# ---------------------------------------------------------------------------- API over HTTP
async def _stream(client: httpx2.AsyncClient, path: str, opened: asyncio.Event) -> int:
    """Read a state stream until cancelled; the number of events read."""
    events = 0
    async with client.stream("GET", path) as response:
        if response.status_code != 200:
            raise SystemExit(f"{path}: {response.status_code}")
        async for line in response.aiter_lines():
            if line.startswith("event: state"):
                events += 1
                opened.set()
    return events


async def _http_load(
    base: str,
    token: str,
    make_url: Callable[[random.Random], str],
    seconds: float,
    streams: int = 0,
    stream_path: str = "",
) -> tuple[list[float], float]:
    """``CLIENTS`` clients asking ``make_url`` for ``seconds``, beside ``streams`` open state
    streams (``stream_path``) on connections of their own."""
    limits = httpx2.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    stream_limits = httpx2.Limits(max_connections=streams or 1, max_keepalive_connections=0)
    async with (
        httpx2.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as client,
        httpx2.AsyncClient(
            base_url=base, headers=headers, limits=stream_limits, timeout=60
        ) as stream_client,
    ):
        opened = [asyncio.Event() for _ in range(streams)]
        readers = [asyncio.create_task(_stream(stream_client, stream_path, ev)) for ev in opened]
        await asyncio.gather(*(ev.wait() for ev in opened))
        # Open the connections first, so the measurement sees keep-alive requests only.
        await asyncio.gather(*(client.get("/healthz") for _ in range(CLIENTS)))
        deadline = time.perf_counter() + seconds

        async def one_client(k: int) -> None:
            rng = random.Random(k)
            while time.perf_counter() < deadline:
                url = make_url(rng)
                t = time.perf_counter()
                response = await client.get(url)
                latencies.append(time.perf_counter() - t)
                if response.status_code != 200:
                    raise SystemExit(f"{url}: {response.status_code} {response.text[:300]}")

        started = time.perf_counter()
        await asyncio.gather(*(one_client(k) for k in range(CLIENTS)))
        elapsed = time.perf_counter() - started
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return latencies, elapsed


# ---------------------------------------------------------------------------- direct
def _thread_load(
    engine: sa.Engine, query: Callable[[sa.Connection, random.Random], object], seconds: float
) -> tuple[list[float], float]:
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
    barrier = threading.Barrier(CLIENTS + 1)
    deadline = [0.0]

    def worker(k: int) -> None:
        rng = random.Random(k)
        with engine.connect() as conn:
            barrier.wait()
            while time.perf_counter() < deadline[0]:
                t = time.perf_counter()
                query(conn, rng)
                conn.rollback()
                latencies[k].append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(CLIENTS)]
    for th in threads:
        th.start()
    deadline[0] = time.perf_counter() + seconds
    started = time.perf_counter()
    barrier.wait()
    for th in threads:
        th.join()
    return [x for per in latencies for x in per], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of under a minute")
    parser.add_argument("--hours", type=float, default=None, help="hours of telemetry")
    parser.add_argument("--seconds", type=float, default=None, help="length of each load phase")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument(
        "--streams",
        type=int,
        default=60,
        help="state streams (one event a second) open beside a second state-as-of run; 0: none",
    )
    args = parser.parse_args()
    hours = args.hours or (0.25 if args.quick else 4.0)
    seconds = args.seconds or (6.0 if args.quick else 20.0)

    database = contextlib.ExitStack()
    url = database.enter_context(throwaway_database())
    server: subprocess.Popen[bytes] | None = None
    try:
        store.upgrade_schema(url)
        engine = store.create_store_engine(url, pool_size=CLIENTS, max_overflow=0)
        token = fill(engine, hours)

        # ---- the API under uvicorn, in its own process(es)
        port = free_port()
        env = {**os.environ, "BEAMTWIN_DATABASE_URL": url}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "api:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(args.workers),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env=env,
            cwd=ROOT,
        )
        api = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx2.get(f"{api}/readyz", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"the API exited with {server.returncode}")
            time.sleep(0.1)
        else:
            raise SystemExit("the API did not become ready")

        state_path = f"/api/v1/instruments/{INSTRUMENT}/state"
        range_path = f"/api/v1/instruments/{INSTRUMENT}/telemetry"
        channels = ",".join(RANGE_CHANNELS)

        def asof_url(rng: random.Random) -> str:
            return f"{state_path}?at={iso(random_at(rng, hours))}"

        def range_url(rng: random.Random) -> str:
            start, end = random_window(rng, hours)
            return f"{range_path}?start={iso(start)}&end={iso(end)}&channels={channels}"

        def asof_direct(conn: sa.Connection, rng: random.Random) -> object:
            at = random_at(rng, hours)
            estimates = store.estimates_as_of(conn=conn, instrument_id=INSTRUMENT, at=at)
            return estimates, store.as_of(conn=conn, instrument_id=INSTRUMENT, at=at)

        def range_direct(conn: sa.Connection, rng: random.Random) -> object:
            start, end = random_window(rng, hours)
            return store.query_range(
                conn=conn,
                instrument_id=INSTRUMENT,
                start=start,
                end=end,
                channels=RANGE_CHANNELS,
                max_points=2000,
            )

        # Warm both paths (caches, pools, first-request imports) before measuring.
        asyncio.run(_http_load(api, token, asof_url, 1.0))
        _thread_load(engine, asof_direct, 1.0)

        lat, elapsed = asyncio.run(_http_load(api, token, asof_url, seconds))
        api_asof_p99, api_asof_rps = summary("api state-as-of", lat, elapsed)
        lat, elapsed = _thread_load(engine, asof_direct, seconds)
        direct_asof_p99, _ = summary("direct state-as-of", lat, elapsed)
        if args.streams:
            lat, elapsed = asyncio.run(
                _http_load(
                    api,
                    token,
                    asof_url,
                    seconds,
                    streams=args.streams,
                    stream_path=f"{state_path}/stream?interval=1",
                )
            )
            streams_p99, streams_rps = summary(
                f"api state-as-of beside {args.streams} streams", lat, elapsed
            )
        lat, elapsed = asyncio.run(_http_load(api, token, range_url, seconds))
        api_range_p99, _ = summary("api telemetry range", lat, elapsed)
        lat, elapsed = _thread_load(engine, range_direct, seconds)
        direct_range_p99, _ = summary("direct telemetry range", lat, elapsed)
        engine.dispose()

        print(f"api_asof_p99_ms: {api_asof_p99:.1f}")
        print(f"direct_asof_p99_ms: {direct_asof_p99:.1f}")
        print(f"api_asof_p99_ratio: {api_asof_p99 / direct_asof_p99:.2f}")
        print(f"api_asof_rps: {api_asof_rps:.0f}")
        print(f"api_range_p99_ratio: {api_range_p99 / direct_range_p99:.2f}")
        if args.streams:
            print(f"api_asof_p99_ms_with_{args.streams}_streams: {streams_p99:.1f}")
            print(f"api_asof_rps_with_{args.streams}_streams: {streams_rps:.0f}")
            print(f"api_asof_p99_ratio_streams_vs_none: {streams_p99 / api_asof_p99:.2f}")
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        database.close()  # drops the database (and stops an embedded server)


if __name__ == "__main__":
    main()
