"""deploy/k8s/ without a cluster: every manifest against the Kubernetes schemas (kubernetes-validate, strict, offline),
the links between them (labels, ports, names, the HPA's metric and the adapter rule that serves it), the settings the
pods get, the shutdown timing, and the preStop drain run against a real server."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets
import yaml
from pydantic import ValidationError

from models.defaults import FRAME_S
from server.metrics import Metrics
from server.settings import Settings
from tests.server.harness import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATION = "kustomization.yaml"
ADAPTER_RULES = "prometheus-adapter-rules.yaml"  # for the adapter's install, outside the kustomization
NOT_SETTINGS = {"LFM_AUDIO_CACHE"}


def tool(name: str, package: str) -> str:
    """A validator from the dev extras: next to this interpreter (the venv) or on PATH; missing fails."""
    here = Path(sys.executable).parent / name
    path = str(here) if here.is_file() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install {package} (in the dev extras: pip install -e '.[dev]')")
    return path


def validate(*files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("kubernetes-validate", "kubernetes-validate"), "--strict", *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def manifest(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def by_kind() -> dict[str, dict]:
    docs = [manifest(name) for name in manifest(KUSTOMIZATION)["resources"]]
    return {doc["kind"]: doc for doc in docs}


def container(deployment: dict) -> dict:
    (one,) = deployment["spec"]["template"]["spec"]["containers"]
    return one


def plain_env(deployment: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(deployment)["env"] if "value" in e}


def env_with_secret(deployment: dict, secret: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it: values, and secretKeyRefs resolved from `secret`."""
    out = {}
    for e in container(deployment)["env"]:
        if "value" in e:
            out[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"], e
            out[e["name"]] = secret["stringData"][ref["key"]]
    return out


def settings_from(env: dict[str, str], monkeypatch) -> Settings:
    for name in [n for n in os.environ if n.startswith("LFM_AUDIO_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def prestop(deployment: dict) -> list[str]:
    return container(deployment)["lifecycle"]["preStop"]["exec"]["command"]


def test_manifests_pass_the_schemas():
    files = sorted(p for p in K8S.glob("*.yaml") if p.name != KUSTOMIZATION)
    run = validate(*files)
    assert run.returncode == 0, run.stdout + run.stderr
    for f in files:
        assert f"{f.name} passed" in run.stdout + run.stderr, run.stdout + run.stderr


def test_the_schemas_catch_a_misspelled_field(tmp_path):
    broken = manifest("deployment.yaml")
    spec = broken["spec"]["template"]["spec"]
    spec["terminationGracePeriodSecond"] = spec.pop("terminationGracePeriodSeconds")
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(broken))
    run = validate(path)
    assert run.returncode != 0 and "terminationGracePeriodSecond" in run.stdout + run.stderr


def test_kustomization_lists_every_manifest():
    listed = manifest(KUSTOMIZATION)["resources"]
    present = sorted(p.name for p in K8S.glob("*.yaml") if p.name not in (KUSTOMIZATION, ADAPTER_RULES))
    assert sorted(listed) == present
    (image,) = manifest(KUSTOMIZATION)["images"]
    assert image["name"] == container(manifest("deployment.yaml"))["image"]


def test_probes_ports_labels_and_user():
    kinds = by_kind()
    deployment, service, pdb = kinds["Deployment"], kinds["Service"], kinds["PodDisruptionBudget"]
    pod = deployment["spec"]["template"]
    c = container(deployment)
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    (port,) = c["ports"]
    env = plain_env(deployment)
    annotations = pod["metadata"]["annotations"]
    assert port["containerPort"] == int(env["LFM_AUDIO_PORT"]) == int(annotations["prometheus.io/port"])
    assert env["LFM_AUDIO_HOST"] == "0.0.0.0"
    assert annotations["prometheus.io/path"] == "/metrics"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] == port["name"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    labels = pod["metadata"]["labels"]
    for selector in (deployment["spec"]["selector"]["matchLabels"], service["spec"]["selector"],
                     pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    # the image's user (Dockerfile USER) is the pod's
    user = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("USER ")]
    assert pod["spec"]["securityContext"]["runAsUser"] == int(user[-1].split(":")[0])
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_env_is_settings_and_the_placeholder_secret_refuses_to_start(monkeypatch):
    kinds = by_kind()
    deployment, secret = kinds["Deployment"], kinds["Secret"]
    names = {e["name"] for e in container(deployment)["env"]}
    fields = {"LFM_AUDIO_" + name.upper() for name in Settings.model_fields}
    assert names - NOT_SETTINGS <= fields, names - fields
    env = env_with_secret(deployment, secret)
    with pytest.raises(ValidationError, match="secret_key"):  # the shipped placeholder must be replaced
        settings_from(env, monkeypatch)
    secret["stringData"] = {"api-keys": "key-one,key-two", "secret-key": "0123456789abcdef0123456789abcdef"}
    settings = settings_from(env_with_secret(deployment, secret), monkeypatch)
    assert settings.api_keys == ["key-one", "key-two"] and settings.secret_key == secret["stringData"]["secret-key"]
    assert settings.max_sessions == int(plain_env(deployment)["LFM_AUDIO_MAX_SESSIONS"])
    # the pod annotations' scrape sends no key: with keys configured, /metrics must be opened for it
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert settings.metrics_public is True


def test_shutdown_timing_covers_the_longest_response():
    """A response lasts at most max_response_tokens frames of audio, generated at real time or faster; the drain
    and the server's grace each cover it, and the pod is not killed before both are over."""
    deployment = manifest("deployment.yaml")
    env = plain_env(deployment)
    longest_s = int(env["LFM_AUDIO_MAX_RESPONSE_TOKENS"]) * FRAME_S
    grace_s = float(env["LFM_AUDIO_SHUTDOWN_GRACE_S"])
    delay_s, budget_s = map(float, prestop(deployment)[3:5])
    assert grace_s >= longest_s and budget_s >= longest_s
    # uvicorn: running requests get grace + 1 s; then the lifespan: running responses get grace
    worst_s = delay_s + budget_s + (grace_s + 1) + grace_s
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > worst_s


def test_hpa_scales_on_a_metric_the_server_exports_through_the_adapter():
    kinds = by_kind()
    hpa, deployment = kinds["HorizontalPodAutoscaler"], kinds["Deployment"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    (rule,) = yaml.safe_load(manifest(ADAPTER_RULES)["data"]["config.yaml"])["rules"]
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    series = rule["seriesQuery"].split("{")[0].strip("'\"")
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    exported, _ = Metrics({"version": "0", "model": "m", "decoder": "d", "device": "cpu"}).render()
    assert f"# TYPE {series} gauge" in exported.decode()
    target = float(metric["pods"]["target"]["averageValue"])
    assert 0 < target < int(plain_env(deployment)["LFM_AUDIO_MAX_SESSIONS"])  # scale out before sessions are refused
    assert hpa["spec"]["minReplicas"] >= 2  # with the PDB, a drain never takes the last replica
    assert kinds["PodDisruptionBudget"]["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


@pytest.mark.slow
def test_prestop_waits_for_open_sessions(tiny_dir, tmp_path):
    """The preStop command, with a 0 s delay and a 15 s budget, against a real server: it returns at once with no
    session, waits while a WebSocket session is open, and returns soon after it closes."""
    command = prestop(manifest("deployment.yaml"))
    assert command[0] == "python"  # the image puts its venv first on PATH
    hook = [sys.executable, *command[1:3], "0", "15"]

    async def scenario(server: ServerProcess) -> None:
        env = {"LFM_AUDIO_PORT": str(server.port), "PATH": ""}
        t0 = time.monotonic()
        idle = await asyncio.create_subprocess_exec(*hook, env=env)
        assert await asyncio.wait_for(idle.wait(), 10) == 0
        assert time.monotonic() - t0 < 5
        async with websockets.connect(server.ws + "/realtime?model=lfm-audio", open_timeout=30) as ws:
            assert '"session.created"' in await asyncio.wait_for(ws.recv(), 30)
            busy = await asyncio.create_subprocess_exec(*hook, env=env)
            await asyncio.sleep(3)
            assert busy.returncode is None  # still draining
        t1 = time.monotonic()
        assert await asyncio.wait_for(busy.wait(), 10) == 0
        assert time.monotonic() - t1 < 5  # polls every second; the slot is freed as the session closes

    with ServerProcess(tiny_dir, tmp_path) as server:
        asyncio.run(scenario(server))
