"""The API under test against the session's real PostgreSQL: one app, two instruments (one
granted to every non-admin user, one granted to nobody), a user and token per role, and
tokens that must be refused (revoked, expired, of a disabled user)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

import provenance_store as store
from api import ApiSettings, create_app
from tests.api._experiments_support import Experiments
from tests.provenance_store._support import (
    HIGH_TENSION,
    HOLDER_TEMPERATURE,
    STAGE_X,
    T0,
    T0_US,
    insert,
    make_batch,
)

ROLES = ("viewer", "operator", "auditor", "admin")
#: Samples of the granted instrument: 1 Hz for two hours from T0 on every channel.
N_SAMPLES = 7200
S = 1_000_000


@dataclass(frozen=True)
class World:
    granted: str
    ungranted: str
    tokens: dict[str, str]  # role -> token
    refused: dict[str, str]  # why -> token
    users: dict[str, str]  # role -> user name


def _token(conn: sa.Connection, name: str, **kwargs: object) -> store.NewApiToken:
    return store.create_api_token(conn=conn, name=name, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def store_engine_api(database_url: str) -> Iterator[sa.Engine]:
    eng = store.create_store_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def world(store_engine_api: sa.Engine) -> World:
    tag = secrets.token_hex(4)
    granted, ungranted = f"api-stem-{tag}", f"api-secret-{tag}"
    tokens: dict[str, str] = {}
    users: dict[str, str] = {}
    with store_engine_api.begin() as conn:
        for ident in (granted, ungranted):
            store.register_instrument(
                conn=conn, instrument=store.InstrumentIn(id=ident, vendor="Nion", model="U100")
            )
            store.ensure_channels(
                conn=conn,
                instrument_id=ident,
                declarations=[HIGH_TENSION, HOLDER_TEMPERATURE, STAGE_X],
                valid_from=T0,
            )
            store.store_calibration(
                conn=conn, instrument_id=ident, version="cal-1", valid_from=T0, body={"k": 1}
            )
        for role in ROLES:
            name = f"{role}-{tag}"
            store.add_api_user(conn=conn, name=name, role=role)
            if role != "admin":
                store.grant_instrument(conn=conn, name=name, instrument_id=granted)
            tokens[role] = _token(conn, name, label="tests").token
            users[role] = name
        revoked = _token(conn, users["viewer"])
        store.revoke_api_token(conn=conn, token_id=revoked.record.id)
        expired = _token(conn, users["admin"], expires_at=datetime.now(UTC) - timedelta(seconds=1))
        disabled_name = f"disabled-{tag}"
        store.add_api_user(conn=conn, name=disabled_name, role="admin")
        disabled = _token(conn, disabled_name)
        store.set_api_user_disabled(conn=conn, name=disabled_name, disabled=True)
        chans = store.get_channels(conn=conn, instrument_id=granted)
    times = T0_US + np.arange(N_SAMPLES, dtype=np.int64) * S
    insert(store_engine_api, make_batch(chans["gun.high_tension"].id, times, 2e5 + np.sin(times)))
    insert(store_engine_api, make_batch(chans["holder.temperature"].id, times, 300.0 + 0 * times))
    # stage.x: a ten-minute hole after the first hour.
    stage = times[(times < T0_US + 3600 * S) | (times >= T0_US + 4200 * S)]
    insert(store_engine_api, make_batch(chans["stage.x"].id, stage, 1e-9 * np.ones(len(stage))))
    with store_engine_api.begin() as conn:
        store.insert_estimates(
            conn=conn,
            estimates=[
                store.EstimateRecord(
                    instrument_id=granted,
                    quantity="defocus",
                    time=T0 + timedelta(seconds=s),
                    value=50.0 + s,
                    std=0.5,
                    unit="Å",
                    calibration_version="cal-1",
                    twin_version="test",
                )
                for s in (0, 10, 20)
            ],
        )
        store.insert_flags(
            conn=conn,
            flags=[
                store.FlagIn(
                    instrument_id=ident,
                    kind="drift",
                    quantity="defocus",
                    channel="stage.x",
                    time=T0 + timedelta(seconds=5),
                    end_time=None,
                    expected=1.0,
                    observed=2.0,
                    residual=1.0,
                    tolerance=0.5,
                    severity="warning",
                    twin_version="test",
                    calibration_version="cal-1",
                )
                for ident in (granted, ungranted)
            ],
        )
    return World(
        granted=granted,
        ungranted=ungranted,
        tokens=tokens,
        refused={"revoked": revoked.token, "expired": expired.token, "disabled": disabled.token},
        users=users,
    )


@pytest.fixture(scope="session")
def client(database_url: str) -> Iterator[TestClient]:
    app = create_app(ApiSettings(database_url=SecretStr(database_url), api_max_points=5000))
    with TestClient(app) as c:
        yield c


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class Datasets:
    """Datasets of the world's instruments, registered and verified by the store's functions.

    ``granted``: on the granted instrument, acquired during the world's flags, verified (one
    field disagrees); ``ungranted``: the same on the ungranted instrument; ``unverified``: on
    the granted instrument, without a snapshot; ``fuzzed``: on the granted instrument, the one
    generated requests (schemathesis) are pointed at.
    """

    granted: str
    ungranted: str
    unverified: str
    fuzzed: str


@pytest.fixture(scope="session")
def datasets(store_engine_api: sa.Engine, world: World) -> Datasets:
    from tests.api._datasets_support import add_dataset

    verdicts = {"high_tension": "disagrees", "defocus": "consistent"}
    with store_engine_api.begin() as conn:
        return Datasets(
            granted=add_dataset(conn, world.granted, T0, verdicts),
            ungranted=add_dataset(conn, world.ungranted, T0, verdicts),
            unverified=add_dataset(conn, world.granted, T0, None),
            fuzzed=add_dataset(conn, world.granted, T0, verdicts),
        )


@pytest.fixture(scope="session")
def experiments(
    store_engine_api: sa.Engine, world: World, tmp_path_factory: pytest.TempPathFactory
) -> Experiments:
    """A finished experiment on each of the world's instruments."""
    from tests.api._experiments_support import Experiments, finished_job

    folder = tmp_path_factory.mktemp("artifacts")
    with store_engine_api.begin() as conn:
        return Experiments(
            granted=finished_job(conn, world.granted, folder),
            ungranted=finished_job(conn, world.ungranted, folder),
        )
