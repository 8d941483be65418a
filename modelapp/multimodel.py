"""Multi-model endpoints: the models every gunicorn worker shares, by name, within a
memory budget.

A load request reaches one worker; every worker must then serve the model, and an
unload must free it in every worker. Three parts:

- ``SharedRegistry``: the container's list of loaded models, a directory every worker
  reads (``SMSERVE['MME_REGISTRY_DIR']``; ``serve`` puts it in its run dir). A model is
  a symlink ``names/<key>`` (``key`` = sha256 of the opaque name) whose *target* is a
  token unique to that load; the entry (name, url, size, checksum) is the JSON file
  ``entries/<token>``. An invocation asks one ``readlink`` whether the copy it holds is
  still the registered one: a single system call, and a token never repeats, so a
  model unloaded and loaded again under the same name (even within the same
  millisecond, even at the same url) is never answered by the old copy. Loads and
  unloads change the directory under an ``flock``.
- ``WorkerModels``: this worker's copies, least recently used first. A worker loads a
  registered model on its first invocation (lazily: a model used by one worker costs
  memory in one worker) and keeps at most its share of the budget. A sweeper thread
  (``start``) drops the copies the registry no longer lists, and writes the tokens
  whose memory this worker still holds to ``workers/<pid>``: an unload answers once no
  live worker lists the token.
- The budget: ``MME_MEMORY_MB`` for the container, ``/ WORKERS`` per worker. A load is
  refused with 507 when the registered models and the new one would not fit in one
  worker's share, so every worker can hold every registered model at once; the LRU
  eviction is the safety net for estimates that were low.

docs/serving.md ("Multi-model endpoints") has the measurements behind these choices.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import gc
import hashlib
import importlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from modelapp import conf, observers
from modelapp.deployments import deployments
from modelapp.exceptions import (
    InsufficientMemory,
    InvalidInput,
    ModelAlreadyLoaded,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotReady,
)
from modelapp.files import atomic_write
from modelapp.periodic import Periodic
from modelapp.registry import LoadedModel, ModelLoadError, load_model
from modelapp.text import brief

logger = logging.getLogger(__name__)

MB = 1 << 20
# How often the sweeper looks for unloaded models; an unload waits about this long.
SWEEP_SECONDS = 0.05
# How long an unload waits for the other workers to free their copies.
UNLOAD_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class Registration:
    """One loaded model as every worker sees it."""

    name: str
    url: str
    token: str
    # Memory one copy takes, bytes: measured by the worker that loaded it.
    size: int
    sha256: str
    loaded_at: float
    load_seconds: float


class SharedRegistry:
    """The loaded models of the container: a directory all its workers read."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.names = self.root / "names"
        self.entries = self.root / "entries"
        self.workers = self.root / "workers"
        # A script model's fetched source and installed requirements, per load (token).
        self.code = self.root / "code"
        # token() runs on every invocation: a str join is cheaper than a Path join.
        self._names_prefix = f"{self.names}{os.sep}"

    def make(self) -> SharedRegistry:
        for path in (self.names, self.entries, self.workers):
            path.mkdir(parents=True, exist_ok=True)
        return self

    def code_root(self, token: str) -> Path:
        return self.code / token

    def remove_code(self, token: str) -> None:
        shutil.rmtree(self.code / token, ignore_errors=True)

    @staticmethod
    def key(name: str) -> str:
        return hashlib.sha256(name.encode()).hexdigest()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across the container's processes, for changes."""
        self.make()
        with open(self.root / "lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def token(self, name: str) -> str | None:
        """The token of the current load of ``name``; None when it is not loaded."""
        try:
            return os.readlink(self._names_prefix + self.key(name))
        except FileNotFoundError:
            return None

    def entry(self, token: str) -> Registration | None:
        try:
            data = json.loads((self.entries / token).read_bytes())
        except FileNotFoundError:
            return None  # unloaded meanwhile
        return Registration(**data)

    def get(self, name: str) -> Registration | None:
        token = self.token(name)
        return self.entry(token) if token else None

    def all(self) -> list[Registration]:
        """Every registered model, by name."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for link in os.scandir(self.names):
                try:
                    entry = self.entry(os.readlink(link.path))
                except FileNotFoundError:
                    continue
                if entry is not None:
                    found.append(entry)
        return sorted(found, key=lambda r: r.name)

    def add(self, registration: Registration) -> None:
        """Publish ``registration`` (the caller holds the lock): entry first, then the
        name's link, each put in place by a rename."""
        atomic_write(
            self.entries / registration.token,
            json.dumps(asdict(registration)).encode(),
        )
        link = self.names / self.key(registration.name)
        tmp = link.with_name(f".{registration.token}")
        os.symlink(registration.token, tmp)
        os.replace(tmp, link)

    def remove(self, name: str) -> Registration | None:
        """Unpublish ``name`` (the caller holds the lock): the link first, so no worker
        finds the entry from then on."""
        registration = self.get(name)
        if registration is None:
            return None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.names / self.key(name))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.entries / registration.token)
        return registration

    # --- what each worker holds -----------------------------------------------------
    def publish_held(self, pid: int, tokens: set[str]) -> None:
        self.make()
        atomic_write(self.workers / str(pid), json.dumps(sorted(tokens)).encode())

    def forget_worker(self, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.workers / str(pid))

    def holders(self, token: str) -> list[int]:
        """The live worker processes that still hold the model loaded as ``token``;
        the files of dead ones are removed."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for item in os.scandir(self.workers):
                if not item.name.isdigit():
                    continue
                pid = int(item.name)
                if not _alive(pid):
                    self.forget_worker(pid)
                    continue
                try:
                    tokens = json.loads(Path(item.path).read_bytes())
                except (FileNotFoundError, ValueError):
                    continue
                if token in tokens:
                    found.append(pid)
        return found


@dataclass
class _Held:
    registration: Registration
    loaded: LoadedModel


class WorkerModels:
    """This process's copies of the registered models, least recently used first."""

    def __init__(self, shared: SharedRegistry, share_bytes: int) -> None:
        self.shared = shared
        self.share_bytes = share_bytes
        self._lock = threading.RLock()  # guards _held and _released
        self._held: OrderedDict[str, _Held] = OrderedDict()
        # Dropped copies whose memory a request in flight may still hold, by token.
        self._released: dict[str, weakref.ref] = {}
        # Tokens this worker is loading (lazily, for an invocation).
        self._loading: set[str] = set()
        self._published: set[str] | None = None
        self._sweeper = Periodic("smserve-mme", self.sweep)

    # --- the invocation path ----------------------------------------------------------
    def get(self, name: str) -> LoadedModel:
        """The copy of ``name`` this worker answers with: the registered load, loaded
        here on first use. 404 when it is not loaded, 503 when it cannot be here."""
        token = self.shared.token(name)
        if token is None:
            self._drop(name)
            raise ModelNotFound(f"No model is loaded under the name {name!r}.")
        with self._lock:
            held = self._held.get(name)
            if held is not None and held.registration.token == token:
                self._held.move_to_end(name)
                return held.loaded
        registration = self.shared.entry(token)
        if registration is None:
            raise ModelNotFound(f"No model is loaded under the name {name!r}.")
        # Listed as held while it loads: an unload meanwhile waits for this worker.
        with self._lock:
            self._loading.add(token)
        self.publish()
        if self.shared.token(name) != token:
            # Unloaded before the publish: that unload saw no holder and may have
            # answered already, so this worker must not take the memory after all.
            with self._lock:
                self._loading.discard(token)
            self.publish()
            raise ModelNotFound(f"No model is loaded under the name {name!r}.")
        from modelapp.usercode import code_site  # only where models load

        try:
            # A script model's code as the loading worker fetched and installed it.
            with code_site(self.shared.code_root(token), install=False):
                loaded = load_model(Path(registration.url))
        except ModelLoadError as exc:
            if observers.sink is not None:
                observers.sink.model_load_failed(name)
            raise ModelNotReady(
                f"Model {name!r} is loaded but this worker cannot load it from "
                f"{registration.url}: {exc}"
            ) from exc
        finally:
            with self._lock:
                self._loading.discard(token)
        if self.shared.token(name) != token:  # unloaded while this worker loaded it
            self.publish()
            raise ModelNotFound(f"No model is loaded under the name {name!r}.")
        self._keep(registration, loaded)
        if observers.sink is not None:
            observers.sink.model_loaded(name, loaded)
        logger.info(
            "Loaded model %r in this worker in %.3fs (first invocation here).",
            name,
            loaded.load_seconds,
        )
        return loaded

    # --- the /models API --------------------------------------------------------------
    def load(self, name: str, url: str, target_model: str = "") -> Registration:
        """Load ``name`` from the directory ``url`` here and register it for every
        worker: 409 if it is loaded already, 507 if it does not fit, 400 if the
        artifact cannot be loaded. ``target_model`` (SageMaker's ``TargetModel``, the
        artifact's path) is only logged."""
        model_dir = inside_model_root(url)
        # Measured outside the lock (other loads and unloads go on meanwhile), and only
        # as far as the budget: a url of a huge tree (even "/") is a prompt 507.
        estimate = directory_bytes(model_dir, stop_above=self.share_bytes)
        with self.shared.locked():
            if self.shared.token(name) is not None:
                raise ModelAlreadyLoaded(f"A model is loaded as {name!r} already.")
            self._check_fits(name, estimate)
        from modelapp.usercode import code_site  # only where models load

        token = f"{self.shared.key(name)[:16]}-{uuid.uuid4().hex}"
        before = rss_bytes()
        try:
            # A script model's requirements are installed here, once for every worker.
            with code_site(self.shared.code_root(token), install=True):
                loaded = load_model(model_dir)
        except ModelLoadError as exc:
            self.shared.remove_code(token)
            if observers.sink is not None:
                observers.sink.model_load_failed(name)
            if isinstance(exc.__cause__, MemoryError):
                raise InsufficientMemory(
                    f"Loading {name!r} ran out of memory."
                ) from exc
            raise ModelLoadFailed(f"Model {name!r} not loaded: {exc}") from exc
        size = max(rss_bytes() - before, loaded.size)
        registration = Registration(
            name=name,
            url=url,
            token=token,
            size=size,
            sha256=loaded.sha256,
            loaded_at=time.time(),
            load_seconds=loaded.load_seconds,
        )
        try:
            with self.shared.locked():
                if self.shared.token(name) is not None:  # a concurrent load won
                    raise ModelAlreadyLoaded(f"A model is loaded as {name!r} already.")
                self._check_fits(name, size)
                self.shared.add(registration)
        except (ModelAlreadyLoaded, InsufficientMemory):
            self.shared.remove_code(token)
            raise
        self._keep(registration, loaded)
        _record("load", registration, loaded.load_seconds, loaded)
        if observers.sink is not None:
            observers.sink.model_loaded(name, loaded)
        logger.info(
            "Loaded model %r (TargetModel %s) from %s (sha256 %s, ~%.1f MB) in %.3fs.",
            name,
            target_model or "-",
            url,
            loaded.sha256[:12],
            size / MB,
            loaded.load_seconds,
        )
        return registration

    def unload(self, name: str, wait: float = UNLOAD_WAIT_SECONDS) -> Registration:
        """Unregister ``name`` and return once no worker holds its memory (or after
        ``wait`` seconds, logged): 404 if it is not loaded."""
        started = time.perf_counter()
        with self.shared.locked():
            registration = self.shared.remove(name)
        if registration is None:
            raise ModelNotFound(f"No model is loaded under the name {name!r}.")
        self._drop(name)
        self.sweep()
        deadline = time.monotonic() + wait
        while holders := self.shared.holders(registration.token):
            if time.monotonic() > deadline:
                logger.warning(
                    "Model %r unloaded, but workers %s still hold its memory after %.0fs.",
                    name,
                    holders,
                    wait,
                )
                break
            time.sleep(SWEEP_SECONDS / 2)
        self.shared.remove_code(registration.token)
        seconds = time.perf_counter() - started
        _record("unload", registration, seconds)
        if observers.sink is not None:
            observers.sink.model_unloaded(name, registration.sha256, seconds)
        logger.info("Unloaded model %r in %.3fs.", name, seconds)
        return registration

    def held_names(self) -> list[str]:
        with self._lock:
            return list(self._held)

    # --- keeping and dropping copies --------------------------------------------------
    def _check_fits(self, name: str, size: int) -> None:
        used = sum(r.size for r in self.shared.all())
        if used + size > self.share_bytes:
            raise InsufficientMemory(
                f"Model {name!r} needs ~{size / MB:.1f} MB; the loaded models use "
                f"{used / MB:.1f} MB of the {self.share_bytes / MB:.0f} MB each worker "
                "may hold (SMSERVE_MME_MEMORY_MB / workers): unload one first."
            )

    def _keep(self, registration: Registration, loaded: LoadedModel) -> None:
        with self._lock:
            self._held.pop(registration.name, None)
            used = sum(h.registration.size for h in self._held.values())
            while self._held and used + registration.size > self.share_bytes:
                old_name, old = self._held.popitem(last=False)
                used -= old.registration.size
                self._release(old)
                if observers.sink is not None:
                    observers.sink.model_evicted(old_name, old.registration.sha256)
                logger.info(
                    "Dropped this worker's copy of %r (least recently used) to stay "
                    "within %.0f MB.",
                    old_name,
                    self.share_bytes / MB,
                )
            self._held[registration.name] = _Held(registration, loaded)
        self.publish()

    def _drop(self, name: str) -> None:
        with self._lock:
            held = self._held.pop(name, None)
            if held is not None:
                self._release(held)

    def _release(self, held: _Held) -> None:
        self._released[held.registration.token] = weakref.ref(held.loaded.predictor)

    def sweep(self) -> None:
        """Drop the copies the registry no longer lists (or lists with another load),
        collect what requests left behind, and publish what this worker holds."""
        with self._lock:
            stale = [
                name
                for name, held in self._held.items()
                if self.shared.token(name) != held.registration.token
            ]
        for name in stale:
            self._drop(name)
        if stale:
            logger.info("Dropped this worker's copies of %s (unloaded).", stale)
        if self._released and not self._forget_released():
            gc.collect()  # still alive: a reference cycle, e.g. a request's traceback
            self._forget_released()
        self.publish()

    def _forget_released(self) -> bool:
        """Forget the dropped copies that are gone (giving their pages back); whether
        none is left."""
        with self._lock:
            alive = {t: ref for t, ref in self._released.items() if ref() is not None}
            freed = len(alive) < len(self._released)
            self._released = alive
        if freed:
            trim_heap()
        return not alive

    def publish(self) -> None:
        with self._lock:
            tokens = {h.registration.token for h in self._held.values()}
            tokens |= set(self._released) | self._loading
        if tokens != self._published:
            self.shared.publish_held(os.getpid(), tokens)
            self._published = tokens

    # --- the sweeper thread (one per gunicorn worker, started after the fork) ---------
    def start(self) -> None:
        self._published = None
        self.publish()
        self._sweeper.start(SWEEP_SECONDS)

    def stop(self) -> None:
        self._sweeper.stop()
        self.shared.forget_worker(os.getpid())


def _record(
    kind: str,
    registration: Registration,
    seconds: float,
    loaded: LoadedModel | None = None,
) -> None:
    """A ``ModelEvent`` (and the ``TrainedModel`` of a load), written by the stats
    flusher off the request path."""
    deployments.note(
        loaded,
        {
            "kind": kind,
            # The columns' lengths: a longer value would fail every flush.
            "name": registration.name[:1024],
            "url": registration.url[:1024],
            "model_id": registration.sha256,
            "seconds": seconds,
            "memory_bytes": registration.size,
        },
    )


# --- memory ----------------------------------------------------------------------------
# Imported by gunicorn's master before it forks (``smserve/wsgi.py``): the workers share
# these pages instead of importing ~150 MB each on their first load.
PRELOADED_MODULES = (
    "joblib",
    "pandas",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "sklearn.pipeline",
    "sklearn.tree",
)


# What compiling a model imports (``modelapp/predictors/compiled.py``), when on. The
# workers, forked from a master that imported onnxruntime, end with ``os._exit``, which
# its exit handlers need (``compiled.OnnxSession``).
COMPILED_ENGINE_MODULES = ("onnx", "skl2onnx", "onnxruntime")


def preload_libraries() -> None:
    """Import what loading a scikit-learn model needs, once, in the master."""
    modules: tuple[str, ...] = PRELOADED_MODULES
    if conf.get("COMPILED_ENGINE"):
        modules += COMPILED_ENGINE_MODULES
    for module in modules:
        importlib.import_module(module)


def budget_bytes() -> int:
    """The memory for models of the whole container (``MME_MEMORY_MB``)."""
    return int(conf.get("MME_MEMORY_MB")) * MB


def share_bytes() -> int:
    """One worker's share of the budget."""
    return budget_bytes() // max(1, int(conf.get("WORKERS")))


def rss_bytes() -> int:
    """This process's resident memory (``/proc/self/statm``); 0 where there is none."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def directory_bytes(model_dir: Path, stop_above: int | None = None) -> int:
    """What the files of a model directory weigh: the estimate checked before loading;
    the walk stops once the total is over ``stop_above``."""
    total = 0
    with contextlib.suppress(OSError):
        for root, _, files in os.walk(model_dir):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(root, name)).st_size
            if stop_above is not None and total > stop_above:
                break
    return total


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018  (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


def trim_heap() -> None:
    """Give freed heap pages back to the system (glibc keeps them for reuse otherwise):
    what makes an unload show in the container's memory."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- this process's models -------------------------------------------------------------
@functools.cache
def worker_models() -> WorkerModels:
    """This process's ``WorkerModels`` over the configured registry directory."""
    shared = SharedRegistry(Path(conf.get("MME_REGISTRY_DIR"))).make()
    return WorkerModels(shared, share_bytes())


def enabled() -> bool:
    return bool(conf.get("MULTI_MODEL"))


@receiver(setting_changed)
def _clear_cache(*, setting: str, **kwargs: Any) -> None:
    if setting == "SMSERVE":
        worker_models.cache_clear()


def inside_model_root(url: str) -> Path:
    """``url`` as a path, if it is ``MME_MODEL_ROOT`` or under it once every symlink and
    ``..`` is resolved; else 400: a load request may not make any directory of the
    container a model (its ``code/inference.py`` would run)."""
    root = os.path.realpath(conf.get("MME_MODEL_ROOT"))
    real = os.path.realpath(url)
    if os.path.commonpath([root, real]) != root:
        raise InvalidInput(
            f"url {brief(url)} is not under {root}, where models are loaded from "
            "(SMSERVE_MME_MODEL_ROOT).",
            code="invalid_load_request",
        )
    return Path(url)
