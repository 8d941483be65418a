"""Prometheus metrics (``modelapp/metrics.py``) through the real server and a real
Prometheus: the totals over every worker are exact, also over a worker killed midway and
replaced; the text parses with ``prometheus_client.parser``; every metric exposed is in
``docs/metrics.md``; with ``SMSERVE_METRICS_PORT`` unset no process listens on a port of
its own and nothing of the metrics is imported on the request path.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ROOT, free_port
from tests.support.servers import PYTHON, ServeProcess, wait_for

pytestmark = pytest.mark.server

RECORD = b"5.1,3.5,1.4,0.2\n"
BATCH = b"5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n6.0,2.2,4.0,1.0\n"
DOC = ROOT / "docs" / "metrics.md"


def listening_ports(pid: int) -> set[int]:
    """The TCP ports ``pid`` listens on (its socket inodes in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# The metrics listen on their own address (SMSERVE_METRICS_HOST), another loopback one.
METRICS_HOST = "127.0.0.2"


def scrape(port: int, host: str = METRICS_HOST) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def samples(text: str) -> list[Any]:
    """Every sample of the exposition, parsed by prometheus_client's own parser."""
    return [
        s for family in text_string_to_metric_families(text) for s in family.samples
    ]


def total(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples(text)
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def invoke_concurrently(server: ServeProcess, bodies: list[bytes]) -> list[bytes]:
    """The response bodies of ``bodies`` sent four at a time (over both workers), each
    a success."""

    def one(body: bytes) -> bytes:
        status, _, answer = server.invoke(body)
        assert status == HTTPStatus.OK, answer
        return answer

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, bodies))


def documented() -> dict[str, set[str]]:
    """docs/metrics.md's table: metric name -> its labels."""
    rows = re.findall(r"^\| `(smserve_\w+)` \|[^|]+\|([^|]*)\|", DOC.read_text(), re.M)
    return {name: set(re.findall(r"`(\w+)`", labels)) for name, labels in rows}


class Prometheus:
    """The real ``prometheus`` (Debian's package) on a free loopback port, scraping one
    target every second, with its storage in a temp dir; stopped by PID."""

    def __init__(self, work: Path, target_port: int) -> None:
        self.port = free_port()
        config = work / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "smserve",
                            "static_configs": [
                                {"targets": [f"{METRICS_HOST}:{target_port}"]}
                            ],
                        }
                    ],
                }
            )
        )
        self.log = (work / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        wait_for(self.ready, what="prometheus ready")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/-/ready", timeout=2
            ) as response:
                return response.status == HTTPStatus.OK
        except OSError:
            return False

    def query(self, promql: str) -> float | None:
        """The value of an instant query's one result (None: no result)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": promql}
        )
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def metrics_server(iris_base, tmp_path_factory) -> Iterator[ServeProcess]:
    """The iris tree, two workers, metrics on a free port of another loopback address."""
    server = ServeProcess(
        iris_base,
        tmp_path_factory.mktemp("metrics"),
        env={
            "SMSERVE_METRICS_PORT": str(free_port(METRICS_HOST)),
            "SMSERVE_METRICS_HOST": METRICS_HOST,
        },
        workers=2,
    )
    server.metrics_port = int(server.env["SMSERVE_METRICS_PORT"])  # type: ignore[attr-defined]
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prometheus(metrics_server, tmp_path_factory) -> Iterator[Prometheus]:
    prometheus = Prometheus(
        tmp_path_factory.mktemp("prometheus"), metrics_server.metrics_port
    )
    yield prometheus
    prometheus.stop()


def test_totals_are_exact_over_a_killed_worker(metrics_server, prometheus):
    """N invocations over two workers (SMSERVE_METRICS_PORT set), one of them SIGKILLed
    midway and replaced by gunicorn: Prometheus' query API and the text exposition both
    count exactly N successes in smserve_invocations_total, their records in
    smserve_invocation_records_total, their bytes in
    smserve_invocation_request_bytes_total and smserve_invocation_response_bytes_total,
    the error by its code; smserve_invocation_duration_seconds and
    smserve_invocation_phase_duration_seconds observe each (a histogram quantile comes
    back); smserve_invocations_in_flight is back to 0; smserve_worker_starts_total
    counts 3 and smserve_worker_exits_total one killed; smserve_ping_ready,
    smserve_model_loaded, smserve_model_memory_bytes (the artifact's size),
    smserve_model_loads_total, smserve_model_load_duration_seconds,
    smserve_model_warmup_duration_seconds and smserve_build_info describe the one
    model's server."""
    server = metrics_server
    before = scrape(server.metrics_port)
    assert total(before, "smserve_invocations_total") == 0
    assert total(before, "smserve_ping_ready") == 1
    assert total(before, "smserve_model_loads_total", result="loaded") == 1
    assert total(before, "smserve_model_load_duration_seconds_count") == 1
    assert total(before, "smserve_model_warmup_duration_seconds_count") == 1
    artifact = server.base_dir / "model" / "model.joblib"
    assert total(before, "smserve_model_loaded", model="model") == 1
    assert total(before, "smserve_model_memory_bytes", model="model") == (
        artifact.stat().st_size
    )

    bodies = invoke_concurrently(server, [RECORD, BATCH] * 10)
    # The latency histograms are written within a second (modelapp.metrics.flush); the
    # counts at once.
    wait_for(
        lambda: (
            total(
                scrape(server.metrics_port), "smserve_invocation_duration_seconds_count"
            )
            == 20
        ),
        what="the first 20 latencies written",
    )
    workers = server.gunicorn_workers()
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: (w := server.gunicorn_workers()) and len(w) == 2 and victim not in w,
        what="the killed worker replaced",
    )
    bodies += invoke_concurrently(server, [RECORD, BATCH] * 10)
    status, _, body = server.invoke(b"5.1,oops,1.4,0.2\n", Accept="application/json")
    assert status == HTTPStatus.BAD_REQUEST
    code = json.loads(body)["code"]

    text = wait_for(
        lambda: (
            (text := scrape(server.metrics_port))
            and total(text, "smserve_invocation_duration_seconds_count") == 41
            and text
        ),
        what="every latency written",
    )
    assert total(text, "smserve_invocations_total", status="200", model="model") == 40
    assert total(text, "smserve_invocation_records_total", status="200") == 80
    assert total(text, "smserve_invocations_total", status="400", code=code) == 1
    assert total(text, "smserve_invocation_request_bytes_total", status="200") == (
        20 * (len(RECORD) + len(BATCH))
    )
    responses = total(text, "smserve_invocation_response_bytes_total", status="200")
    assert responses == sum(len(b) for b in bodies)
    assert total(text, "smserve_invocation_duration_seconds_count") == 41
    for phase in ("parse", "predict", "render"):
        assert (
            total(text, "smserve_invocation_phase_duration_seconds_count", phase=phase)
            == 40
        )
    assert total(text, "smserve_worker_exits_total", reason="killed") == 1
    assert total(text, "smserve_worker_starts_total") == 3
    assert total(text, "smserve_invocations_in_flight") == 0
    (sample,) = [s for s in samples(text) if s.name == "smserve_build_info"]
    assert sample.labels["version"]
    assert sample.labels["scikit_learn"]

    wait_for(
        lambda: prometheus.query('sum(smserve_invocations_total{status="200"})') == 40,
        what="Prometheus scraped all 40 successes",
    )
    assert prometheus.query("sum(smserve_invocation_records_total)") == 80
    assert prometheus.query('sum(smserve_worker_exits_total{reason="killed"})') == 1
    median = prometheus.query(
        "histogram_quantile(0.5, sum by (le) (smserve_invocation_duration_seconds_bucket))"
    )
    assert median is not None
    assert 0 < median < 60
    assert math.isfinite(median)


def test_every_metric_exposed_is_documented(metrics_server):
    """Each metric family the server exposes is a row of docs/metrics.md, with exactly
    the labels the row names; the SageMaker port does not serve them."""
    server = metrics_server
    assert server.invoke(RECORD)[0] == HTTPStatus.OK
    docs = documented()
    for family in text_string_to_metric_families(scrape(server.metrics_port)):
        name = family.name
        if family.type == "counter":
            name += "_total"
        elif family.type == "info":
            name += "_info"
        assert name in docs, f"{name} is not in docs/metrics.md"
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == docs[name], (name, sample.labels)
    status, _, _ = server.request("GET", "/metrics")
    assert status == HTTPStatus.NOT_FOUND


def test_only_the_master_listens_on_the_metrics_port(metrics_server):
    """With SMSERVE_METRICS_PORT set, the master serves the exposition there, on
    SMSERVE_METRICS_HOST only; the workers hold no copy of its socket."""
    server = metrics_server
    with pytest.raises(urllib.error.URLError, match="refused"):
        scrape(server.metrics_port, host="127.0.0.1")
    assert listening_ports(server.gunicorn_master()) == {server.metrics_port}
    for worker in server.gunicorn_workers():
        assert listening_ports(worker) == set()


def test_metrics_off_open_no_port(server):
    """Unset, no gunicorn process listens on a TCP port (nginx has the SageMaker one)."""
    assert server.invoke(RECORD)[0] == HTTPStatus.OK
    for pid in [server.gunicorn_master(), *server.gunicorn_workers()]:
        assert listening_ports(pid) == set()


IMPORTS_ON_THE_REQUEST_PATH = """
import json, sys
import smserve.wsgi
from django.test import Client
response = Client().post("/invocations", b"5.1,3.5,1.4,0.2\\n", content_type="text/csv")
assert response.status_code == 200, response.content
print(json.dumps([m for m in sys.modules if "prometheus" in m or m == "modelapp.metrics"]))
"""


@pytest.mark.parametrize("on", [False, True], ids=["off", "on"])
def test_metrics_off_import_nothing(iris_base, tmp_path, on):
    """What gunicorn's master and a worker import to answer an invocation: with
    SMSERVE_METRICS_PORT unset, neither prometheus_client nor modelapp.metrics; set,
    both (installed as docker/gunicorn.conf.py does)."""
    script = IMPORTS_ON_THE_REQUEST_PATH
    if on:
        script = (
            "from modelapp import observers; observers.prepare()\n"
            "from modelapp import metrics; metrics.install()\n" + script
        )
    env = {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(iris_base),
        "SMSERVE_STATE_DIR": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "SMSERVE_METRICS_PORT": "9" if on else "",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    out = subprocess.run(
        [PYTHON, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    imported = set(json.loads(out.stdout.strip().splitlines()[-1]))
    if on:
        assert {"prometheus_client", "modelapp.metrics"} <= imported
    else:
        assert imported == set()


@pytest.fixture
def mme_server(tmp_path, tmp_path_factory) -> Iterator[ServeProcess]:
    """A multi-model server, two workers, metrics on."""
    base = tmp_path / "base"
    base.mkdir()
    server = ServeProcess(
        base,
        tmp_path,
        env={
            "SAGEMAKER_MULTI_MODEL": "TRUE",
            "SMSERVE_MME_MODEL_ROOT": str(tmp_path_factory.getbasetemp()),
            "SMSERVE_METRICS_PORT": str(free_port(METRICS_HOST)),
            "SMSERVE_METRICS_HOST": METRICS_HOST,
        },
        workers=2,
    )
    server.metrics_port = int(server.env["SMSERVE_METRICS_PORT"])  # type: ignore[attr-defined]
    server.start()
    yield server
    server.stop()


def test_multi_model_loads_unloads_and_memory(mme_server, iris_base):
    """Multi-model: smserve_ping_ready is 1 (the server is up); smserve_model_loaded and smserve_model_memory_bytes list the loaded
    models while they are loaded; smserve_model_loads_total,
    smserve_model_load_duration_seconds and smserve_model_warmup_duration_seconds count
    the registering load and the other worker's copy; smserve_model_unloads_total and
    smserve_model_unload_duration_seconds the unload; invocations carry the model's
    name, and a name that is not loaded none."""
    server = mme_server
    body = json.dumps({"model_name": "iris", "url": str(iris_base / "model")})
    status, _, answer = server.request(
        "POST", "/models", body.encode(), {"Content-Type": "application/json"}
    )
    assert status == HTTPStatus.OK, answer
    for _ in range(10):
        status, _, answer = server.request(
            "POST", "/models/iris/invoke", RECORD, {"Content-Type": "text/csv"}
        )
        assert status == HTTPStatus.OK, answer
    status, _, _ = server.request(
        "POST", "/models/nope/invoke", RECORD, {"Content-Type": "text/csv"}
    )
    assert status == HTTPStatus.NOT_FOUND

    text = scrape(server.metrics_port)
    assert total(text, "smserve_ping_ready") == 1
    assert total(text, "smserve_model_loaded", model="iris") == 1
    assert total(text, "smserve_model_memory_bytes", model="iris") > 0
    loads = total(text, "smserve_model_loads_total", model="iris", result="loaded")
    # The registering worker's load, and the other's copy if it answered any of the 10.
    assert loads in (1, 2)
    assert total(text, "smserve_model_load_duration_seconds_count") == loads
    assert total(text, "smserve_model_warmup_duration_seconds_count") == loads
    assert total(text, "smserve_invocations_total", model="iris", status="200") == 10
    assert total(text, "smserve_invocations_total", model="", status="404") == 1

    assert server.request("DELETE", "/models/iris")[0] == HTTPStatus.OK
    text = scrape(server.metrics_port)
    assert total(text, "smserve_model_unloads_total", model="iris") == 1
    assert total(text, "smserve_model_unload_duration_seconds_count", model="iris") == 1
    assert total(text, "smserve_model_loaded", model="iris") == 0


EVICTION = """
import sys
from pathlib import Path

import django

from modelapp import observers

observers.prepare()
django.setup()
from modelapp import metrics

metrics.install()
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from modelapp.multimodel import SharedRegistry, WorkerModels

url, root = sys.argv[1:]
shared = SharedRegistry(Path(root)).make()
loader = WorkerModels(shared, 1 << 40)  # the registering worker: room for all
for name in ("one", "two", "three"):
    loader.load(name, url)
one, two, three = (shared.get(n).size for n in ("one", "two", "three"))
worker = WorkerModels(shared, share_bytes=one + max(two, three))
for name in ("one", "two", "one", "three"):  # "two" is the least recently used
    worker.get(name)
registry = CollectorRegistry()
MultiProcessCollector(registry)
sys.stdout.write(generate_latest(registry).decode())
"""


def test_an_eviction_is_counted(iris_base, tmp_path):
    """smserve_model_evictions_total: a worker whose copies outgrow its share drops the
    least recently used one (modelapp/multimodel.py, in one process, as
    tests/test_mme.py drives it)."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "smserve.settings",
        "SMSERVE_MME_MODEL_ROOT": str(iris_base),
        "SMSERVE_COMPILED_ENGINE": "off",
        "SMSERVE_STATE_DIR": str(tmp_path),
        "TMPDIR": str(tmp_path),
    }
    out = subprocess.run(
        [PYTHON, "-c", EVICTION, str(iris_base / "model"), str(tmp_path / "mme")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert total(out.stdout, "smserve_model_evictions_total", model="two") == 1
    assert total(out.stdout, "smserve_model_evictions_total") == 1
    assert total(out.stdout, "smserve_model_loads_total", result="loaded") == 6
