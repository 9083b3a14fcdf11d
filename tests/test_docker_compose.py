"""docker-compose.yml is validated here, not run (no Docker engine on the test machines).

Each check returns the problems it finds. Every check runs on the real file (no problems
allowed) and on a copy broken on purpose (it must find the break), so a check that silently
passes everything would fail here.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from adapters import AdapterSettings
from api import ApiSettings
from ingest import BlueskySettings, IngestSettings
from workers import ExperimentSettings, SnapshotSettings, TwinSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_PATH = ROOT / "docker-compose.yml"
BEAMTWIN_SERVICES = ("migrate", "ingest", "twin", "snapshots", "api")
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<rest>[^}]*)\}")
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|PASSWD", re.IGNORECASE)

Compose = dict[str, Any]
Check = Callable[[Compose], list[str]]


@pytest.fixture(scope="module")
def compose() -> Compose:
    data = yaml.safe_load(COMPOSE_PATH.read_text())
    assert isinstance(data, dict)
    return data


# ------------------------------------------------------------------ helpers
def services(compose: Compose) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose.get("services") or {}
    return result


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, from either the mapping or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {k: v for k, v in pairs}
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def settings_env_names() -> set[str]:
    fields = {
        *IngestSettings.model_fields,
        *TwinSettings.model_fields,
        *SnapshotSettings.model_fields,
        *BlueskySettings.model_fields,
        *ApiSettings.model_fields,
        *AdapterSettings.model_fields,
        *ExperimentSettings.model_fields,
    }
    return {"BEAMTWIN_" + name.upper() for name in fields}


def without_interpolations(text: str) -> str:
    return INTERPOLATION.sub("interpolated", text)


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """``INTERNAL://kafka:9092,HOST://:29092`` -> ``{"INTERNAL": ("kafka", 9092), ...}``."""
    result = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        result[name] = (host, int(port))
    return result


def published_ports(service: dict[str, Any]) -> Iterator[tuple[int | None, int]]:
    """(host port, container port) of each published port (host port None when random)."""
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            yield (None if published is None else int(published)), int(entry["target"])
            continue
        parts = str(entry).split("/")[0].split(":")
        container = int(parts[-1])
        host = int(parts[-2]) if len(parts) >= 2 and parts[-2] else None
        yield host, container


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency -> condition (the short list form means ``service_started``)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def kafka_service_name(compose: Compose) -> str:
    for name, service in services(compose).items():
        if str(service.get("image", "")).startswith("apache/kafka:"):
            return name
    raise AssertionError("no apache/kafka service")


# ------------------------------------------------------------------ checks
def check_services_and_images(compose: Compose) -> list[str]:
    problems = []
    expected = {
        "kafka", "timescaledb", "migrate", "ingest", "twin", "snapshots", "api", "experiments",
        "dask-scheduler", "dask-worker",
    }  # fmt: skip
    missing = expected - set(services(compose))
    if missing:
        problems.append(f"services missing: {sorted(missing)}")
    for name, service in services(compose).items():
        image, build = service.get("image"), service.get("build")
        if not image and not build:
            problems.append(f"{name}: neither image nor build")
        if image and not build:
            tag = str(image).rpartition(":")[2] if ":" in str(image) else ""
            if not re.search(r"\d", tag):
                problems.append(f"{name}: image {image!r} is not pinned to a version")
    return problems


def check_commands(compose: Compose) -> list[str]:
    expected = {
        "migrate": ["beamtwin", "db", "upgrade"],
        "ingest": ["beamtwin", "ingest"],
        "twin": ["beamtwin", "twin"],
        "snapshots": ["beamtwin", "snapshots"],
        "bluesky": ["beamtwin", "bluesky"],
        "api": ["beamtwin", "serve"],
        "experiments": ["beamtwin", "experiments"],
    }
    problems = []
    for name, command in expected.items():
        got = services(compose).get(name, {}).get("command")
        if isinstance(got, str):
            got = got.split()
        if got != command:
            problems.append(f"{name}: command {got!r}, expected {command!r}")
    ingest = services(compose).get("ingest", {})
    if (ingest.get("deploy") or {}).get("replicas", 1) < 2:
        problems.append("ingest: fewer than 2 replicas")
    workers = services(compose).get("dask-worker", {})
    if (workers.get("deploy") or {}).get("replicas", 1) < 2:
        problems.append("dask-worker: fewer than 2 replicas")
    return problems


def check_dependencies(compose: Compose) -> list[str]:
    """Every dependency exists; ``service_healthy`` ones have a healthcheck; no one-shot waits."""
    problems = []
    all_services = services(compose)
    for name, service in all_services.items():
        for dep, condition in depends_on(service).items():
            if dep not in all_services:
                problems.append(f"{name}: depends on unknown service {dep!r}")
                continue
            if condition == "service_healthy" and not (all_services[dep].get("healthcheck")):
                problems.append(f"{name}: waits for {dep} healthy, but {dep} has no healthcheck")
            if condition not in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }:
                problems.append(f"{name}: unknown condition {condition!r} on {dep}")
    required = {
        "ingest": {
            "kafka": "service_healthy",
            "timescaledb": "service_healthy",
            "migrate": "service_completed_successfully",
        },
        "twin": {
            "timescaledb": "service_healthy",
            "migrate": "service_completed_successfully",
        },
        "snapshots": {
            "kafka": "service_healthy",
            "timescaledb": "service_healthy",
            "migrate": "service_completed_successfully",
        },
        "bluesky": {"kafka": "service_healthy"},
        "migrate": {"timescaledb": "service_healthy"},
        "experiments": {
            "timescaledb": "service_healthy",
            "migrate": "service_completed_successfully",
            "dask-scheduler": "service_healthy",
        },
        "dask-worker": {"dask-scheduler": "service_healthy"},
    }
    for name, deps in required.items():
        got = depends_on(all_services.get(name, {}))
        for dep, condition in deps.items():
            if got.get(dep) != condition:
                problems.append(f"{name}: must wait for {dep} with {condition}, has {got.get(dep)}")
    return problems


def check_beamtwin_environment_names(compose: Compose) -> list[str]:
    """Every ``BEAMTWIN_*`` variable handed to a container is a settings field."""
    known = settings_env_names()
    problems = []
    for name, service in services(compose).items():
        for key in environment(service):
            if key.startswith("BEAMTWIN_") and key not in known:
                problems.append(f"{name}: {key} is not a field of a settings class")
    return problems


def check_kafka_bootstrap(compose: Compose) -> list[str]:
    """Bootstrap addresses name the broker's internal advertised listener, which it binds."""
    problems = []
    kafka_name = kafka_service_name(compose)
    kafka = services(compose)[kafka_name]
    env = environment(kafka)
    bound = listeners(env["KAFKA_LISTENERS"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    for listener in bound:
        if listener not in protocols:
            problems.append(f"kafka: listener {listener} has no security protocol")
    for listener, (_, port) in advertised.items():
        if bound.get(listener, (None, None))[1] != port:
            problems.append(f"kafka: {listener} advertised on {port} but bound elsewhere")
    internal = env.get("KAFKA_INTER_BROKER_LISTENER_NAME")
    if internal not in advertised or advertised[internal][0] != kafka_name:
        problems.append(f"kafka: inter-broker listener {internal} is not advertised as the service")
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    voter_port = int(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].rpartition(":")[2])
    if bound.get(controller, (None, None))[1] != voter_port:
        problems.append("kafka: the quorum voter port is not the controller listener's")
    test = " ".join(kafka.get("healthcheck", {}).get("test", []))
    match = re.search(r"kafka-topics\.sh --bootstrap-server localhost:(\d+) --list", test)
    if not match:
        problems.append("kafka: healthcheck does not list topics with kafka-topics.sh")
    elif int(match[1]) not in {port for _, port in bound.values()}:
        problems.append(f"kafka: healthcheck port {match[1]} is not a listener")
    internal_addresses = {
        f"{host}:{port}" for host, port in advertised.values() if host == kafka_name
    }
    users = 0
    for name, service in services(compose).items():
        bootstrap = environment(service).get("BEAMTWIN_KAFKA_BOOTSTRAP")
        if bootstrap is None:
            continue
        users += 1
        for address in bootstrap.split(","):
            if address.strip() not in internal_addresses:
                problems.append(
                    f"{name}: bootstrap {address} is not one of the broker's internal "
                    f"advertised listeners {sorted(internal_addresses)}"
                )
        if depends_on(service).get(kafka_name) != "service_healthy":
            problems.append(f"{name}: uses Kafka without waiting for it to be healthy")
    if users == 0:
        problems.append("no service is given BEAMTWIN_KAFKA_BOOTSTRAP")
    return problems


def check_database_url(compose: Compose) -> list[str]:
    """Database URLs name the TimescaleDB service, its user, database and password variable."""
    problems = []
    all_services = services(compose)
    db_env = environment(all_services.get("timescaledb", {}))
    password_ref = INTERPOLATION.fullmatch(db_env.get("POSTGRES_PASSWORD", ""))
    users = 0
    for name, service in all_services.items():
        url = environment(service).get("BEAMTWIN_DATABASE_URL")
        if url is None:
            continue
        users += 1
        parts = urlsplit(without_interpolations(url))
        if parts.scheme != "postgresql+psycopg":
            problems.append(f"{name}: database URL scheme {parts.scheme!r}, not postgresql+psycopg")
        if parts.hostname != "timescaledb":
            problems.append(f"{name}: database host {parts.hostname!r} is not timescaledb")
        if parts.port != 5432:
            problems.append(f"{name}: database port {parts.port}, the server listens on 5432")
        if parts.username != db_env.get("POSTGRES_USER"):
            problems.append(f"{name}: database user {parts.username!r} is not POSTGRES_USER")
        if parts.path.lstrip("/") != db_env.get("POSTGRES_DB"):
            problems.append(f"{name}: database {parts.path!r} is not POSTGRES_DB")
        used = {m["name"] for m in INTERPOLATION.finditer(url)}
        if password_ref is None or used != {password_ref["name"]}:
            problems.append(f"{name}: the URL's password is not POSTGRES_PASSWORD's variable")
        if depends_on(service).get("timescaledb") != "service_healthy":
            problems.append(f"{name}: uses the database without waiting for it to be healthy")
    if users == 0:
        problems.append("no service is given BEAMTWIN_DATABASE_URL")
    return problems


def check_no_plaintext_secrets(compose: Compose) -> list[str]:
    """Passwords come from required variables (``${VAR:?message}``), never from the file."""
    problems = []
    for name, service in services(compose).items():
        for key, value in environment(service).items():
            if SECRET_WORDS.search(key):
                ref = INTERPOLATION.fullmatch(value)
                if ref is None or not ref["rest"].startswith(":?"):
                    problems.append(f"{name}: {key} is not a required ${{VAR:?...}} variable")
            if "://" in value:
                password = urlsplit(value).password if "${" not in value else None
                if password is not None:
                    problems.append(f"{name}: {key} carries a literal password")
                for ref in INTERPOLATION.finditer(value):
                    if not ref["rest"].startswith(":?"):
                        problems.append(f"{name}: {key} interpolates {ref[0]} with a default")
    return problems


def check_ports(compose: Compose) -> list[str]:
    """Published ports reach something that listens, and no host port is taken twice."""
    problems = []
    all_services = services(compose)
    seen: dict[int, str] = {}
    kafka_name = kafka_service_name(compose)
    for name, service in all_services.items():
        replicas = (service.get("deploy") or {}).get("replicas", 1)
        for host, container in published_ports(service):
            if host is not None:
                if host in seen:
                    problems.append(f"{name}: host port {host} also published by {seen[host]}")
                seen[host] = name
                if replicas > 1:
                    problems.append(f"{name}: {replicas} replicas cannot share host port {host}")
            listening: set[int] = set()
            if name == kafka_name:
                env = environment(service)
                bound = listeners(env["KAFKA_LISTENERS"])
                controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
                listening = {port for lst, (_, port) in bound.items() if lst != controller}
            elif str(service.get("image", "")).startswith("timescale/"):
                listening = {5432}
            else:
                test = " ".join(map(str, (service.get("healthcheck") or {}).get("test", [])))
                listening = {int(p) for p in re.findall(r"localhost:(\d+)", test)}
            if container not in listening:
                problems.append(f"{name}: publishes container port {container}, not listened on")
    # Host clients follow the advertised address, so it must be the published one.
    kafka_env = environment(all_services[kafka_name])
    published = dict(published_ports(all_services[kafka_name]))
    by_container = {c: h for h, c in published.items()}
    for listener, (host, port) in listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"]).items():
        if host in {"localhost", "127.0.0.1"} and by_container.get(port) != port:
            problems.append(
                f"kafka: {listener} advertises localhost:{port} but it is not published"
            )
    return problems


def _option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def check_dask_cluster(compose: Compose) -> list[str]:
    """The experiment worker and the dask workers name the scheduler service at the port it
    binds; the cluster runs the beamtwin image (its workers import simulations); the
    experiment worker writes its artifacts to a volume the API reads."""
    problems = []
    all_services = services(compose)
    scheduler = all_services.get("dask-scheduler", {})
    command = [str(c) for c in scheduler.get("command") or []]
    if command[:2] != ["dask", "scheduler"]:
        problems.append(f"dask-scheduler: command {command!r} is not `dask scheduler`")
    address = f"tcp://dask-scheduler:{_option(command, '--port') or 8786}"
    test = " ".join(map(str, (scheduler.get("healthcheck") or {}).get("test", [])))
    if f"'localhost', {_option(command, '--port') or 8786}" not in test:
        problems.append("dask-scheduler: healthcheck does not connect to its port")
    worker = [str(c) for c in all_services.get("dask-worker", {}).get("command") or []]
    if worker[:3] != ["dask", "worker", address]:
        problems.append(f"dask-worker: command {worker!r} does not name {address}")
    experiments = all_services.get("experiments", {})
    if environment(experiments).get("BEAMTWIN_DASK_SCHEDULER") != address:
        problems.append(f"experiments: BEAMTWIN_DASK_SCHEDULER is not {address}")
    for name in ("dask-scheduler", "dask-worker", "experiments"):
        if all_services.get(name, {}).get("image") != all_services.get("api", {}).get("image"):
            problems.append(f"{name}: does not run the beamtwin image")
    root = environment(experiments).get("BEAMTWIN_ARTIFACT_ROOT", "")
    mounts = {
        name: [str(v).split(":") for v in all_services.get(name, {}).get("volumes") or []]
        for name in ("experiments", "api")
    }
    for name, volumes in mounts.items():
        if not any(len(v) >= 2 and v[1] == root for v in volumes):
            problems.append(f"{name}: the artifact root {root!r} is not on a volume")
    return problems


CHECKS: dict[str, Check] = {
    "services_and_images": check_services_and_images,
    "commands": check_commands,
    "dependencies": check_dependencies,
    "environment_names": check_beamtwin_environment_names,
    "kafka_bootstrap": check_kafka_bootstrap,
    "database_url": check_database_url,
    "no_plaintext_secrets": check_no_plaintext_secrets,
    "ports": check_ports,
    "dask_cluster": check_dask_cluster,
}


# ------------------------------------------------------------------ the real file passes
@pytest.mark.parametrize("check", CHECKS)
def test_compose_file_passes(compose: Compose, check: str) -> None:
    assert CHECKS[check](compose) == []


def test_no_password_literal_anywhere_in_the_file() -> None:
    text = COMPOSE_PATH.read_text()
    for line in text.splitlines():
        if SECRET_WORDS.search(line.split("#")[0]):
            assert "${BEAMTWIN_DB_PASSWORD:?" in line, line
    assert re.search(r"://[^:/@\s]+:[^$@\s][^@\s]*@", text) is None  # user:literal@host


def test_the_ingest_settings_read_the_compose_environment(
    compose: Compose, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(services(compose)["ingest"])
    for key, value in env.items():
        monkeypatch.setenv(key, without_interpolations(value))
    settings = IngestSettings()
    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.ingest_group_id == env["BEAMTWIN_INGEST_GROUP_ID"]
    assert settings.database_url is not None
    assert "@timescaledb:5432/" in settings.database_url.get_secret_value()


def test_the_api_settings_read_the_compose_environment(
    compose: Compose, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = services(compose)["api"]
    for key, value in environment(service).items():
        monkeypatch.setenv(key, without_interpolations(value))
    settings = ApiSettings()
    # Inside a container the server must bind every interface to be reachable at all.
    assert settings.api_host == "0.0.0.0"
    assert [c for _, c in published_ports(service)] == [settings.api_port]
    assert settings.database_url is not None
    assert "@timescaledb:5432/" in settings.database_url.get_secret_value()


def test_the_twin_settings_read_the_compose_environment(
    compose: Compose, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(services(compose)["twin"])
    assert "BEAMTWIN_KAFKA_BOOTSTRAP" not in env  # the twin worker reads only the database
    for key, value in env.items():
        monkeypatch.setenv(key, without_interpolations(value))
    settings = TwinSettings()
    assert settings.twin_window_s == float(env["BEAMTWIN_TWIN_WINDOW_S"])
    assert settings.twin_lateness_s == float(env["BEAMTWIN_TWIN_LATENESS_S"])
    assert settings.twin_false_alarms_per_day == float(env["BEAMTWIN_TWIN_FALSE_ALARMS_PER_DAY"])
    assert settings.database_url is not None
    assert "@timescaledb:5432/" in settings.database_url.get_secret_value()


def test_the_snapshot_settings_read_the_compose_environment(
    compose: Compose, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(services(compose)["snapshots"])
    for key, value in env.items():
        monkeypatch.setenv(key, without_interpolations(value))
    settings = SnapshotSettings()
    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.snapshot_group_id == env["BEAMTWIN_SNAPSHOT_GROUP_ID"] == "beamtwin-snapshots"
    assert settings.snapshot_sweep_interval_s == float(env["BEAMTWIN_SNAPSHOT_SWEEP_INTERVAL_S"])
    assert settings.database_url is not None
    assert "@timescaledb:5432/" in settings.database_url.get_secret_value()


def test_the_bluesky_consumer_is_opt_in_and_reads_the_compose_environment(
    compose: Compose, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = services(compose)["bluesky"]
    assert service.get("profiles") == ["bluesky"]  # not started unless asked for
    env = environment(service)
    assert "BEAMTWIN_DATABASE_URL" not in env  # it only reads and writes Kafka
    for key, value in env.items():
        monkeypatch.setenv(key, without_interpolations(value))
    settings = BlueskySettings()
    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.bluesky_topic == env["BEAMTWIN_BLUESKY_TOPIC"]


def test_the_adapter_is_opt_in_and_reads_the_compose_environment(
    compose: Compose, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = services(compose)["adapter-tfs"]
    assert service.get("profiles") == ["adapters"]  # not started unless asked for
    env = environment(service)
    assert "BEAMTWIN_DATABASE_URL" not in env  # it only publishes to Kafka
    for key, value in env.items():
        monkeypatch.setenv(key, without_interpolations(value))
    settings = AdapterSettings()
    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.adapter_optics_hz == 10.0 and settings.adapter_heartbeat_s == 1.0
    command = [str(part) for part in service["command"]]
    # The options `beamtwin adapter tfs` takes (tests/adapters/test_cli.py runs it).
    assert command[:3] == ["beamtwin", "adapter", "tfs"]
    options = dict(zip(command[3::2], command[4::2], strict=True))
    assert set(options) == {"--instrument", "--host", "--port"}
    port = INTERPOLATION.fullmatch(options["--port"])
    assert port is not None and int(port["rest"].removeprefix(":-")) == 8080


def test_the_experiment_settings_read_the_compose_environment(
    compose: Compose, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(services(compose)["experiments"])
    assert "BEAMTWIN_KAFKA_BOOTSTRAP" not in env  # jobs come from the database
    for key, value in env.items():
        monkeypatch.setenv(key, without_interpolations(value))
    settings = ExperimentSettings()
    assert settings.dask_scheduler == "tcp://dask-scheduler:8786"
    assert settings.artifact_root == "/var/lib/beamtwin/artifacts"
    assert settings.experiment_max_concurrent == 2
    assert settings.database_url is not None
    assert "@timescaledb:5432/" in settings.database_url.get_secret_value()


def test_dockerfile_installs_the_package_on_python_311() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.MULTILINE)
    assert re.search(r"^RUN pip install \.", dockerfile, re.MULTILINE)
    packages = ("twin", "ingest", "provenance_store", "api", "simulations", "workers", "adapters")
    for package in (*packages, "beamtwin_cli"):
        assert f"COPY {package} " in dockerfile, package


# ------------------------------------------------------------------ broken copies are caught
def set_env(service: str, key: str, value: str | None) -> Callable[[Compose], None]:
    def mutate(compose: Compose) -> None:
        env = compose["services"][service]["environment"]
        if value is None:
            env.pop(key)
        else:
            env[key] = value

    return mutate


def rename_env(service: str, key: str, new_key: str) -> Callable[[Compose], None]:
    def mutate(compose: Compose) -> None:
        env = compose["services"][service]["environment"]
        env[new_key] = env.pop(key)

    return mutate


def set_key(service: str, key: str, value: Any) -> Callable[[Compose], None]:
    def mutate(compose: Compose) -> None:
        if value is None:
            compose["services"][service].pop(key)
        else:
            compose["services"][service][key] = value

    return mutate


URL = "postgresql+psycopg://beamtwin:${BEAMTWIN_DB_PASSWORD:?set it}@timescaledb:5432/beamtwin"
BREAKS: list[tuple[str, str, Callable[[Compose], None]]] = [
    ("services_and_images", "no image", set_key("kafka", "image", None)),
    ("services_and_images", "unpinned", set_key("timescaledb", "image", "timescale/timescaledb")),
    (
        "services_and_images",
        "no build",
        lambda c: [c["services"]["ingest"].pop(k) for k in ("build", "image")],
    ),
    ("commands", "wrong command", set_key("migrate", "command", ["beamtwin", "db", "check"])),
    ("commands", "one replica", set_key("ingest", "deploy", {"replicas": 1})),
    ("commands", "one dask worker", set_key("dask-worker", "deploy", {"replicas": 1})),
    (
        "commands",
        "experiments command",
        set_key("experiments", "command", ["beamtwin", "experiment"]),
    ),
    ("services_and_images", "no dask scheduler", lambda c: c["services"].pop("dask-scheduler")),
    (
        "dask_cluster",
        "wrong scheduler port",
        set_env("experiments", "BEAMTWIN_DASK_SCHEDULER", "tcp://dask-scheduler:8787"),
    ),
    (
        "dask_cluster",
        "worker to localhost",
        set_key("dask-worker", "command", ["dask", "worker", "tcp://localhost:8786"]),
    ),
    ("dask_cluster", "artifacts not shared", set_key("api", "volumes", None)),
    (
        "dask_cluster",
        "plain dask image",
        set_key("dask-worker", "image", "ghcr.io/dask/dask:2024.8.0"),
    ),
    (
        "dependencies",
        "experiments do not wait for the scheduler",
        set_key(
            "experiments",
            "depends_on",
            {
                "timescaledb": {"condition": "service_healthy"},
                "migrate": {"condition": "service_completed_successfully"},
            },
        ),
    ),
    (
        "environment_names",
        "experiment typo",
        rename_env("experiments", "BEAMTWIN_ARTIFACT_ROOT", "BEAMTWIN_ARTIFACTS_ROOT"),
    ),
    ("commands", "twin command", set_key("twin", "command", ["beamtwin", "ingest"])),
    ("commands", "snapshots command", set_key("snapshots", "command", ["beamtwin", "twin"])),
    ("services_and_images", "no snapshot worker", lambda c: c["services"].pop("snapshots")),
    ("dependencies", "no healthcheck", set_key("kafka", "healthcheck", None)),
    (
        "dependencies",
        "migrate not awaited",
        set_key(
            "ingest",
            "depends_on",
            {
                "kafka": {"condition": "service_healthy"},
                "timescaledb": {"condition": "service_healthy"},
            },
        ),
    ),
    (
        "dependencies",
        "twin does not wait for migrate",
        set_key("twin", "depends_on", {"timescaledb": {"condition": "service_healthy"}}),
    ),
    (
        "environment_names",
        "typo",
        rename_env("ingest", "BEAMTWIN_KAFKA_BOOTSTRAP", "BEAMTWIN_KAFKA_BOOTSTRAPS"),
    ),
    ("environment_names", "unknown", set_env("ingest", "BEAMTWIN_INGEST_GROUP", "x")),
    (
        "environment_names",
        "snapshot typo",
        rename_env("snapshots", "BEAMTWIN_SNAPSHOT_GROUP_ID", "BEAMTWIN_SNAPSHOTS_GROUP_ID"),
    ),
    (
        "dependencies",
        "snapshots do not wait for kafka",
        set_key(
            "snapshots",
            "depends_on",
            {
                "timescaledb": {"condition": "service_healthy"},
                "migrate": {"condition": "service_completed_successfully"},
            },
        ),
    ),
    (
        "environment_names",
        "twin typo",
        rename_env("twin", "BEAMTWIN_TWIN_WINDOW_S", "BEAMTWIN_TWIN_WINDOW"),
    ),
    (
        "kafka_bootstrap",
        "host listener",
        set_env("ingest", "BEAMTWIN_KAFKA_BOOTSTRAP", "kafka:29092"),
    ),
    ("kafka_bootstrap", "wrong port", set_env("ingest", "BEAMTWIN_KAFKA_BOOTSTRAP", "kafka:9093")),
    (
        "kafka_bootstrap",
        "localhost",
        set_env("ingest", "BEAMTWIN_KAFKA_BOOTSTRAP", "localhost:9092"),
    ),
    (
        "kafka_bootstrap",
        "advertised port",
        set_env(
            "kafka", "KAFKA_ADVERTISED_LISTENERS", "INTERNAL://kafka:9094,HOST://localhost:29092"
        ),
    ),
    (
        "kafka_bootstrap",
        "health port",
        set_key(
            "kafka",
            "healthcheck",
            {
                "test": [
                    "CMD",
                    "/opt/kafka/bin/kafka-topics.sh",
                    "--bootstrap-server",
                    "localhost:9999",
                    "--list",
                ]
            },
        ),
    ),
    (
        "database_url",
        "scheme",
        set_env("ingest", "BEAMTWIN_DATABASE_URL", URL.replace("+psycopg", "")),
    ),
    (
        "database_url",
        "host",
        set_env("migrate", "BEAMTWIN_DATABASE_URL", URL.replace("timescaledb:", "db:")),
    ),
    (
        "database_url",
        "port",
        set_env("ingest", "BEAMTWIN_DATABASE_URL", URL.replace(":5432", ":5433")),
    ),
    (
        "database_url",
        "user",
        set_env("ingest", "BEAMTWIN_DATABASE_URL", URL.replace("//beamtwin:", "//postgres:")),
    ),
    (
        "database_url",
        "password variable",
        set_env("ingest", "BEAMTWIN_DATABASE_URL", URL.replace("BEAMTWIN_DB_PASSWORD", "PGPASS")),
    ),
    ("no_plaintext_secrets", "literal", set_env("timescaledb", "POSTGRES_PASSWORD", "hunter2")),
    (
        "no_plaintext_secrets",
        "default",
        set_env("timescaledb", "POSTGRES_PASSWORD", "${BEAMTWIN_DB_PASSWORD:-hunter2}"),
    ),
    (
        "no_plaintext_secrets",
        "in the URL",
        set_env(
            "ingest",
            "BEAMTWIN_DATABASE_URL",
            URL.replace("${BEAMTWIN_DB_PASSWORD:?set it}", "hunter2"),
        ),
    ),
    ("ports", "api port", set_key("api", "ports", ["127.0.0.1:8000:8080"])),
    ("ports", "kafka host port", set_key("kafka", "ports", ["127.0.0.1:9092:9092"])),
    ("ports", "taken twice", set_key("api", "ports", ["127.0.0.1:5433:8000"])),
    ("ports", "replicas", set_key("ingest", "ports", ["9100:9100"])),
]


@pytest.mark.parametrize(
    ("check", "what", "mutate"), BREAKS, ids=[f"{c}-{w}" for c, w, _ in BREAKS]
)
def test_checks_catch_a_broken_copy(
    compose: Compose, check: str, what: str, mutate: Callable[[Compose], None]
) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    assert CHECKS[check](broken), f"{check} did not notice: {what}"


def test_every_check_is_shown_to_catch_something() -> None:
    assert {check for check, _, _ in BREAKS} == set(CHECKS)
