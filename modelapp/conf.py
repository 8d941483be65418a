"""smserve's knobs: the one table of defaults for ``settings.SMSERVE``, and checked
dotted-path resolution. A leaf of the app: it imports nothing of ``modelapp``.

``DEFAULTS`` is the only place a default is written (the settings table in
``docs/settings.md`` mirrors it); ``COMPUTED`` fills the defaults that depend on the machine
or on other settings, and values derived from a setting are functions here
(``max_payload_bytes``), never stored beside it. ``smserve/settings.py`` only translates
environment variables that are set.

Settings are read when first asked for, never at import time, and cached; the cache is
cleared when a test changes ``SMSERVE`` (Django's ``setting_changed`` signal).
"""

import functools
import os
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar, cast

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

DEFAULTS: dict[str, Any] = {
    # --- the SageMaker contract (smserve/settings.py maps the environment onto these) ---
    # Root of the SageMaker tree (model/, input/, output/).
    "BASE_DIR": Path("/opt/ml"),
    # Where nginx listens (gunicorn alone when nginx is missing).
    "PORT": 8080,
    "HOST": "0.0.0.0",
    # Batch transform: a longer default timeout.
    "BATCH": False,
    # 6 MB is SageMaker's real-time limit; batch transform allows up to 100 MB, and 0 means
    # the body may be of any size (MaxPayloadInMB=0, chunked encoding).
    "MAX_PAYLOAD_MB": 6,
    # gunicorn workers (also MaxConcurrentTransforms); None: the CPU count.
    "WORKERS": None,
    # Seconds an invocation may take; None: 60, or 3600 in batch mode.
    "TIMEOUT": None,
    # Content-Type assumed when a request has none or says application/octet-stream.
    "DEFAULT_CONTENT_TYPE": "text/csv",
    # Accept assumed when a request has none or says */*; empty = the request's own type.
    "DEFAULT_ACCEPT": "",
    # Set by SageMaker in training containers; recorded in metadata.json.
    "TRAINING_JOB_NAME": None,
    # Training across hosts: the Dask scheduler's port on the leader (documented, fixed).
    "DASK_SCHEDULER_PORT": 8786,
    # Test-only: host name -> IP address, instead of resolving SageMaker's host names
    # (several "hosts" on loopback addresses of one machine). Empty in real jobs.
    "HOST_ADDRESSES": {},
    # Script mode (the official scikit-learn container's inference.py): the script, and
    # where its source is (s3://, file:// or a path; empty: <model dir>/code).
    "PROGRAM": "",
    "SUBMIT_DIRECTORY": "",
    # What every answer holds (modelapp/outputs.py): output keys, in order, from
    # predicted_label, probability, probabilities, labels, transform; empty: the method's
    # result alone. SUPPORTED, when set (not None), must list every key asked for.
    "INFERENCE_OUTPUT": (),
    "INFERENCE_SUPPORTED": None,
    # A JSON Lines record {KEY: [...]} is read as the array (Clarify's ContentTemplate
    # '{"features":$features}'); empty: never.
    "JSONLINES_FEATURES_KEY": "features",
    # --- smserve ---
    # The SQLite database and the kept secret key; None: var/ beside manage.py (set by
    # smserve/settings.py, which knows where that is).
    "STATE_DIR": None,
    "ADMIN_ENABLED": False,
    # Load-failure reasons and inference-script exceptions in error bodies; off: in the
    # log only, and callers get a generic reason (modelapp/exceptions.py).
    "DETAILED_ERRORS": True,
    "STATS_FLUSH_SECONDS": 5.0,
    # Prometheus metrics on a port of their own, served by gunicorn's master
    # (modelapp/metrics.py); None: off. The host: None = HOST's.
    "METRICS_PORT": None,
    "METRICS_HOST": None,
    # --- drift (modelapp/drift.py, modelapp/capture.py) ---
    # Share of served requests whose records are counted into the drift bins; 0: off.
    "CAPTURE_PERCENT": 0.0,
    # A feature drifts when its PSI or its Jensen-Shannon distance reaches these, in a
    # window of at least DRIFT_MIN_RECORDS sampled records.
    "DRIFT_PSI": 0.2,
    "DRIFT_JS": 0.2,
    "DRIFT_MIN_RECORDS": 100,
    # A model with no training distributions: its first sampled records are the reference.
    "DRIFT_REFERENCE_RECORDS": 1000,
    # Raw capture in SageMaker's data-capture format (modelapp/capture_files.py): a
    # directory or s3://bucket/prefix; None: off. A file is closed after so many seconds
    # or megabytes, whichever comes first.
    "CAPTURE_DESTINATION": None,
    "CAPTURE_ROTATE_SECONDS": 60.0,
    "CAPTURE_ROTATE_MB": 16,
    # Serve the methods verified equal by ONNX Runtime (modelapp/predictors/compiled.py).
    "COMPILED_ENGINE": True,
    # ONNX Runtime intra-op threads per worker; None: BLAS's share (OMP_NUM_THREADS).
    "COMPILED_THREADS": None,
    # Safe model loading (modelapp/safeload.py): modules an artifact may name besides the
    # scientific stack (with their submodules), and the switch back to plain joblib.
    "TRUSTED_MODULES": (),
    "ALLOW_UNSAFE_DESERIALIZATION": False,
    # A body larger than this many KB is parsed, predicted and rendered a chunk of this
    # size at a time (its records in order), so a worker's memory grows with the chunk,
    # not the body (modelapp/batch.py ``Chunks``). Each chunk costs the model a call,
    # whose fixed cost (its thread pool's start and stop) smaller chunks multiply.
    "CHUNK_KB": 8192,
    # A featurizer's transform passes a record's label column through, first in its
    # answer (modelapp/predictors/featurizer.py): featurizing training data.
    "PASS_THROUGH_LABEL": False,
    # method=explain: the most records one request may ask to explain (413 past it).
    "EXPLAIN_MAX_RECORDS": 100,
    # method=explain: the most memory (MiB) an explainer's precomputed tables may take,
    # estimated before building them; over it none is built. 0: explanations off.
    "EXPLAIN_MEMORY_MB": 64,
    # Names of the speed tricks to leave out (smserve/fastpaths.py lists them).
    "FAST_PATHS_OFF": frozenset(),
    # Request formats, picked by Content-Type. A new format is a class and a line here.
    "PARSERS": [
        "modelapp.parsers.CSVParser",
        "modelapp.parsers.JSONParser",
        "modelapp.parsers.JSONLinesParser",
        "modelapp.parsers.NPYParser",
        "modelapp.parquet.ParquetParser",
    ],
    # Response formats, picked by Accept; the first one also renders errors that happen
    # before a format could be chosen (e.g. an unsatisfiable Accept).
    "RENDERERS": [
        "modelapp.renderers.JSONRenderer",
        "modelapp.renderers.CSVRenderer",
        "modelapp.renderers.JSONLinesRenderer",
        "modelapp.renderers.NPYRenderer",
        "modelapp.parquet.ParquetRenderer",
    ],
    # Predictor kinds (modelapp/predictors/), asked in order which one serves a model
    # directory: SklearnPredictor serves any directory, so it comes last.
    "PREDICTORS": [
        "modelapp.predictors.ScriptPredictor",
        "modelapp.predictors.SklearnPredictor",
    ],
    # --- multi-model endpoints (modelapp/multimodel.py) ---
    # SageMaker's multi-model mode: the /models API, many models, /ping = server alive.
    "MULTI_MODEL": False,
    # Memory for loaded models, MB, the whole container (each worker keeps its share,
    # MME_MEMORY_MB / WORKERS); None: 3/4 of the container's memory limit, else of the
    # memory available at start-up.
    "MME_MEMORY_MB": None,
    # The directory every worker reads the loaded models from; None: STATE_DIR/mme
    # (``serve`` sets one in its run dir, new at every start).
    "MME_REGISTRY_DIR": None,
    # POST /models loads only directories under this one (where SageMaker puts them);
    # None: BASE_DIR/models, i.e. /opt/ml/models.
    "MME_MODEL_ROOT": None,
    # --- internal: set by ``serve`` for the processes it starts (smserve/fastpaths.py) ---
    # The file nginx answers /ping from, written once the model is ready.
    "READY_FILE": "",
    # Who writes the line of a successful invocation: "app", or "nginx" in front of it.
    "INVOCATION_LOG": "app",
    # gunicorn's bind (the unix socket nginx proxies to); empty: HOST:PORT.
    "GUNICORN_BIND": "",
    # --- logs and CloudWatch metrics (docs/logs.md) ---
    # "text" or "json": every line of every process serve starts (smserve/logs.py).
    "LOG_FORMAT": "text",
    # CloudWatch Embedded Metric Format lines per model, every METRICS_EMF_SECONDS.
    "METRICS_EMF": False,
    "METRICS_EMF_SECONDS": 60.0,
}

# Defaults that depend on the machine or on other settings.
COMPUTED: dict[str, Callable[[dict[str, Any]], Any]] = {
    "WORKERS": lambda values: os.cpu_count() or 1,
    "TIMEOUT": lambda values: 3600 if values["BATCH"] else 60,
    "MME_MEMORY_MB": lambda values: _default_model_memory_mb(),
    "MME_REGISTRY_DIR": lambda values: Path(values["STATE_DIR"] or ".") / "mme",
    "MME_MODEL_ROOT": lambda values: Path(values["BASE_DIR"]) / "models",
}


def _default_model_memory_mb() -> int:
    """3/4 of the container's memory limit (cgroup v2, then v1), else of the memory
    available now: the rest is the servers' own (each worker holds Django, numpy and
    scikit-learn, ~100 MB) and the request buffers."""
    limit = None
    for path in (
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max" or ~2^63: no limit
            limit = int(text)
            break
    if limit is None:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    limit = int(line.split()[1]) * 1024
                    break
        except OSError:
            pass
    return max(64, (limit or 2 << 30) * 3 // 4 // (1 << 20))


def get(name: str) -> Any:
    """One of smserve's settings: ``settings.SMSERVE[name]``, else its default."""
    return _settings()[name]


def max_payload_bytes() -> int | None:
    """The payload limit in bytes; None when there is none (``MAX_PAYLOAD_MB`` = 0)."""
    return get("MAX_PAYLOAD_MB") * 1024 * 1024 or None


def fast_path(name: str) -> bool:
    """Whether the speed trick ``name`` is on (``smserve/fastpaths.py``)."""
    off = get("FAST_PATHS_OFF")
    return "all" not in off and name not in off


@functools.cache
def _settings() -> dict[str, Any]:
    user = getattr(settings, "SMSERVE", {})
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        raise ImproperlyConfigured(
            f"Unknown SMSERVE setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(DEFAULTS))}."
        )
    values = {**DEFAULTS, **user}
    for name, compute in COMPUTED.items():
        if values[name] is None:
            values[name] = compute(values)
    return values


T = TypeVar("T")


def import_class(path: str, base: type[T], setting: str) -> type[T]:
    """Import ``path`` and check it subclasses ``base``; errors name the setting to fix."""
    try:
        cls = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"SMSERVE[{setting!r}] names {path!r}, which cannot be imported: {exc}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ImproperlyConfigured(
            f"SMSERVE[{setting!r}] names {path!r}, which is not a subclass of "
            f"{base.__module__}.{base.__qualname__}."
        )
    return cls


def import_classes(setting: str, base: type[T]) -> tuple[type[T], ...]:
    """The classes the dotted paths of ``SMSERVE[setting]`` name, each checked to
    subclass ``base``; the caller knows the base (``parsers.BaseBatchParser``, ...), so
    this module imports nothing of the app. Cached until ``SMSERVE`` changes."""
    return _import_classes(setting, cast(Hashable, base))


@functools.cache
def _import_classes(setting: str, base: Any) -> tuple[type, ...]:
    return tuple(import_class(path, base, setting) for path in get(setting))


@receiver(setting_changed)
def _clear_caches(*, setting: str, **kwargs: Any) -> None:
    if setting == "SMSERVE":
        _settings.cache_clear()
        _import_classes.cache_clear()
