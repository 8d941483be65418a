"""Several SageMaker hosts on one machine: one real ``train`` process per host, each with
its own base dir and ``resourceconfig.json``, on its own loopback address.

Host ``algo-i`` is ``127.0.16.i`` (this suite's range: other suites use other
``127.0.k.x``), told to smserve through the test-only ``SMSERVE_HOST_ADDRESSES``; the
scheduler's port is a free one. Each host is pinned to one core (``taskset``), as on a
machine of its own with one CPU, so it starts one Dask worker. A test stops every process
it started, by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psutil

from tests.support import free_port
from tests.support.training import TRAIN, file_channel, sagemaker_tree, train_env

ROOT = Path(__file__).resolve().parents[2]
SUBNET = "127.0.16"


def host_name(index: int) -> str:
    return f"algo-{index}"


class Host:
    """One host's ``train`` process (started by ``Job.start``)."""

    def __init__(self, name: str, base: Path, core: int | None) -> None:
        self.name = name
        self.base = base
        self.core = core
        self.proc: subprocess.Popen | None = None
        self.log_path = base / "train.log"

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def failure(self) -> str:
        path = self.base / "output" / "failure"
        return path.read_text() if path.exists() else ""

    def start(self, env: dict[str, str], args: list[str]) -> Host:
        command = [str(TRAIN), "--base-dir", str(self.base), *args]
        if self.core is not None and shutil.which("taskset"):
            command = ["taskset", "-c", str(self.core), *command]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                command,
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} did not finish in {timeout}s:\n{self.log}"
            ) from None

    def processes(self) -> list[psutil.Process]:
        """``train`` and everything it started (its Dask workers have sessions of their
        own, so a process group would miss them)."""
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """The host dies: SIGKILL to every process it runs."""
        for proc in self.processes():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)


class Job:
    """A training job over ``count`` hosts, every host with the same hyperparameters and
    a full copy of the ``train`` channel."""

    def __init__(
        self,
        work: Path,
        count: int,
        hyperparameters: dict[str, str],
        data: Path,
        channel: dict[str, str] | None = None,
    ) -> None:
        self.names = [host_name(i) for i in range(1, count + 1)]
        cores = os.cpu_count() or 1
        self.hosts = []
        for index, name in enumerate(self.names):
            base = sagemaker_tree(
                work / name,
                hyperparameters=hyperparameters,
                channels={"train": channel or file_channel()},
                hosts=self.names,
                current_host=name,
            )
            (base / "input/data/train").mkdir(parents=True, exist_ok=True)
            shutil.copy(data, base / "input/data/train" / data.name)
            self.hosts.append(Host(name, base, index % cores if cores > 1 else None))
        self.addresses = {name: f"{SUBNET}.{i}" for i, name in enumerate(self.names, 1)}
        self.env = train_env(
            {
                "SMSERVE_HOST_ADDRESSES": ",".join(
                    f"{name}={address}" for name, address in self.addresses.items()
                ),
                "SMSERVE_DASK_SCHEDULER_PORT": str(free_port(self.addresses["algo-1"])),
            },
            work / "state",
        )

    def host(self, name: str) -> Host:
        return next(host for host in self.hosts if host.name == name)

    def start(self, *names: str, args: tuple[str, ...] = ()) -> Job:
        """Start the given hosts (all by default), the leader last, as a slow leader
        would be."""
        for name in sorted(names or self.names, reverse=True):
            self.host(name).start(self.env, list(args))
        return self

    def wait(self, timeout: float = 120) -> dict[str, int]:
        return {h.name: h.wait(timeout) for h in self.hosts if h.proc is not None}

    def stop(self) -> None:
        """Whatever is still running after the test: killed, by PID."""
        for host in self.hosts:
            if host.proc is not None and host.proc.poll() is None:
                host.kill()
                host.proc.wait()
            for proc in host.processes():
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass

    def logs(self) -> str:
        return "\n".join(f"--- {h.name}\n{h.log}" for h in self.hosts)


def metadata(base: Path) -> dict[str, Any]:
    return json.loads((base / "model" / "metadata.json").read_text())


def task_context() -> tuple[bool, str]:
    """Run as a task of the search on a worker: whether that worker has made a Dask
    client, and the joblib backend the task's own joblib calls get."""
    import joblib
    from distributed import get_worker

    backend, _ = joblib.parallel.get_active_backend()
    return get_worker()._client is not None, type(backend).__name__


def task_context_made_a_client(dask_worker: Any) -> bool:
    """``Client.run`` on every worker: whether it has made a Dask client."""
    return dask_worker._client is not None
