"""Processes and services of distributed mode for tests: Redis, a `scribbleflow worker`,
`scribbleflow serve` with a broker. Everything on loopback, every run on its own queues."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from clients.server_process import ChildProcess, ServerProcess, free_port
from tests.helpers import REPO

COMPOSE_FILE = REPO / "docker-compose.yml"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
WORKER_READY_SECONDS = 120
SERVER_READY_SECONDS = 120


def compose_services() -> dict:
    """docker-compose.yml's services (YAML anchors and merge keys resolved)."""
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]


def compose_command(service: str) -> list[str]:
    """The command the compose file runs for ``service``, with this environment's ``scribbleflow``."""
    command = list(compose_services()[service]["command"])
    assert command[0] == "scribbleflow", command
    return [str(Path(sys.executable).parent / "scribbleflow"), *command[1:]]


def redis_answers(port: int = REDIS_PORT) -> bool:
    import redis

    try:
        return bool(redis.Redis(host=REDIS_HOST, port=port, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


def ensure_redis() -> None:
    """Start the machine's Redis through tests/ensure_services.sh when it does not answer."""
    if not redis_answers():
        subprocess.run(["bash", str(REPO / "tests" / "ensure_services.sh")], check=False, timeout=120)
    if not redis_answers():
        if os.environ.get("CI"):
            pytest.fail(f"Redis must be reachable in CI on {REDIS_HOST}:{REDIS_PORT}")
        pytest.skip(f"Redis is not reachable on {REDIS_HOST}:{REDIS_PORT}")


def distributed_env(tmp_path: Path, broker_url: str, **extra: str) -> dict[str, str]:
    """Environment of a server and its workers: a tiny model, few steps, a unique queue prefix."""
    env = dict(os.environ)
    env.update(
        SCRIBBLEFLOW_DATA_DIR=str(tmp_path / "data"),
        SCRIBBLEFLOW_BROKER_URL=broker_url,
        SCRIBBLEFLOW_QUEUE_PREFIX=f"test-{uuid.uuid4().hex[:10]}.",
        SCRIBBLEFLOW_MODEL_SIZE="32",
        SCRIBBLEFLOW_MODEL_CHANNELS="[4, 8, 16]",
        SCRIBBLEFLOW_ONLINE_STEPS="40",
        SCRIBBLEFLOW_VALIDATION_EVERY="0",
        SCRIBBLEFLOW_REPLAY_CAPACITY="1",
        SCRIBBLEFLOW_COMPUTE_THREADS="1",
        SCRIBBLEFLOW_LOG_LEVEL="warning",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    env.update(extra)
    return env


class ComposeServerProcess(ServerProcess):
    """The compose file's server command (``scribbleflow serve``) on a free loopback port."""

    def __init__(self, env: dict[str, str], log_path: Path):
        super().__init__(env, log_path, command=compose_command("server"), cwd=REPO,
                         startup_seconds=SERVER_READY_SECONDS)


class WorkerProcess(ChildProcess):
    """The compose file's worker command (``scribbleflow worker --queues train --concurrency 1``,
    a real Celery worker) as a subprocess, named so that several can run side by side."""

    def __init__(self, env: dict[str, str], log_path: Path, name: str = "w1"):
        self.env = env
        self.log_path = log_path
        self.name = name
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*compose_command("worker-cpu"), "--hostname", f"{self.name}-{uuid.uuid4().hex[:6]}@%h"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        )
        deadline = time.monotonic() + WORKER_READY_SECONDS
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode("utf-8", "replace")
            if " ready." in text:
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{text}")
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready within {WORKER_READY_SECONDS} s:\n{self.log_path.read_text()}")



class PrivateRedis:
    """A Redis server of the test's own on a free loopback port, append-only, in ``folder``:
    it can be stopped and started again without disturbing the machine's Redis."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=(self.folder / "redis.log").open("ab"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not redis_answers(self.port):
            assert self.process.poll() is None, (self.folder / "redis.log").read_text()
            assert time.monotonic() < deadline, "the private Redis did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: Redis flushes its append-only file and exits
            self.process.wait(timeout=30)
