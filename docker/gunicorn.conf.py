"""gunicorn settings for smserve; ``serve`` starts gunicorn with ``-c`` this file.

Workers and timeout come from smserve's settings module (the one place the environment is
read). The app is preloaded: the model loads in the master, then the workers fork and share
its memory.
"""

import gc
import os

from smserve import settings as smserve_settings

_smserve = smserve_settings.SMSERVE

# ``serve`` sets the unix socket nginx proxies to; without nginx gunicorn takes the port.
bind = (
    os.environ.get("SMSERVE_GUNICORN_BIND") or f"{_smserve['HOST']}:{_smserve['PORT']}"
)
workers = _smserve["WORKERS"]
# gunicorn's sync worker, except that one idle worker wakes per connection, not all of
# them (smserve/workers.py).
worker_class = "smserve.workers.SyncWorker"
# nginx times an invocation out first (proxy_read_timeout = TIMEOUT) with a clear 504; a
# worker still stuck a few seconds later is killed and replaced.
timeout = _smserve["TIMEOUT"] + 5
# SageMaker sends SIGKILL 30 s after SIGTERM: finish in-flight requests well before that.
graceful_timeout = 25
preload_app = True
wsgi_app = "smserve.wsgi:application"
accesslog = None  # modelapp.invocations logs one line per invocation
errorlog = "-"
loglevel = "info"
# Room for a full 100 MB batch body arriving slowly is nginx's job; gunicorn gets it whole.
limit_request_line = 8190

# N workers x M BLAS/OpenMP threads must not oversubscribe the cores. Set before the app
# (and numpy) is imported by the preload.
_threads = str(max(1, (os.cpu_count() or 1) // max(1, workers)))
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _threads)


def post_fork(server, worker):
    # Threads do not survive fork: each worker starts its own stats flusher (which also
    # records the loaded model in the database), off the request path.
    from modelapp.stats import collector

    collector.start()


def worker_exit(server, worker):
    # Write this worker's last counts before it goes.
    from modelapp.stats import collector

    collector.stop()


def when_ready(server):
    # The preloaded model is immutable from here on: move it out of the collector's reach
    # so that collections in the workers do not touch (and copy) its pages.
    gc.freeze()
    # The socket is bound (connections queue until the workers fork): from now on nginx
    # answers /ping with 200 from the ready file.
    from modelapp.registry import registry

    registry.write_ready_file()


# gunicorn 25+ opens a control socket in $HOME by default: one path shared by every server
# on the machine (tests start several). Nothing here uses gunicornc.
control_socket_disable = True
