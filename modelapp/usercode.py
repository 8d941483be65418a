"""A user's code, as the SageMaker Python SDK ships it: fetch it, install its requirements.

Shared by training (script mode: ``sagemaker_program`` / ``sagemaker_submit_directory``)
and serving (``SAGEMAKER_PROGRAM`` / ``SAGEMAKER_SUBMIT_DIRECTORY``, or ``model/code/``).

- ``fetch_source(uri, dest)``: ``s3://bucket/key`` (a ``.tar.gz``, downloaded with boto3 and
  the standard credential chain; ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` are honoured
  by botocore itself), ``file://`` or a plain path (a directory, a tarball, or one file).
  Archives are extracted with the ``data`` filter: no member may land outside ``dest``, no
  link may point outside it, no device files.
- ``install_requirements(source_dir)``: ``pip install -r requirements.txt`` with the
  running Python, as the official container does; a failure names the requirement.
- ``load_user_module(source_dir, program)``: import the script (serving); a script that
  does not import says which file and line.
- ``find_hooks(module)``: the inference hooks it defines (``model_fn``, ``input_fn``,
  ``predict_fn``, ``output_fn``, ``transform_fn``), each knowing whether it takes the
  inference toolkit's trailing ``context`` argument.

Every mistake of the user's is a ``UserCodeError``: its message says which file or
requirement to fix (training treats it as the toolkit's client error, serving as a model
that cannot load).
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import IO, Any, BinaryIO
from urllib.parse import unquote, urlsplit

logger = logging.getLogger(__name__)

REQUIREMENTS = "requirements.txt"
# How much of a child's output is kept to explain its failure.
TAIL_BYTES = 64 * 1024


class UserCodeError(Exception):
    """The user's code cannot be fetched, installed or run as given: the message says why."""


# --- fetching ------------------------------------------------------------------------------
def fetch_source(uri: str, dest: Path, *, region: str | None = None) -> Path:
    """Put the source ``uri`` names into the directory ``dest`` (replaced) and return it.

    ``region`` is used for S3 only when the credential chain names none (the toolkit's
    order: the environment first, then ``sagemaker_region``).
    """
    dest = Path(dest)
    scheme = urlsplit(uri).scheme
    if scheme == "s3":
        with tempfile.TemporaryDirectory(prefix="smserve-src-") as tmp:
            archive = Path(tmp) / "sourcedir.tar.gz"
            _s3_download(uri, archive, region)
            _replace_dir(dest, lambda into: extract_archive(archive, into, uri))
        return dest
    path = local_path(uri)
    if path.is_dir():
        if path.resolve() == dest.resolve():
            return dest  # the code is already where it runs (e.g. /opt/ml/code)
        _replace_dir(dest, lambda into: shutil.copytree(path, into, symlinks=True))
    elif path.is_file() and tarfile.is_tarfile(path):
        _replace_dir(dest, lambda into: extract_archive(path, into, uri))
    elif path.is_file():
        _replace_dir(dest, lambda into: _copy_file(path, into))
    else:
        raise UserCodeError(
            f"The source directory {uri} does not exist: give an s3:// URI of the SDK's "
            "sourcedir.tar.gz, a file:// or plain path to a directory or a .tar.gz."
        )
    return dest


def local_path(uri: str) -> Path:
    """``file:///a/b`` or ``/a/b`` as a path; any other scheme is refused."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UserCodeError(f"{uri}: a file:// URI must name a local path.")
        return Path(unquote(parts.path))
    if parts.scheme and len(parts.scheme) > 1:  # "C:" is not a scheme, "https" is
        raise UserCodeError(
            f"{uri}: unsupported scheme {parts.scheme!r}; use s3://, file:// or a path."
        )
    return Path(uri)


class UnsafeMember(Exception):
    """A member the ``data`` filter refuses, found by ``_extract_data`` (Pythons without
    tarfile's filters); carries the member as ``tarinfo``, as ``tarfile.FilterError``."""

    def __init__(self, tarinfo: tarfile.TarInfo, why: str) -> None:
        super().__init__(why)
        self.tarinfo = tarinfo


# tarfile.FilterError exists from Python 3.12 and the 3.11.4 / 3.10.12 backports on.
_FILTER_ERRORS = (UnsafeMember, getattr(tarfile, "FilterError", UnsafeMember))


def extract_archive(archive: Path, dest: Path, uri: str = "") -> None:
    """Extract a tarball (any compression) into ``dest``, refusing anything unsafe."""
    name = uri or str(archive)
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:
                _extract_data(tar, dest)
    except _FILTER_ERRORS as exc:
        member = getattr(exc, "tarinfo", None)
        what = repr(member.name) if member is not None else "a member"
        raise UserCodeError(
            f"Refusing to extract {name}: {what} would escape the source directory "
            f"({type(exc).__name__}: {exc}). Archives must hold relative paths and "
            "links that stay inside."
        ) from exc
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserCodeError(
            f"Cannot extract {name}: {exc}. It must be a .tar.gz (the SDK's "
            "sourcedir.tar.gz) or a directory."
        ) from exc


def _extract_data(tar: tarfile.TarFile, dest: Path) -> None:
    """``extractall(dest, filter="data")`` for a Python without tarfile's filters (before
    3.11.4, 3.12): the same rules, checked member by member just
    before each is extracted, as the filter is (so a link extracted earlier is followed):
    a leading ``/`` is dropped; a path or a link that resolves outside ``dest``, an
    absolute link, or a device or FIFO is refused; modes lose the set-id bits and the
    group/other write bits; files belong to whoever extracts them."""
    dest.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)

    def inside(path: str) -> bool:
        return os.path.commonpath([os.path.realpath(path), root]) == root

    for member in tar:
        safe = copy.copy(member)
        safe.name = member.name.lstrip("/" + os.sep)
        if os.path.isabs(safe.name) or not inside(os.path.join(root, safe.name)):
            raise UnsafeMember(member, f"{member.name!r} would be outside {root}")
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise UnsafeMember(member, f"{member.name!r} is a special file")
        if member.issym() or member.islnk():
            if os.path.isabs(member.linkname):
                raise UnsafeMember(member, f"{member.name!r} is an absolute link")
            base = os.path.dirname(safe.name) if member.issym() else ""
            if not inside(os.path.join(root, base, member.linkname)):
                raise UnsafeMember(member, f"{member.name!r} links outside {root}")
        mode = member.mode & 0o755
        if member.isreg() or member.islnk():
            mode = (mode if mode & 0o100 else mode & ~0o111) | 0o600
        elif member.isdir():
            mode |= 0o700
        safe.mode = mode
        safe.uid, safe.gid, safe.uname, safe.gname = os.getuid(), os.getgid(), "", ""
        tar.extract(safe, root)


def _s3_download(uri: str, target: Path, region: str | None) -> None:
    import boto3
    from botocore.exceptions import BotoCoreError
    from botocore.exceptions import ClientError as BotoClientError

    parts = urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key or key.endswith("/"):
        raise UserCodeError(
            f"{uri}: expected s3://bucket/key of a .tar.gz (the SDK's sourcedir.tar.gz)."
        )
    session = boto3.session.Session()
    client = session.client("s3", region_name=session.region_name or region or None)
    logger.info("Downloading %s", uri)
    try:
        client.download_file(bucket, key, str(target))
    except BotoClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        hint = {
            "404": "no such object",
            "NoSuchKey": "no such object",
            "NoSuchBucket": "no such bucket",
            "403": "access denied: the job's role needs s3:GetObject on it",
            "AccessDenied": "access denied: the job's role needs s3:GetObject on it",
        }.get(code, error.get("Message") or str(exc))
        raise UserCodeError(f"Cannot download {uri}: {hint} ({code}).") from exc
    except BotoCoreError as exc:
        raise UserCodeError(f"Cannot download {uri}: {exc}") from exc


def _replace_dir(dest: Path, fill) -> None:
    """Fill a new directory beside ``dest``, then swap it in: never half a tree."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        into = staging / "src"
        fill(into)
        into.mkdir(exist_ok=True)
        if dest.exists() or dest.is_symlink():
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            else:
                dest.unlink()
        os.replace(into, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_file(path: Path, into: Path) -> None:
    into.mkdir(parents=True)
    shutil.copy2(path, into / path.name)


# --- requirements ----------------------------------------------------------------------------
def install_requirements(
    source_dir: Path, *, python: str | None = None, package: bool = False
) -> bool:
    """``pip install -r requirements.txt`` in ``source_dir`` when there is one; with
    ``package`` (a ``setup.py`` there), ``pip install .`` too, as the training toolkit
    installs a source directory that is a package.

    pip's output goes to stdout as it comes. Returns whether anything was installed.
    """
    requirements = Path(source_dir) / REQUIREMENTS
    has_requirements = requirements.is_file()
    if not has_requirements and not package:
        return False
    command = [python or sys.executable, "-m", "pip", "install"]
    if package:
        command.append(".")
    if has_requirements:
        command += ["-r", REQUIREMENTS]
    logger.info("Installing %s: %s", source_dir, " ".join(command))
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.Popen(
        command,
        cwd=source_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    sys.stdout.flush()
    tee = Tee(proc.stdout, binary_stream(sys.stdout))
    try:
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        tee.join()
    if code:
        raise UserCodeError(
            requirements_failure(requirements, tee.text(), code, package=package)
        )
    return True


def requirements_failure(
    requirements: Path, output: str, code: int, *, package: bool = False
) -> str:
    """Which requirement failed, and pip's own words for why."""
    errors = [
        line.strip() for line in output.splitlines() if line.startswith("ERROR:")
    ] or [line.strip() for line in output.splitlines() if line.strip()][-3:]
    detail = " ".join(errors)[:600]
    culprits = [req for req in _requirement_lines(requirements) if _named(req, detail)]
    if package and not culprits:
        return (
            f"Could not install {requirements.parent} as a package (its setup.py; pip "
            f"exited with {code}): {detail or 'pip printed no error'}"
        )
    which = (
        f"requirement {culprits[0]!r}"
        if culprits
        else f"one of the requirements in {requirements.name}"
    )
    return (
        f"Could not install {which} from {requirements} (pip exited with {code}): "
        f"{detail or 'pip printed no error'}"
    )


def _requirement_lines(requirements: Path) -> list[str]:
    try:
        text = requirements.read_text(errors="replace")
    except OSError:
        return []
    lines = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            lines.append(line)
    return lines


def _named(requirement: str, detail: str) -> bool:
    if requirement in detail:
        return True
    name = re.split(r"[\s<>=!~;\[@]", requirement, maxsplit=1)[0]
    if not name:
        return False
    # pip may spell the name with other separators or case
    canonical = re.sub(r"[-_.]+", "-", name).lower()
    return canonical in re.sub(r"[-_.]+", "-", detail).lower()


# --- child processes -------------------------------------------------------------------------
def binary_stream(stream) -> BinaryIO:
    """The byte stream under a text stream (``sys.stderr``), or an adapter when it has none
    (a test's captured stream)."""
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        return buffer

    class _Text:
        def write(self, data: bytes) -> None:
            stream.write(data.decode("utf-8", "replace"))

        def flush(self) -> None:
            stream.flush()

    return _Text()  # type: ignore[return-value]


class Tee:
    """Copies a child's pipe to ``sink`` as the bytes come (unchanged, flushed at once) and
    keeps the last ``TAIL_BYTES`` of it to explain a failure."""

    def __init__(self, pipe: IO[bytes] | None, sink: BinaryIO) -> None:
        if pipe is None:
            raise ValueError("Tee needs the child's pipe (stdout or stderr=PIPE)")
        self._pipe = pipe
        self._sink = sink
        self._tail = bytearray()
        self._thread = threading.Thread(
            target=self._pump, name="smserve-tee", daemon=True
        )
        self._thread.start()

    def _pump(self) -> None:
        fd = self._pipe.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            try:
                self._sink.write(chunk)
                self._sink.flush()
            except (OSError, ValueError):
                pass  # a closed log must not hang the child on a full pipe
            self._tail += chunk
            if len(self._tail) > TAIL_BYTES:
                del self._tail[: len(self._tail) - TAIL_BYTES]
        self._pipe.close()

    def join(self, timeout: float | None = 10) -> None:
        self._thread.join(timeout)

    def text(self) -> str:
        return self._tail.decode("utf-8", "replace")


# --- importing a script and finding its hooks (serving) ------------------------------------
# Each hook's arguments without the optional trailing ``context`` (the inference toolkit).
HOOK_ARGUMENTS = {
    "model_fn": ("model_dir",),
    "input_fn": ("request_body", "request_content_type"),
    "predict_fn": ("input_data", "model"),
    "output_fn": ("prediction", "accept"),
    "transform_fn": ("model", "request_body", "content_type", "accept"),
}


_SCOPE_LOCK = threading.Lock()


@contextmanager
def user_code_scope(source_dir: Path, *, isolated: bool) -> Iterator[None]:
    """Where a script is imported and its model loaded.

    ``isolated`` (many models in one process): one script at a time, and afterwards
    neither its directory on ``sys.path`` nor its modules in ``sys.modules``, so the
    next model's ``inference`` (and ``utils``, ...) are its own. The hooks keep their
    modules through their globals; a sibling module imported only inside a hook, at
    request time, would not be found: import siblings at the top of the script.
    """
    if not isolated:
        yield
        return
    root = Path(source_dir).resolve()
    with _SCOPE_LOCK:
        before = set(sys.modules)
        path_before = list(sys.path)
        try:
            yield
        finally:
            sys.path[:] = path_before
            for name in set(sys.modules) - before:
                file = getattr(sys.modules.get(name), "__file__", None)
                if file and Path(file).resolve().is_relative_to(root):
                    del sys.modules[name]


def load_user_module(source_dir: Path, program: str) -> ModuleType:
    """Import ``program`` (``inference.py``) from ``source_dir`` as the module
    ``inference``, with ``source_dir`` first on ``sys.path`` so that its siblings import.

    A script that does not import is a ``UserCodeError`` naming the file and line.
    """
    source_dir = Path(source_dir).resolve()
    relative = PurePosixPath(program)
    if relative.is_absolute() or ".." in relative.parts or not program.strip():
        raise UserCodeError(
            f"The program must be a path inside {source_dir}, got {program!r}."
        )
    path = source_dir / relative
    if not path.is_file():
        raise UserCodeError(
            f"{program} is not in {source_dir} (it holds: {listing(source_dir)})."
        )
    name = ".".join(relative.with_suffix("").parts)
    if str(source_dir) not in sys.path:
        sys.path.insert(0, str(source_dir))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserCodeError(f"{path} cannot be imported as a Python module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt, SystemExit from the platform: not the script's
        raise UserCodeError(
            f"{program} could not be imported: {type(exc).__name__}: {exc} "
            f"({where(exc, source_dir) or path})"
        ) from exc
    return module


def where(exc: BaseException, source_dir: Path) -> str | None:
    """``file:line`` of the innermost frame of ``exc`` in the user's code, for messages."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    root = str(Path(source_dir).resolve())
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.path.abspath(frame.filename).startswith(root + os.sep):
            found = f"{frame.filename}:{frame.lineno}"
    return found


@dataclass(frozen=True)
class Hook:
    """One of the script's functions; called with or without the trailing ``context``."""

    name: str
    func: Callable[..., Any]
    takes_context: bool

    def __call__(self, *args: Any, context: Any = None) -> Any:
        if self.takes_context:
            return self.func(*args, context)
        return self.func(*args)


@dataclass(frozen=True)
class Hooks:
    """The inference hooks a script defines; None where smserve's own step applies."""

    model_fn: Hook | None = None
    input_fn: Hook | None = None
    predict_fn: Hook | None = None
    output_fn: Hook | None = None
    transform_fn: Hook | None = None

    def defined(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]


def find_hooks(module: ModuleType) -> Hooks:
    """The hooks ``module`` defines, checked once at load rather than per request: each
    must be callable and take its arguments, or those plus ``context``; ``transform_fn``
    excludes ``input_fn``, ``predict_fn`` and ``output_fn`` (as in the toolkit)."""
    found = {}
    for name, arguments in HOOK_ARGUMENTS.items():
        func = getattr(module, name, None)
        if func is None:
            continue
        found[name] = Hook(name, func, _takes_context(module, name, func, arguments))
    if "transform_fn" in found:
        others = [n for n in ("input_fn", "predict_fn", "output_fn") if n in found]
        if others:
            raise UserCodeError(
                f"{_module_file(module)} defines transform_fn and {', '.join(others)}: "
                "use transform_fn alone, or input_fn/predict_fn/output_fn without it."
            )
    return Hooks(**found)


def _takes_context(
    module: ModuleType, name: str, func: Any, arguments: tuple[str, ...]
) -> bool:
    if not callable(func):
        raise UserCodeError(
            f"{_module_file(module)}: {name} must be a function, got "
            f"{type(func).__name__}."
        )
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return False  # a builtin without a signature: called with the plain arguments
    positional = [
        p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    variadic = any(p.kind == p.VAR_POSITIONAL for p in parameters)
    # The toolkit's rule: as many parameters as arguments, or one more for context.
    if len(positional) == len(arguments) + 1:
        return True
    if len(positional) == len(arguments) or (
        variadic and len(positional) <= len(arguments)
    ):
        return False
    line = getattr(getattr(func, "__code__", None), "co_firstlineno", "?")
    raise UserCodeError(
        f"{_module_file(module)}:{line}: {name} takes {len(positional)} arguments; "
        f"expected {name}({', '.join(arguments)}) or "
        f"{name}({', '.join(arguments)}, context)."
    )


def _module_file(module: ModuleType) -> str:
    return getattr(module, "__file__", None) or module.__name__


def listing(directory: Path) -> str:
    """What ``directory`` holds, for messages (the first 20 names)."""
    try:
        names = sorted(p.name for p in directory.iterdir())
    except OSError:
        return "nothing readable"
    shown = ", ".join(names[:20]) or "nothing"
    return shown + (f" and {len(names) - 20} more" if len(names) > 20 else "")
