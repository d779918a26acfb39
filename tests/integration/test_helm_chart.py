"""The Helm chart (deploy/helm/mpcio): ``helm lint`` clean, every rendered resource valid.

Helm is installed by this module's fixture as a Go module (``go install
helm.sh/helm/v3/cmd/helm@HELM_VERSION``) into ``.cache/helm/<version>/`` the first time (a
few minutes of compiling); if that fails the test fails. Rendered manifests are validated with
``kubernetes-validate`` (the Kubernetes OpenAPI schemas it ships, strict: unknown fields are
errors) for the oldest and newest Kubernetes versions checked; the two Prometheus Operator
resources (CRDs, no schema shipped) are checked by content against deploy/alerts.yml. No
Kafka needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "mpcio"
HELM_VERSION = "v3.22.0"
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
EVERYTHING = (
    "serviceMonitor.enabled=true",
    "prometheusRule.enabled=true",
    "firehose.enabled=true",
    "secrets.customerioSiteId=site",
    "secrets.customerioApiKey=key",
    "secrets.ingressSecret=firehose-secret",
)
#: The worker's bounded SIGTERM stop (README "Deploying"); the pod must be given longer.
WORKER_STOP_BOUND_SECONDS = 30


@pytest.fixture(scope="module")
def helm() -> Path:
    """The pinned helm binary, built with ``go install`` when it is not cached yet."""
    target = REPO / ".cache" / "helm" / HELM_VERSION
    binary = target / "helm"
    if not binary.exists():
        go = shutil.which("go")
        assert go is not None, "Go is needed to install helm (go install helm.sh/helm/v3)"
        result = subprocess.run(
            [
                go,
                "install",
                # helm's own release builds stamp the version the same way
                f"-ldflags=-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
                f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}",
            ],
            env={**os.environ, "GOBIN": str(target)},
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        assert result.returncode == 0, f"go install helm failed:\n{result.stderr[-4000:]}"
    version = subprocess.run(
        [str(binary), "version", "--short"], capture_output=True, text=True, check=True
    ).stdout
    assert version.startswith(HELM_VERSION), version
    return binary


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    home = REPO / ".cache" / "helm" / "home"  # no writes to the user's ~/.config/helm
    env = {
        **os.environ,
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def render(helm: Path, *values: str) -> list[dict[str, Any]]:
    flags = [flag for value in values for flag in ("--set", value)]
    result = run_helm(helm, "template", "prod", str(CHART), "--namespace", "data", *flags)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


@pytest.mark.parametrize("values", [(), EVERYTHING], ids=["defaults", "everything"])
def test_helm_lint_is_clean(helm: Path, values: tuple[str, ...]) -> None:
    flags = [flag for value in values for flag in ("--set", value)]
    result = run_helm(helm, "lint", "--strict", str(CHART), *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


@pytest.mark.parametrize(
    "values",
    [(), EVERYTHING, ("secrets.existingSecret=mpcio-creds", "persistence.enabled=false")],
    ids=["defaults", "everything", "existing-secret-no-volume"],
)
def test_rendered_resources_pass_the_kubernetes_schemas(
    helm: Path, values: tuple[str, ...]
) -> None:
    docs = render(helm, *values)
    errors = []
    validated = []
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {exc}")
        validated.append(f"{doc['kind']}/{doc['metadata']['name']}")
    print(f"validated {len(validated)} resources: {', '.join(validated)}")
    assert errors == []
    assert validated


def test_worker_statefulset_is_hardened_and_keeps_its_state(helm: Path) -> None:
    docs = render(helm)
    [sts] = by_kind(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    [worker] = pod["containers"]
    env = {item["name"]: item for item in worker["env"]}
    assert env["MPCIO_DATA_DIR"]["value"] == "/var/lib/mpcio"
    mounts = {mount["name"]: mount["mountPath"] for mount in worker["volumeMounts"]}
    assert mounts["data"] == "/var/lib/mpcio"
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert worker["securityContext"]["allowPrivilegeEscalation"] is False
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    assert worker["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["terminationGracePeriodSeconds"] > WORKER_STOP_BOUND_SECONDS
    assert worker["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/health/live"
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert worker["image"] == f"mpcio:{version}"
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == version


def test_credentials_come_from_a_secret_and_settings_from_a_configmap(helm: Path) -> None:
    docs = render(helm, "secrets.customerioApiKey=key-123", "secrets.customerioSiteId=site-9")
    [secret] = by_kind(docs, "Secret")
    assert set(secret["data"]) == {"customerio-api-key", "customerio-site-id"}
    [config] = by_kind(docs, "ConfigMap")
    assert "key-123" not in yaml.safe_dump(config)
    assert config["data"]["MPCIO_BROKER"].startswith("kafka://")
    [sts] = by_kind(docs, "StatefulSet")
    [worker] = sts["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in worker["env"]}
    ref = env["MPCIO_CUSTOMERIO_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], "customerio-api-key")
    assert "key-123" not in yaml.safe_dump(sts)

    existing = render(helm, "secrets.existingSecret=mpcio-creds")
    assert by_kind(existing, "Secret") == []
    [sts] = by_kind(existing, "StatefulSet")
    [worker] = sts["spec"]["template"]["spec"]["containers"]
    names = {
        item["valueFrom"]["secretKeyRef"]["name"] for item in worker["env"] if "valueFrom" in item
    }
    assert names == {"mpcio-creds"}


def test_firehose_ingress_gets_its_secret_and_no_customerio_key(helm: Path) -> None:
    docs = render(helm, *EVERYTHING)
    [deployment] = by_kind(docs, "Deployment")
    [ingress] = deployment["spec"]["template"]["spec"]["containers"]
    assert ingress["args"] == ["ingress"]
    env = {item["name"]: item for item in ingress["env"]}
    assert env["MPCIO_INGRESS_HOST"]["value"] == "0.0.0.0"
    ref = env["MPCIO_INGRESS_SECRET"]["valueFrom"]["secretKeyRef"]
    assert (ref["key"], ref.get("optional", False)) == ("ingress-secret", False)
    assert "MPCIO_CUSTOMERIO_API_KEY" not in env
    assert "MPCIO_SUPPORT_TOKEN" not in env
    assert env["MPCIO_MASK_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "mask-key"
    assert ingress["readinessProbe"]["httpGet"]["path"] == "/healthz"
    [secret] = by_kind(docs, "Secret")
    assert "ingress-secret" in secret["data"]
    [sts] = by_kind(docs, "StatefulSet")
    [worker] = sts["spec"]["template"]["spec"]["containers"]
    assert "MPCIO_INGRESS_SECRET" not in {item["name"] for item in worker["env"]}


def test_services_and_disruption_budget_select_the_workers(helm: Path) -> None:
    docs = render(helm, *EVERYTHING)
    [sts] = by_kind(docs, "StatefulSet")
    worker_labels = sts["spec"]["template"]["metadata"]["labels"]
    [pdb] = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= worker_labels.items()
    services = {doc["metadata"]["name"]: doc for doc in by_kind(docs, "Service")}
    assert services[sts["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    [deployment] = by_kind(docs, "Deployment")
    firehose_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for service in services.values():
        selector = service["spec"]["selector"].items()
        assert (selector <= worker_labels.items()) != (selector <= firehose_labels.items())
    assert not pdb["spec"]["selector"]["matchLabels"].items() <= firehose_labels.items()


def test_prometheus_operator_resources_carry_deploy_alerts(helm: Path) -> None:
    docs = render(helm, *EVERYTHING)
    [rule] = by_kind(docs, "PrometheusRule")
    alerts = yaml.safe_load((REPO / "deploy" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    [monitor] = by_kind(docs, "ServiceMonitor")
    [endpoint] = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    # the alert MpcioWorkerDown watches job="mpcio": the ServiceMonitor names the job so
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    services = by_kind(docs, "Service")
    watched = [
        s
        for s in services
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert watched
    assert {s["metadata"]["labels"]["app.kubernetes.io/name"] for s in watched} == {"mpcio"}
    assert 'up{job="mpcio"}' in yaml.safe_dump(alerts)


def test_optional_resources_are_off_by_default(helm: Path) -> None:
    kinds = sorted(doc["kind"] for doc in render(helm))
    assert kinds == [
        "ConfigMap",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "Service",
        "StatefulSet",
    ]
