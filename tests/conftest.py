"""Shared fixtures: tiny real models, SageMaker base dirs, and the real server.

``ServeProcess`` starts ``docker/serve`` (nginx + gunicorn) on a free loopback port, polls
it to a deadline and always stops it by PID.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression
from sklearn.tree import DecisionTreeClassifier

ROOT = Path(__file__).resolve().parent.parent
SERVE = ROOT / "docker" / "serve"
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_model(
    base: Path, model: Any, metadata: dict | None = None, name: str = "model.joblib"
) -> Path:
    """A SageMaker base dir whose model/ holds ``model`` (and ``metadata.json``)."""
    model_dir = base / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / name
    joblib.dump(model, path)
    if metadata is not None:
        (model_dir / "metadata.json").write_text(json.dumps(metadata))
    return path


@pytest.fixture(scope="session")
def iris() -> tuple[np.ndarray, np.ndarray]:
    return load_iris(return_X_y=True)


@pytest.fixture(scope="session")
def iris_model(iris) -> DecisionTreeClassifier:
    X, y = iris
    return DecisionTreeClassifier(random_state=0).fit(X, y)


@pytest.fixture(scope="session")
def iris_base(tmp_path_factory, iris_model) -> Path:
    """A base dir with the iris tree as model.joblib + metadata.json."""
    base = tmp_path_factory.mktemp("iris_base")
    write_model(
        base,
        iris_model,
        {"estimator": "sklearn.tree.DecisionTreeClassifier", "n_features": 4},
    )
    return base


@pytest.fixture(scope="session")
def regressor_1f() -> LinearRegression:
    """A single-feature model: y = 2x + 1."""
    X = np.arange(10, dtype=float).reshape(-1, 1)
    return LinearRegression().fit(X, 2 * X[:, 0] + 1)


class ServeProcess:
    """The real ``docker/serve`` on a free loopback port, with its own state dir."""

    def __init__(
        self,
        base_dir: Path,
        work_dir: Path,
        env: dict[str, str] | None = None,
        workers: int = 2,
        append_log: bool = True,
    ) -> None:
        self.base_dir = base_dir
        self.port = free_port()
        self.log_path = work_dir / "serve.log"
        self.env = {
            **os.environ,
            "SAGEMAKER_BASE_DIR": str(base_dir),
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "SMSERVE_BIND_HOST": "127.0.0.1",
            "SMSERVE_STATE_DIR": str(work_dir / "state"),
            "SMSERVE_PYTHON": PYTHON,
            "MODEL_SERVER_WORKERS": str(workers),
            "TMPDIR": str(work_dir),
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None
        # False: `serve > serve.log 2>&1` (no O_APPEND), as a user's shell would open it.
        self.log_mode = "ab" if append_log else "wb"

    def start(
        self, expect_status: int | None = 200, deadline: float = 60
    ) -> ServeProcess:
        self._log = self.log_path.open(self.log_mode)
        self.proc = subprocess.Popen(
            [str(SERVE)],
            env=self.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.wait_up(expect_status, deadline)
        return self

    def wait_up(self, expect_status: int | None, deadline: float) -> None:
        """Poll /ping until the app itself answers (with ``expect_status`` if given)."""
        end = time.monotonic() + deadline
        last = None
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"serve exited with {self.proc.returncode}:\n{self.log}"
                )
            try:
                status, _, body = self.request("GET", "/ping", timeout=2)
                last = (status, body)
                app_answered = status == 200 or b"model_not_ready" in body
                if app_answered and (expect_status is None or status == expect_status):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(
            f"serve not up in {deadline}s (last /ping {last}):\n{self.log}"
        )

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a new connection; exactly the headers given (plus Host and
        Content-Length)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                data,
            )
        finally:
            conn.close()

    def invoke(
        self, body: bytes, content_type: str | None = "text/csv", **headers: str
    ):
        all_headers = dict(headers)
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        return self.request("POST", "/invocations", body, all_headers)

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def child_pids(self) -> list[int]:
        """The PIDs of the processes serve started (nginx and gunicorn masters)."""
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
            capture_output=True,
            text=True,
        ).stdout
        return [int(p) for p in out.split()]

    def stop(self, timeout: float = 35) -> int:
        """SIGTERM to serve, as SageMaker does; SIGKILL to its process group if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(
                f"serve did not stop within {timeout}s:\n{self.log}"
            ) from None
        finally:
            self._log.close()


@pytest.fixture
def serve_factory(tmp_path) -> Iterator:
    """Start servers with ``serve_factory(base_dir, env=..., workers=...)``; all are
    stopped at the end of the test."""
    started: list[ServeProcess] = []

    def start(
        base_dir: Path, expect_status: int | None = 200, **kwargs: Any
    ) -> ServeProcess:
        work = tmp_path / f"serve{len(started)}"
        work.mkdir()
        server = ServeProcess(base_dir, work, **kwargs)
        started.append(server)
        return server.start(expect_status)

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(iris_base, tmp_path_factory) -> Iterator[ServeProcess]:
    """The iris tree served by the real stack, two workers, default settings."""
    server = ServeProcess(iris_base, tmp_path_factory.mktemp("server"))
    server.start()
    yield server
    server.stop()
