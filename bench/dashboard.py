"""Dashboard timings in headless Chromium (Debian's ``chromium`` under Playwright): the
instrument page over a week of 100-channel telemetry, and one zoom step of its chart, against
a reference measured in the same run on the same data.

The scenario is bench/report.py's: one instrument, 100 channels sampled at 10 Hz for 7 days,
written as the 1-minute and 1-hour rollups of the full week (plus raw samples at the period's
ends and around injected gaps, and the twin's flags), served by the API's own app under uvicorn
in this process. A week on the page reads the rollups (``bucket=auto`` picks them).

Printed:
- ``dashboard_instrument_page_load_ms``: from navigating to the instrument page (signed in,
  the week in view, its three default channels) until the charts are drawn (target < 1500 ms);
- ``dashboard_zoom_ms``: one zoom step (the zoom-in button, then zoom-out) until the charts
  are drawn again with the new range (target < 300 ms);
- the reference ``telemetry_fetch_ms``: the same telemetry request the page makes, read by the
  browser's own ``fetch`` (what the page cannot beat), and the ratios to it.
Medians of ``--repeat`` runs (default 7).

Run from the repository root: ``python bench/dashboard.py [--quick]`` (``--quick``: 1 day). It
uses ``BEAMTWIN_TEST_DATABASE_URL``, else PostgreSQL on 127.0.0.1:5432, else an embedded one;
it creates and drops a throwaway database. Needs ``apt-get install chromium``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from pydantic import SecretStr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import report as week  # noqa: E402  (bench/report.py: the week of telemetry)

import provenance_store as store  # noqa: E402
from api import ApiSettings, api_server, create_app  # noqa: E402
from beamtwin_cli.embedded import throwaway_database  # noqa: E402

CHROMIUM = os.environ.get("BEAMTWIN_CHROMIUM", "/usr/bin/chromium")
INSTRUMENT = "bench-stem"
CHANNELS = ("gun.high_tension", "objective.lens_current", "holder.temperature")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def served(url: str) -> Iterator[str]:
    app = create_app(ApiSettings(database_url=SecretStr(url)))
    server = api_server(app, host="127.0.0.1", port=free_port(), log_level="warning")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("the API server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)
        loop.close()


def fill(url: str, days: int) -> str:
    """The week of bench/report.py (without its datasets) and an admin token."""
    store.upgrade_schema(url)
    engine = store.create_store_engine(url)
    try:
        decls = week.declarations()
        with engine.begin() as conn:
            store.register_instrument(
                conn=conn, instrument=store.InstrumentIn(id=INSTRUMENT, vendor="virtual")
            )
            chans = store.ensure_channels(
                conn=conn, instrument_id=INSTRUMENT, declarations=decls, valid_from=week.T0
            )
            store.add_api_user(conn=conn, name="bench", role="admin")
            token = store.create_api_token(conn=conn, name="bench").token
        names = [d.name for d in decls]
        ids = [chans[n].id for n in names]
        gaps = week.gaps_of(days)
        windows = week.raw_windows(days, gaps)
        t = time.perf_counter()
        week.write_rollups(engine, ids, days, windows)
        raw = week.write_raw(engine, ids, windows, gaps)
        n_flags = week.write_flags(engine, INSTRUMENT, days, gaps, names)
        print(
            f"# scale: {len(ids)} channels at {week.RATE_HZ} Hz for {days} day(s) as rollups, "
            f"{raw:,} raw samples, {n_flags} flags; written in {time.perf_counter() - t:.0f} s"
        )
    finally:
        engine.dispose()
    return token


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def measure(base: str, token: str, days: int, repeat: int) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    end = week.T0 + timedelta(days=days)
    span = (
        f"start={week.T0.isoformat().replace('+00:00', 'Z')}"
        f"&end={end.isoformat().replace('+00:00', 'Z')}&channels={','.join(CHANNELS)}"
    )
    page_url = f"{base}/ui/instruments/{INSTRUMENT}?{span}"
    drawn = '#charts[data-state="drawn"]'
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{base}/ui/signin")
        page.fill("#token", token)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/ui/instruments")
        page.goto(page_url)  # warm: the browser's cache holds the scripts, as for a user
        page.locator(drawn).wait_for()
        points = page.evaluate("document.querySelectorAll('figure.chart').length")
        label = page.inner_text("#range-label")
        loads = []
        for _ in range(repeat):
            t = time.perf_counter()
            page.goto(page_url)
            page.locator(drawn).wait_for()
            loads.append(time.perf_counter() - t)
        zooms = []
        for k in range(repeat):
            serial = int(page.get_attribute("#charts", "data-serial") or 0)
            t = time.perf_counter()
            page.click("#zoom-in" if k % 2 == 0 else "#zoom-out")
            page.wait_for_function(
                "(n) => { const c = document.querySelector('#charts');"
                " return c.dataset.state === 'drawn' && Number(c.dataset.serial) > n; }",
                arg=serial,
            )
            zooms.append(time.perf_counter() - t)
        # The reference: the page's own telemetry request, fetched and parsed in the page.
        query = f"{span}&bucket=auto&max_points=1000"
        fetches = []
        for _ in range(repeat):
            fetches.append(
                page.evaluate(
                    "async (u) => { const t = performance.now();"
                    " await (await fetch(u)).json(); return (performance.now() - t) / 1000; }",
                    f"/api/v1/instruments/{INSTRUMENT}/telemetry?{query}",
                )
            )
        browser.close()
    print(f"# page: {points} charts, {label}")
    return {
        "telemetry_fetch_ms": median_ms(fetches),
        "dashboard_instrument_page_load_ms": median_ms(loads),
        "dashboard_zoom_ms": median_ms(zooms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 day of telemetry")
    parser.add_argument("--repeat", type=int, default=7, help="runs of each timing")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    days = 1 if args.quick else 7
    with throwaway_database() as url:
        token = fill(url, days)
        with served(url) as base:
            figures = measure(base, token, days, args.repeat)
    ref = figures["telemetry_fetch_ms"]
    for name, value in figures.items():
        print(f"{name}: {value:.1f}")
    for name in ("dashboard_instrument_page_load_ms", "dashboard_zoom_ms"):
        print(f"{name.removesuffix('_ms')}_vs_telemetry_fetch: {figures[name] / ref:.1f}")
    print("# targets: page load < 1500 ms, zoom < 300 ms")


if __name__ == "__main__":
    main()
