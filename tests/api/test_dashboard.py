"""The web dashboard in a real browser (Debian's Chromium under Playwright) against the API
served by uvicorn on the session's PostgreSQL: sign-in, the live state, the twin's flags on the
timeline, datasets and corrections, grants, accessibility, and the screenshots of
docs/dashboard.md."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import sqlalchemy as sa

import provenance_store as store
from tests.api._browser import (
    DESKTOP,
    TABLET,
    axe_violations,
    chromium,
    dump,
    screenshot,
    sign_in,
)
from tests.api._datasets_support import add_dataset
from tests.api._serving import Served, serving
from tests.provenance_store._support import HIGH_TENSION, HOLDER_TEMPERATURE, STAGE_X, make_batch

if TYPE_CHECKING:  # the browser is imported when the tests run (they skip without it)
    from playwright.sync_api import Browser, BrowserContext, Page

    from workers import ExperimentWorker

pytestmark = pytest.mark.timeout(300)
VERDICTS = {"high_tension": "disagrees", "defocus": "consistent"}


@dataclass(frozen=True)
class Dash:
    live: str  # granted to every dashboard user
    hidden: str  # granted to nobody (admins see it)
    other: str  # granted to the stranger only
    tokens: dict[str, str]  # viewer, operator, auditor, admin, stranger
    names: dict[str, str]
    dataset: str  # on ``live``, verified (one field disagrees)
    hidden_dataset: str  # on ``hidden``


def _estimate(
    instrument_id: str, quantity: str, value: float, when: datetime
) -> store.EstimateRecord:
    return store.EstimateRecord(
        instrument_id=instrument_id,
        quantity=quantity,
        time=when,
        value=value,
        std=0.5,
        unit={
            "defocus": "Å",
            "energy": "eV",
            "holder_temperature": "K",
            "convergence_semiangle": "mrad",
        }.get(quantity, ""),
        calibration_version="cal-1",
        twin_version="test",
    )


@pytest.fixture(scope="module")
def dash(store_engine_api: sa.Engine) -> Dash:
    tag = secrets.token_hex(3)
    live, hidden, other = f"dash-stem-{tag}", f"dash-secret-{tag}", f"dash-other-{tag}"
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(hours=2)
    tokens: dict[str, str] = {}
    names: dict[str, str] = {}
    with store_engine_api.begin() as conn:
        for ident in (live, hidden, other):
            store.register_instrument(
                conn=conn, instrument=store.InstrumentIn(id=ident, vendor="Nion", model="U100")
            )
            store.ensure_channels(
                conn=conn,
                instrument_id=ident,
                declarations=[HIGH_TENSION, HOLDER_TEMPERATURE, STAGE_X],
                valid_from=start,
            )
            store.store_calibration(
                conn=conn, instrument_id=ident, version="cal-1", valid_from=start, body={"k": 1}
            )
        for role in ("viewer", "operator", "auditor", "admin", "stranger"):
            name = f"dash-{role}-{tag}"
            store.add_api_user(conn=conn, name=name, role="viewer" if role == "stranger" else role)
            if role == "stranger":
                store.grant_instrument(conn=conn, name=name, instrument_id=other)
            elif role != "admin":
                store.grant_instrument(conn=conn, name=name, instrument_id=live)
            tokens[role] = store.create_api_token(conn=conn, name=name).token
            names[role] = name
        chans = {i: store.get_channels(conn=conn, instrument_id=i) for i in (live, hidden)}
        # Two hours at 10 s on the live instrument with a 20-minute hole in the stage.
        times = np.arange(int(start.timestamp()), int(now.timestamp()), 10) * 1_000_000
        for ident in (live, hidden):
            c = chans[ident]
            for name, values in (
                ("gun.high_tension", 2e5 + np.sin(times / 6e8)),
                ("holder.temperature", 300.0 + 0.1 * np.cos(times / 3e8)),
            ):
                store.insert_samples(conn=conn, batch=make_batch(c[name].id, times, values))
            hole = (times < times[300] * 1) | (times > times[420])
            store.insert_samples(
                conn=conn,
                batch=make_batch(c["stage.x"].id, times[hole], 1e-9 * np.ones(int(hole.sum()))),
            )
        store.insert_estimates(
            conn=conn,
            estimates=[
                _estimate(i, q, v, now - timedelta(seconds=5))
                for i in (live, hidden)
                for q, v in (
                    ("defocus", 50.0),
                    ("energy", 2e5),
                    ("convergence_semiangle", 25.0),
                    ("holder_temperature", 300.1),
                )
            ],
        )
        store.insert_flags(
            conn=conn,
            flags=[
                store.FlagIn(
                    instrument_id=ident,
                    kind="drift",
                    quantity="defocus",
                    channel="holder.temperature",
                    time=now - timedelta(minutes=30),
                    end_time=None,
                    expected=1.0,
                    observed=2.0,
                    residual=1.0,
                    tolerance=0.5,
                    severity="warning",
                    twin_version="test",
                    calibration_version="cal-1",
                )
                for ident in (live, hidden)
            ],
        )
        dataset = add_dataset(conn, live, now - timedelta(minutes=40), VERDICTS)
        hidden_dataset = add_dataset(conn, hidden, now - timedelta(minutes=40), VERDICTS)
    return Dash(live, hidden, other, tokens, names, dataset, hidden_dataset)


@pytest.fixture(scope="module")
def served(database_url: str) -> Iterator[Served]:
    with serving(database_url) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture()
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport=DESKTOP)
    yield ctx
    ctx.close()


@pytest.fixture()
def page(context: BrowserContext) -> Page:
    return context.new_page()


# ---------------------------------------------------------------------------- sign-in
def test_sign_in_with_a_token_a_wrong_token_is_refused_and_sign_out(
    page: Page, served: Served, dash: Dash
) -> None:
    base = served.url
    page.goto(f"{base}/ui/datasets")
    assert "/ui/signin" in page.url  # not signed in: the sign-in form, which returns here
    page.fill("#token", "btk_not-a-token")
    with page.expect_response(f"{base}/ui/signin") as answer:
        page.click("button[type=submit]")
    assert answer.value.status == 401
    assert "invalid, expired or revoked" in page.inner_text("#signin-error")
    assert not [c for c in page.context.cookies() if c["name"] == "beamtwin_session"]

    page.fill("#token", dash.tokens["viewer"])
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/ui/datasets")
    assert dash.names["viewer"] in page.inner_text("#who")
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "beamtwin_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert not cookie["secure"]  # plain HTTP here; Secure behind TLS (test_cookies_are_secure...)
    assert dash.tokens["viewer"] not in cookie["value"]  # an opaque id, not the token
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it
    # The session reads the API with the token's role and grants.
    assert page.request.get(f"{base}/api/v1/me").json()["name"] == dash.names["viewer"]

    page.click("#signout")
    page.wait_for_url(f"{base}/ui/signin")
    assert page.request.get(f"{base}/api/v1/me").status == 401
    page.goto(f"{base}/ui/instruments")
    assert "/ui/signin" in page.url


def test_a_write_with_the_session_cookie_needs_its_csrf_token(
    page: Page, served: Served, dash: Dash
) -> None:
    base = served.url
    sign_in(page, base, dash.tokens["operator"], f"/ui/datasets/{dash.dataset}")
    url = f"{base}/api/v1/datasets/{dash.dataset}/snapshot/corrections"
    body = {"reason": "csrf probe", "fields": {"defocus": {"note": "probe"}}}
    refused = page.request.post(url, data=body)
    assert refused.status == 403 and "CSRF" in refused.json()["detail"]
    wrong = page.request.post(url, data=body, headers={"X-CSRF-Token": "forged"})
    assert wrong.status == 403
    csrf = page.get_attribute('meta[name="csrf-token"]', "content")
    assert csrf
    # Sign-out and the audit verification are writes too.
    assert page.request.post(f"{base}/ui/signout").status == 403
    assert page.request.post(f"{base}/ui/audit/verify").status == 403
    # Reads need no CSRF token; a bearer token still works without any cookie.
    assert page.request.get(f"{base}/api/v1/datasets/{dash.dataset}").ok


def test_cookies_are_secure_behind_tls(served: Served, dash: Dash) -> None:
    from fastapi.testclient import TestClient

    # The sign-in form's cookie and the session cookie over https (as behind a TLS proxy).
    # No lifespan (no ``with``): the app's end would close the served app's streams.
    client = TestClient(served.app, base_url="https://dash.example")
    form = client.get("/ui/signin")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    assert "Secure" in form.headers["set-cookie"]
    signed = client.post(
        "/ui/signin",
        content=f"csrf={csrf.group(1)}&token={dash.tokens['viewer']}&next=/ui/datasets",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert signed.status_code == 303 and signed.headers["location"] == "/ui/datasets"
    session = [h for h in signed.headers.get_list("set-cookie") if "beamtwin_session=" in h]
    assert session and all(k in session[0] for k in ("Secure", "HttpOnly", "SameSite=strict")), (
        session
    )
    # An open redirect is refused: ``next`` stays on the dashboard.
    form = client.get("/ui/signin")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    away = client.post(
        "/ui/signin",
        content=f"csrf={csrf.group(1)}&token={dash.tokens['viewer']}&next=//evil.example/",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert away.headers["location"] == "/ui/instruments"


def test_the_sign_in_form_needs_its_csrf_token(served: Served, dash: Dash) -> None:
    from fastapi.testclient import TestClient

    client = TestClient(served.app)
    forged = client.post(
        "/ui/signin",
        content=f"token={dash.tokens['viewer']}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert forged.status_code == 403
    assert "beamtwin_session" not in forged.headers.get("set-cookie", "")


# ---------------------------------------------------------------------------- live state
def test_the_live_state_changes_within_three_seconds_of_new_telemetry(
    page: Page, served: Served, dash: Dash, store_engine_api: sa.Engine
) -> None:
    sign_in(page, served.url, dash.tokens["viewer"])
    card = page.locator(f'article[data-instrument="{dash.live}"]')
    defocus = card.locator('tr[data-quantity="defocus"] td.value')
    defocus.wait_for()
    assert defocus.inner_text() == "50"
    assert "± 0.5" in card.locator('tr[data-quantity="defocus"] td.std').inner_text()
    # An open flag, and the telemetry's age: each filled by its own fetch (wait for them).
    card.locator(".flags-box", has_text="drift of defocus").wait_for()
    card.locator(".telemetry-age", has_text=" old").wait_for()
    # New telemetry (a sample of the holder temperature, as the ingest worker stores it) and
    # the twin's estimate from it (as the twin worker stores it).
    now = datetime.now(UTC)
    with store_engine_api.begin() as conn:
        channel = store.get_channels(conn=conn, instrument_id=dash.live)["holder.temperature"]
        store.insert_samples(
            conn=conn,
            batch=make_batch(channel.id, np.array([int(now.timestamp() * 1e6)]), np.array([300.2])),
        )
        store.insert_estimates(conn=conn, estimates=[_estimate(dash.live, "defocus", 73.25, now)])
    written = time.monotonic()
    page.wait_for_function(
        "(sel) => document.querySelector(sel)?.textContent === '73.25'",
        arg=f'article[data-instrument="{dash.live}"] tr[data-quantity="defocus"] td.value',
        timeout=3000,
    )
    assert time.monotonic() - written < 3.0
    age = card.locator('tr[data-quantity="defocus"] td.age').inner_text()
    assert re.fullmatch(r"[0-3] s", age), age
    fresh = card.locator(".telemetry-age").inner_text()
    assert re.fullmatch(r"[0-3] s old", fresh), fresh


# ---------------------------------------------------------------------------- flags
@pytest.fixture(scope="module")
def faulted(store_engine_api: sa.Engine, dash: Dash) -> tuple[str, list[store.FlagRecord]]:
    """A virtual microscope whose defocus steps by 100 Å after 60 s, followed by the real twin
    worker: an instrument granted to the dashboard's viewer, with the worker's flags."""
    import simulations
    import twin
    from tests.workers.test_twin_worker import SETTINGS, STEP_AT_S, T0, _clock, _store_telemetry
    from workers import TwinWorker

    calibration = twin.Calibration()
    fault = simulations.state_step(calibration, "defocus", at_s=STEP_AT_S, delta=100.0)
    from tests.ingest._support import T0_NS

    microscope = simulations.VirtualMicroscope(
        instrument_id="virtual-stem-dash", rate_hz=10.0, seed=7, start_ns=T0_NS, faults=[fault]
    )
    instrument_id = _store_telemetry(store_engine_api, microscope.generate(1200))
    worker = TwinWorker(
        SETTINGS, engine=store_engine_api, instrument_ids=[instrument_id], clock_s=_clock
    )
    while worker.run_once():
        pass
    with store_engine_api.begin() as conn:
        store.grant_instrument(conn=conn, name=dash.names["viewer"], instrument_id=instrument_id)
        flags = store.query_flags(conn=conn, instrument_id=instrument_id)
    assert T0 is not None
    return instrument_id, flags


def test_a_fault_of_the_virtual_microscope_is_a_flag_on_the_timeline(
    page: Page, served: Served, dash: Dash, faulted: tuple[str, list[store.FlagRecord]]
) -> None:
    instrument_id, flags = faulted
    drift = [f for f in flags if f.kind == "drift" and f.channel == "objective.lens_current"]
    assert drift, dump(flags)
    sign_in(page, served.url, dash.tokens["viewer"])
    page.goto(
        f"{served.url}/ui/instruments/{instrument_id}?channels=objective.lens_current&span=900"
    )
    charts = page.locator('#charts[data-state="drawn"]')
    charts.wait_for()
    assert int(charts.get_attribute("data-flags") or 0) >= 1
    table = page.inner_text("#flags")
    assert "drift" in table and "objective.lens_current" in table
    # The flag is drawn on the chart's time axis: the plot's pixels at its time are the
    # flags' orange.
    figure = page.locator('figure[data-channel="objective.lens_current"]')
    xs = [float(x) for x in (figure.get_attribute("data-flag-x") or "").split(",") if x]
    assert xs
    rgba = page.evaluate(
        """([x]) => {
            const canvas = document.querySelector(
                'figure[data-channel="objective.lens_current"] canvas');
            const y = Math.round(canvas.height * 0.5);
            return Array.from(canvas.getContext("2d").getImageData(Math.round(x), y, 1, 1).data);
        }""",
        [xs[0]],
    )
    red, green, blue, _ = rgba
    assert red > 150 and 60 < green < 160 and blue < 90, rgba
    screenshot(page, "instrument-flag")


# ---------------------------------------------------------------------------- forecasts
@pytest.fixture()
def forecast_worker(store_engine_api: sa.Engine, tmp_path: Path) -> Iterator[ExperimentWorker]:
    """The real experiment worker, for forecast jobs only, on a dask LocalCluster; the test
    runs it until idle once the page queued its job."""
    from distributed import Client, LocalCluster

    from workers import ExperimentSettings, ExperimentWorker

    with store_engine_api.begin() as conn:  # forecasts other tests left queued are not ours
        while (
            left := store.claim_job(
                conn=conn, worker="dash-drain", lease_seconds=60, kinds=["forecast"]
            )
        ) is not None:
            store.fail_job(conn=conn, job_id=left.id, worker="dash-drain", error="drained")
    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0"
    )
    client = Client(cluster)
    settings = ExperimentSettings(
        artifact_root=str(tmp_path / "artifacts"), experiment_heartbeat_s=0.2
    )
    try:
        yield ExperimentWorker(
            settings, engine=store_engine_api, client=client, name="dash-fc", kinds=["forecast"]
        )
    finally:
        client.close()
        cluster.close()


def test_an_operator_asks_for_a_forecast_and_its_bands_are_drawn_ahead_of_the_data(
    browser: Browser,
    page: Page,
    served: Served,
    dash: Dash,
    store_engine_api: sa.Engine,
    forecast_worker: ExperimentWorker,
) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    sign_in(page, served.url, dash.tokens["operator"])
    page.goto(f"{served.url}/ui/instruments/{dash.live}?channels=gun.high_tension&span=7200")
    page.locator('#charts[data-state="drawn"]').wait_for()
    page.select_option("#fc-channel", "gun.high_tension")
    assert page.inner_text("#fc-tolerance-unit") == "V"
    page.fill("#fc-horizon", "60")
    page.fill("#fc-tolerance", "2")
    page.fill("#fc-window", "30")  # 180 samples at 10 s: the fit takes seconds
    page.click("#fc-go")
    # Queued on the first ask (202): the page says it is fitting and polls the job.
    fitting = page.locator('#fc-status[data-state="fitting"]')
    fitting.wait_for()
    assert "fitting…" in fitting.inner_text()
    job_id = page.get_attribute("#fc-status", "data-job") or ""
    assert job_id.startswith("job-")
    forecast_worker.run_until_idle(timeout=240)
    page.locator('#fc-status[data-state="drawn"]').wait_for(timeout=30_000)
    status = page.inner_text("#fc-status")
    assert "P(within ±2 V for 60 min) = " in status, status
    figure = page.locator(f'figure[data-channel="gun.high_tension"][data-forecast="{job_id}"]')
    figure.wait_for()
    # The chart's own uPlot: the forecast's band series hold values from its origin to the
    # horizon, beyond the last data time, with the 5 % quantile below the 95 %.
    drawn = page.evaluate(
        """() => {
            const u = document.querySelector('figure[data-channel="gun.high_tension"]').plot;
            const col = (label) => u.data[u.series.findIndex((s) => s.label === label)];
            const xs = u.data[0], mean = col("mean"), lo = col("forecast 5 %"),
                  hi = col("forecast 95 %");
            const at = (ys) => xs.filter((_, i) => ys[i] !== null && ys[i] !== undefined);
            return {
                lastData: Math.max(...at(mean)), fx: at(lo), hx: at(hi),
                ordered: xs.every((_, i) => lo[i] === null || lo[i] < hi[i]),
                bands: u.bands.map((b) => b.series.map((i) => u.series[i].label)),
                xMax: u.scales.x.max,
            };
        }"""
    )
    with store_engine_api.connect() as conn:
        job = store.get_job(conn=conn, job_id=job_id)
    assert job is not None and job.kind == "forecast" and job.status == "succeeded"
    assert job.owner == dash.names["operator"]
    result = page.evaluate(
        "(id) => fetch(`/api/v1/jobs/${id}`).then((r) => r.json()).then((j) => j.result)", job_id
    )
    origin = datetime.fromisoformat(result["origin"]).timestamp()
    # The origin is the window's last point, the window ending at the last sample rounded
    # down to the minute: the first horizon (a minute) may fall within the data's last minute.
    assert len(drawn["fx"]) == 13 and drawn["fx"] == drawn["hx"], drawn
    assert min(drawn["fx"]) > origin and drawn["lastData"] - origin < 71, (drawn, origin)
    assert len([x for x in drawn["fx"] if x > drawn["lastData"]]) >= 12, drawn
    assert max(drawn["fx"]) == pytest.approx(origin + 3600, abs=1e-3), drawn
    assert drawn["xMax"] >= max(drawn["fx"]) and drawn["ordered"], drawn
    assert ["forecast 95 %", "forecast 5 %"] in drawn["bands"]
    assert ["forecast 75 %", "forecast 25 %"] in drawn["bands"]
    assert not errors, errors
    screenshot(page, "instrument-forecast")
    violations = axe_violations(page)
    assert not violations, dump(violations)
    # A viewer sees the stored forecast, with any tolerance (answered from the same fit); a
    # forecast of data nobody asked for (another window) is a clear note, not a job.
    viewer_ctx = browser.new_context(viewport=DESKTOP)
    try:
        viewer = viewer_ctx.new_page()
        sign_in(viewer, served.url, dash.tokens["viewer"])
        viewer.goto(f"{served.url}/ui/instruments/{dash.live}?channels=gun.high_tension")
        viewer.locator('#charts[data-state="drawn"]').wait_for()
        viewer.fill("#fc-tolerance", "2")
        viewer.fill("#fc-window", "30")
        viewer.click("#fc-go")
        viewer.locator('#fc-status[data-state="drawn"]').wait_for()
        assert viewer.get_attribute("#fc-status", "data-job") == job_id
        viewer.fill("#fc-tolerance", "3")
        viewer.click("#fc-go")
        viewer.locator('#fc-status[data-state="drawn"]', has_text="±3 V").wait_for()
        assert viewer.get_attribute("#fc-status", "data-job") == job_id
        viewer.fill("#fc-window", "40")
        viewer.click("#fc-go")
        viewer.locator('#fc-status[data-state="refused"]').wait_for()
        assert "an operator or admin must ask first" in viewer.inner_text("#fc-status")
    finally:
        viewer_ctx.close()


# ---------------------------------------------------------------------------- datasets
def test_a_dataset_page_shows_its_verdicts_and_a_correction_makes_a_new_version(
    page: Page, served: Served, dash: Dash, store_engine_api: sa.Engine
) -> None:
    sign_in(page, served.url, dash.tokens["operator"], f"/ui/datasets/{dash.dataset}")
    fields = page.locator('#fields[data-state="ready"]')
    fields.wait_for()
    row = page.locator("#fields tr", has_text="high_tension")
    assert "disagrees" in row.inner_text()
    assert "consistent" in page.locator("#fields tr", has_text="defocus").inner_text()
    before = int(fields.get_attribute("data-version") or 0)
    page.select_option("#correct-field", "high_tension")
    page.select_option("select[name=verdict]", "consistent")
    page.fill("input[name=reason]", "the file's HT was read in kV")
    page.click("#correction button[type=submit]")
    page.wait_for_function(
        f"() => document.querySelector('#fields')?.dataset.version === '{before + 1}'"
    )
    page.locator("#correction-result", has_text="Stored version").wait_for()
    assert "consistent" in page.locator("#fields tr", has_text="high_tension").inner_text()
    page.locator("#history", has_text="the file's HT was read in kV").wait_for()
    history = page.inner_text("#history")
    assert "the file's HT was read in kV" in history and dash.names["operator"] in history
    with store_engine_api.connect() as conn:
        current = store.current_snapshot(conn=conn, dataset_id=dash.dataset)
    assert current is not None and current.version == before + 1
    assert current.actor == dash.names["operator"]
    assert current.body["fields"]["high_tension"]["verdict"] == "consistent"


def test_viewers_get_no_correction_form_and_their_writes_are_refused(
    page: Page, served: Served, dash: Dash
) -> None:
    sign_in(page, served.url, dash.tokens["viewer"], f"/ui/datasets/{dash.dataset}")
    page.locator('#fields[data-state="ready"]').wait_for()
    assert page.locator("#correction").count() == 0
    csrf = page.get_attribute('meta[name="csrf-token"]', "content") or ""
    answer = page.request.post(
        f"{served.url}/api/v1/datasets/{dash.dataset}/snapshot/corrections",
        data={"reason": "not mine", "fields": {"defocus": {"note": "x"}}},
        headers={"X-CSRF-Token": csrf},
    )
    assert answer.status == 403  # the API's own role check, through the cookie


# ---------------------------------------------------------------------------- grants
def test_a_viewer_without_a_grant_never_sees_the_instrument_or_its_datasets(
    page: Page, served: Served, dash: Dash
) -> None:
    base = served.url
    bodies: list[str] = []

    def keep(response: object) -> None:
        from playwright.sync_api import Response

        assert isinstance(response, Response)
        if "text/event-stream" in (response.headers.get("content-type") or ""):
            return
        try:
            bodies.append(response.url + "\n" + response.text())
        except Exception:  # a redirect or an aborted request has no body
            bodies.append(response.url)

    page.on("response", keep)
    sign_in(page, base, dash.tokens["stranger"])
    page.locator(f'article[data-instrument="{dash.other}"] .state-box').wait_for()
    assert page.locator(f'article[data-instrument="{dash.live}"]').count() == 0
    page.goto(f"{base}/ui/datasets")
    page.locator('#datasets[data-state="ready"]').wait_for()
    assert dash.dataset not in page.inner_text("#datasets")
    page.goto(f"{base}/ui/audit")
    page.wait_for_load_state("networkidle")
    page.goto(f"{base}/ui/experiments")
    page.locator('#experiment-list[data-state="ready"]').wait_for()
    for path in (f"/ui/instruments/{dash.live}", f"/ui/datasets/{dash.dataset}"):
        answer = page.goto(f"{base}{path}")
        assert answer is not None and answer.status == 404
    for path in (
        f"/api/v1/instruments/{dash.live}",
        f"/api/v1/instruments/{dash.live}/state",
        f"/api/v1/instruments/{dash.live}/state/stream",
        f"/api/v1/datasets/{dash.dataset}",
        f"/api/v1/datasets?instrument={dash.live}",
    ):
        answer = page.request.get(f"{base}{path}")
        assert answer.status == 404 or answer.json() == [], (path, answer.status)
    page.remove_listener("response", keep)
    seen = "\n".join(
        b
        for b in bodies
        if not b.startswith(f"{base}/ui/instruments/{dash.live}")
        and not b.startswith(f"{base}/ui/datasets/{dash.dataset}")
    )
    for secret in (dash.live, dash.hidden, dash.dataset, dash.hidden_dataset):
        assert secret not in seen
    # The 404 pages name only what was asked for.
    assert len(bodies) > 5


# ---------------------------------------------------------------------------- audit
def test_auditors_verify_the_audit_log_and_see_the_latest_checkpoint(
    page: Page, served: Served, dash: Dash, store_engine_api: sa.Engine
) -> None:
    sign_in(page, served.url, dash.tokens["auditor"], "/ui/audit")
    page.locator('#checkpoint[data-state="ready"]').wait_for()
    assert re.search(r"Entries\s+\d+", page.inner_text("#checkpoint"))
    page.click("#verify")
    page.locator("#verify-result[data-verified]").wait_for(timeout=60_000)
    # The page says what `beamtwin audit verify` finds in this database (other tests of the
    # session tamper with records on purpose, so it need not be clean).
    with store_engine_api.connect() as conn:
        entries = store.all_audit_entries(conn=conn)
        checkpoints = store.list_checkpoints(conn=conn)
        findings = store.verify_records(conn=conn) + store.verify_access_records(conn=conn)
    # Signatures are checked against the served app's own key, as its verify button does.
    key = served.app.state.audit_signer.public_key
    findings = store.verify_audit_log(entries, checkpoints, public_key=key) + findings
    verified = page.get_attribute("#verify-result", "data-verified")
    assert verified == ("false" if findings else "true"), findings[:5]
    result = page.inner_text("#verify-result")
    assert ("Verified" in result) if not findings else (str(len(findings)) in result), result
    links = page.locator("#report-links a")
    assert links.count() == 3
    pdf = page.request.get(served.url + (links.first.get_attribute("href") or ""))
    assert pdf.ok and pdf.body().startswith(b"%PDF")


def test_viewers_cannot_verify_the_audit_log(page: Page, served: Served, dash: Dash) -> None:
    sign_in(page, served.url, dash.tokens["viewer"], "/ui/audit")
    assert page.locator("#verify").count() == 0
    csrf = page.get_attribute('meta[name="csrf-token"]', "content") or ""
    answer = page.request.post(f"{served.url}/ui/audit/verify", headers={"X-CSRF-Token": csrf})
    assert answer.status == 403


# ---------------------------------------------------------------------------- experiments
@pytest.fixture()
def experiment_worker(store_engine_api: sa.Engine, tmp_path: Path) -> Iterator[None]:
    """The real experiment worker on a dask LocalCluster, in a thread of the test process,
    running what the dashboard queues."""
    from distributed import Client, LocalCluster

    from workers import ExperimentSettings, ExperimentWorker

    settings = ExperimentSettings(
        artifact_root=str(tmp_path / "artifacts"),
        dask_workers=1,
        experiment_heartbeat_s=0.2,
        experiment_lease_s=30.0,
    )
    with store_engine_api.begin() as conn:  # jobs other tests left queued are not ours to run
        while (
            left := store.claim_job(
                conn=conn, worker="dash-drain", lease_seconds=60, kinds=["experiment"]
            )
        ) is not None:
            store.fail_job(conn=conn, job_id=left.id, worker="dash-drain", error="drained")
    # As ``connect_cluster`` makes it, with its HTTP server on a free port: other clusters
    # on this machine may hold dask's default 8787.
    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0"
    )
    client = Client(cluster)
    worker = ExperimentWorker(settings, engine=store_engine_api, client=client, name="dash")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)
        client.close()
        cluster.close()


def _fill_experiment(page: Page, instrument: str, seed: int) -> None:
    """A tiny HRTEM ensemble (SrTiO3, one cell wide, 40x40 pixels) on ``instrument``."""
    page.locator('#experiment-form[data-state="ready"]').wait_for()
    page.select_option("#f-instrument", instrument)
    page.select_option("#f-specimen", "srtio3-001")
    page.fill("#f-param-repeats", "1")
    page.fill("#f-param-layers", "2")
    page.select_option("#f-mode", "hrtem")
    page.fill("#f-sampling", "0.1")
    page.fill("#f-doses", "500, 50000")
    page.fill("#f-ensemble-size", "3")
    page.fill("#f-defocus-std", "20")
    page.fill("#f-seed", str(seed))
    page.fill("#f-override-defocus", "80")


def test_an_experiment_submitted_from_the_form_completes_and_its_image_is_shown(
    page: Page, served: Served, dash: Dash, store_engine_api: sa.Engine, experiment_worker: None
) -> None:
    import zarr

    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    sign_in(page, served.url, dash.tokens["operator"], "/ui/experiments")
    _fill_experiment(page, dash.live, seed := secrets.randbelow(2**40))
    # The cost estimate before submitting: the form's spec planned by the server.
    estimate = page.locator('#estimate[data-state="ok"]')
    estimate.wait_for()
    text = estimate.inner_text()
    assert "40×40 grid" in text and "3 ensemble members" in text and "Within the limits" in text
    seconds = float(estimate.get_attribute("data-seconds") or "nan")
    page.click("#submit-experiment")
    page.locator("#submit-result.ok, #submit-result.error").wait_for()
    assert page.get_attribute("#submit-result", "class") == "ok", page.inner_text("#submit-result")
    assert "Queued job-" in page.inner_text("#submit-result")
    job_id = page.get_attribute("#submit-result", "data-job")
    assert job_id and job_id.startswith("job-")
    # Progress from the server-sent events, to the end.
    detail = page.locator('#experiment-detail[data-status="succeeded"]')
    detail.wait_for(timeout=150_000)
    assert any(f"/api/v1/experiments/{job_id}/events" in u for u in requested), requested
    assert page.evaluate("document.querySelector('#exp-progress').value") == 1
    # The result image: the noise-free ensemble mean, as the PNG of the results route.
    image = page.locator("#result-image[data-loaded]")
    image.wait_for()
    size = page.evaluate(
        "() => { const i = document.querySelector('#result-image');"
        " return [i.naturalWidth, i.naturalHeight, i.getAttribute('src')]; }"
    )
    assert size[:2] == [40, 40], size
    assert size[2].endswith(f"/api/v1/experiments/{job_id}/results/image?format=png")
    # The dose slider: the lowest dose's Poisson realisation.
    page.focus("#dose")
    page.keyboard.press("Home")
    page.locator('#result-image[data-loaded][src*="image_dose"]').wait_for()
    assert page.inner_text("#dose-value") == "500 e/Å²"
    src = page.get_attribute("#result-image", "src") or ""
    assert src.endswith("/results/image_dose0?format=png"), src
    # The ensemble's standard deviation map, with its range read from the array.
    page.locator("#result-std[data-loaded]").wait_for()
    page.locator("#std-range[data-max]").wait_for()
    shown_max = float(page.get_attribute("#std-range", "data-max") or "nan")
    with store_engine_api.connect() as conn:
        job = store.get_job(conn=conn, job_id=job_id)
        results = {r.name: r for r in store.job_results(conn=conn, job_id=job_id)}
    assert job is not None and job.status == "succeeded"
    std = np.asarray(zarr.open_array(results["image_std"].uri, mode="r")[...])
    assert shown_max == pytest.approx(float(std.max()), rel=1e-12) and shown_max > 0
    # What was run is what the form said, by whom it was submitted.
    assert job.owner == dash.names["operator"] and job.instrument_id == dash.live
    assert job.spec["overrides"] == {"defocus": 80.0} and job.spec["seed"] == seed
    assert job.spec["doses"] == [500.0, 50000.0] and job.spec["ensemble_size"] == 3
    assert job.spec["uncertainty"]["std"] == {"defocus": 20.0}
    assert job.state is not None and job.state["state"]["aberrations"]["C10"] == -80.0
    assert job.cost is not None and job.cost["seconds"] == pytest.approx(seconds)
    # The list says so too (read again when the experiment ended).
    page.locator(
        f'#experiment-list tr:has(a[data-job="{job_id}"])', has_text="succeeded"
    ).wait_for()
    page.keyboard.press("ArrowRight")  # the next dose up, for the picture
    page.locator('#result-image[data-loaded][src*="image_dose1"]').wait_for()
    assert page.inner_text("#dose-value") == "50000 e/Å²"
    page.locator("#experiment-detail").scroll_into_view_if_needed()
    screenshot(page, "experiment-result")
    violations = axe_violations(page)
    assert not violations, dump(violations)


def test_an_operator_cancels_a_queued_experiment_from_its_page(
    page: Page, served: Served, dash: Dash, store_engine_api: sa.Engine
) -> None:
    sign_in(page, served.url, dash.tokens["operator"], "/ui/experiments")
    _fill_experiment(page, dash.live, secrets.randbelow(2**40))
    page.locator('#estimate[data-state="ok"]').wait_for()
    page.click("#submit-experiment")  # no worker runs here: it stays queued
    page.locator("#submit-result.ok").wait_for()
    job_id = page.get_attribute("#submit-result", "data-job") or ""
    page.locator('#experiment-detail[data-status="queued"]').wait_for()
    assert page.evaluate("document.querySelector('#exp-progress').value") == 0
    page.click("#cancel-experiment")
    # The server-sent events end with the cancellation, and the page says so.
    page.locator('#experiment-detail[data-status="cancelled"]').wait_for()
    page.locator("#results", has_text="Cancelled: no results.").wait_for()
    assert page.locator("#cancel-experiment").count() == 0
    with store_engine_api.connect() as conn:
        job = store.get_job(conn=conn, job_id=job_id)
    assert job is not None and job.status == "cancelled"


def test_the_preview_sliders_redraw_the_fast_preview(
    page: Page, served: Served, dash: Dash
) -> None:
    sign_in(page, served.url, dash.tokens["operator"], "/ui/experiments")
    _fill_experiment(page, dash.live, 1)
    page.locator('#estimate[data-state="ok"]').wait_for()
    status = page.locator('#preview-status[data-state="drawn"]')
    status.wait_for()
    canvas = page.locator("#preview-canvas")
    # The sliders start at the state the experiment would run with (the form's override).
    page.wait_for_function(
        "() => document.querySelector('#preview-canvas').dataset.defocus === '80'"
    )
    assert page.input_value("#slider-defocus") == "80"
    pixels = (
        "() => Array.from(document.querySelector('#preview-canvas').getContext('2d')"
        ".getImageData(0, 0, 40, 40).data).join(',')"
    )
    before = page.evaluate(pixels)
    assert canvas.get_attribute("width") == "40" and len(set(before.split(","))) > 2
    page.focus("#slider-defocus")
    page.keyboard.press("End")  # the largest defocus the slider offers
    wanted = page.input_value("#slider-defocus")
    assert float(wanted) > 80
    page.wait_for_function(
        "(v) => document.querySelector('#preview-canvas').dataset.defocus === v", arg=wanted
    )
    page.locator('#preview-status[data-state="drawn"]').wait_for()
    assert page.evaluate(pixels) != before
    assert "weak-phase" in status.inner_text()
    # The slider's value goes into the form, and the estimate follows it.
    page.click("#preview-apply")
    assert page.input_value("#f-override-defocus") == wanted
    page.locator('#estimate[data-state="ok"]').wait_for()
    # STEM: the form's default HAADF detector, a convergence slider, the incoherent preview.
    page.select_option("#f-mode", "stem")
    assert page.locator(".detectors tbody tr").count() == 1
    page.locator('#estimate[data-state="ok"]', has_text="probe positions").wait_for()
    page.locator('#preview-status[data-state="drawn"]', has_text="incoherent").wait_for()
    assert page.input_value("#slider-convergence_semiangle") == "25"


def test_viewers_are_told_they_cannot_submit_and_their_writes_are_refused(
    page: Page, served: Served, dash: Dash
) -> None:
    sign_in(page, served.url, dash.tokens["viewer"], "/ui/experiments")
    page.locator('#experiment-list[data-state="ready"]').wait_for()
    assert page.locator("#experiment-form").count() == 0
    assert page.locator("#preview-canvas").count() == 0
    refusal = page.inner_text("#experiment-form-refused")
    assert "for operators and admins" in refusal and "your role is viewer" in refusal
    csrf = page.get_attribute('meta[name="csrf-token"]', "content") or ""
    spec = {
        "instrument": dash.live,
        "specimen": {"name": "srtio3-001"},
        "mode": {"mode": "hrtem"},
    }
    for route in ("experiments", "experiments/estimate", "experiments/preview"):
        answer = page.request.post(
            f"{served.url}/api/v1/{route}", data={"spec": spec}, headers={"X-CSRF-Token": csrf}
        )
        assert answer.status == 403, (route, answer.status)
    # Without the CSRF token an operator's session cannot estimate either (a write's rule).
    page.click("#signout")
    sign_in(page, served.url, dash.tokens["operator"], "/ui/experiments")
    answer = page.request.post(f"{served.url}/api/v1/experiments/estimate", data={"spec": spec})
    assert answer.status == 403 and "CSRF" in answer.json()["detail"]


# ---------------------------------------------------------------------------- every page
PAGES = (
    (
        "instruments",
        "/ui/instruments",
        '#instruments[data-state="ready"] .state-box[data-state="live"]',
    ),
    ("instrument", "/ui/instruments/{live}?span=7200", '#charts[data-state="drawn"]'),
    ("datasets", "/ui/datasets", '#datasets[data-state="ready"]'),
    ("dataset", "/ui/datasets/{dataset}", "#prov-graph[data-nodes]"),
    ("experiments", "/ui/experiments?instrument={live}", '#preview-status[data-state="drawn"]'),
    ("audit", "/ui/audit", '#checkpoint[data-state="ready"]'),
)


@pytest.mark.parametrize(("name", "path", "ready"), PAGES, ids=[p[0] for p in PAGES])
def test_every_page_is_offline_accessible_fits_a_tablet_and_is_pictured(
    browser: Browser, served: Served, dash: Dash, name: str, path: str, ready: str
) -> None:
    url = served.url + path.format(live=dash.live, dataset=dash.dataset)
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        sign_in(page, served.url, dash.tokens["admin"])
        page.goto(url)
        page.locator(ready).first.wait_for(timeout=20_000)
        # Every part of the page has loaded (the instruments' cards each have their state).
        page.wait_for_function("() => !document.querySelector('[data-state=loading]')")
        assert not errors, errors
        # Offline: every script, style, font and image comes from the app itself.
        assert requested and all(u.startswith(served.url) for u in requested), requested
        screenshot(page, name)
        violations = axe_violations(page)
        assert not violations, dump(violations)
        # A tablet: nothing wider than the screen but the tables' own scrolling boxes.
        page.set_viewport_size(TABLET)
        page.wait_for_timeout(400)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, overflow
    finally:
        context.close()
