"""Prometheus metrics over every gunicorn worker, alive and recycled, on a port of their own.

Imported only when ``SMSERVE['METRICS_PORT']`` is set, by gunicorn's master, after
``observers.prepare()`` has pointed ``PROMETHEUS_MULTIPROC_DIR`` at a new directory:
``prometheus_client``'s multiprocess mode then keeps each process's values in a memory
mapped file of its own there. An increment is a write into shared memory (no system call):
it survives the process, even a SIGKILL, so the counts of invocations and records, written
at once, stay exact over recycled and killed workers; the histograms and byte counts are
held in memory and written every second (``flush``), which costs the request far less. The master serves the exposition (``serve()``, a thread
started in ``when_ready``), merging the files at each scrape; it never passes through
nginx or the SageMaker port. ``docs/metrics.md`` lists every metric and label.

Who writes what:

- a worker: the invocation counters and histograms (``invocation()``, fed by
  ``stats.record_invocation`` with the numbers the admin's traffic chart gets), its
  in-flight requests, its start, and the models it loads, unloads and evicts (multi-model);
- the master: the default model's load (the app is preloaded), the exits of its workers
  (``child_exit``: a worker that ran no ``worker_exit`` was killed), and, at scrape time,
  the gauges it can read itself (``StateCollector``): ``/ping``'s state, the loaded
  models and their memory, the versions.
"""

from __future__ import annotations

import os
import sys
import threading
from bisect import bisect_left
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from modelapp import __version__, conf, observers
from modelapp.periodic import Periodic

# prometheus_client picks its multiprocess mode when imported, from the environment.
if not os.environ.get(observers.MULTIPROC_ENV):
    raise ImproperlyConfigured(
        "modelapp.metrics needs observers.prepare() first: without "
        f"{observers.MULTIPROC_ENV}, each worker would count apart."
    )

from prometheus_client import (  # noqa: E402
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily  # noqa: E402
from prometheus_client.multiprocess import (  # noqa: E402
    MultiProcessCollector,
    mark_process_dead,
)

# Request latencies: a one-record prediction takes around a millisecond, a large batch
# seconds; the timeout bounds them.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# Loading, warming up and unloading a model: tens of milliseconds to minutes.
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Characters of the model's sha256 in labels: enough to tell two models apart.
SHA256_PREFIX = 12
PHASES = ("parse", "predict", "render")

INVOCATION_LABELS = ("model", "sha256", "status", "code", "method", "engine")
INVOCATIONS = Counter(
    "smserve_invocations",
    "Invocations answered, by model, status, error code, method and engine.",
    INVOCATION_LABELS,
)
RECORDS = Counter(
    "smserve_invocation_records",
    "Records predicted (none for a failed invocation).",
    INVOCATION_LABELS,
)
REQUEST_BYTES = Counter(
    "smserve_invocation_request_bytes",
    "Bytes of the invocations' request bodies (Content-Length).",
    INVOCATION_LABELS,
)
RESPONSE_BYTES = Counter(
    "smserve_invocation_response_bytes",
    "Bytes of the invocations' response bodies.",
    INVOCATION_LABELS,
)
DURATION = Histogram(
    "smserve_invocation_duration_seconds",
    "Time from the view's start to the rendered response, per invocation.",
    ("model", "sha256", "engine"),
    buckets=LATENCY_BUCKETS,
)
PHASE_DURATION = Histogram(
    "smserve_invocation_phase_duration_seconds",
    "Time of each phase of a successful invocation: parse, predict, render.",
    ("model", "sha256", "engine", "phase"),
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "smserve_invocations_in_flight",
    "Invocations being answered now, over the live workers.",
    multiprocess_mode="livesum",
)
WORKER_STARTS = Counter("smserve_worker_starts", "gunicorn workers started.")
WORKER_EXITS = Counter(
    "smserve_worker_exits",
    "gunicorn workers ended: exit (stopped or recycled), timeout (aborted by gunicorn), "
    "killed (by a signal, e.g. the kernel's OOM killer).",
    ("reason",),
)
MODEL_LOADS = Counter(
    "smserve_model_loads",
    "Model loads into a process (the master's, a registration's, a worker's copy), "
    "by result.",
    ("model", "sha256", "result"),
)
MODEL_LOAD_DURATION = Histogram(
    "smserve_model_load_duration_seconds",
    "Time to load and warm up a model.",
    ("model",),
    buckets=LOAD_BUCKETS,
)
MODEL_WARMUP_DURATION = Histogram(
    "smserve_model_warmup_duration_seconds",
    "Time of the warm-up prediction, part of the load.",
    ("model",),
    buckets=LOAD_BUCKETS,
)
MODEL_UNLOADS = Counter(
    "smserve_model_unloads",
    "Models unloaded through DELETE /models/<name> (multi-model).",
    ("model", "sha256"),
)
MODEL_UNLOAD_DURATION = Histogram(
    "smserve_model_unload_duration_seconds",
    "Time until every worker gave an unloaded model's memory back.",
    ("model",),
    buckets=LOAD_BUCKETS,
)
MODEL_EVICTIONS = Counter(
    "smserve_model_evictions",
    "A worker's copies of a model dropped to stay within its memory share "
    "(least recently used; multi-model).",
    ("model", "sha256"),
)


def install() -> None:
    """Make this module the sink the serving code reports to (``observers``)."""
    observers.sink = sys.modules[__name__]


def short(sha256: str | None) -> str:
    return (sha256 or "")[:SHA256_PREFIX]


# --- the request path (a worker) -----------------------------------------------------
# Children by label values: ``labels()`` takes a lock and checks its arguments each call.
_invocation_children: dict[tuple[str, ...], tuple[Any, Any, Any, Any]] = {}
_duration_children: dict[tuple[str, ...], tuple[Any, ...]] = {}

# A write into the mapped files costs the request more than the rest of the metrics
# (bench/RESULTS.md): the counts of invocations and records, which must survive a SIGKILL,
# are written at once; the histograms' observations and the byte counts wait here, summed,
# for the worker's flusher thread (every FLUSH_SECONDS, and at its exit).
FLUSH_SECONDS = 1.0
_held_lock = threading.Lock()
# Histogram child -> observations per bucket, then their sum.
_held_observations: dict[Any, list[float]] = {}
# Counter child -> amount.
_held_amounts: dict[Any, float] = {}


def started() -> None:
    """An invocation reached the view."""
    IN_FLIGHT.inc()


def failed() -> None:
    """An invocation raised what no handler answers (a bug: Django's 500)."""
    IN_FLIGHT.dec()
    _count(("", "", "500", "server_error", "", ""), 0, 0, 0)


def invocation(request: Any, response: Any) -> Any:
    """Labels of an answered invocation, known before its response is rendered; returns
    the function to call once it is, with the status, the response's size and the
    whole request's seconds."""
    method = getattr(request, "prediction_method", "")
    records = getattr(request, "records", 0)
    model = getattr(request, "served_model", "")
    sha = short(getattr(request, "model_sha256", None))
    engine = getattr(request, "engine", "")  # the view's (invocation_log.engine_of)
    data = getattr(response, "data", None)
    code = data.get("code", "") if isinstance(data, dict) else ""
    bytes_in = int(request.META.get("CONTENT_LENGTH") or 0)
    parsed = getattr(request, "parsed_at", None)
    predicted = getattr(request, "predicted_at", None)
    begun = getattr(request, "started", None)

    def done(status: int, bytes_out: int, seconds: float, rendered_at: float) -> None:
        IN_FLIGHT.dec()
        key = (model, sha, str(status), str(code), method, engine)
        durations = _durations((model, sha, engine))
        with _held_lock:
            _count(key, records, bytes_in, bytes_out)
            _hold(durations[0], seconds)
            if status < 400 and parsed is not None and predicted is not None:
                _hold(durations[1], parsed - begun)
                _hold(durations[2], predicted - parsed)
                _hold(durations[3], rendered_at - predicted)

    return done


def _count(key: tuple[str, ...], records: int, bytes_in: int, bytes_out: int) -> None:
    children = _invocation_children.get(key)
    if children is None:
        children = _invocation_children[key] = (
            INVOCATIONS.labels(*key),
            RECORDS.labels(*key),
            REQUEST_BYTES.labels(*key),
            RESPONSE_BYTES.labels(*key),
        )
    children[0].inc()
    if records:
        children[1].inc(records)
    for child, amount in ((children[2], bytes_in), (children[3], bytes_out)):
        if amount:
            _held_amounts[child] = _held_amounts.get(child, 0) + amount


def _hold(histogram: Any, seconds: float) -> None:
    # prometheus_client 0.26's Histogram keeps its bounds, buckets and sum in these
    # attributes (its observe() writes one bucket and the sum); the pin keeps them.
    held = _held_observations.get(histogram)
    if held is None:
        bounds = histogram._upper_bounds
        held = _held_observations[histogram] = [0.0] * (len(bounds) + 1)
    held[bisect_left(histogram._upper_bounds, seconds)] += 1
    held[-1] += seconds


def flush() -> None:
    """Write the held observations and amounts into this process's files."""
    global _held_observations, _held_amounts
    with _held_lock:
        observations, _held_observations = _held_observations, {}
        amounts, _held_amounts = _held_amounts, {}
    for histogram, held in observations.items():
        for index, count in enumerate(held[:-1]):
            if count:
                histogram._buckets[index].inc(count)
        histogram._sum.inc(held[-1])
    for counter, amount in amounts.items():
        counter.inc(amount)


_flusher = Periodic("smserve-metrics", flush)


def _durations(key: tuple[str, ...]) -> tuple[Any, ...]:
    children = _duration_children.get(key)
    if children is None:
        children = _duration_children[key] = (
            DURATION.labels(*key),
            *(PHASE_DURATION.labels(*key, phase) for phase in PHASES),
        )
    return children


# --- models ------------------------------------------------------------------------
def model_loaded(name: str, loaded: Any) -> None:
    """A model loaded (and warmed up) into this process."""
    MODEL_LOADS.labels(name, short(loaded.sha256), "loaded").inc()
    MODEL_LOAD_DURATION.labels(name).observe(loaded.load_seconds)
    MODEL_WARMUP_DURATION.labels(name).observe(loaded.warmup_seconds)


def model_load_failed(name: str) -> None:
    MODEL_LOADS.labels(name, "", "failed").inc()


def model_unloaded(name: str, sha256: str, seconds: float) -> None:
    MODEL_UNLOADS.labels(name, short(sha256)).inc()
    MODEL_UNLOAD_DURATION.labels(name).observe(seconds)


def model_evicted(name: str, sha256: str) -> None:
    MODEL_EVICTIONS.labels(name, short(sha256)).inc()


# --- workers (gunicorn's hooks) ------------------------------------------------------
_server: Any = None


def _exit_note(pid: int) -> Path:
    return Path(os.environ["PROMETHEUS_MULTIPROC_DIR"], f"exit_{pid}")


def worker_started() -> None:
    """In a new worker (``post_fork``): count it, and close its copy of the master's
    metrics socket (it serves nothing there, and would keep the port open)."""
    if _server is not None:
        _server.socket.close()
    WORKER_STARTS.inc()
    _flusher.start(FLUSH_SECONDS)


def worker_exiting(reason: str) -> None:
    """In a worker that ends of its own accord (``worker_exit``: ``exit``) or aborts
    (``worker_abort``: ``timeout``): write what is held, and say so for the master,
    which counts the exit."""
    _flusher.stop()
    flush()
    note = _exit_note(os.getpid())
    if not note.exists():
        note.write_text(reason)


def worker_ended(pid: int) -> None:
    """In the master (``child_exit``): count the exit with the reason the worker left,
    or ``killed`` if it left none; its live gauges stop counting."""
    note = _exit_note(pid)
    try:
        reason = note.read_text() or "exit"
        note.unlink()
    except FileNotFoundError:
        reason = "killed"
    WORKER_EXITS.labels(reason).inc()
    mark_process_dead(pid)


# --- the exposition (gunicorn's master) ----------------------------------------------
class StateCollector:
    """Gauges the master reads at scrape time: ``/ping``'s state, the loaded models and
    their memory, the versions."""

    def collect(self) -> Any:
        # Imported at the first scrape: this module is imported before the app loads.
        from modelapp import multimodel
        from modelapp.registry import registry

        ready = GaugeMetricFamily(
            "smserve_ping_ready",
            "1 when /ping answers 200 (the model loaded and warmed up; multi-model: "
            "the server is up), else 0.",
        )
        loaded = GaugeMetricFamily(
            "smserve_model_loaded",
            "1 for each model loaded (multi-model: registered for every worker).",
            labels=("model", "sha256"),
        )
        memory = GaugeMetricFamily(
            "smserve_model_memory_bytes",
            "Memory one copy of a model takes: multi-model, the growth of the loading "
            "worker's RSS (at least the artifact's size); one model, the artifact's "
            "size (shared by the workers).",
            labels=("model", "sha256"),
        )
        served: dict[str, str] = {}  # sha256 -> the model label
        if multimodel.enabled():
            ready.add_metric([], 1)
            for registration in multimodel.worker_models().shared.all():
                labels = [registration.name, short(registration.sha256)]
                loaded.add_metric(labels, 1)
                memory.add_metric(labels, registration.size)
                served[registration.sha256] = registration.name
        else:
            model = registry.loaded
            ready.add_metric([], 1 if model is not None else 0)
            if model is not None:
                labels = ["model", short(model.sha256)]
                loaded.add_metric(labels, 1)
                memory.add_metric(labels, model.size)
                served[model.sha256] = "model"
        info = InfoMetricFamily(
            "smserve_build", "Versions of smserve and the libraries that predict."
        )
        info.add_metric([], versions())
        return [ready, loaded, memory, info, *drift_families(served)]


def drift_families(served: dict[str, str]) -> list[Any]:
    """The drift of each loaded model over the last day, as the admin's model list
    shows it (``drift_admin.report_for``): per feature and output its PSI and
    Jensen-Shannon distance, and whether the model drifts. Read from the database at
    scrape time; nothing while capture is off (``SMSERVE_CAPTURE_PERCENT`` 0), and
    nothing for a model with no sampled records in the window."""
    if float(conf.get("CAPTURE_PERCENT")) <= 0 or not served:
        return []
    from django.db import DatabaseError, close_old_connections

    from modelapp import drift_admin
    from modelapp.models import TrainedModel

    labels = ("model", "sha256", "feature")
    psi = GaugeMetricFamily(
        "smserve_drift_psi",
        "Population stability index of a feature (or output) over the last day "
        "against the model's reference.",
        labels=labels,
    )
    js = GaugeMetricFamily(
        "smserve_drift_js_distance",
        "Jensen-Shannon distance of a feature (or output) over the last day against "
        "the model's reference.",
        labels=labels,
    )
    drifting = GaugeMetricFamily(
        "smserve_model_drifting",
        "1 when a feature or output of the model passes a drift threshold over the "
        "last day, else 0.",
        labels=("model", "sha256"),
    )
    close_old_connections()
    try:
        for model in TrainedModel.objects.filter(
            sha256__in=list(served), drift_counts__isnull=False
        ).distinct():
            report = drift_admin.report_for(model)
            if report.reference is None:
                continue
            name, prefix = served[model.sha256], short(model.sha256)
            for feature in [*report.features, *report.outputs]:
                psi.add_metric([name, prefix, feature.name], feature.psi)
                js.add_metric([name, prefix, feature.name], feature.js)
            drifting.add_metric([name, prefix], 1 if report.drifting else 0)
    except DatabaseError:
        # A database outage costs the drift gauges of this scrape, not the scrape.
        return []
    finally:
        close_old_connections()
    return [psi, js, drifting]


def versions() -> dict[str, str]:
    found = {"version": __version__}
    for label, package in (
        ("scikit_learn", "scikit-learn"),
        ("onnxruntime", "onnxruntime"),
    ):
        try:
            found[label] = package_metadata.version(package)
        except package_metadata.PackageNotFoundError:
            found[label] = ""
    return found


def serve() -> tuple[Any, threading.Thread]:
    """Start the exposition on ``SMSERVE['METRICS_HOST']:SMSERVE['METRICS_PORT']`` in a
    thread of this process (gunicorn's master)."""
    global _server
    collectors = CollectorRegistry()
    MultiProcessCollector(collectors)
    collectors.register(StateCollector())
    host = conf.get("METRICS_HOST") or conf.get("HOST")
    _server, thread = start_http_server(
        conf.get("METRICS_PORT"), addr=host, registry=collectors
    )
    return _server, thread
