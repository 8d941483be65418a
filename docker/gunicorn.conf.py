"""gunicorn settings for smserve; ``serve`` starts gunicorn with ``-c`` this file.

Workers, timeout and bind come from smserve's settings (``modelapp.conf``; the environment
is read in ``smserve/settings.py`` only). The app is preloaded: the model loads in the
master, then the workers fork and share its memory. ``smserve/fastpaths.py`` describes the
tricks switched here and the ready-file protocol.
"""

import gc
import json
import os
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smserve.settings")

# ``serve`` hands the secrets over in a file (prepare_serve's --secrets-file), not in the
# environment, which /proc/<pid>/environ shows for every worker and which every process a
# worker starts (pip, a user's script) would inherit: into os.environ for the settings to
# read once, below, and out again.
_secrets_file = os.environ.pop("SMSERVE_SECRETS_FILE", "")
_secrets: dict[str, str] = {}
if _secrets_file:
    with open(_secrets_file) as _fh:
        _secrets = json.load(_fh)
    os.unlink(_secrets_file)
    os.environ.update(_secrets)

from modelapp import conf, observers  # noqa: E402
from smserve import fastpaths  # noqa: E402

# Prometheus metrics (modelapp/metrics.py), when a port is set: their directory is made and
# prometheus_client imported here, in the master, before the preloaded app counts anything.
if conf.get("METRICS_PORT") is not None:
    observers.prepare()
    from modelapp import metrics as _metrics_module

    _metrics_module.install()
_metrics = observers.sink

# ``serve`` sets the unix socket nginx proxies to; without nginx gunicorn takes the port.
bind = conf.get("GUNICORN_BIND") or f"{conf.get('HOST')}:{conf.get('PORT')}"
# The settings have read them (conf.get loaded the settings).
for _name in _secrets:
    os.environ.pop(_name, None)
workers = conf.get("WORKERS")
worker_class = (
    "smserve.workers.ExclusiveAcceptWorker"
    if fastpaths.enabled("exclusive_accept")
    else "smserve.workers.SyncWorker"
)
# nginx times an invocation out (proxy_read_timeout = TIMEOUT) with a clear 504, and so
# does the worker itself (smserve/workers.py); a worker still stuck a few seconds later,
# in code no signal interrupts, is killed and replaced.
timeout = conf.get("TIMEOUT") + 5
# SageMaker sends SIGKILL 30 s after SIGTERM: finish in-flight requests well before that.
graceful_timeout = 25
preload_app = True
wsgi_app = "smserve.wsgi:application"
accesslog = None  # nginx or the app logs each invocation (modelapp/invocation_log.py)
errorlog = "-"
loglevel = "info"
# SMSERVE_LOG_FORMAT=json: gunicorn's lines (and its access log, if turned on with
# GUNICORN_CMD_ARGS) as JSON, like every other line (smserve/gunicorn_logger.py).
logger_class = (
    "smserve.gunicorn_logger.JSONLogger"
    if conf.get("LOG_FORMAT") == "json"
    else "gunicorn.glogging.Logger"
)
# Room for a full 100 MB batch body arriving slowly is nginx's job; gunicorn gets it whole.
limit_request_line = 8190
# The unix socket for this user only: nobody else on the machine may talk to gunicorn
# past nginx's limits. (nginx's workers run as this user, or, as root, serve gives the
# socket to their group.)
umask = 0o077
# nginx sets X-Forwarded-Proto itself; a client's X-Forwarded-Ssl, which gunicorn would
# also believe and find contradicting it, is a 400 nobody meant: only the one header.
secure_scheme_headers = {"X-FORWARDED-PROTO": "https"}

# N workers x M BLAS/OpenMP threads must not oversubscribe the cores. Set before the app
# (and numpy) is imported by the preload.
_threads = str(max(1, (os.cpu_count() or 1) // max(1, workers)))
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _threads)


def post_fork(server, worker):
    # First, before anything slow: a stop signal sent while this worker was forking.
    from smserve.workers import catch_early_stop

    catch_early_stop(server, worker)
    if _metrics is not None:
        _metrics.worker_started()
    # Threads do not survive fork: each worker starts its own stats flusher (which also
    # records the loaded model in the database), off the request path, and adopts the
    # master's compiled-engine sessions (modelapp/predictors/compiled.py).
    from modelapp import multimodel
    from modelapp.registry import registry
    from modelapp.stats import collector

    registry.after_fork()
    collector.start()
    if multimodel.enabled():
        # Drops the copies of unloaded models, says which memory this worker holds.
        multimodel.worker_models().start()


def worker_exit(server, worker):
    # Write this worker's last counts (and data-capture files) before it goes.
    from modelapp import capture_files, multimodel
    from modelapp.stats import collector
    from smserve.workers import exit_without_teardown

    try:
        if _metrics is not None:
            _metrics.worker_exiting("exit")
        collector.stop()
        capture_files.writer.close_all()
        if multimodel.enabled():
            multimodel.worker_models().stop()
    finally:
        # Last, whatever happened above: nothing is left to do but tearing down the
        # interpreter, which takes seconds, and which ONNX Runtime's exit handlers hang
        # or abort in a process forked from one that loaded it (compiled.OnnxSession).
        exit_without_teardown(worker)


def worker_abort(worker):
    # gunicorn's timeout (SIGABRT); worker_exit runs next.
    if _metrics is not None:
        _metrics.worker_exiting("timeout")


def child_exit(server, worker):
    # In the master: a worker ended (recycled, stopped, aborted or killed).
    if _metrics is not None:
        _metrics.worker_ended(worker.pid)


def on_exit(server):
    observers.disable()


def wait_for_prepare_serve(server):
    """Until ``serve``'s prepare_serve has ended (its migrations run while the model
    loads): a /ping 200 means the admin's tables and login are there."""
    pid = int(os.environ.pop("SMSERVE_PREPARE_PID", "") or 0)
    if not pid:
        return
    waited = False
    while _running(pid):
        if not waited:
            server.log.info("Waiting for the database migrations (prepare_serve).")
            waited = True
        time.sleep(0.02)


def _running(pid):
    """Whether ``pid`` runs (a zombie, ended but not yet reaped by serve, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def when_ready(server):
    # Before the workers fork: the model drops what a fork cannot copy (an ONNX Runtime
    # session with a thread pool), and the heap that loading freed (unpickling,
    # converting, verifying: tens of MB that glibc keeps) goes back to the system rather
    # than into every worker's view of the master's memory.
    from modelapp.multimodel import trim_heap
    from modelapp.registry import registry

    registry.before_fork()
    trim_heap()
    wait_for_prepare_serve(server)
    # The preloaded model is immutable from here on: move it out of the collector's reach
    # so that collections in the workers do not touch (and copy) its pages.
    if fastpaths.enabled("gc_freeze"):
        gc.freeze()
    if _metrics is not None:
        _metrics.serve()
        server.log.info(
            "Prometheus metrics on port %s (SMSERVE_METRICS_PORT).",
            conf.get("METRICS_PORT"),
        )
    # The socket is bound (connections queue until the workers fork): from now on nginx
    # answers /ping with 200 from the ready file.
    fastpaths.write_ready_file(registry)


# gunicorn 25+ opens a control socket in $HOME by default: one path shared by every server
# on the machine (tests start several). Nothing here uses gunicornc.
control_socket_disable = True
