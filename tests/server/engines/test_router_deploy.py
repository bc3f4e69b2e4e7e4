"""The deployment examples (deploy/compose, deploy/k8s) cannot run here (no GPU, no Docker, no
cluster), so this checks what can be checked: every file parses, the gateway settings inside
them load with the gateway's own loader, and the settings agree with the vLLM servers they
describe (names, ports, the flags the vLLM engine relies on)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from server.config import Settings, load_settings
from server.errors import ConfigError

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
REQUIRED_VLLM_FLAGS = ("--enable-lora", "--structured-outputs-config.backend=guidance", "--served-model-name=qwen")


def documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.mark.parametrize(
    "path",
    sorted(DEPLOY.glob("compose/*.y*ml")) + sorted(DEPLOY.glob("k8s/*.yaml")),
    ids=lambda p: str(p.relative_to(DEPLOY)),
)
def test_every_file_parses(path: Path) -> None:
    assert documents(path)


def _settings(text: str, tmp_path: Path) -> Settings:
    """The shipped settings, with their key files (mounted secrets there) written here."""
    config = tmp_path / "callgate.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match="cannot read the keys file"):  # no secret, no start
        load_settings(config)
    data = yaml.safe_load(text)
    for field in ("api_keys_file", "admin_keys_file"):
        secret = tmp_path / field
        secret.write_text(f"sk-{field}-0123456789\n")
        text = text.replace(data["auth"][field], str(secret))
    config.write_text(text)
    settings = load_settings(config)
    assert settings.auth.api_keys and settings.auth.admin_keys and not settings.auth.allow_open
    return settings


def test_shipped_configs_take_their_keys_from_a_secret() -> None:
    compose = documents(DEPLOY / "compose" / "docker-compose.yml")[0]
    auth = yaml.safe_load((DEPLOY / "compose" / "callgate.yaml").read_text())["auth"]
    assert {f"/run/secrets/{name}" for name in compose["services"]["gateway"]["secrets"]} == set(auth.values())
    assert set(compose["secrets"]) == set(compose["services"]["gateway"]["secrets"])
    config_map = documents(DEPLOY / "k8s" / "callgate-config.yaml")[0]
    auth = yaml.safe_load(config_map["data"]["callgate.yaml"])["auth"]
    pod = documents(DEPLOY / "k8s" / "gateway.yaml")[0]["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "keys")
    assert {"name": "keys", "secret": {"secretName": "callgate-keys"}} in pod["volumes"]
    assert all(path.startswith(mount["mountPath"] + "/") for path in auth.values())


def test_compose_gateway_settings_load_and_point_at_its_vllm_services(tmp_path: Path) -> None:
    compose = documents(DEPLOY / "compose" / "docker-compose.yml")[0]
    settings = _settings((DEPLOY / "compose" / "callgate.yaml").read_text(), tmp_path)
    services = compose["services"]
    assert settings.engine.kind == "vllm" and len(settings.engine.urls) == 2
    for url in settings.engine.urls:
        name, port = url.removeprefix("http://").split(":")
        args = services[name]["command"]
        assert f"--port={port}" in args and all(flag in args for flag in REQUIRED_VLLM_FLAGS), name
        assert services[name]["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "--tensor-parallel-size=2" in services["vllm-tp"]["command"]  # TP inside one server
    assert settings.engine.upstream_model == "qwen"
    assert settings.adapters.max_loaded <= _flag(services["vllm-tp"]["command"], "--max-loras")
    # The adapters folder the gateway sees maps onto the one vLLM mounts.
    ((local, remote),) = settings.engine.path_map.items()
    assert f"../../adapters:{remote}:ro" in services["vllm-tp"]["volumes"]
    assert any(v.startswith(f"../../adapters:{local}") for v in services["gateway"]["volumes"])
    assert services["gateway"]["command"] == ["--config", "/etc/callgate/callgate.yaml"]


def test_k8s_config_map_loads_and_names_each_statefulset_pod(tmp_path: Path) -> None:
    config_map = documents(DEPLOY / "k8s" / "callgate-config.yaml")[0]
    settings = _settings(config_map["data"]["callgate.yaml"], tmp_path)
    service, stateful = documents(DEPLOY / "k8s" / "vllm.yaml")
    assert service["spec"]["clusterIP"] == "None" and stateful["spec"]["serviceName"] == service["metadata"]["name"]
    name, replicas = stateful["metadata"]["name"], stateful["spec"]["replicas"]
    assert settings.engine.urls == [f"http://{name}-{i}.{service['metadata']['name']}:8000" for i in range(replicas)]
    container = stateful["spec"]["template"]["spec"]["containers"][0]
    assert all(flag in container["args"] for flag in REQUIRED_VLLM_FLAGS)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == _flag(container["args"], "--tensor-parallel-size")
    assert {p["httpGet"]["path"] for p in (container["readinessProbe"], container["livenessProbe"])} == {"/health"}


def test_k8s_gateway_mounts_its_config_and_probes_health() -> None:
    deployment, service = documents(DEPLOY / "k8s" / "gateway.yaml")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["--config", "/etc/callgate/callgate.yaml"]
    assert {"name": "config", "configMap": {"name": "callgate-config"}} in pod["volumes"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    kustomization = documents(DEPLOY / "k8s" / "kustomization.yaml")[0]
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "kustomization.yaml"
    )


def _flag(args: list[str], name: str) -> int:
    return int(next(a.split("=", 1)[1] for a in args if a.startswith(name + "=")))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"engine.kind": "vllm"}, "needs engine.urls"),
        ({"engine.urls": ["http://a:8000"]}, "embedded engine reads model.path"),
        ({"engine.kind": "llama-server", "engine.urls": ["a:8000"]}, "http:// or https://"),
        ({"engine.kind": "tgi", "engine.urls": ["http://a:8000"]}, "engine.kind"),
    ],
)
def test_engine_settings_that_cannot_work_are_refused_at_start_up(flags: dict[str, Any], message: str) -> None:
    from server.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_settings(None, **flags)


def test_replicas_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLGATE_ENGINE__KIND", "vllm")
    monkeypatch.setenv("CALLGATE_ENGINE__URLS", '["http://vllm-a:8000", "http://vllm-b:8000"]')
    settings = load_settings(None)
    assert settings.engine.kind == "vllm" and settings.engine.urls == ["http://vllm-a:8000", "http://vllm-b:8000"]
