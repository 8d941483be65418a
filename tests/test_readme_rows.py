"""Every table in ``docs/`` and the tests agree, row by row and clause by clause.

``ROWS`` maps each (page, table, row, clause) of the docs' tables to what proves it:
- ``proof(...)``: tests that go through the real server (``tests/support/servers.py``),
  the real ``./train`` (``tests/support/training.py``) or the image; each quotes its clause
  in its docstring, and each reaches one of those (checked on its source, below);
- ``config(why, ...)``: tests that only read configuration or text: listed, never counted
  as proof;
- ``in_process(...)``: tests that prove it in-process only (``call_command``,
  ``run.train``): a ``config`` kind, never counted as proof;
- ``not_here(why)``: a clause no test here can prove (a benchmark figure, a timing, the
  image's size);
- ``UNPROVED``: provable, with no end-to-end test yet; ``TO_DO`` counts them and may only
  go down.

The tables are read from the pages themselves (``tests.support.docs.tables``) and cut into
clauses at their top-level commas and semicolons (``clauses``). A table, row or clause
added to the docs without a mapping fails here; so does a mapping the docs no longer have,
a test that no longer exists, or one whose docstring does not quote its clause.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass

import pytest

from tests.support import ROOT
from tests.support.docs import clauses, plain, tables

SERVING = "docs/serving.md"
TRAINING = "docs/training.md"
SETTINGS = "docs/settings.md"
SPEED = "docs/speed.md"
ADMIN = "docs/admin.md"
IMAGE = "docs/image-and-sagemaker.md"
RELIABILITY = "docs/reliability.md"
DEVELOPMENT = "docs/development.md"
METRICS = "docs/metrics.md"
LOGS = "docs/logs.md"

HTTP = "tests/test_contract_http.py"
PROCESS = "tests/test_serve_process.py"
TRAIN = "tests/test_train.py"
NGINX = "tests/test_nginx_errors.py"
MME = "tests/test_mme_http.py"
SCRIPTS = "tests/test_script_serving.py"
SDK = "tests/test_sdk_predictor.py"
IMG = "tests/test_image.py"
SEARCH = "tests/training/test_search.py"
SCRIPT_TRAIN = "tests/training/test_script.py"
CLUSTER = "tests/training/test_cluster.py"
ADMIN_T = "tests/test_admin.py"
SECURITY = "tests/test_admin_security.py"
ENGINES = "tests/test_engines.py"
TABLES = "tests/test_tables_serving.py"
STATS = "tests/test_stats.py"
FAULTS = "tests/test_faults.py"
SETTINGS_T = "tests/test_settings_doc.py"
DOCS_T = "tests/test_docs.py"
METRICS_T = "tests/test_metrics.py"
RECORD = "tests/training/test_record.py"
TABLES_T = "tests/training/test_tables.py"
SAFE = "tests/test_safeload.py"
VIEWS = "tests/test_views.py"
OUTPUTS = "tests/test_inference_output.py"
UNDER_LOAD = "tests/test_serve_under_load.py"
JSON_LOGS = "tests/test_json_logs.py"
FEATURIZERS = "tests/test_featurizers.py"
PIPELINE = "tests/test_inference_pipeline.py"
PARQUET = "tests/test_parquet_serving.py"
DRIFT_T = "tests/test_drift_serving.py"
CAPTURE_FILES_T = "tests/test_capture_files.py"
DRIFT_FLAGGED = "test_one_shifted_feature_is_flagged_and_no_other"

# (page, the heading a table sits under, its place among that section's tables) ->
# (the table's name here, the columns naming a row, the columns whose clauses are proved).
# Settings are proved by variable; the tables in WHOLE by row (their rows are figures, or
# describe how the suite itself runs).
LAYOUT: dict[tuple[str, str, int], tuple[str, tuple[int, ...], tuple[int, ...]]] = {
    (SERVING, "Formats", 0): ("Formats: Content-Type", (0,), (0, 1)),
    (SERVING, "Formats", 1): ("Formats: Accept", (0,), (0, 1)),
    (SERVING, "Featurizers and inference pipelines", 0): (
        "Featurizers: Accept",
        (0,),
        (1,),
    ),
    (SERVING, "Errors", 0): ("Errors", (2,), (0,)),
    (SERVING, "Outputs chosen at deployment (`SAGEMAKER_INFERENCE_OUTPUT`)", 0): (
        "Output keys",
        (0,),
        (1,),
    ),
    (
        SERVING,
        "Script mode for serving: `inference.py` (coming from the official"
        " scikit-learn container)",
        0,
    ): ("Script mode: better", (0,), (2,)),
    (SERVING, "Multi-model endpoints (`SAGEMAKER_MULTI_MODEL=true`)", 0): (
        "Multi-model API",
        (0,),
        (1,),
    ),
    (SERVING, "Many workers, one list of models", 0): (
        "Multi-model choices",
        (0,),
        (2,),
    ),
    (SETTINGS, "Settings and environment variables", 0): ("Settings", (0,), (0,)),
    (SPEED, "Speed", 0): ("Speed", (0,), (0,)),
    (TRAINING, "What it reads", 0): ("What it reads", (0,), (1,)),
    (TRAINING, "Reserved keys (smserve's own)", 0): ("Reserved keys", (0,), (1, 2)),
    (TRAINING, "Channels and formats", 0): ("Channel ContentType", (0,), (0, 1)),
    (TRAINING, "Channels and formats", 1): ("Categorical encoding", (0,), (1, 2)),
    (TRAINING, "What it writes", 0): ("What it writes", (0,), (1,)),
    (TRAINING, "Failure semantics", 0): ("Failure semantics", (0, 1), (1, 2)),
    (
        TRAINING,
        "Script mode (coming from the official scikit-learn container)",
        0,
    ): ("Script mode: differences", (0,), (2,)),
    (
        TRAINING,
        "Distributed training: searches and forests over the job's hosts",
        0,
    ): ("Hosts", (0,), (1, 2)),
    (TRAINING, "The search space in a file", 0): ("Space file failures", (0,), (0, 1)),
    (TRAINING, "The search space in a file", 1): (
        "Distributed failures",
        (0,),
        (0, 1),
    ),
    (ADMIN, "The admin: what is deployed, how it was trained, how it is used", 0): (
        "Admin pages",
        (0,),
        (1, 2),
    ),
    (ADMIN, "Turning it on", 0): ("Admin variables", (0,), (1,)),
    (IMAGE, "The container image, and SageMaker", 0): ("Image", (0,), (1,)),
    (RELIABILITY, "When something fails", 0): (
        "Where failures are described",
        (0,),
        (1,),
    ),
    (RELIABILITY, "Securing the admin", 0): ("Deploy checks silenced", (0,), (2,)),
    (RELIABILITY, "Safe model loading", 0): ("Safe loading refusals", (0,), (0,)),
    (DEVELOPMENT, "Tests and lint", 0): ("Test phases", (0,), (1,)),
    (DEVELOPMENT, "Tests and lint", 1): ("Test markers", (0,), (1,)),
    (METRICS, "Metrics", 0): ("Metrics", (0,), (0,)),
    (LOGS, "Fields", 0): ("Log fields", (0,), (0,)),
    (LOGS, "Embedded Metric Format (`SMSERVE_METRICS_EMF=true`)", 0): (
        "EMF metrics",
        (0,),
        (0,),
    ),
}


WHOLE = {"Speed", "Test phases", "Test markers"}
KINDS = ("runtime", "config", "not here", "to do")
TO_DO = 0


@dataclass(frozen=True)
class Proof:
    """What proves a clause: ``kind`` is ``runtime``, ``config`` or ``not here``."""

    kind: str
    tests: tuple[str, ...] = ()
    why: str = ""


def proof(*tests: str) -> Proof:
    """Tests through the real server, the real ``./train`` or the image."""
    return Proof("runtime", tests)


def config(why: str, *tests: str) -> Proof:
    """Tests that only read configuration or text: never proof of behaviour."""
    return Proof("config", tests, why)


def not_here(why: str) -> Proof:
    """A clause no test here can prove, and why."""
    return Proof("not here", (), why)


BENCH = not_here("a figure of bench/run.py (bench/RESULTS.md), measured by hand")
LINK = config(
    "a pointer to another page",
    f"{DOCS_T}::test_every_relative_link_and_anchor_resolves",
)

SCANNED = config(
    "set by a test of its own subject (tests/test_settings_doc.py finds it); the effect is"
    " proved, where it is, under the row of the page that describes it",
    f"{SETTINGS_T}::test_every_documented_variable_is_set_by_a_test",
)
UNPROVED = Proof("to do", (), "no end-to-end test yet: TO_DO counts these")
WORKFLOW = config(
    "how the suite itself is run (scripts/test.sh's phases, the markers tests/conftest.py"
    " sets): the development workflow, not smserve's behaviour; CI runs it on every push"
)


def in_process(*tests: str) -> Proof:
    """Tests that prove the clause in-process only (``call_command``, ``run.train``)."""
    return config("in-process only, not through the real ./train or server", *tests)


IN_STACK = in_process(
    f"{SAFE}::test_dangerous_names_inside_the_allowed_stack_are_refused",
    f"{SAFE}::test_every_denied_object_is_found",
)


# (page, table, row) -> {clause: what proves it}.
ROWS: dict[tuple[str, str, str], dict[str, Proof]] = {
    # --- docs/admin.md: Admin pages --------------------
    (ADMIN, "Admin pages", "**Trained models**"): {
        "model artifact (its sha256)": proof(
            f"{ADMIN_T}::test_trained_model_list_and_page"
        ),
        "the serving side": proof(f"{ADMIN_T}::test_trained_model_list_and_page"),
        "at start-up": proof(f"{ADMIN_T}::test_trained_model_list_and_page"),
        "from `model/metadata.json` (or from the estimator itself when there is none)": proof(
            f"{ADMIN_T}::test_trained_model_list_and_page"
        ),
    },
    (ADMIN, "Admin pages", "**Training runs**"): {
        "`train` run": proof(f"{ADMIN_T}::test_training_run_list_and_page"),
        "`manage.py train`": proof(f"{ADMIN_T}::test_training_run_list_and_page"),
        "when a database answers": proof(f"{ADMIN_T}::test_training_run_list_and_page"),
    },
    (ADMIN, "Admin pages", "**Invocation stats**"): {
        "model and minute (UTC)": proof(
            f"{STATS}::test_counts_across_workers_are_exact"
        ),
        "each gunicorn worker": proof(f"{STATS}::test_counts_across_workers_are_exact"),
        "in the background": proof(f"{STATS}::test_counts_across_workers_are_exact"),
    },
    # --- docs/admin.md: Admin variables --------------------
    (ADMIN, "Admin variables", "`SMSERVE_ADMIN_ENABLED=true`"): {
        "mounts `/admin/` (off by default: `/admin/` is then a JSON 404 like any unknown path)": proof(
            f"{ADMIN_T}::test_admin_is_off_unless_enabled"
        ),
    },
    (
        ADMIN,
        "Admin variables",
        "`DJANGO_SUPERUSER_USERNAME`, `DJANGO_SUPERUSER_PASSWORD`, `DJANGO_SUPERUSER_EMAIL`",
    ): {
        "`serve` creates this superuser on start-up": in_process(
            f"{ADMIN_T}::test_superuser_creation_is_idempotent"
        ),
        "if the user exists it is left as it is (password included)": in_process(
            f"{ADMIN_T}::test_superuser_creation_is_idempotent"
        ),
    },
    (ADMIN, "Admin variables", "`SECRET_KEY`"): {
        "the session signing key": in_process(
            "tests/test_settings.py::test_secret_key_generated_once_and_shared"
        ),
        "when absent one is generated once into `SMSERVE_STATE_DIR/secret_key`": in_process(
            "tests/test_settings.py::test_secret_key_generated_once_and_shared"
        ),
    },
    (ADMIN, "Admin variables", "`SMSERVE_STATE_DIR`"): {
        "where the SQLite database and the generated key live (default `var/` in the app dir)": proof(
            f"{STATS}::test_counts_across_workers_are_exact"
        ),
    },
    (ADMIN, "Admin variables", "`DATABASE_URL`"): {
        "another database": proof(
            f"{STATS}::test_database_outage_costs_invocations_nothing"
        ),
        "e.g. `postgres://user:password@host:5432/smserve`": proof(
            f"{STATS}::test_database_outage_costs_invocations_nothing"
        ),
    },
    (ADMIN, "Admin variables", "`SMSERVE_ALLOWED_HOSTS`"): {
        "required with the admin on: the names the container is reached by": proof(
            f"{SETTINGS_T}::test_security_settings_through_the_real_server"
        ),
        "comma-separated (e.g. `models.internal,localhost`)": proof(
            f"{SETTINGS_T}::test_security_settings_through_the_real_server"
        ),
        "left at `*`": proof(
            f"{SECURITY}::test_serve_stops_at_its_deploy_check_with_the_admin_on_and_any_host"
        ),
        "`serve` stops at its deploy check (`modelapp.E006`)": proof(
            f"{SECURITY}::test_serve_stops_at_its_deploy_check_with_the_admin_on_and_any_host"
        ),
    },
    (ADMIN, "Admin variables", "`SMSERVE_STATS_FLUSH_SECONDS`"): {
        "how often each worker writes its counts (default 5)": proof(
            f"{STATS}::test_counts_across_workers_are_exact"
        ),
    },
    (
        ADMIN,
        "Admin variables",
        "`SMSERVE_CSRF_TRUSTED_ORIGINS`, `SMSERVE_SECURE_COOKIES`",
    ): {
        "when the admin is reached through HTTPS on another origin": proof(
            f"{SETTINGS_T}::test_security_settings_through_the_real_server"
        ),
    },
    # --- docs/image-and-sagemaker.md: Image --------------------
    (IMAGE, "Image", "base"): {
        "`debian:bookworm-slim` (`ARG BASE_IMAGE`)": proof(
            f"{IMG}::test_image_contents_are_what_the_docs_say"
        ),
        "Debian's `python3` (3.11) and `nginx-light`": proof(
            f"{IMG}::test_image_contents_are_what_the_docs_say"
        ),
    },
    (IMAGE, "Image", "Python packages"): {
        "exactly `requirements.txt`": proof(
            f"{IMG}::test_image_contents_are_what_the_docs_say"
        ),
        "from wheels only": proof(f"{IMG}::test_the_build_installs_wheels_only"),
        "in `/opt/venv` (first on `PATH`)": proof(
            f"{IMG}::test_image_contents_are_what_the_docs_say"
        ),
        "no pip": proof(
            f"{IMG}::test_image_holds_no_secret_key_test_tools_or_compilers"
        ),
        "compiler or test tool in the image": proof(
            f"{IMG}::test_image_holds_no_secret_key_test_tools_or_compilers"
        ),
    },
    (IMAGE, "Image", "code"): {
        "`/opt/program` (SageMaker mounts over `/opt/ml`)": proof(
            f"{IMG}::test_image_contents_are_what_the_docs_say"
        ),
        "static files collected at build time": proof(
            f"{IMG}::test_image_contents_are_what_the_docs_say"
        ),
    },
    (IMAGE, "Image", "state"): {
        "`SMSERVE_STATE_DIR=/var/lib/smserve`: the SQLite database and the `SECRET_KEY` generated at first start of each container. Nothing secret is in the image": proof(
            f"{IMG}::test_image_holds_no_secret_key_test_tools_or_compilers"
        ),
        "set `SECRET_KEY` or `DATABASE_URL` through the environment to share them": proof(
            f"{IMG}::test_image_contents_are_what_the_docs_say"
        ),
    },
    (IMAGE, "Image", "label"): {
        "`com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true` (needed for inference pipelines: `serve` listens on `SAGEMAKER_BIND_TO_PORT`)": proof(
            f"{IMG}::test_image_metadata_is_what_sagemaker_expects"
        ),
    },
    (IMAGE, "Image", "port"): {
        "`EXPOSE 8080` (the default of `SAGEMAKER_BIND_TO_PORT`)": proof(
            f"{IMG}::test_image_metadata_is_what_sagemaker_expects"
        ),
    },
    (IMAGE, "Image", "user"): {
        "root": proof(f"{IMG}::test_image_metadata_is_what_sagemaker_expects"),
        "as SageMaker expects": proof(
            f"{IMG}::test_image_metadata_is_what_sagemaker_expects"
        ),
        "nginx's workers": proof(f"{PROCESS}::test_nginx_workers_do_not_run_as_root"),
        "which parse the HTTP": proof(
            f"{PROCESS}::test_nginx_workers_do_not_run_as_root"
        ),
        "run as `www-data` (see [How `serve` runs](serving.md#how-serve-runs))": proof(
            f"{PROCESS}::test_nginx_workers_do_not_run_as_root"
        ),
    },
    (IMAGE, "Image", "size"): {
        "about 810 MB (pyarrow, onnxruntime, scipy, scikit-learn, pandas, numpy and Django are most of it; Dask and what it pulls in for distributed training: 33 MB, +4.2%)": not_here(
            "a figure: the size of one build, printed by the build, not a behaviour"
        ),
    },
    (IMAGE, "Image", "start"): {
        "`serve` answers `/ping` with 200 about 3 s after the container starts (2 workers)": not_here(
            "a figure on one machine: test_image.py prints the start time and bounds none (no timing assertions)"
        ),
    },
    # --- docs/reliability.md: Where failures are described --------------------
    (
        RELIABILITY,
        "Where failures are described",
        "a request smserve cannot answer: bad input, an unsupported type, a body over the payload limit, oversized headers, a slow client, a timeout",
    ): {
        "[Errors](serving.md#errors)": LINK,
    },
    (
        RELIABILITY,
        "Where failures are described",
        "the model is missing, corrupt or fails its warm-up",
    ): {
        "[Errors](serving.md#errors)": LINK,
        "[How `serve` runs](serving.md#how-serve-runs)": LINK,
    },
    (
        RELIABILITY,
        "Where failures are described",
        "nginx or gunicorn dies; SIGTERM (also during start-up)",
    ): {
        "[How `serve` runs](serving.md#how-serve-runs)": LINK,
    },
    (
        RELIABILITY,
        "Where failures are described",
        "a request quoting huge values, or holding control characters to forge log lines (echoed and logged cut short and escaped)",
    ): {
        "[Errors](serving.md#errors)": LINK,
    },
    (
        RELIABILITY,
        "Where failures are described",
        "error details that reveal the container's paths or a script's exceptions (`SMSERVE_DETAILED_ERRORS`)",
    ): {
        "[Errors](serving.md#errors)": LINK,
    },
    (
        RELIABILITY,
        "Where failures are described",
        "a prediction past the timeout on a busy machine (a 504 at the timeout, from nginx or the worker)",
    ): {
        "[Errors](serving.md#errors)": LINK,
    },
    (
        RELIABILITY,
        "Where failures are described",
        "a model that cannot load while health checks poll (the reason on every 503, in the log once a minute)",
    ): {
        "[Errors](serving.md#errors)": LINK,
    },
    (
        RELIABILITY,
        "Where failures are described",
        "thousands of idle or slow clients; other local users; secrets in the workers' environment",
    ): {
        "[How `serve` runs](serving.md#how-serve-runs)": LINK,
    },
    (
        RELIABILITY,
        "Where failures are described",
        "a model artifact that would run code when loaded",
    ): {
        "[Safe model loading](#safe-model-loading)": LINK,
    },
    (
        RELIABILITY,
        "Where failures are described",
        "a model that does not fit a multi-model endpoint's memory; an unload",
    ): {
        "[Multi-model endpoints](serving.md#multi-model-endpoints-sagemaker_multi_modeltrue)": LINK,
    },
    (
        RELIABILITY,
        "Where failures are described",
        "an exception in a user's `inference.py`",
    ): {
        "[Script mode for serving](serving.md#script-mode-for-serving-inferencepy-coming-from-the-official-scikit-learn-container)": LINK,
    },
    (
        RELIABILITY,
        "Where failures are described",
        "a training job with bad configuration or data, a bug, StopTrainingJob",
    ): {
        "[Failure semantics](training.md#failure-semantics)": LINK,
    },
    (
        RELIABILITY,
        "Where failures are described",
        "a training script that fails or is stopped",
    ): {
        "[Script mode](training.md#script-mode-coming-from-the-official-scikit-learn-container)": LINK,
    },
    (
        RELIABILITY,
        "Where failures are described",
        "a host lost or stopped during distributed training",
    ): {
        "[Distributed training](training.md#distributed-training-searches-and-forests-over-the-jobs-hosts)": LINK,
    },
    (RELIABILITY, "Where failures are described", "the database down or unreachable"): {
        "[The admin](admin.md)": LINK,
        "[PostgreSQL](admin.md#postgresql)": LINK,
    },
    (
        RELIABILITY,
        "Where failures are described",
        "the limits: payload, timeouts, workers, memory for models",
    ): {
        "[Settings](settings.md)": LINK,
    },
    # --- docs/reliability.md: Deploy checks silenced --------------------
    (RELIABILITY, "Deploy checks silenced", "`security.W004`"): {
        "HSTS belongs to whatever terminates TLS": in_process(
            f"{SECURITY}::test_check_deploy_is_clean_with_the_admin_on"
        ),
    },
    (RELIABILITY, "Deploy checks silenced", "`security.W008`"): {
        "the container never sees HTTPS": in_process(
            f"{SECURITY}::test_check_deploy_is_clean_with_the_admin_on"
        ),
        "redirecting would loop": in_process(
            f"{SECURITY}::test_check_deploy_is_clean_with_the_admin_on"
        ),
    },
    (RELIABILITY, "Deploy checks silenced", "`security.W012`"): {
        "set `SMSERVE_SECURE_COOKIES=true` when the admin is reached over HTTPS": proof(
            f"{SETTINGS_T}::test_security_settings_through_the_real_server"
        ),
    },
    (RELIABILITY, "Deploy checks silenced", "`security.W016`"): {
        "the same": proof(
            f"{SETTINGS_T}::test_security_settings_through_the_real_server"
        ),
    },
    # --- docs/reliability.md: Safe loading refusals --------------------
    # The unpickler is tested in-process, payload by payload (each named in its parameters);
    # through the real server: a refused artifact on /ping and on a multi-model load (Errors,
    # Multi-model API).
    (
        RELIABILITY,
        "Safe loading refusals",
        "anything outside the list above: `os.system`, `subprocess`, `builtins.eval`/`exec`/`__import__`/`open`, `operator.attrgetter`, `pickle.loads`, `joblib.load`, cloudpickle",
    ): {
        "anything outside the list above: `os.system`": in_process(
            f"{SAFE}::test_code_running_globals_are_refused",
            f"{SAFE}::test_a_pickle_calling_os_is_refused_and_nothing_runs",
        ),
        "`subprocess`": in_process(f"{SAFE}::test_code_running_globals_are_refused"),
        "`builtins.eval`/`exec`/`__import__`/`open`": in_process(
            f"{SAFE}::test_code_running_globals_are_refused"
        ),
        "`operator.attrgetter`": in_process(
            f"{SAFE}::test_code_running_globals_are_refused"
        ),
        "`pickle.loads`": in_process(f"{SAFE}::test_code_running_globals_are_refused"),
        "`joblib.load`": in_process(
            f"{SAFE}::test_code_running_globals_are_refused",
            f"{SAFE}::test_dangerous_names_inside_the_allowed_stack_are_refused",
        ),
        "cloudpickle": in_process(
            f"{SAFE}::test_dangerous_names_inside_the_allowed_stack_are_refused"
        ),
    },
    (
        RELIABILITY,
        "Safe loading refusals",
        "inside the allowed packages: `numpy.load`/`save*`/`loadtxt`/`genfromtxt`/`fromfile`/`memmap`, `numpy.testing`, `numpy.f2py`, `numpy.distutils`, `numpy.ctypeslib`, `numpy.lib.format`, `pandas.io` (`read_pickle`, `read_csv`, ...), `pandas.eval`, `pandas.plotting`, `pandas.compat._optional`, `scipy.io`, `scipy.datasets`, `scipy.LowLevelCallable`, `sklearn.datasets`, `sklearn.utils._testing`, `sklearn.show_versions` (the lists, with a reason each: `DENIED_MODULES`, `DENIED_OBJECTS`)",
    ): {
        "inside the allowed packages: `numpy.load`/`save*`/`loadtxt`/`genfromtxt`/`fromfile`/`memmap`": IN_STACK,
        "`numpy.testing`": IN_STACK,
        "`numpy.f2py`": IN_STACK,
        "`numpy.distutils`": IN_STACK,
        "`numpy.ctypeslib`": IN_STACK,
        "`numpy.lib.format`": IN_STACK,
        "`pandas.io` (`read_pickle`, `read_csv`, ...)": IN_STACK,
        "`pandas.eval`": IN_STACK,
        "`pandas.plotting`": IN_STACK,
        "`pandas.compat._optional`": IN_STACK,
        "`scipy.io`": IN_STACK,
        "`scipy.datasets`": IN_STACK,
        "`scipy.LowLevelCallable`": IN_STACK,
        "`sklearn.datasets`": IN_STACK,
        "`sklearn.utils._testing`": IN_STACK,
        "`sklearn.show_versions` (the lists, with a reason each: `DENIED_MODULES`, `DENIED_OBJECTS`)": IN_STACK,
    },
    (
        RELIABILITY,
        "Safe loading refusals",
        "a name re-exported into an allowed module (`pandas.read_pickle` lives in `pandas.io`; `scipy._lib.deprecation.import_module` is `importlib`'s)",
    ): {
        "a name re-exported into an allowed module (`pandas.read_pickle` lives in `pandas.io`; `scipy._lib.deprecation.import_module` is `importlib`'s)": IN_STACK,
    },
    (
        RELIABILITY,
        "Safe loading refusals",
        "dotted names other than nested classes (`sklearn.base.clone.__globals__`, `numpy.ndarray.tofile`), and modules as objects",
    ): {
        "dotted names other than nested classes (`sklearn.base.clone.__globals__`, `numpy.ndarray.tofile`)": IN_STACK,
        "and modules as objects": IN_STACK,
    },
    (
        RELIABILITY,
        "Safe loading refusals",
        "`builtins.getattr` except on an admitted class for one of its classmethods (how `ZoneInfo` pickles)",
    ): {
        "`builtins.getattr` except on an admitted class for one of its classmethods (how `ZoneInfo` pickles)": in_process(
            f"{SAFE}::test_getattr_fetches_classmethods_of_admitted_classes_only",
            f"{SAFE}::test_a_data_frame_with_every_pandas_dtype_loads",
        ),
    },
    (
        RELIABILITY,
        "Safe loading refusals",
        "changing what was imported: `BUILD` or filling a dict/list/set on a class, function, module or module-level object (`_Scorer.__call__ = ...`, scikit-learn's global configuration)",
    ): {
        "changing what was imported: `BUILD` or filling a dict/list/set on a class": in_process(
            f"{SAFE}::test_a_file_cannot_change_what_it_imports"
        ),
        "function": in_process(f"{SAFE}::test_a_file_cannot_change_what_it_imports"),
        # A module is never handed out (modules as objects are refused).
        "module or module-level object (`_Scorer.__call__ = ...`, scikit-learn's global configuration)": in_process(
            f"{SAFE}::test_a_file_cannot_change_what_it_imports",
            f"{SAFE}::test_dangerous_names_inside_the_allowed_stack_are_refused",
        ),
    },
    (
        RELIABILITY,
        "Safe loading refusals",
        "an object array's nested pickle, which joblib reads with a second unpickler",
    ): {
        "an object array's nested pickle": in_process(
            f"{SAFE}::test_an_object_array_with_a_malicious_inner_pickle_is_refused"
        ),
        "which joblib reads with a second unpickler": in_process(
            f"{SAFE}::test_an_object_array_with_a_malicious_inner_pickle_is_refused"
        ),
    },
    (
        RELIABILITY,
        "Safe loading refusals",
        "joblib < 0.10 files and `NDArrayWrapper`, which read a side file with `numpy.load(allow_pickle=True)`",
    ): {
        "joblib < 0.10 files and `NDArrayWrapper`": in_process(
            f"{SAFE}::test_an_old_joblib_side_file_is_never_read",
            f"{SAFE}::test_an_artifact_of_joblib_before_0_10_is_refused_with_advice",
        ),
        "which read a side file with `numpy.load(allow_pickle=True)`": in_process(
            f"{SAFE}::test_an_old_joblib_side_file_is_never_read"
        ),
    },
    # --- docs/development.md: Test phases, Test markers --------------------
    (DEVELOPMENT, "Test phases", "bootstrap"): {
        "`scripts/bootstrap.sh test`: apt packages (as root), the venv, the wheels pip's build isolation needs (`.venv/build-wheels`); each step only when missing": WORKFLOW
    },
    (DEVELOPMENT, "Test phases", "lint"): {
        "`ruff check .`, `ruff format --check .` and `mypy` (shellcheck and hadolint run as tests)": WORKFLOW
    },
    (DEVELOPMENT, "Test phases", "tests on SQLite"): {
        "every test, no marker left out": WORKFLOW
    },
    (DEVELOPMENT, "Test phases", "tests on PostgreSQL"): {
        '`-m "database and not image and not slow"` on a throwaway cluster (`scripts/postgres.sh`)': WORKFLOW
    },
    (DEVELOPMENT, "Test markers", "`server`"): {
        "start the real `serve` (nginx + gunicorn); `tests/conftest.py` marks every test using `server`, `serve_factory`, `serve_process` or `admin_server`": WORKFLOW
    },
    (DEVELOPMENT, "Test markers", "`database`"): {
        "use the suite's database: marked `django_db`, or using `db`, `transactional_db`, `admin_server`, `server_db` or `locked_server` (marked by `tests/conftest.py`), or marked by hand where a server or job the test reads writes to it": WORKFLOW
    },
    (DEVELOPMENT, "Test markers", "`image`"): {
        "`tests/test_image.py`: the container, built with podman": WORKFLOW
    },
    (DEVELOPMENT, "Test markers", "`root`"): {
        "need root: the image, a tmpfs mount (`test_faults.py`), PostgreSQL clusters of their own run as the `postgres` user (`test_stats.py`, `test_newcomer.py`)": WORKFLOW
    },
    (DEVELOPMENT, "Test markers", "`slow`"): {
        "`tests/training/test_cluster.py`: several `train` processes and a real Dask cluster": WORKFLOW
    },
    (DEVELOPMENT, "Test markers", "`browser`"): {
        "`tests/test_admin_browser.py`: the admin in headless chromium": WORKFLOW
    },
    # --- docs/serving.md: Formats: Content-Type --------------------
    (
        SERVING,
        "Formats: Content-Type",
        "`text/csv` (also when absent, or `application/octet-stream`)",
    ): {
        "`text/csv` (also when absent, or `application/octet-stream`)": proof(
            f"{HTTP}::test_content_type_variants_read_as_csv"
        ),
        "one record per line": proof(f"{HTTP}::test_ten_thousand_records_in_order"),
        "no header": proof(f"{HTTP}::test_ten_thousand_records_in_order"),
        "`header=present` uses a header line to name (and reorder) the columns": proof(
            f"{HTTP}::test_csv_header_present", f"{PROCESS}::test_feature_names_model"
        ),
        "`charset` honoured": proof(f"{HTTP}::test_format_rows"),
        "blank fields are missing values (NaN)": proof(f"{HTTP}::test_format_rows"),
        "quoted fields keep their commas": proof(
            f"{TABLES}::test_a_record_the_model_refuses_is_named"
        ),
        "text fields for a model with text columns": proof(
            f"{TABLES}::test_every_format_answers_what_the_model_answers"
        ),
    },
    (SERVING, "Formats: Content-Type", "`application/json`"): {
        "`application/json`": proof(f"{HTTP}::test_json_shapes"),
        "`[[...], ...]`": proof(f"{HTTP}::test_json_shapes"),
        '`{"instances": [...]}`': proof(f"{HTTP}::test_json_shapes"),
        '`{"inputs": [...]}`': proof(f"{HTTP}::test_json_shapes"),
        "a flat `[...]` is one record (or one value per record for a single-feature model)": proof(
            f"{HTTP}::test_single_flat_record",
            f"{PROCESS}::test_lone_pickle_beside_tarball_loads",
        ),
        'records as objects `{"feature": value}` when the model was trained with feature names': proof(
            f"{PROCESS}::test_feature_names_model"
        ),
        "`null` is a missing value": proof(f"{HTTP}::test_format_rows"),
        "several documents one per line (batch transform with `SplitType=Line`) are read as JSON Lines": proof(
            f"{PROCESS}::TestBatchMode::test_batch_server"
        ),
    },
    (SERVING, "Formats: Content-Type", "`application/jsonlines`"): {
        "`application/jsonlines`": proof(f"{HTTP}::test_format_rows"),
        "one record per line: an array": proof(f"{HTTP}::test_format_rows"),
        "an object": proof(f"{PROCESS}::test_feature_names_model"),
        "or a single number": proof(
            f"{PROCESS}::test_lone_pickle_beside_tarball_loads"
        ),
        '`{"features": [...]}` is read as its array (Clarify\'s records; the key is `SMSERVE_JSONLINES_FEATURES_KEY`)': proof(
            f"{OUTPUTS}::test_clarify_requests_and_answers"
        ),
    },
    (SERVING, "Formats: Content-Type", "`application/x-npy`"): {
        "`application/x-npy`": proof(f"{HTTP}::test_format_rows"),
        "a 1-D (one record) or 2-D numeric array (booleans, integers, floats) saved by `numpy.save`": proof(
            f"{HTTP}::test_format_rows"
        ),
        "text": in_process(
            "tests/test_parser_hardening.py::test_npy_of_a_non_numeric_dtype_is_invalid_input"
        ),
        "bytes": in_process(
            "tests/test_parser_hardening.py::test_npy_of_a_non_numeric_dtype_is_invalid_input"
        ),
        "dates": in_process(
            "tests/test_parser_hardening.py::test_npy_of_a_non_numeric_dtype_is_invalid_input"
        ),
        # Pickled object arrays through the server; records (a void dtype) in-process.
        "records and pickled object arrays are refused": in_process(
            f"{HTTP}::test_error_table",
            "tests/test_parser_hardening.py::test_npy_of_a_non_numeric_dtype_is_invalid_input",
        ),
    },
    (
        SERVING,
        "Formats: Content-Type",
        "`application/x-parquet` (also `application/parquet`, `application/vnd.apache.parquet`)",
    ): {
        "`application/x-parquet` (also `application/parquet`, `application/vnd.apache.parquet`)": proof(
            f"{PARQUET}::test_parquet_both_ways_under_the_aliases"
        ),
        "one Parquet file": proof(
            f"{PARQUET}::test_numeric_parquet_answers_what_csv_answers"
        ),
        "one record per row": proof(
            f"{PARQUET}::test_numeric_parquet_answers_what_csv_answers"
        ),
        "columns by name (in the file's order for a model without feature names)": proof(
            f"{PARQUET}::test_numeric_parquet_answers_what_csv_answers",
            f"{PARQUET}::test_a_table_as_parquet_answers_what_the_model_answers",
        ),
        "columns of numbers or text (category and boolean too) read with the kinds training gave them": proof(
            f"{PARQUET}::test_a_table_as_parquet_answers_what_the_model_answers"
        ),
        "null is a missing value": proof(
            f"{PARQUET}::test_a_table_as_parquet_answers_what_the_model_answers"
        ),
        "a pandas index is no feature": proof(
            f"{PARQUET}::test_a_table_as_parquet_answers_what_the_model_answers"
        ),
        "nested columns (lists, structs, maps) and binary ones are refused": proof(
            f"{PARQUET}::test_malformed_parquet_bodies_are_400s"
        ),
    },
    # --- docs/serving.md: Formats: Accept --------------------
    (SERVING, "Featurizers: Accept", "`text/csv`"): {
        "one row of numbers per record": proof(
            f"{FEATURIZERS}::test_trained_featurizer_serves_transform_in_every_format",
            f"{PIPELINE}::test_intermediate_answer_is_the_next_containers_input",
        ),
    },
    (SERVING, "Featurizers: Accept", "`application/json`"): {
        '`{"predictions": [[...], ...]}`': proof(
            f"{FEATURIZERS}::test_trained_featurizer_serves_transform_in_every_format"
        ),
    },
    (SERVING, "Featurizers: Accept", "`application/jsonlines`"): {
        '`{"features": [...]}` per record': proof(
            f"{FEATURIZERS}::test_trained_featurizer_serves_transform_in_every_format",
            f"{PIPELINE}::test_intermediate_answer_is_the_next_containers_input",
        ),
    },
    (SERVING, "Featurizers: Accept", "`application/x-npy`"): {
        "the 2-D float array": proof(
            f"{FEATURIZERS}::test_trained_featurizer_serves_transform_in_every_format",
            f"{PIPELINE}::test_npy_answer_from_the_featurizer_is_a_float_matrix",
        ),
    },
    (SERVING, "Formats: Accept", "`text/csv`"): {
        "`text/csv`": proof(f"{HTTP}::test_every_content_type_and_accept"),
        "one line per record: the label": proof(
            f"{HTTP}::test_every_content_type_and_accept"
        ),
        "or a comma-joined row of scores": proof(
            f"{HTTP}::test_predict_proba_as_csv_rows"
        ),
    },
    (SERVING, "Formats: Accept", "`application/json`"): {
        "`application/json`": proof(f"{HTTP}::test_every_content_type_and_accept"),
        '`{"predictions": [...]}` (NaN and infinity become `null`)': proof(
            f"{HTTP}::test_method_by_custom_attributes"
        ),
    },
    (SERVING, "Formats: Accept", "`application/jsonlines`"): {
        "`application/jsonlines`": proof(f"{HTTP}::test_every_content_type_and_accept"),
        "one JSON value per line": proof(f"{HTTP}::test_every_content_type_and_accept"),
    },
    (SERVING, "Formats: Accept", "`application/x-npy`"): {
        "`application/x-npy`": proof(
            f"{HTTP}::test_every_content_type_and_accept",
            f"{PROCESS}::test_feature_names_model",
        ),
        "`numpy.save` of the predictions (string labels as a unicode array)": proof(
            f"{HTTP}::test_every_content_type_and_accept",
            f"{PROCESS}::test_feature_names_model",
        ),
    },
    (SERVING, "Formats: Accept", "`application/x-parquet`"): {
        "`application/x-parquet`": proof(f"{PARQUET}::test_csv_in_parquet_out"),
        "one row per record: a column `prediction` of labels or values": proof(
            f"{PARQUET}::test_csv_in_parquet_out"
        ),
        'or one float column per position named by it (`"0"`, `"1"`, …) for scores (`predict_proba`: the classes in the model\'s order, as in a CSV row)': proof(
            f"{PARQUET}::test_csv_in_parquet_out"
        ),
        "text labels as text": proof(
            f"{PARQUET}::test_csv_in_text_labels_out_as_parquet"
        ),
    },
    (SERVING, "Formats: Accept", "absent or `*/*`"): {
        "absent or `*/*`": proof(f"{HTTP}::test_accept_rules"),
        "`SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT` if set": proof(
            f"{PROCESS}::TestBatchMode::test_batch_server"
        ),
        "else the request's own type": proof(f"{HTTP}::test_accept_rules"),
        "else JSON": proof(f"{HTTP}::test_accept_falls_back_to_json"),
    },
    (SERVING, "Formats: Accept", "a list (`text/csv;q=0.5, application/json`)"): {
        "a list (`text/csv;q=0.5, application/json`)": proof(
            f"{HTTP}::test_accept_rules"
        ),
        "the best supported one by q-value": proof(f"{HTTP}::test_accept_rules"),
    },
    # --- docs/serving.md: Errors --------------------
    (SERVING, "Errors", "`empty_body`"): {
        "empty body": proof(f"{HTTP}::test_error_table"),
    },
    (SERVING, "Errors", "`invalid_input`"): {
        "malformed CSV/JSON/NPY": proof(f"{HTTP}::test_error_table"),
        "a Parquet body that is no readable file or has no rows or no columns": proof(
            f"{PARQUET}::test_malformed_parquet_bodies_are_400s",
            f"{PARQUET}::test_a_file_broken_after_its_footer_was_read_is_a_400",
        ),
        "a Parquet column named twice": proof(
            f"{PARQUET}::test_malformed_parquet_bodies_are_400s"
        ),
        "ragged records": proof(f"{HTTP}::test_error_table"),
        "text where the model takes a number": proof(f"{HTTP}::test_error_table"),
        "blank line": proof(f"{HTTP}::test_error_table"),
        "unknown JSON shape": proof(f"{HTTP}::test_error_table"),
        "wrong feature count": proof(f"{HTTP}::test_error_table"),
        "objects without feature names": proof(f"{PROCESS}::test_feature_names_model"),
        "missing/unknown feature names": proof(f"{PROCESS}::test_feature_names_model"),
        "NaN for a model that cannot take it": proof(
            f"{PROCESS}::test_model_without_nan_support_rejects_nan"
        ),
        "infinity": proof(f"{HTTP}::test_error_table"),
        "a record the model itself rejects (its `ValueError`, e.g. an unknown category for an encoder that refuses them: the record is named)": proof(
            f"{TABLES}::test_a_record_the_model_refuses_is_named"
        ),
    },
    (SERVING, "Errors", "`unknown_method`"): {
        "unknown method in the custom attributes": proof(
            f"{HTTP}::test_unknown_method"
        ),
    },
    (SERVING, "Errors", "`not_explainable`"): {
        "`method=explain` for a model no explainer serves (the detail says why)": proof(
            "tests/test_explain.py::test_a_model_without_explainer_refuses_clearly"
        ),
    },
    (SERVING, "Errors", "`too_many_records`"): {
        "`method=explain` with more records than `SMSERVE_EXPLAIN_MAX_RECORDS` (the detail names the cap)": proof(
            "tests/test_explain.py::test_records_past_the_cap_are_a_413_naming_it"
        ),
    },
    (SERVING, "Errors", "`not_found` / `method_not_allowed`"): {
        "unknown path / method on a path": proof(
            f"{HTTP}::test_unknown_paths_and_methods_are_json"
        ),
    },
    (SERVING, "Errors", "`bad_request`"): {
        "request nginx cannot read: a broken request line or header": proof(
            f"{NGINX}::test_nginx_errors_are_json"
        ),
        "a path climbing above `/` (`/../etc/passwd`)": proof(
            f"{NGINX}::test_nginx_errors_are_json"
        ),
        "a header value with a control character (gunicorn refuses it, in JSON too)": proof(
            f"{NGINX}::test_header_gunicorn_refuses_is_json"
        ),
    },
    (SERVING, "Errors", "`method_not_allowed` (names the method)"): {
        "a method nginx answers itself refuses (`PUT /ping`)": proof(
            f"{NGINX}::test_nginx_errors_are_json"
        ),
    },
    (SERVING, "Errors", "`uri_too_long` / `headers_too_large`"): {
        "request line over 8 KB / a header over 8 KB (32 KB in all)": proof(
            f"{NGINX}::test_nginx_errors_are_json"
        ),
    },
    (
        SERVING,
        "Errors",
        "`length_required` / `not_implemented` / `http_version_not_supported`",
    ): {
        "body without a length": config(
            "nginx answers 411 only to a request it cannot frame, which HTTP/1.1 clients never send; the JSON page is read from the template",
            f"{NGINX}::test_every_nginx_error_has_a_json_page",
        ),
        "`Transfer-Encoding` other than chunked": proof(
            f"{NGINX}::test_nginx_errors_are_json"
        ),
        "HTTP other than 1.0/1.1": proof(f"{NGINX}::test_nginx_errors_are_json"),
    },
    (SERVING, "Errors", "`payload_too_large`"): {
        "body over the payload limit (nginx, and Django with the same value; nginx reads and discards the rest of the body, so a client that writes its whole body before reading still reads this answer)": proof(
            f"{HTTP}::test_oversize_body_is_413_from_nginx",
            f"{PROCESS}::test_without_nginx_gunicorn_takes_the_port",
            f"{UNDER_LOAD}::test_body_over_the_limit_is_read_as_413_by_a_client_that_writes_first",
        ),
    },
    (
        SERVING,
        "Errors",
        "`payload_too_large`: body whose parsed form would take more than 20 times the payload limit ([Memory](#formats)): `The JSON body would take more than 120 MB once parsed (20 times the payload limit): ...`",
    ): {
        "body whose parsed form would take more than 20 times the payload limit ([Memory](#formats)): `The JSON body would take more than 120 MB once parsed (20 times the payload limit): ...`": in_process(
            "tests/test_parser_hardening.py::test_a_body_whose_parsed_form_is_over_budget_is_payload_too_large"
        ),
    },
    (SERVING, "Errors", "`unsupported_media_type`"): {
        "unsupported `Content-Type` (lists the supported ones)": proof(
            f"{HTTP}::test_error_table"
        ),
    },
    (SERVING, "Errors", "`not_acceptable`"): {
        "unsatisfiable `Accept` (lists the supported ones)": proof(
            f"{HTTP}::test_error_table"
        ),
        "a format that cannot carry the keys `SAGEMAKER_INFERENCE_OUTPUT` names (NPY: one key of numbers)": proof(
            f"{OUTPUTS}::test_every_key_in_the_deployments_order"
        ),
    },
    (SERVING, "Errors", "`model_not_ready`"): {
        "model missing": proof(f"{PROCESS}::test_missing_model_is_503_with_reason"),
        "corrupt": proof(f"{PROCESS}::test_corrupt_model_is_503"),
        "refused by the safe loader (naming the global and the setting that admits it)": proof(
            f"{SAFE}::test_serve_refuses_the_artifact_with_the_reason_on_ping"
        ),
        "unable to give a key `SAGEMAKER_INFERENCE_OUTPUT` names (naming it and the keys the model supports)": proof(
            f"{OUTPUTS}::test_a_key_the_model_cannot_give_is_a_503_naming_it"
        ),
        "or failing its warm-up (on `/ping` and `/invocations`, with the reason unless `SMSERVE_DETAILED_ERRORS=false`; the log says it when it changes and at most once a minute while it lasts, not once per ping)": proof(
            f"{PROCESS}::test_failed_warm_up_is_503",
            f"{PROCESS}::test_pings_while_the_model_cannot_load_log_the_reason_once",
            f"{VIEWS}::test_detailed_errors_off_keeps_the_reason_in_the_log",
        ),
    },
    (SERVING, "Errors", "`model_server_unavailable`"): {
        "gunicorn not answering (starting, restarting, stopping)": proof(
            f"{HTTP}::test_gunicorn_not_answering_is_503_from_nginx"
        ),
    },
    (
        SERVING,
        "Errors",
        "none: nginx closes the connection without an answer (it logs a 408)",
    ): {
        "a client that stalls while sending its body for `SMSERVE_CLIENT_TIMEOUT` (60 s)": proof(
            f"{NGINX}::test_slow_client_is_dropped"
        ),
        "or its headers for 10 s (or that timeout, if shorter)": proof(
            f"{NGINX}::test_slow_headers_are_dropped"
        ),
    },
    (SERVING, "Errors", "`model_server_timeout`"): {
        "invocation longer than the model server timeout (nginx answers it; the worker, timing the request itself, answers the same if nginx has not, then exits and is replaced; so does a worker gunicorn kills 5 s later, stuck in code no signal interrupts)": proof(
            f"{UNDER_LOAD}::test_timeout_is_504_at_the_timeout_with_the_cpu_saturated",
            f"{UNDER_LOAD}::test_without_nginx_the_worker_answers_the_timeout",
        ),
    },
    (SERVING, "Errors", "`script_error`"): {
        "an exception in a script's hook (script mode; logged with its traceback; with `SMSERVE_DETAILED_ERRORS=false` a 500 says only that the script raised)": proof(
            f"{SCRIPTS}::test_four_hooks_from_a_file_uri",
            f"{VIEWS}::test_detailed_errors_off_hides_a_scripts_exception",
        ),
    },
    (SERVING, "Errors", "`server_error`"): {
        "a bug (logged with its traceback)": proof(
            f"{PROCESS}::test_bug_is_500_with_traceback_in_log"
        ),
        "or nginx failing internally": config(
            "nginx fails internally only on a fault we cannot provoke from outside; its JSON page is read from the template",
            f"{NGINX}::test_every_nginx_error_has_a_json_page",
        ),
    },
    # --- docs/serving.md: Script mode: better --------------------
    (
        SERVING,
        "Script mode: better",
        "an exception in a hook, an unsupported Content-Type or Accept",
    ): {
        'JSON `{"detail", "code"}`: 500 with the message': proof(
            f"{SCRIPTS}::test_four_hooks_from_a_file_uri"
        ),
        "415/406 listing the supported types": proof(
            f"{SCRIPTS}::test_defaults_fix_what_the_official_container_gets_wrong"
        ),
    },
    (SERVING, "Script mode: better", "a 4xx from `inference.py`"): {
        "`HTTPError(status, ...)` or any `status_code`": proof(
            f"{SCRIPTS}::test_a_script_without_model_fn_shapes_its_response"
        ),
        "a returned Flask `Response` with a 4xx/5xx status is honoured too": in_process(
            "tests/test_script_predictor.py::test_a_returned_flask_response_keeps_its_status"
        ),
    },
    (SERVING, "Script mode: better", "one-row CSV with the default `input_fn`"): {
        "one record": proof(
            f"{SCRIPTS}::test_defaults_fix_what_the_official_container_gets_wrong"
        ),
    },
    (SERVING, "Script mode: better", "when the model loads"): {
        "once": proof(
            f"{SCRIPTS}::test_model_fn_runs_once_in_the_master_before_the_fork"
        ),
        "before the workers fork": proof(
            f"{SCRIPTS}::test_model_fn_runs_once_in_the_master_before_the_fork"
        ),
        "`/ping` 200 only when it worked": proof(
            f"{SCRIPTS}::test_a_broken_script_keeps_ping_503_naming_file_and_line"
        ),
        "503 with the reason otherwise": proof(
            f"{SCRIPTS}::test_a_broken_script_keeps_ping_503_naming_file_and_line"
        ),
    },
    (SERVING, "Script mode: better", "`model_fn` missing"): {
        "smserve loads the joblib": proof(
            f"{SCRIPTS}::test_a_script_without_model_fn_shapes_its_response"
        ),
    },
    (SERVING, "Script mode: better", "default input formats"): {
        "also JSON Lines": proof(
            f"{SCRIPTS}::test_a_script_without_model_fn_shapes_its_response"
        ),
        "CSV headers": proof(
            f"{SCRIPTS}::test_a_script_without_model_fn_shapes_its_response"
        ),
        "JSON records with feature names": proof(
            f"{SCRIPTS}::test_default_input_fn_takes_json_records_with_feature_names"
        ),
        "media-type parameters accepted": proof(
            f"{SCRIPTS}::test_a_script_without_model_fn_shapes_its_response"
        ),
    },
    (SERVING, "Script mode: better", "CSV response Content-Type"): {
        "`text/csv`": proof(f"{SCRIPTS}::test_defaults_answer_the_official_bytes"),
    },
    # --- docs/serving.md: Multi-model API --------------------
    (
        SERVING,
        "Multi-model API",
        '`POST /models` `{"model_name": "<name>", "url": "/opt/ml/models/<name>/model"}`',
    ): {
        '200 `{"modelName", "modelUrl", "status": "loaded"}` once the model is loaded': proof(
            f"{MME}::test_every_status_of_the_model_api_with_its_code"
        ),
        "warmed up and registered for every worker": proof(
            f"{MME}::test_forty_invocations_spread_over_the_workers"
        ),
        "409 `model_already_loaded`": proof(f"{MME}::test_every_call_and_error"),
        "507 `insufficient_memory` (SageMaker then unloads idle models and retries)": proof(
            f"{MME}::test_a_model_over_the_budget_is_a_507"
        ),
        "400 `model_load_failed` with the reason (a path the file system refuses, e.g. too long; no such directory, no artifact, not a pickle, a global the safe loader refuses, no `predict`, warm-up failed)": proof(
            f"{MME}::test_every_status_of_the_model_api_with_its_code",
            f"{SAFE}::test_a_multi_model_load_of_a_refused_artifact_is_a_400",
        ),
        "400 `invalid_load_request` for a body that is not that JSON (nested too deep included)": proof(
            f"{MME}::test_every_status_of_the_model_api_with_its_code",
            f"{MME}::test_load_requests_that_are_refused",
        ),
        "whose `model_name` or `url` holds a control character (`\\n`, NUL) or an unpaired surrogate": proof(
            f"{MME}::test_every_status_of_the_model_api_with_its_code",
            f"{MME}::test_load_requests_that_are_refused",
        ),
        "or whose `url` is not inside `SMSERVE_MME_MODEL_ROOT` (default `/opt/ml/models`, checked after resolving symlinks and `..`)": proof(
            f"{MME}::test_load_requests_that_are_refused"
        ),
    },
    (SERVING, "Multi-model API", "`POST /invocations`"): {
        "404 `multi_model`": proof(
            f"{MME}::test_every_status_of_the_model_api_with_its_code"
        ),
        'naming `POST /models/<name>/invoke` (in the negotiated format): a multi-model container has no default model (it was a 503 "not loaded", which tells a caller to retry)': proof(
            f"{MME}::test_every_status_of_the_model_api_with_its_code"
        ),
    },
    (SERVING, "Multi-model API", "`GET /models[?next_page_token=...]`"): {
        '200 `{"models": [{"modelName", "modelUrl"}, ...], "nextPageToken"?}`': proof(
            f"{MME}::test_list_is_paginated"
        ),
        "100 a page": proof(f"{MME}::test_list_is_paginated"),
        "by name (`limit=` asks for another page size)": proof(
            f"{MME}::test_every_status_of_the_model_api_with_its_code"
        ),
    },
    (SERVING, "Multi-model API", "`GET /models/<name>`"): {
        '200 `{"modelName", "modelUrl"}`': proof(f"{MME}::test_every_call_and_error"),
        "404 `model_not_found`": proof(
            f"{MME}::test_every_status_of_the_model_api_with_its_code"
        ),
    },
    (SERVING, "Multi-model API", "`DELETE /models/<name>`"): {
        "200 once no worker holds the model's memory any more": proof(
            f"{MME}::test_unloading_gives_the_memory_back"
        ),
        "404": proof(f"{MME}::test_every_status_of_the_model_api_with_its_code"),
    },
    (
        SERVING,
        "Multi-model API",
        "`POST /models/<name>/invoke` (`Content-Type`, `Accept`, custom attributes, `X-Amzn-SageMaker-Target-Model`)",
    ): {
        "exactly `/invocations`: the same negotiation": proof(
            f"{MME}::test_every_call_and_error"
        ),
        "formats": proof(f"{MME}::test_every_call_and_error"),
        "errors and custom attributes": proof(f"{MME}::test_every_call_and_error"),
        "404 when not loaded": proof(
            f"{MME}::test_every_status_of_the_model_api_with_its_code"
        ),
        "in the negotiated format": proof(
            f"{MME}::test_every_status_of_the_model_api_with_its_code"
        ),
        "503 with the reason when this worker cannot read a loaded model's files any more": proof(
            f"{MME}::test_a_worker_that_cannot_read_a_loaded_model_answers_503"
        ),
    },
    # --- docs/serving.md: Multi-model choices --------------------
    (
        SERVING,
        "Multi-model choices",
        "how an invocation learns of unloads and reloads",
    ): {
        "`readlink` of a token: as cheap as a `stat`": BENCH,
        "and exact": proof(f"{MME}::test_loads_and_unloads_racing_invocations"),
    },
    (SERVING, "Multi-model choices", "lazy or eager load in the other workers"): {
        "lazy: a few ms once per worker": BENCH,
        "against a copy of every model in every worker and a load that waits for busy workers": BENCH,
    },
    (SERVING, "Multi-model choices", "memory given back"): {
        "unload frees it in every worker before answering": proof(
            f"{MME}::test_unloading_gives_the_memory_back"
        ),
    },
    # --- docs/serving.md: Outputs chosen at deployment --------------------
    (SERVING, "Output keys", "`predicted_label`"): {
        "the model's `predict` (a label or a regressor's value)": proof(
            f"{OUTPUTS}::test_a_regressors_label_in_every_format",
            f"{OUTPUTS}::test_every_key_in_the_deployments_order",
        ),
    },
    (SERVING, "Output keys", "`probability`"): {
        "two labels: the probability of the second (`classes_[1]`: 1 or `True`)": proof(
            f"{OUTPUTS}::test_clarify_requests_and_answers"
        ),
        "more labels: the predicted label's (the largest)": proof(
            f"{OUTPUTS}::test_every_key_in_the_deployments_order"
        ),
    },
    (SERVING, "Output keys", "`probabilities`"): {
        "`predict_proba`'s row in `labels` order": proof(
            f"{OUTPUTS}::test_every_key_in_the_deployments_order"
        ),
    },
    (SERVING, "Output keys", "`labels`"): {
        "the classifier's labels (`classes_`) on every record": proof(
            f"{OUTPUTS}::test_every_key_in_the_deployments_order"
        ),
    },
    (SERVING, "Output keys", "`transform`"): {
        "the model's `transform` row": proof(
            f"{OUTPUTS}::test_every_key_in_the_deployments_order"
        ),
    },
    # --- docs/settings.md: Settings --------------------
    (SETTINGS, "Settings", "`SAGEMAKER_BASE_DIR`"): {
        "`SAGEMAKER_BASE_DIR`": proof(
            "tests/test_train.py::test_base_dir_from_environment_and_inferred_channels"
        ),
    },
    (SETTINGS, "Settings", "`SAGEMAKER_BIND_TO_PORT`"): {
        "`SAGEMAKER_BIND_TO_PORT`": proof(
            f"{SETTINGS_T}::test_process_settings_through_the_real_server"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_BIND_HOST`"): {
        "`SMSERVE_BIND_HOST`": proof(
            f"{SETTINGS_T}::test_process_settings_through_the_real_server"
        ),
    },
    (
        SETTINGS,
        "Settings",
        "`SAGEMAKER_MODEL_SERVER_WORKERS`, `MODEL_SERVER_WORKERS`",
    ): {
        "`SAGEMAKER_MODEL_SERVER_WORKERS`": proof(
            "tests/test_image.py::test_serve_answers_ping_and_invocations_then_stops_cleanly_on_sigterm"
        ),
        "`MODEL_SERVER_WORKERS`": proof(
            "tests/test_contract_http.py::test_execution_parameters"
        ),
    },
    (
        SETTINGS,
        "Settings",
        "`SAGEMAKER_MODEL_SERVER_TIMEOUT`, `MODEL_SERVER_TIMEOUT`",
    ): {
        "`SAGEMAKER_MODEL_SERVER_TIMEOUT`": proof(
            f"{SETTINGS_T}::test_process_settings_through_the_real_server"
        ),
        "`MODEL_SERVER_TIMEOUT`": proof(
            f"{SETTINGS_T}::test_process_settings_through_the_real_server"
        ),
    },
    (SETTINGS, "Settings", "`SAGEMAKER_BATCH`"): {
        "`SAGEMAKER_BATCH`": proof(
            "tests/test_serve_process.py::TestBatchMode::test_batch_server"
        ),
    },
    (SETTINGS, "Settings", "`SAGEMAKER_MAX_PAYLOAD_IN_MB`"): {
        "`SAGEMAKER_MAX_PAYLOAD_IN_MB`": proof(
            "tests/test_serve_process.py::TestBatchMode::test_batch_server",
            "tests/test_serve_process.py::test_without_nginx_gunicorn_takes_the_port",
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_PASS_THROUGH_LABEL`"): {
        "`SMSERVE_PASS_THROUGH_LABEL`": proof(
            f"{PIPELINE}::test_batch_transform_featurizes_training_data_line_for_line"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_CHUNK_KB`"): {
        "`SMSERVE_CHUNK_KB`": proof(
            "tests/test_chunked_batches.py::test_chunked_answers_equal_one_pass"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_EXPLAIN_MAX_RECORDS`"): {
        "`SMSERVE_EXPLAIN_MAX_RECORDS`": proof(
            "tests/test_explain.py::test_records_past_the_cap_are_a_413_naming_it"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_EXPLAIN_MEMORY_MB`"): {
        "`SMSERVE_EXPLAIN_MEMORY_MB`": proof(
            "tests/test_explain.py::"
            "test_a_model_over_the_memory_budget_predicts_but_builds_no_explainer"
        ),
    },
    (SETTINGS, "Settings", "`SAGEMAKER_INFERENCE_OUTPUT`"): {
        "`SAGEMAKER_INFERENCE_OUTPUT`": proof(
            f"{OUTPUTS}::test_a_key_the_model_cannot_give_is_a_503_naming_it"
        ),
    },
    (SETTINGS, "Settings", "`SAGEMAKER_INFERENCE_SUPPORTED`"): {
        "`SAGEMAKER_INFERENCE_SUPPORTED`": proof(
            f"{OUTPUTS}::test_clarify_requests_and_answers"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_JSONLINES_FEATURES_KEY`"): {
        "`SMSERVE_JSONLINES_FEATURES_KEY`": proof(
            f"{OUTPUTS}::test_a_multi_model_endpoint_checks_and_honours_the_keys_for_every_model"
        ),
    },
    (SETTINGS, "Settings", "`SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`"): {
        "`SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`": proof(
            "tests/test_serve_process.py::TestBatchMode::test_batch_server",
            "tests/test_script_serving.py::test_a_script_without_model_fn_shapes_its_response",
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_DEFAULT_CONTENT_TYPE`"): {
        "`SMSERVE_DEFAULT_CONTENT_TYPE`": proof(
            f"{SETTINGS_T}::test_process_settings_through_the_real_server"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_STATE_DIR`"): {
        "`SMSERVE_STATE_DIR`": proof(
            "tests/training/test_record.py::test_train_records_the_run_in_its_database"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_SQLITE_PATH`"): {
        "`SMSERVE_SQLITE_PATH`": proof(
            f"{SETTINGS_T}::test_process_settings_through_the_real_server"
        ),
    },
    (SETTINGS, "Settings", "`DATABASE_URL`"): {
        "`DATABASE_URL`": proof(
            "tests/test_faults.py::test_database_down_from_the_start_leaves_serving_up"
        ),
    },
    (SETTINGS, "Settings", "`SECRET_KEY` (or `DJANGO_SECRET_KEY`)"): {
        "`SECRET_KEY` (or `DJANGO_SECRET_KEY`)": proof(
            f"{SETTINGS_T}::test_process_settings_through_the_real_server"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_ADMIN_ENABLED`"): {
        "`SMSERVE_ADMIN_ENABLED`": proof(
            "tests/test_admin_security.py::test_admin_pages_carry_security_headers_and_strict_cookies"
        ),
    },
    (SETTINGS, "Settings", "`DJANGO_SUPERUSER_USERNAME`, `_PASSWORD`, `_EMAIL`"): {
        "`DJANGO_SUPERUSER_USERNAME`": proof(
            "tests/test_admin_security.py::test_admin_pages_carry_security_headers_and_strict_cookies"
        ),
        "`_PASSWORD`": proof(
            "tests/test_admin_security.py::test_admin_pages_carry_security_headers_and_strict_cookies"
        ),
        "`_EMAIL`": proof(
            "tests/test_admin_security.py::test_admin_pages_carry_security_headers_and_strict_cookies"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_ALLOWED_HOSTS`"): {
        "`SMSERVE_ALLOWED_HOSTS`": proof(
            f"{SETTINGS_T}::test_security_settings_through_the_real_server"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_CSRF_TRUSTED_ORIGINS`"): {
        "`SMSERVE_CSRF_TRUSTED_ORIGINS`": proof(
            f"{SETTINGS_T}::test_security_settings_through_the_real_server"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_SECURE_COOKIES`"): {
        "`SMSERVE_SECURE_COOKIES`": proof(
            f"{SETTINGS_T}::test_security_settings_through_the_real_server"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_DEBUG`"): {
        "`SMSERVE_DEBUG`": proof(f"{SETTINGS_T}::test_debug_is_djangos_debug"),
    },
    (SETTINGS, "Settings", "`SMSERVE_LOG_LEVEL`"): {
        "`SMSERVE_LOG_LEVEL`": proof(
            "tests/test_serve_process.py::test_log_level_warning_drops_invocation_lines"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_STATS_FLUSH_SECONDS`"): {
        "`SMSERVE_STATS_FLUSH_SECONDS`": proof(
            "tests/test_stats.py::test_counts_across_workers_are_exact"
        ),
    },
    # --- drift (docs/monitoring.md) --------------------
    (SETTINGS, "Settings", "`SMSERVE_CAPTURE_PERCENT`"): {
        "`SMSERVE_CAPTURE_PERCENT`": proof(f"{DRIFT_T}::{DRIFT_FLAGGED}"),
    },
    (SETTINGS, "Settings", "`SMSERVE_DRIFT_PSI`"): {
        "`SMSERVE_DRIFT_PSI`": proof(f"{DRIFT_T}::{DRIFT_FLAGGED}"),
    },
    (SETTINGS, "Settings", "`SMSERVE_DRIFT_JS`"): {
        "`SMSERVE_DRIFT_JS`": proof(f"{DRIFT_T}::{DRIFT_FLAGGED}"),
    },
    (SETTINGS, "Settings", "`SMSERVE_DRIFT_MIN_RECORDS`"): {
        "`SMSERVE_DRIFT_MIN_RECORDS`": proof(f"{DRIFT_T}::{DRIFT_FLAGGED}"),
    },
    # --- raw capture (docs/monitoring.md, tests/test_capture_files.py) ---
    (SETTINGS, "Settings", "`SMSERVE_CAPTURE_DESTINATION`"): {
        "`SMSERVE_CAPTURE_DESTINATION`": proof(
            f"{CAPTURE_FILES_T}::test_captures_in_a_directory",
            f"{CAPTURE_FILES_T}::test_captures_in_s3",
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_CAPTURE_ROTATE_SECONDS`"): {
        "`SMSERVE_CAPTURE_ROTATE_SECONDS`": proof(
            f"{CAPTURE_FILES_T}::test_captures_in_a_directory"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_CAPTURE_ROTATE_MB`"): {
        "`SMSERVE_CAPTURE_ROTATE_MB`": proof(
            f"{CAPTURE_FILES_T}::test_a_large_file_is_written_before_its_time"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_DRIFT_REFERENCE_RECORDS`"): {
        "`SMSERVE_DRIFT_REFERENCE_RECORDS`": proof(
            f"{DRIFT_T}::test_a_model_trained_elsewhere_uses_its_first_served_records"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_STATIC_ROOT`"): {
        "`SMSERVE_STATIC_ROOT`": proof(
            "tests/test_admin_security.py::test_admin_pages_carry_security_headers_and_strict_cookies"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_PYTHON`"): {
        "`SMSERVE_PYTHON`": proof(
            f"{SETTINGS_T}::test_process_settings_through_the_real_server"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_DASK_SCHEDULER_PORT`"): {
        "`SMSERVE_DASK_SCHEDULER_PORT`": proof(
            "tests/training/test_cluster.py::test_three_hosts_search_as_one_host_does"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_HOST_ADDRESSES`"): {
        "`SMSERVE_HOST_ADDRESSES`": proof(
            "tests/training/test_cluster.py::test_three_hosts_search_as_one_host_does"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_APP_DIR`"): {
        "`SMSERVE_APP_DIR`": proof(
            f"{SETTINGS_T}::test_process_settings_through_the_real_server"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_NGINX`"): {
        "`SMSERVE_NGINX`": proof(
            f"{SETTINGS_T}::test_process_settings_through_the_real_server"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_CLIENT_TIMEOUT`"): {
        "`SMSERVE_CLIENT_TIMEOUT`": proof(
            "tests/test_nginx_errors.py::test_slow_client_is_dropped"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_NGINX_ACCESS_LOG`"): {
        "`SMSERVE_NGINX_ACCESS_LOG`": proof(
            f"{SETTINGS_T}::test_process_settings_through_the_real_server"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_COMPILED_ENGINE`"): {
        "`SMSERVE_COMPILED_ENGINE`": proof(
            "tests/test_engines.py::test_train_compiles_and_the_server_serves_it"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_COMPILED_THREADS`"): {
        "`SMSERVE_COMPILED_THREADS`": proof(
            f"{SETTINGS_T}::test_process_settings_through_the_real_server"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_FAST_PATHS_OFF`"): {
        "`SMSERVE_FAST_PATHS_OFF`": proof(
            "tests/test_fastpaths.py::test_every_trick_off_answers_the_same"
        ),
    },
    (SETTINGS, "Settings", "`TRAINING_JOB_NAME`"): {
        "`TRAINING_JOB_NAME`": proof(
            "tests/test_train.py::test_csv_classification_end_to_end"
        ),
    },
    (SETTINGS, "Settings", "`SAGEMAKER_PROGRAM`"): {
        "`SAGEMAKER_PROGRAM`": proof(
            "tests/test_script_serving.py::test_four_hooks_from_a_file_uri"
        ),
    },
    (SETTINGS, "Settings", "`SAGEMAKER_SUBMIT_DIRECTORY`"): {
        "`SAGEMAKER_SUBMIT_DIRECTORY`": proof(
            "tests/test_script_serving.py::test_four_hooks_from_a_file_uri"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_READY_FILE`, `SMSERVE_GUNICORN_BIND`"): {
        "`SMSERVE_READY_FILE`": proof(
            f"{SETTINGS_T}::test_process_settings_through_the_real_server"
        ),
        "`SMSERVE_GUNICORN_BIND`": proof(
            f"{SETTINGS_T}::test_process_settings_through_the_real_server"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_INVOCATION_LOG`"): {
        "`SMSERVE_INVOCATION_LOG`": SCANNED,
    },
    (SETTINGS, "Settings", "`SAGEMAKER_MULTI_MODEL`"): {
        "`SAGEMAKER_MULTI_MODEL`": proof(
            "tests/test_mme_http.py::test_every_status_of_the_model_api_with_its_code"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_MME_MEMORY_MB`"): {
        "`SMSERVE_MME_MEMORY_MB`": proof(
            "tests/test_mme_http.py::test_a_model_over_the_budget_is_a_507"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_MME_MODEL_ROOT`"): {
        "`SMSERVE_MME_MODEL_ROOT`": proof(
            f"{MME}::test_load_requests_that_are_refused"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_DETAILED_ERRORS`"): {
        "`SMSERVE_DETAILED_ERRORS`": proof(
            f"{VIEWS}::test_detailed_errors_off_keeps_the_reason_in_the_log",
            f"{VIEWS}::test_detailed_errors_off_hides_a_scripts_exception",
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_DASK_PEERS`"): {
        "`SMSERVE_DASK_PEERS`": proof(
            f"{CLUSTER}::test_two_hosts_finish_a_search_with_the_allowlist"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_TRUSTED_MODULES`"): {
        "`SMSERVE_TRUSTED_MODULES`": proof(
            f"{SAFE}::test_trusted_modules_admit_a_custom_estimator"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_ALLOW_UNSAFE_DESERIALIZATION`"): {
        "`SMSERVE_ALLOW_UNSAFE_DESERIALIZATION`": proof(
            f"{SAFE}::test_the_unsafe_switch_loads_plain_joblib_with_a_warning"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_MME_REGISTRY_DIR`"): {
        "`SMSERVE_MME_REGISTRY_DIR`": proof(
            f"{SETTINGS_T}::test_process_settings_through_the_real_server"
        ),
    },
    # --- docs/speed.md: Speed --------------------
    (SPEED, "Speed", "iris tree, 1 record, server CPU per request"): {
        "iris tree, 1 record, server CPU per request": BENCH,
    },
    (SPEED, "Speed", "RandomForest (100 trees), 1 record, vs floor"): {
        "RandomForest (100 trees), 1 record, vs floor": BENCH,
    },
    (SPEED, "Speed", "RandomForest, 1,000 records, vs floor"): {
        "RandomForest, 1,000 records, vs floor": BENCH,
    },
    (SPEED, "Speed", "RandomForest, 10,000 records, vs floor"): {
        "RandomForest, 10,000 records, vs floor": BENCH,
    },
    (
        SPEED,
        "Speed",
        "RandomForest (100 trees), 1 record, compiled engine on (the default)",
    ): {
        "RandomForest (100 trees), 1 record, compiled engine on (the default)": BENCH,
    },
    (SPEED, "Speed", "RandomForest, 1,000 records, compiled engine on"): {
        "RandomForest, 1,000 records, compiled engine on": BENCH,
    },
    (SPEED, "Speed", "6 MB numeric CSV parse vs `pandas.read_csv`"): {
        "6 MB numeric CSV parse vs `pandas.read_csv`": BENCH,
    },
    (SPEED, "Speed", "`/ping` p99 with `/invocations` saturated"): {
        "`/ping` p99 with `/invocations` saturated": BENCH,
    },
    (SPEED, "Speed", "cold start to the first 200 on `/ping` (RandomForest)"): {
        "cold start to the first 200 on `/ping` (RandomForest)": BENCH,
    },
    (SPEED, "Speed", "extra memory per worker (42.8 MB forest)"): {
        "extra memory per worker (42.8 MB forest)": BENCH,
    },
    # --- docs/training.md: What it reads --------------------
    (TRAINING, "What it reads", "`input/config/hyperparameters.json`"): {
        '`{"key": "string", ...}`': proof(
            f"{TRAIN}::test_csv_classification_end_to_end"
        ),
        "missing = no hyperparameters": proof(
            f"{TRAIN}::test_random_seed_reaches_nested_random_states"
        ),
    },
    (TRAINING, "What it reads", "`input/config/inputdataconfig.json`"): {
        "channels: `TrainingInputMode` (`File`, `Pipe`, `FastFile`)": proof(
            f"{TRAIN}::test_pipe_mode_reads_the_fifo_once_as_a_stream"
        ),
        "optional `ContentType`": proof(f"{TRAIN}::test_parquet_and_json_lines"),
        "`CompressionType`": proof(f"{TRAIN}::test_parquet_and_json_lines"),
        "`RecordWrapperType` (must be `None`)": proof(
            f"{TRAIN}::test_job_to_fix_exits_1_through_the_executable"
        ),
        "missing = channels inferred from `input/data` (directories are File channels, FIFOs `<name>_<n>` Pipe channels)": proof(
            f"{TRAIN}::test_base_dir_from_environment_and_inferred_channels"
        ),
    },
    (TRAINING, "What it reads", "`input/config/resourceconfig.json`"): {
        "`current_host`": proof(
            f"{TRAIN}::test_second_host_exits_0_and_writes_nothing"
        ),
        "`hosts`": proof(f"{TRAIN}::test_second_host_exits_0_and_writes_nothing"),
        "missing = one host": proof(
            f"{TRAIN}::test_random_seed_reaches_nested_random_states"
        ),
    },
    (TRAINING, "What it reads", "`input/data/<channel>/`"): {
        "File/FastFile data: every file below": proof(
            f"{TRAIN}::test_fast_file_mode_reads_like_file_mode"
        ),
        "recursively": proof(
            f"{TRAIN}::test_base_dir_from_environment_and_inferred_channels"
        ),
        "in sorted order": proof(
            f"{TRAIN}::test_base_dir_from_environment_and_inferred_channels"
        ),
    },
    (TRAINING, "What it reads", "`input/data/<channel>_0`"): {
        "Pipe data: a FIFO": proof(
            f"{TRAIN}::test_pipe_mode_reads_the_fifo_once_as_a_stream"
        ),
        "read once": proof(f"{TRAIN}::test_pipe_mode_reads_the_fifo_once_as_a_stream"),
        "as a stream": proof(
            f"{TRAIN}::test_pipe_mode_reads_the_fifo_once_as_a_stream"
        ),
    },
    # --- docs/training.md: Reserved keys --------------------
    (TRAINING, "Reserved keys", "`smserve_estimator`"): {
        "`sklearn.tree.DecisionTreeClassifier`": proof(
            f"{TRAIN}::test_csv_classification_end_to_end"
        ),
        "a short name (below)": proof(f"{TRAIN}::test_pipeline_with_nested_params"),
        "a dotted path to an estimator class or to a function returning an estimator": proof(
            f"{TRAIN}::test_a_factory_function_is_an_estimator"
        ),
        "or a JSON list of those: a pipeline": proof(
            f"{TRAIN}::test_pipeline_with_nested_params"
        ),
    },
    (TRAINING, "Reserved keys", "`smserve_target_column`"): {
        "`0` (the first column)": proof(f"{TRAIN}::test_csv_classification_end_to_end"),
        "the label column: an index (`0` first, `-1` last) or": proof(
            f"{TRAIN}::test_channel_content_type_aliases_and_the_last_column_as_label"
        ),
        "when the data has column names": proof(
            f"{TRAIN}::test_header_csv_gzip_regression"
        ),
        "a name": proof(f"{TRAIN}::test_header_csv_gzip_regression"),
        "`none` for no label column (a featurizer's job; a classifier's or a regressor's is refused)": proof(
            f"{FEATURIZERS}::test_featurizer_job_needs_no_label",
            f"{FEATURIZERS}::test_a_classifier_job_without_a_label_fails_saying_why",
        ),
    },
    (TRAINING, "Reserved keys", "`smserve_header`"): {
        "`auto`": proof(f"{TRAIN}::test_header_present_and_absent"),
        "CSV header handling: `auto` (a first line with no number in it, above a line with numbers, is a header)": proof(
            f"{TRAIN}::test_header_present_and_absent"
        ),
        "`present`": proof(f"{TRAIN}::test_header_present_and_absent"),
        "`absent`": proof(f"{TRAIN}::test_header_present_and_absent"),
    },
    (TRAINING, "Reserved keys", "`smserve_random_seed`"): {
        "unset": proof(f"{TRAIN}::test_a_factory_function_is_an_estimator"),
        "sets every `random_state` parameter (nested ones too) that is not set explicitly": proof(
            f"{TRAIN}::test_random_seed_reaches_nested_random_states"
        ),
        "and seeds numpy": proof(f"{TRAIN}::test_random_seed_seeds_numpy"),
    },
    (TRAINING, "Reserved keys", "`smserve_categorical_encoding`"): {
        "`auto`": proof(f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"),
        "how text columns reach the estimator (table below): `auto`": proof(
            f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"
        ),
        "`onehot`": in_process(f"{TABLES_T}::test_overrides"),
        "`ordinal`": proof(
            f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"
        ),
        "`native` (HistGradientBoosting only)": proof(
            f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"
        ),
        "`none` (as they are: the estimator, e.g. a pipeline of your own that starts with a `ColumnTransformer`, encodes them)": proof(
            f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"
        ),
    },
    (TRAINING, "Reserved keys", "`smserve_impute`"): {
        "`auto`": proof(f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"),
        "numeric gaps: `auto` fills them with the median only for an estimator that cannot take NaN": proof(
            f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"
        ),
        "`median`": in_process(f"{TABLES_T}::test_overrides"),
        "`mean`": in_process(f"{TABLES_T}::test_overrides"),
        "`most_frequent` always": in_process(f"{TABLES_T}::test_overrides"),
        "`none` never": proof(
            f"{TRAIN}::test_job_to_fix_exits_1_through_the_executable"
        ),
    },
    (TRAINING, "Reserved keys", "`smserve_categorical_columns`"): {
        "`[]`": in_process(f"{TABLES_T}::test_declared_categorical_columns"),
        'a JSON list of columns to treat as categorical although they hold numbers (`["zip", "store_id"]`; indices for headerless data)': in_process(
            f"{TABLES_T}::test_declared_categorical_columns"
        ),
    },
    (TRAINING, "Reserved keys", "`smserve_report`"): {
        "`auto`": proof(
            "tests/test_model_report.py::test_without_validation_a_held_out_split_is_recorded"
        ),
        "the [model report](#the-model-report): `auto` on the validation channel": proof(
            "tests/test_model_report.py::test_classifier_report_equals_sklearn_on_the_validation_channel"
        ),
        "else on a held-out 20% of train scored by a copy of the model fitted on the rest (a second fit, about 0.8 of the first's time)": proof(
            "tests/test_model_report.py::test_without_validation_a_held_out_split_is_recorded"
        ),
        "`validation` only from a validation channel (no second fit)": proof(
            "tests/test_model_report.py::test_the_report_can_skip_its_second_fit"
        ),
        "`off` none": proof(
            "tests/test_model_report.py::test_the_report_can_skip_its_second_fit"
        ),
    },
    (TRAINING, "Reserved keys", "`smserve_search`"): {
        "unset (no search)": in_process(
            f"{SEARCH}::test_no_search_without_its_hyperparameters"
        ),
        "a hyperparameter search: `grid`": proof(
            f"{SEARCH}::test_grid_search_saves_the_best_estimator_and_the_search"
        ),
        "`random`": proof(
            f"{SEARCH}::test_random_search_with_distributions_in_a_pipeline"
        ),
        "`halving_grid`": proof(f"{SEARCH}::test_successive_halving"),
        "`halving_random` ([Distributed training](#distributed-training-searches-and-forests-over-the-jobs-hosts))": proof(
            f"{SEARCH}::test_halving_random_on_a_regressor_with_the_defaults"
        ),
    },
    (TRAINING, "Reserved keys", "`smserve_search_space`"): {
        "—": proof(
            f"{SEARCH}::test_grid_search_saves_the_best_estimator_and_the_search"
        ),
        "the space": proof(
            f"{SEARCH}::test_grid_search_saves_the_best_estimator_and_the_search"
        ),
        'JSON: `{"max_depth": [2, 4, 8]}` (names as `set_params` takes them)': proof(
            f"{SEARCH}::test_grid_search_saves_the_best_estimator_and_the_search"
        ),
        'random kinds also `{"uniform": [a, b]}`': proof(
            f"{SEARCH}::test_halving_random_on_a_regressor_with_the_defaults"
        ),
        '`{"loguniform": [a, b]}`': proof(
            f"{SEARCH}::test_random_search_with_distributions_in_a_pipeline"
        ),
        '`{"randint": [a, b]}`': proof(
            f"{SEARCH}::test_halving_random_on_a_regressor_with_the_defaults"
        ),
        "a list of objects is several grids": in_process(
            f"{SEARCH}::test_grid_of_several_spaces"
        ),
    },
    (TRAINING, "Reserved keys", "`smserve_search_space_file`"): {
        "unset": proof(f"{SEARCH}::test_the_space_from_a_file_in_a_channel"),
        "the space from a JSON file instead (same content as `smserve_search_space`)": proof(
            f"{SEARCH}::test_the_space_from_a_file_in_a_channel"
        ),
        "for a space longer than SageMaker's 256 characters per hyperparameter value: `<channel>/<path>`": proof(
            f"{SEARCH}::test_the_space_from_a_file_in_a_channel"
        ),
        "a file of a File-mode channel of its own": proof(
            f"{SEARCH}::test_the_space_from_a_file_in_a_channel"
        ),
        "e.g. `config/space.json` ([The search space in a file](#the-search-space-in-a-file))": proof(
            f"{SEARCH}::test_the_space_from_a_file_in_a_channel"
        ),
    },
    (TRAINING, "Reserved keys", "`smserve_search_candidates`"): {
        "`10`": proof(
            f"{SEARCH}::test_halving_random_on_a_regressor_with_the_defaults"
        ),
        "candidates the random kinds draw": proof(
            f"{SEARCH}::test_random_search_with_distributions_in_a_pipeline"
        ),
    },
    (TRAINING, "Reserved keys", "`smserve_search_folds`"): {
        "`5`": proof(f"{SEARCH}::test_halving_random_on_a_regressor_with_the_defaults"),
        "cross-validation folds": proof(
            f"{SEARCH}::test_halving_random_on_a_regressor_with_the_defaults"
        ),
    },
    (TRAINING, "Reserved keys", "`smserve_search_scoring`"): {
        "`accuracy` (classifier)": proof(
            f"{SEARCH}::test_grid_search_saves_the_best_estimator_and_the_search"
        ),
        "`r2` (regressor)": proof(
            f"{SEARCH}::test_halving_random_on_a_regressor_with_the_defaults"
        ),
        "a scikit-learn scorer name": proof(
            f"{SEARCH}::test_random_search_with_distributions_in_a_pipeline"
        ),
    },
    (TRAINING, "Reserved keys", "`smserve_cluster_timeout`"): {
        "`300`": proof(f"{CLUSTER}::test_the_cluster_timeout_defaults_to_300_seconds"),
        "seconds hosts wait for each other (the leader for every host's workers, the others for the leader)": proof(
            f"{CLUSTER}::test_a_leader_that_never_comes"
        ),
    },
    # --- docs/training.md: Channel ContentType --------------------
    (
        TRAINING,
        "Channel ContentType",
        "`text/csv` (also `application/csv`, `text/plain`)",
    ): {
        "`text/csv` (also `application/csv`, `text/plain`)": proof(
            f"{TRAIN}::test_channel_content_type_aliases_and_the_last_column_as_label"
        ),
        "one record per line": proof(f"{TRAIN}::test_csv_classification_end_to_end"),
        "the label in the first column (as SageMaker's built-in algorithms expect)": proof(
            f"{TRAIN}::test_csv_classification_end_to_end"
        ),
        "with or without a header": proof(f"{TRAIN}::test_header_present_and_absent"),
    },
    (
        TRAINING,
        "Channel ContentType",
        "`application/x-parquet` (also `application/parquet`, `application/vnd.apache.parquet`)",
    ): {
        "`application/x-parquet` (also `application/parquet`, `application/vnd.apache.parquet`)": proof(
            f"{TRAIN}::test_channel_content_type_aliases_and_the_last_column_as_label"
        ),
        "one or more Parquet files": proof(f"{TRAIN}::test_parquet_and_json_lines"),
        "column names are the feature names": proof(
            f"{TRAIN}::test_parquet_and_json_lines"
        ),
    },
    (
        TRAINING,
        "Channel ContentType",
        "`application/jsonlines` (also `application/x-jsonlines`, `application/jsonl`, `application/x-ndjson`, `application/json`)",
    ): {
        "`application/jsonlines` (also `application/x-jsonlines`, `application/jsonl`, `application/x-ndjson`, `application/json`)": proof(
            f"{TRAIN}::test_channel_content_type_aliases_and_the_last_column_as_label"
        ),
        "one JSON array (positional) or object (named features) per line": proof(
            f"{TRAIN}::test_parquet_and_json_lines"
        ),
    },
    # --- docs/training.md: Categorical encoding --------------------
    (TRAINING, "Categorical encoding", "`HistGradientBoosting*`"): {
        "`native`: an ordinal code per category (at most `max_bins`) given to the estimator's own categorical support (`categorical_features`)": proof(
            f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"
        ),
        "unknown = missing": proof(
            f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"
        ),
        "left to the estimator": proof(
            f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"
        ),
    },
    (
        TRAINING,
        "Categorical encoding",
        "trees and tree ensembles (`decision_tree`, `random_forest`, `extra_trees`)",
    ): {
        "`ordinal`: `OrdinalEncoder`": proof(
            f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"
        ),
        "unknown and missing categories as NaN": proof(
            f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"
        ),
        "left to the estimator": proof(
            f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"
        ),
    },
    (TRAINING, "Categorical encoding", "`gradient_boosting`"): {
        "`ordinal`": proof(
            f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"
        ),
        "unknown and missing as `-1` (it cannot take NaN)": proof(
            f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"
        ),
        "median": proof(f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"),
    },
    (
        TRAINING,
        "Categorical encoding",
        "everything else (linear models, SVMs, kNN, naive Bayes, MLPs)",
    ): {
        '`onehot`: `OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5, max_categories=50)`: rare categories share a column': proof(
            f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"
        ),
        "and so does one first seen at serving time": proof(
            f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"
        ),
        "a missing category is a category of its own": proof(
            f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"
        ),
        "median": proof(f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"),
    },
    (
        TRAINING,
        "Categorical encoding",
        "a pipeline of yours starting with a `ColumnTransformer`",
    ): {
        "`none`": proof(f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"),
        "—": proof(f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"),
    },
    # --- docs/training.md: What it writes --------------------
    (TRAINING, "What it writes", "`model/model.joblib`"): {
        "the fitted estimator (`joblib.dump`)": proof(
            f"{TRAIN}::test_csv_classification_end_to_end"
        ),
    },
    (TRAINING, "What it writes", "`model/metadata.json`"): {
        "`estimator` (dotted path)": proof(
            f"{TRAIN}::test_csv_classification_end_to_end"
        ),
        "`params` (`get_params()`)": proof(
            f"{TRAIN}::test_csv_classification_end_to_end"
        ),
        "`hyperparameters` (as given)": proof(
            f"{TRAIN}::test_csv_classification_end_to_end"
        ),
        "`n_features`": proof(f"{TRAIN}::test_csv_classification_end_to_end"),
        "`feature_names`": proof(f"{TRAIN}::test_csv_classification_end_to_end"),
        "`features` (the input schema: per column its `name`, `kind` `numeric`/`categorical`, the `categories` seen, most frequent first, capped at 100, with `n_categories`, the share `missing` and a `typical` number, the median)": proof(
            f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"
        ),
        "`preprocessing` (the encoding and imputation chosen for a table)": proof(
            f"{TABLES_T}::test_auto_encoding_per_estimator_through_train"
        ),
        "`target`": proof(f"{TRAIN}::test_header_csv_gzip_regression"),
        "`classes`": proof(f"{TRAIN}::test_csv_classification_end_to_end"),
        "`task` (`classification`/`regression`)": proof(
            f"{TRAIN}::test_csv_classification_end_to_end"
        ),
        "`metrics`": proof(f"{TRAIN}::test_csv_classification_end_to_end"),
        '`rows` (`{"train": n, "validation": n or null}`)': proof(
            f"{TRAIN}::test_csv_classification_end_to_end"
        ),
        "`channels`": proof(f"{TRAIN}::test_fast_file_mode_reads_like_file_mode"),
        "`versions` (`python`, `sklearn`, `numpy`, `smserve`)": proof(
            f"{TRAIN}::test_csv_classification_end_to_end"
        ),
        "`sha256` (of model.joblib)": proof(
            f"{TRAIN}::test_csv_classification_end_to_end"
        ),
        "`started_at`": proof(f"{TRAIN}::test_csv_classification_end_to_end"),
        "`finished_at` (ISO 8601, UTC)": proof(
            f"{TRAIN}::test_csv_classification_end_to_end"
        ),
        "`training_job_name`": proof(f"{TRAIN}::test_csv_classification_end_to_end"),
        "`duration_seconds`": proof(f"{TRAIN}::test_csv_classification_end_to_end"),
        "`outputs` and each feature's `distribution` (the training distributions "
        "that drift is measured against)": proof(f"{DRIFT_T}::{DRIFT_FLAGGED}"),
        "`report` (the [model report](#the-model-report))": proof(
            "tests/test_model_report.py::test_classifier_report_equals_sklearn_on_the_validation_channel"
        ),
    },
    (TRAINING, "What it writes", "`model/model.onnx`"): {
        "the model converted to ONNX (trees, forests and HistGradientBoosting by our "
        "own converters, the rest by skl2onnx)": proof(
            f"{ENGINES}::test_train_compiles_and_the_server_serves_it",
            "tests/test_hgb_onnx.py::test_train_compiles_it_and_the_server_serves_it",
        ),
        "when it converts": proof(
            f"{ENGINES}::test_train_compiles_and_the_server_serves_it"
        ),
        "`metadata.json`'s `compiled` says so": proof(
            f"{ENGINES}::test_train_compiles_and_the_server_serves_it"
        ),
        # Written and recorded by the real train (test_train_compiles_...); the check on
        # a graph that is not train's is in-process.
        "with its sha256 (`onnx_sha256`, checked when serving)": in_process(
            f"{ENGINES}::test_train_compiles_and_the_server_serves_it",
            f"{ENGINES}::test_a_graph_that_is_not_the_one_train_wrote_is_converted_again",
        ),
        "or why not (`onnx_error`)": proof(
            f"{ENGINES}::test_train_compiles_and_the_server_serves_it"
        ),
    },
    (TRAINING, "What it writes", "`model/verification.npy`"): {
        "up to 1,000 training rows (float64, the model's feature order): what serving verifies the [compiled engine](speed.md#compiled-predictions-onnx-runtime) on": proof(
            f"{ENGINES}::test_train_compiles_and_the_server_serves_it"
        ),
    },
    (TRAINING, "What it writes", "`output/data/metrics.json`"): {
        '`{"train:accuracy": 0.98, "validation:accuracy": 0.96, ...}`': proof(
            f"{TRAIN}::test_csv_classification_end_to_end"
        ),
    },
    (TRAINING, "What it writes", "`output/success`"): {
        "empty": proof(f"{TRAIN}::test_csv_classification_end_to_end"),
        "when the job succeeded": proof(f"{TRAIN}::test_csv_classification_end_to_end"),
    },
    (TRAINING, "What it writes", "`output/failure`"): {
        "the reason": proof(f"{TRAIN}::test_job_to_fix_exits_1_through_the_executable"),
        "when it failed": proof(
            f"{TRAIN}::test_job_to_fix_exits_1_through_the_executable"
        ),
    },
    # --- docs/training.md: Failure semantics --------------------
    (TRAINING, "Failure semantics", "0: trained"): {
        "trained": proof(f"{TRAIN}::test_csv_classification_end_to_end"),
        "— (`output/success` exists)": proof(
            f"{TRAIN}::test_csv_classification_end_to_end"
        ),
    },
    (TRAINING, "Failure semantics", "0: not the first host (several hosts)"): {
        "not the first host (several hosts)": proof(
            f"{TRAIN}::test_second_host_exits_0_and_writes_nothing"
        ),
        "— (nothing is written: no `model/`, no `output/`)": proof(
            f"{TRAIN}::test_second_host_exits_0_and_writes_nothing"
        ),
    },
    (
        TRAINING,
        "Failure semantics",
        "1: the job's configuration or data needs fixing: missing or empty channel, wrong column count, text in a column of numbers, a column typed differently across files, bad or unknown hyperparameter, unknown estimator, unreadable file, an estimator's `fit` raising `ValueError` on the data (e.g. NaN for one that refuses it)",
    ): {
        "the job's configuration or data needs fixing: missing or empty channel": proof(
            f"{TRAIN}::test_job_to_fix_exits_1_through_the_executable"
        ),
        "wrong column count": proof(
            f"{TRAIN}::test_job_to_fix_exits_1_through_the_executable"
        ),
        "text in a column of numbers": proof(
            f"{TRAIN}::test_job_to_fix_exits_1_through_the_executable"
        ),
        "a column typed differently across files": proof(
            f"{TRAIN}::test_job_to_fix_exits_1_through_the_executable"
        ),
        "bad or unknown hyperparameter": proof(
            f"{TRAIN}::test_job_to_fix_exits_1_through_the_executable"
        ),
        "unknown estimator": proof(
            f"{TRAIN}::test_user_mistake_exits_1_with_only_the_message"
        ),
        "unreadable file": proof(
            f"{TRAIN}::test_job_to_fix_exits_1_through_the_executable"
        ),
        "an estimator's `fit` raising `ValueError` on the data (e.g. NaN for one that refuses it)": proof(
            f"{TRAIN}::test_job_to_fix_exits_1_through_the_executable"
        ),
        "the message alone": proof(
            f"{TRAIN}::test_job_to_fix_exits_1_through_the_executable"
        ),
        "what to fix first": proof(
            f"{TRAIN}::test_job_to_fix_exits_1_through_the_executable"
        ),
    },
    (
        TRAINING,
        "Failure semantics",
        "2: a bug (in smserve, or an estimator's `fit` raising something other than `ValueError`)",
    ): {
        "a bug (in smserve, or an estimator's `fit` raising something other than `ValueError`)": proof(
            f"{TRAIN}::test_bug_exits_2_with_the_traceback"
        ),
        "a one-line reason": proof(f"{TRAIN}::test_bug_exits_2_with_the_traceback"),
        "then the traceback": proof(f"{TRAIN}::test_bug_exits_2_with_the_traceback"),
    },
    (
        TRAINING,
        "Failure semantics",
        "143: stopped by SIGTERM (SageMaker's StopTrainingJob)",
    ): {
        "stopped by SIGTERM (SageMaker's StopTrainingJob)": proof(
            f"{TRAIN}::test_sigterm_mid_fit_stops_within_seconds_and_leaves_no_model"
        ),
        "`Training was stopped (SIGTERM) before it finished; no model was written.`": proof(
            f"{TRAIN}::test_sigterm_mid_fit_stops_within_seconds_and_leaves_no_model"
        ),
    },
    # --- docs/training.md: Script mode: differences --------------------
    (TRAINING, "Script mode: differences", "exit code of a failed script"): {
        "the script's own (`sys.exit(3)` → 3; killed by signal N → 128 + N)": proof(
            f"{SCRIPT_TRAIN}::test_a_shell_script_runs_with_the_shell_and_its_exit_code",
            f"{SCRIPT_TRAIN}::test_a_script_killed_by_a_signal_exits_128_plus_n",
        ),
    },
    (TRAINING, "Script mode: differences", "`output/failure`"): {
        "the script's last exception line (`ValueError: ...`; without a traceback, its last stderr line)": proof(
            f"{SCRIPT_TRAIN}::test_a_broken_script_fails_the_job_with_its_exception_first"
        ),
        "then how it ended and the last 40 lines of its stderr": proof(
            f"{SCRIPT_TRAIN}::test_a_broken_script_fails_the_job_with_its_exception_first"
        ),
        "a failure file the script wrote itself is kept": proof(
            f"{SCRIPT_TRAIN}::test_a_script_killed_by_a_signal_exits_128_plus_n"
        ),
    },
    (TRAINING, "Script mode: differences", "SIGTERM (StopTrainingJob)"): {
        "passed to the script's process group (a handler can save a checkpoint)": proof(
            f"{SCRIPT_TRAIN}::test_sigterm_reaches_the_script_and_ends_the_job"
        ),
        "killed 100 s later": not_here(
            "waiting 100 s for a script that ignores SIGTERM is too long for the suite"
        ),
        "the job exits 143": proof(
            f"{SCRIPT_TRAIN}::test_sigterm_reaches_the_script_and_ends_the_job"
        ),
    },
    (TRAINING, "Script mode: differences", "unsafe archive members"): {
        "refused": in_process(
            f"{SCRIPT_TRAIN}::test_an_archive_escaping_its_directory_is_refused"
        ),
    },
    # --- docs/training.md: Hosts --------------------
    (TRAINING, "Hosts", "the leader: the first of the sorted host names (`algo-1`)"): {
        "the Dask scheduler on port **8786**": not_here(
            "the tests run several hosts on one machine, each leader on a free port (SMSERVE_DASK_SCHEDULER_PORT); 8786 is the default in modelapp/training/cluster.py"
        ),
        "Dask workers": proof(f"{CLUSTER}::test_three_hosts_search_as_one_host_does"),
        "and the fit: it waits until every host's workers have joined": proof(
            f"{CLUSTER}::test_three_hosts_search_as_one_host_does"
        ),
        "runs the search (candidates × folds on the cluster, the data sent once to every worker) and the final refit of the best candidate (a forest's trees on the cluster too)": proof(
            f"{CLUSTER}::test_three_hosts_search_as_one_host_does"
        ),
        "writes the model": proof(
            f"{CLUSTER}::test_three_hosts_search_as_one_host_does"
        ),
        "then closes the cluster": proof(
            f"{CLUSTER}::test_three_hosts_search_as_one_host_does"
        ),
        "`model/`": proof(f"{CLUSTER}::test_three_hosts_search_as_one_host_does"),
        "`output/` as on one host": proof(
            f"{CLUSTER}::test_three_hosts_search_as_one_host_does"
        ),
    },
    (TRAINING, "Hosts", "every other host"): {
        "Dask workers only": proof(
            f"{CLUSTER}::test_three_hosts_search_as_one_host_does"
        ),
        "connected to `algo-1:8786`": not_here(
            "the tests give each leader a free port (SMSERVE_DASK_SCHEDULER_PORT); 8786 is only the default"
        ),
        "exits 0 when the leader closes the cluster": proof(
            f"{CLUSTER}::test_three_hosts_search_as_one_host_does"
        ),
        "nothing (its `output/failure` if it fails)": proof(
            f"{CLUSTER}::test_a_leader_that_never_comes"
        ),
    },
    # --- docs/training.md: Space file failures --------------------
    (
        TRAINING,
        "Space file failures",
        "both `smserve_search_space` and `smserve_search_space_file`",
    ): {
        "both `smserve_search_space` and `smserve_search_space_file`": proof(
            f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1"
        ),
        '"... are both set: give the space one way"': proof(
            f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1"
        ),
    },
    (TRAINING, "Space file failures", "no such file in the channel"): {
        "no such file in the channel": proof(
            f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1"
        ),
        '"there is no file /opt/ml/input/data/config/space.json" (and the FullyReplicated hint)': proof(
            f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1"
        ),
    },
    (TRAINING, "Space file failures", "the file is not JSON"): {
        "the file is not JSON": proof(
            f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1"
        ),
        '"... (path) is not valid JSON: <the JSON error>"': proof(
            f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1"
        ),
    },
    (
        TRAINING,
        "Space file failures",
        "the JSON is not a space (e.g. a list of numbers, an empty list of values)",
    ): {
        "the JSON is not a space (e.g. a list of numbers, an empty list of values)": proof(
            f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1"
        ),
        "as for `smserve_search_space`": proof(
            f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1"
        ),
        "naming the file": proof(f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1"),
    },
    (
        TRAINING,
        "Space file failures",
        "a path that is not `<channel>/<file>`: no channel, absolute, or with `..`",
    ): {
        "a path that is not `<channel>/<file>`: no channel": proof(
            f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1"
        ),
        "absolute": proof(f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1"),
        "or with `..`": proof(f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1"),
        '"must be <channel>/<path to a JSON file in it>"': proof(
            f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1"
        ),
    },
    (TRAINING, "Space file failures", "a channel the job does not have"): {
        "a channel the job does not have": proof(
            f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1"
        ),
        "\"names the channel 'x', which the job does not have (its channels: ...)\"": proof(
            f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1"
        ),
    },
    (TRAINING, "Space file failures", "`train`, `validation` or `test`"): {
        "`train`": proof(f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1"),
        "`validation` or `test`": proof(
            f"{SEARCH}::test_a_space_file_in_a_scored_channel_fails_with_exit_1"
        ),
        '"whose every file smserve reads as data: put the space in a channel of its own"': proof(
            f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1"
        ),
    },
    (TRAINING, "Space file failures", "a `Pipe` channel"): {
        "a `Pipe` channel": in_process(f"{SEARCH}::test_space_file_paths_are_checked"),
        '"is in Pipe mode ... give it TrainingInputMode File"': in_process(
            f"{SEARCH}::test_space_file_paths_are_checked"
        ),
    },
    # --- docs/training.md: Distributed failures --------------------
    (
        TRAINING,
        "Distributed failures",
        "a search hyperparameter is wrong (malformed JSON, unknown parameter name, empty list, unknown scorer or kind), or its `smserve_search_space_file` (missing, not JSON, both ways given)",
    ): {
        "a search hyperparameter is wrong (malformed JSON, unknown parameter name, empty list, unknown scorer or kind)": proof(
            f"{SEARCH}::test_bad_search_hyperparameters_fail_with_exit_1"
        ),
        "or its `smserve_search_space_file` (missing, not JSON, both ways given)": proof(
            f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1"
        ),
        "exit 1 on every host": proof(
            f"{SEARCH}::test_a_bad_search_fails_every_host_alike"
        ),
        "before any data is read": proof(
            f"{SEARCH}::test_bad_search_hyperparameters_fail_with_exit_1",
            f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1",
        ),
        "the message says what to fix": proof(
            f"{SEARCH}::test_bad_search_hyperparameters_fail_with_exit_1",
            f"{SEARCH}::test_a_bad_space_file_fails_with_exit_1",
        ),
    },
    (
        TRAINING,
        "Distributed failures",
        "a host cannot reach the leader (never came, or died) for `smserve_cluster_timeout` s",
    ): {
        "a host cannot reach the leader (never came, or died) for `smserve_cluster_timeout` s": proof(
            f"{CLUSTER}::test_a_leader_that_never_comes"
        ),
        'that host exits 1: "could not reach the leader algo-1 ..."': proof(
            f"{CLUSTER}::test_a_leader_that_never_comes"
        ),
    },
    (
        TRAINING,
        "Distributed failures",
        "some hosts never join the leader's cluster in `smserve_cluster_timeout` s",
    ): {
        "some hosts never join the leader's cluster in `smserve_cluster_timeout` s": proof(
            f"{CLUSTER}::test_hosts_that_never_join"
        ),
        "the leader exits 1 naming them": proof(
            f"{CLUSTER}::test_hosts_that_never_join"
        ),
    },
    (
        TRAINING,
        "Distributed failures",
        "a host dies mid-search (killed, out of memory)",
    ): {
        "a host dies mid-search (killed, out of memory)": proof(
            f"{CLUSTER}::test_a_host_killed_mid_search"
        ),
        "Dask runs its tasks again on the other hosts": proof(
            f"{CLUSTER}::test_a_host_killed_mid_search"
        ),
        "the job completes": proof(f"{CLUSTER}::test_a_host_killed_mid_search"),
    },
    (TRAINING, "Distributed failures", "SIGTERM on the leader (StopTrainingJob)"): {
        "SIGTERM on the leader (StopTrainingJob)": proof(
            f"{CLUSTER}::test_sigterm_on_the_leader_ends_every_host"
        ),
        "it stops (exit 143, no model)": proof(
            f"{CLUSTER}::test_sigterm_on_the_leader_ends_every_host"
        ),
        "closing the cluster: the others exit 0 within seconds": proof(
            f"{CLUSTER}::test_sigterm_on_the_leader_ends_every_host"
        ),
    },
    (TRAINING, "Distributed failures", "SIGTERM on another host"): {
        "SIGTERM on another host": proof(
            f"{CLUSTER}::test_sigterm_on_another_host_fails_the_leader"
        ),
        "it stops (143) and tells the leader": proof(
            f"{CLUSTER}::test_sigterm_on_another_host_fails_the_leader"
        ),
        'whose job fails (exit 1, no model) with "Host algo-2 failed: it was stopped (SIGTERM)" in its `output/failure`': proof(
            f"{CLUSTER}::test_sigterm_on_another_host_fails_the_leader"
        ),
    },
    (METRICS, "Metrics", "`smserve_invocations_total`"): {
        "`smserve_invocations_total`": proof(
            f"{METRICS_T}::test_totals_are_exact_over_a_killed_worker"
        ),
    },
    (METRICS, "Metrics", "`smserve_invocation_records_total`"): {
        "`smserve_invocation_records_total`": proof(
            f"{METRICS_T}::test_totals_are_exact_over_a_killed_worker"
        ),
    },
    (METRICS, "Metrics", "`smserve_invocation_request_bytes_total`"): {
        "`smserve_invocation_request_bytes_total`": proof(
            f"{METRICS_T}::test_totals_are_exact_over_a_killed_worker"
        ),
    },
    (METRICS, "Metrics", "`smserve_invocation_response_bytes_total`"): {
        "`smserve_invocation_response_bytes_total`": proof(
            f"{METRICS_T}::test_totals_are_exact_over_a_killed_worker"
        ),
    },
    (METRICS, "Metrics", "`smserve_invocation_duration_seconds`"): {
        "`smserve_invocation_duration_seconds`": proof(
            f"{METRICS_T}::test_totals_are_exact_over_a_killed_worker"
        ),
    },
    (METRICS, "Metrics", "`smserve_invocation_phase_duration_seconds`"): {
        "`smserve_invocation_phase_duration_seconds`": proof(
            f"{METRICS_T}::test_totals_are_exact_over_a_killed_worker"
        ),
    },
    (METRICS, "Metrics", "`smserve_invocations_in_flight`"): {
        "`smserve_invocations_in_flight`": proof(
            f"{METRICS_T}::test_totals_are_exact_over_a_killed_worker"
        ),
    },
    (METRICS, "Metrics", "`smserve_worker_starts_total`"): {
        "`smserve_worker_starts_total`": proof(
            f"{METRICS_T}::test_totals_are_exact_over_a_killed_worker"
        ),
    },
    (METRICS, "Metrics", "`smserve_worker_exits_total`"): {
        "`smserve_worker_exits_total`": proof(
            f"{METRICS_T}::test_totals_are_exact_over_a_killed_worker"
        ),
    },
    (METRICS, "Metrics", "`smserve_model_loads_total`"): {
        "`smserve_model_loads_total`": proof(
            f"{METRICS_T}::test_totals_are_exact_over_a_killed_worker",
            f"{METRICS_T}::test_multi_model_loads_unloads_and_memory",
        ),
    },
    (METRICS, "Metrics", "`smserve_model_load_duration_seconds`"): {
        "`smserve_model_load_duration_seconds`": proof(
            f"{METRICS_T}::test_totals_are_exact_over_a_killed_worker",
            f"{METRICS_T}::test_multi_model_loads_unloads_and_memory",
        ),
    },
    (METRICS, "Metrics", "`smserve_model_warmup_duration_seconds`"): {
        "`smserve_model_warmup_duration_seconds`": proof(
            f"{METRICS_T}::test_totals_are_exact_over_a_killed_worker",
            f"{METRICS_T}::test_multi_model_loads_unloads_and_memory",
        ),
    },
    (METRICS, "Metrics", "`smserve_model_loaded`"): {
        "`smserve_model_loaded`": proof(
            f"{METRICS_T}::test_totals_are_exact_over_a_killed_worker",
            f"{METRICS_T}::test_multi_model_loads_unloads_and_memory",
        ),
    },
    (METRICS, "Metrics", "`smserve_model_memory_bytes`"): {
        "`smserve_model_memory_bytes`": proof(
            f"{METRICS_T}::test_totals_are_exact_over_a_killed_worker",
            f"{METRICS_T}::test_multi_model_loads_unloads_and_memory",
        ),
    },
    (METRICS, "Metrics", "`smserve_ping_ready`"): {
        "`smserve_ping_ready`": proof(
            f"{METRICS_T}::test_totals_are_exact_over_a_killed_worker",
            f"{METRICS_T}::test_multi_model_loads_unloads_and_memory",
        ),
    },
    (METRICS, "Metrics", "`smserve_model_unloads_total`"): {
        "`smserve_model_unloads_total`": proof(
            f"{METRICS_T}::test_multi_model_loads_unloads_and_memory"
        ),
    },
    (METRICS, "Metrics", "`smserve_model_unload_duration_seconds`"): {
        "`smserve_model_unload_duration_seconds`": proof(
            f"{METRICS_T}::test_multi_model_loads_unloads_and_memory"
        ),
    },
    (METRICS, "Metrics", "`smserve_model_evictions_total`"): {
        "`smserve_model_evictions_total`": in_process(
            f"{METRICS_T}::test_an_eviction_is_counted"
        ),
    },
    (METRICS, "Metrics", "`smserve_drift_psi`"): {
        "`smserve_drift_psi`": proof(f"{DRIFT_T}::{DRIFT_FLAGGED}"),
    },
    (METRICS, "Metrics", "`smserve_drift_js_distance`"): {
        "`smserve_drift_js_distance`": proof(f"{DRIFT_T}::{DRIFT_FLAGGED}"),
    },
    (METRICS, "Metrics", "`smserve_model_drifting`"): {
        "`smserve_model_drifting`": proof(f"{DRIFT_T}::{DRIFT_FLAGGED}"),
    },
    (METRICS, "Metrics", "`smserve_build_info`"): {
        "`smserve_build_info`": proof(
            f"{METRICS_T}::test_totals_are_exact_over_a_killed_worker"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_METRICS_PORT`"): {
        "`SMSERVE_METRICS_PORT`": proof(
            f"{METRICS_T}::test_only_the_master_listens_on_the_metrics_port"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_METRICS_HOST`"): {
        "`SMSERVE_METRICS_HOST`": proof(
            f"{METRICS_T}::test_only_the_master_listens_on_the_metrics_port"
        ),
    },
    # docs/logs.md and its settings (h-logs).
    (LOGS, "Log fields", "`timestamp`"): {
        "`timestamp`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`level`"): {
        "`level`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`logger`"): {
        "`logger`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`message`"): {
        "`message`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`process`"): {
        "`process`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`method`"): {
        "`method`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`path`"): {
        "`path`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`status`"): {
        "`status`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`code`"): {
        "`code`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`records`"): {
        "`records`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`content_type`"): {
        "`content_type`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`response_type`"): {
        "`response_type`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`bytes_in`"): {
        "`bytes_in`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`bytes_out`"): {
        "`bytes_out`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`duration_ms`"): {
        "`duration_ms`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`model`"): {
        "`model`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`model_sha256`"): {
        "`model_sha256`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`engine`"): {
        "`engine`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`inference_id`"): {
        "`inference_id`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`detail`"): {
        "`detail`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`source`"): {
        "`source`": proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json"),
    },
    (LOGS, "Log fields", "`exception`"): {
        "`exception`": in_process(
            f"{JSON_LOGS}::test_json_formatter_keeps_the_traceback_and_the_fields"
        ),
    },
    (LOGS, "Log fields", "`remote_addr`, `referer`, `user_agent`"): {
        clause: proof(f"{JSON_LOGS}::test_every_line_of_the_server_is_json")
        for clause in ("`remote_addr`", "`referer`", "`user_agent`")
    },
    (LOGS, "EMF metrics", "`Invocations`"): {
        "`Invocations`": proof(f"{JSON_LOGS}::test_emf_lines_follow_the_specification"),
    },
    (LOGS, "EMF metrics", "`Records`"): {
        "`Records`": proof(f"{JSON_LOGS}::test_emf_lines_follow_the_specification"),
    },
    (LOGS, "EMF metrics", "`Errors4xx`"): {
        "`Errors4xx`": proof(f"{JSON_LOGS}::test_emf_lines_follow_the_specification"),
    },
    (LOGS, "EMF metrics", "`Errors5xx`"): {
        "`Errors5xx`": proof(f"{JSON_LOGS}::test_emf_lines_follow_the_specification"),
    },
    (LOGS, "EMF metrics", "`BytesIn`"): {
        "`BytesIn`": proof(f"{JSON_LOGS}::test_emf_lines_follow_the_specification"),
    },
    (LOGS, "EMF metrics", "`BytesOut`"): {
        "`BytesOut`": proof(f"{JSON_LOGS}::test_emf_lines_follow_the_specification"),
    },
    (LOGS, "EMF metrics", "`Latency`"): {
        "`Latency`": proof(f"{JSON_LOGS}::test_emf_lines_follow_the_specification"),
    },
    (LOGS, "EMF metrics", "`LatencyMax`"): {
        "`LatencyMax`": proof(f"{JSON_LOGS}::test_emf_lines_follow_the_specification"),
    },
    (SETTINGS, "Settings", "`SMSERVE_LOG_FORMAT`"): {
        "`SMSERVE_LOG_FORMAT`": proof(
            f"{JSON_LOGS}::test_every_line_of_the_server_is_json"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_METRICS_EMF`"): {
        "`SMSERVE_METRICS_EMF`": proof(
            f"{JSON_LOGS}::test_emf_lines_follow_the_specification"
        ),
    },
    (SETTINGS, "Settings", "`SMSERVE_METRICS_EMF_SECONDS`"): {
        "`SMSERVE_METRICS_EMF_SECONDS`": proof(
            f"{JSON_LOGS}::test_emf_lines_follow_the_specification"
        ),
    },
}


# Fixtures and helpers that start the real server, the real ``./train`` or the image: a
# runtime proof reaches one of them, directly or through its module's fixtures and helpers.
REAL = frozenset(
    {
        "ServeProcess",
        "UnwaitedServe",
        "serve_factory",
        "serve_process",
        "server",
        "admin_server",
        "start_admin_server",
        "run_train",
        "sigterm_train",
        "TRAIN",
        "Job",
        "image",
        "container",
    }
)


def documented_rows() -> dict[tuple[str, str, str], list[str]]:
    """(page, table, row) -> the row's clauses, for every table of every page in docs/."""
    rows: dict[tuple[str, str, str], list[str]] = {}
    for path in sorted((ROOT / "docs").glob("*.md")):
        for table in tables(path):
            place = (table.page, table.section, table.index)
            assert place in LAYOUT, f"a table without a layout here: {place}"
            name, key_columns, clause_columns = LAYOUT[place]
            for cells in table.rows:
                key = ": ".join(cells[i] for i in key_columns)
                if (table.page, name, key) in rows:
                    # A second row of the same name (two 413s): named by its first cell.
                    key = f"{key}: {cells[0]}"
                found = [
                    clause
                    for i in clause_columns
                    for clause in ([cells[i]] if name in WHOLE else clauses(cells[i]))
                ]
                assert (table.page, name, key) not in rows, f"two rows {key!r}"
                rows[(table.page, name, key)] = found
    return rows


def mapped() -> dict[tuple[str, str, str, str], Proof]:
    """``ROWS`` flattened: (page, table, row, clause) -> its proof."""
    return {
        (*row, clause): found
        for row, by_clause in ROWS.items()
        for clause, found in by_clause.items()
    }


@functools.cache
def module(path: str) -> dict[str, ast.FunctionDef]:
    """``name`` / ``Class::name`` -> definition, for the functions of a test module and of
    the fixtures it can use (``tests/conftest.py``)."""
    found: dict[str, ast.FunctionDef] = {}
    for source in (ROOT / "tests" / "conftest.py", ROOT / path):
        for node in ast.parse(source.read_text()).body:
            if isinstance(node, ast.FunctionDef):
                found[node.name] = node
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef):
                        found[f"{node.name}::{item.name}"] = item
    return found


def reaches_the_real_thing(path: str, name: str) -> bool:
    """Whether the test ``name`` names one of ``REAL``, itself or through the fixtures and
    helpers of its module (and conftest) that it uses."""
    functions = module(path)
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen or current not in functions:
            continue
        seen.add(current)
        node = functions[current]
        names = {arg.arg for arg in node.args.args}
        for child in ast.walk(node):
            if isinstance(child, ast.Name):
                names.add(child.id)
            elif isinstance(child, ast.Attribute):
                names.add(child.attr)
        if names & REAL:
            return True
        todo.extend(names & functions.keys())
    return False


def test_every_documented_clause_is_mapped_and_nothing_more():
    """Every clause of every row of every table in docs/ is in ``ROWS``, and ``ROWS`` has
    no row or clause the docs lack."""
    documented = documented_rows()
    missing, extra = [], []
    for row, found in documented.items():
        have = list(ROWS.get(row, {}))
        missing += [(*row, c) for c in found if c not in have]
        extra += [(*row, c) for c in have if c not in found]
    extra += [(*row, "*") for row in ROWS.keys() - documented.keys()]
    assert missing == [], "clauses in the docs without a mapping"
    assert extra == [], "mappings here the docs lack"


@pytest.mark.parametrize(
    "key", sorted(mapped()), ids=lambda key: f"{key[1]}: {key[2][:40]}: {key[3][:50]}"
)
def test_each_clause_is_proved_by_tests_that_quote_it(key):
    """Each test named for a clause exists and quotes the clause in its docstring; a
    runtime proof reaches the real server, ``./train`` or the image; config-only and
    not-provable mappings say why."""
    found = mapped()[key]
    assert found.kind in ("runtime", "config", "not here", "to do")
    if found.kind != "runtime":
        assert found.why, f"{key}: a {found.kind} mapping says why"
    else:
        assert found.tests, f"{key}: runtime proof without a test"
    quote = plain(key[3])
    for ref in found.tests:
        path, name = ref.split("::", 1)
        definition = module(path).get(name)
        assert definition is not None, f"{ref} does not exist"
        if found.kind != "runtime":
            continue
        docstring = plain(ast.get_docstring(definition) or "")
        assert quote in docstring, f"{ref} does not quote {key[3]!r}"
        assert reaches_the_real_thing(path, name), (
            f"{ref} reaches no real server, ./train or image"
        )


def test_the_count_by_kind():
    """The report's figures: per table, rows and clauses by kind (printed with ``-s``);
    config-only and not-provable clauses stay the exception."""
    counts: dict[str, dict[str, int]] = {}
    for (_, table, _, _), found in mapped().items():
        counts.setdefault(table, dict.fromkeys(KINDS, 0))
        counts[table][found.kind] += 1
    for table, by_kind in sorted(counts.items()):
        rows = sum(1 for row in ROWS if row[1] == table)
        print(f"{table}: {rows} rows; clauses {by_kind}")
    total = {k: sum(c[k] for c in counts.values()) for k in KINDS}
    assert total["runtime"] > 2 * (total["config"] + total["not here"]), total
    # The clauses still without an end-to-end test: this number only goes down.
    assert total["to do"] <= TO_DO, total


def test_the_clause_cutter():
    """Commas in brackets, code or quotes and thousands stay; a test of the cutter."""
    assert clauses('a, b (c, d); `e, f`, "g, h", 1,000') == [
        "a",
        "b (c, d)",
        "`e, f`",
        '"g, h"',
        "1,000",
    ]
