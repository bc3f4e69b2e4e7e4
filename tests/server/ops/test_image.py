"""The shipped image, built and run: the repository's Dockerfile built with podman on a Debian 12
base made here (deploy/build-local-base.sh; no registry is reachable) from this checkout's
wheels (deploy/build-image.sh), then the container serving the tiny model answers /health and
a chat completion with a grammar-constrained tool call. Skips, saying why, where podman, the
base image or a prebuilt llama-cpp-python wheel is missing (`make image-base` makes the base).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.upstreams import free_port
from training.demo.tiny import TinyModel

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]
BASE = "localhost/callgate-base:bookworm"
TAG = "localhost/callgate:test"
KEY = "sk-image-test-0123456789"
PODMAN = ["podman", "--runtime=runc", "--cgroup-manager=cgroupfs"]  # what this VM allows (deploy/containers.conf)
ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "deploy" / "containers.conf")}


def podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def need_podman_and_base() -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (`make image-base` installs podman, runc and debootstrap)")
    if podman("image", "exists", BASE).returncode != 0:
        pytest.skip(f"the local base image {BASE} is missing (`make image-base` or deploy/build-local-base.sh)")
    cached = subprocess.run(
        [sys.executable, "-m", "pip", "cache", "list", "llama_cpp_python"], capture_output=True, text=True, check=False
    ).stdout
    if ".whl" not in cached:
        pytest.skip("no llama-cpp-python wheel in pip's cache: building the image would compile it (~6 min)")


@pytest.fixture(scope="module")
def container(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    need_podman_and_base()
    models = tmp_path_factory.mktemp("image_models")
    models.chmod(0o755)  # pytest's folders are 0700: the image's user (callgate) could not read them
    shutil.copy(tiny_model.gguf, models / "model.gguf")
    start = time.monotonic()
    built = subprocess.run(
        ["sh", "deploy/build-image.sh", TAG],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**ENV, "PY": sys.executable},
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    print(f"\nimage built in {time.monotonic() - start:.0f} s")
    port, name = free_port(), f"callgate-test-{os.getpid()}"
    run = podman(
        "run",
        "-d",
        "--name",
        name,
        "-p",
        f"127.0.0.1:{port}:8000",
        "-v",
        f"{models}:/models:ro",
        "-e",
        f'CALLGATE_AUTH__API_KEYS=["{KEY}"]',
        TAG,
        "--model",
        "/models/model.gguf",
        "--served-model-name",
        "tiny",
    )
    assert run.returncode == 0, run.stderr
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url + "/health", name)
        yield url
    finally:
        podman("rm", "-f", name)


def wait_up(url: str, name: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the container did not answer: {podman('logs', name).stderr[-3000:]}")


def test_the_image_serves_health_and_a_tool_call(container: str) -> None:
    assert httpx.get(container + "/health").json() == {"status": "ok"}  # keys set: a bare liveness answer
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(container + "/health", headers=auth).json()["models"] == ["tiny"]
    assert httpx.get(container + "/v1/models").status_code == 401  # 0.0.0.0 inside, so keys are required
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 12}},
                "required": ["city"],
            },
        },
    }
    with openai.OpenAI(base_url=container + "/v1", api_key=KEY, max_retries=0, timeout=60) as client:
        answer = client.chat.completions.create(  # type: ignore[call-overload]
            model="tiny",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            max_tokens=48,
            tools=[weather],
            tool_choice="required",
            seed=1,
        )
    calls = answer.choices[0].message.tool_calls or []
    assert calls and all(c.function.name == "get_weather" and "city" in c.function.arguments for c in calls)
