"""A user's code, as the SageMaker Python SDK ships it: fetch it, install its requirements.

Shared by training (script mode: ``sagemaker_program`` / ``sagemaker_submit_directory``)
and serving (``SAGEMAKER_PROGRAM`` / ``SAGEMAKER_SUBMIT_DIRECTORY``, or ``model/code/``).

- ``fetch_source(uri, dest)``: ``s3://bucket/key`` (a ``.tar.gz``, downloaded with boto3 and
  the standard credential chain; ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` are honoured
  by botocore itself), ``file://`` or a plain path (a directory, a tarball, or one file).
  Archives are checked member by member by name (``check_member``: no ``realpath``, so
  no PATH_MAX trick) and extracted with the ``data`` filter's rules: no member may land
  outside ``dest``, no link may point outside it, no device files; at most
  ``MAX_ARCHIVE_MEMBERS`` members and ``MAX_ARCHIVE_BYTES`` declared.
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
import fcntl
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
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
    """A member smserve's own checks refuse; carries the member as ``tarinfo``, as
    ``tarfile.FilterError`` does."""

    def __init__(self, tarinfo: tarfile.TarInfo, why: str) -> None:
        super().__init__(why)
        self.tarinfo = tarinfo


class ArchiveTooLarge(Exception):
    """An archive over ``MAX_ARCHIVE_BYTES`` or ``MAX_ARCHIVE_MEMBERS``."""


# tarfile.FilterError exists from Python 3.12 and the 3.11.4 / 3.10.12 backports on.
_FILTER_ERRORS = (UnsafeMember, getattr(tarfile, "FilterError", UnsafeMember))

# What a source archive may hold, declared sizes summed: more is refused before it is
# written (``r:*`` reads xz and bz2 too, where a few KB can expand to the whole disk).
MAX_ARCHIVE_BYTES = 4 * 1024**3
MAX_ARCHIVE_MEMBERS = 100_000


# Whether tarfile's ``data`` filter has the fix for CVE-2025-4517 (a symlink chain longer
# than PATH_MAX that its non-strict ``realpath`` does not follow to the end). Elsewhere
# smserve applies the filter's rules itself.
STDLIB_FILTER_FIXED = (
    (3, 11, 13) <= sys.version_info[:3] < (3, 12)
    or (3, 12, 11) <= sys.version_info[:3] < (3, 13)
    or sys.version_info[:3] >= (3, 13, 4)
)


def extract_archive(archive: Path, dest: Path, uri: str = "") -> None:
    """Extract a tarball (any compression) into ``dest``, refusing anything unsafe.

    Every member is checked first by names alone (``check_member``), whatever the
    Python; then extracted with tarfile's ``data`` filter where that is sound, else by
    ``_extract_data``, which applies the same rules.
    """
    name = uri or str(archive)
    use_filter = STDLIB_FILTER_FIXED and hasattr(tarfile, "data_filter")
    dest = Path(dest)
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            dest.mkdir(parents=True, exist_ok=True)
            root = os.path.realpath(dest)
            total = 0
            for count, member in enumerate(tar, start=1):
                total += max(member.size, 0)
                if count > MAX_ARCHIVE_MEMBERS:
                    raise ArchiveTooLarge(
                        f"it holds more than {MAX_ARCHIVE_MEMBERS} members"
                    )
                if total > MAX_ARCHIVE_BYTES:
                    raise ArchiveTooLarge(
                        f"its members declare more than {MAX_ARCHIVE_BYTES >> 20} MB"
                    )
                check_member(member, root)
                if use_filter:
                    tar.extract(member, root, filter="data")
                else:
                    _extract_data(tar, member, root)
    except ArchiveTooLarge as exc:
        raise UserCodeError(
            f"Refusing to extract {name}: {exc} (the limits are "
            f"{MAX_ARCHIVE_MEMBERS} members and {MAX_ARCHIVE_BYTES >> 20} MB). Keep "
            "data out of the source directory: a channel or S3 is the place for it."
        ) from exc
    except _FILTER_ERRORS as exc:
        refused: tarfile.TarInfo | None = getattr(exc, "tarinfo", None)
        what = repr(refused.name) if refused is not None else "a member"
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


def check_member(member: tarfile.TarInfo, root: str) -> None:
    """Refuse ``member`` unless it provably lands inside ``root``, judged by names and
    ``lstat`` only, never by ``realpath`` (which gives up silently past PATH_MAX):

    - its name (a leading ``/`` dropped) has no ``..`` and passes through no symlink:
      every parent that exists is a real directory (``root`` is new, so any symlink
      in it was made by the archive);
    - it replaces no symlink, and a link replaces no directory;
    - a symlink's target is relative and of the form ``../../a/b``: climbing first,
      from the link's own (real) directory, and never above ``root``; so every link
      resolves inside, and so does any path through it;
    - a hard link's target is a relative name without ``..``;
    - it is a file, a directory or a link: no devices, no FIFOs.
    """
    name = member.name.lstrip("/" + os.sep)
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if not parts and member.isdir():
        return  # "./" itself (``tar -C dir .``): the destination
    if not parts or ".." in parts:
        raise UnsafeMember(member, f"{member.name!r} is outside the directory")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeMember(member, f"{member.name!r} is a special file")
    for depth in range(1, len(parts) + 1):
        path = os.path.join(root, *parts[:depth])
        try:
            found = os.lstat(path)
        except FileNotFoundError:
            break  # neither it nor anything below it exists yet
        except OSError as exc:  # ENAMETOOLONG, ELOOP, ...: refuse, never guess
            raise UnsafeMember(member, f"{member.name!r}: {exc.strerror}") from exc
        last = depth == len(parts)
        if stat.S_ISLNK(found.st_mode):
            raise UnsafeMember(
                member, f"{member.name!r} passes through the link {path!r}"
            )
        if not last and not stat.S_ISDIR(found.st_mode):
            raise UnsafeMember(member, f"{member.name!r} is below a file")
        if last and member.issym() and stat.S_ISDIR(found.st_mode):
            raise UnsafeMember(member, f"{member.name!r} replaces a directory")
    if member.issym():
        target = PurePosixPath(member.linkname)
        ups = 0
        for part in target.parts:
            if part == "..":
                ups += 1
            elif part != ".":
                break
        rest = target.parts[ups:] if not target.is_absolute() else ()
        if (
            target.is_absolute()
            or not member.linkname
            or ".." in rest
            or ups > len(parts) - 1
        ):
            raise UnsafeMember(member, f"{member.name!r} links outside the directory")
    elif member.islnk():
        target = PurePosixPath(member.linkname.lstrip("/"))
        if not member.linkname or ".." in target.parts:
            raise UnsafeMember(member, f"{member.name!r} links outside the directory")


def _extract_data(tar: tarfile.TarFile, member: tarfile.TarInfo, root: str) -> None:
    """``tar.extract(member, root, filter="data")`` for a Python whose filter is missing
    or unsound, after ``check_member``: a leading
    ``/`` is dropped; modes lose the set-id bits and the group/other write bits; files
    belong to whoever extracts them."""
    safe = copy.copy(member)
    safe.name = member.name.lstrip("/" + os.sep)
    if member.islnk():
        safe.linkname = member.linkname.lstrip("/" + os.sep)
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
# What smserve's own settings read that no child of ours needs: a requirement's build
# (its setup.py runs with our environment), a training script, a Dask worker.
SECRET_VARIABLES = frozenset({"SECRET_KEY", "DJANGO_SECRET_KEY", "DATABASE_URL"})
SECRET_PREFIXES = ("DJANGO_SUPERUSER_",)


def child_environment(
    base: Mapping[str, str] | None = None, **extra: str
) -> dict[str, str]:
    """``base`` (``os.environ``) without the secrets of ``SECRET_VARIABLES`` and
    ``SECRET_PREFIXES``, plus ``extra``: the environment of every process smserve starts
    for user code (pip, a training script, Dask)."""
    env = {
        name: value
        for name, value in (os.environ if base is None else base).items()
        if name not in SECRET_VARIABLES and not name.startswith(SECRET_PREFIXES)
    }
    env.update(extra)
    return env


def image_constraints() -> str:
    """``name==version`` of every distribution this Python has installed (in the image,
    exactly requirements.txt's pins): a user's requirements may add packages but never
    change one smserve runs on."""
    pins: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and dist.version:
            pins.setdefault(re.sub(r"[-_.]+", "-", name).lower(), dist.version)
    return "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def install_requirements(
    source_dir: Path,
    *,
    python: str | None = None,
    package: bool = False,
    constrain: bool = False,
    target: Path | None = None,
) -> bool:
    """``pip install -r requirements.txt`` in ``source_dir`` when there is one; with
    ``package`` (a ``setup.py`` there), ``pip install .`` too, as the training toolkit
    installs a source directory that is a package.

    ``constrain``: with ``--constraint`` of the installed versions (``image_constraints``),
    so a requirement that would change one fails instead. ``target``: nothing in the
    environment changes; what it lacks is installed into the directory ``target``
    (resolved against the environment first, so what it has is not fetched again).

    pip's output goes to stdout as it comes; its environment has no secrets
    (``child_environment``). Returns whether anything was installed.
    """
    requirements = Path(source_dir) / REQUIREMENTS
    has_requirements = requirements.is_file()
    if not has_requirements and not package:
        return False
    pip = [python or sys.executable, "-m", "pip", "install"]
    arguments = (["."] if package else []) + (
        ["-r", REQUIREMENTS] if has_requirements else []
    )
    env = child_environment(PIP_DISABLE_PIP_VERSION_CHECK="1")
    with tempfile.TemporaryDirectory(prefix="smserve-pip-") as tmp:
        if constrain:
            constraints = Path(tmp) / "constraints.txt"
            constraints.write_text(image_constraints())
            arguments += ["--constraint", str(constraints)]
        if target is None:
            _pip(pip + arguments, source_dir, env, requirements, package)
            return True
        # What a plain install would add to the environment, then exactly that (and
        # nothing it depends on: the environment has it) into the target.
        report = Path(tmp) / "report.json"
        _pip(
            pip + ["--dry-run", "--quiet", "--report", str(report), *arguments],
            source_dir,
            env,
            requirements,
            package,
        )
        urls = [
            _install_url(item) for item in json.loads(report.read_text())["install"]
        ]
        if urls:
            _pip(
                pip + ["--no-deps", "--target", str(target), *urls],
                source_dir,
                env,
                requirements,
                package,
            )
        return True


# --- one multi-model load's code: fetched once, installed once --------------------------------
@dataclass(frozen=True)
class CodeSite:
    """Where one multi-model load keeps its user code, shared by every worker: the fetched
    source (``src``) and its requirements (``site``, a ``pip --target`` directory). The
    worker that answers ``POST /models`` fills it (``install``); the workers that load
    the model lazily, on an invocation, only read it. Removed on unload."""

    root: Path
    install: bool

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def site(self) -> Path:
        return self.root / "site"


_CODE_SITE: ContextVar[CodeSite | None] = ContextVar("smserve_code_site", default=None)


@contextmanager
def code_site(root: Path, *, install: bool) -> Iterator[CodeSite]:
    """Loads in this block keep their user code in ``root`` (see ``CodeSite``)."""
    site = CodeSite(Path(root), install)
    token = _CODE_SITE.set(site)
    try:
        yield site
    finally:
        _CODE_SITE.reset(token)


def fetch_for_load(uri: str) -> Path:
    """The source ``uri`` names, for a model being loaded: into the load's ``CodeSite``
    (fetched by the installing worker, reused by the others), else into a new temporary
    directory (single-model serving loads once)."""
    site = _CODE_SITE.get()
    if site is None:
        return fetch_source(uri, Path(tempfile.mkdtemp(prefix="smserve-code-")) / "src")
    if not site.install and site.src.is_dir():
        return site.src
    return fetch_source(uri, site.src)


def install_for_load(source_dir: Path) -> None:
    """A model's ``requirements.txt``, against the image's pins. Within a ``CodeSite``,
    the installing worker puts them into its ``site`` under a lock of the whole
    container (one pip at a time), the others install nothing; either way the site goes
    on ``sys.path`` (call this inside ``user_code_scope``, which takes it off again)."""
    site = _CODE_SITE.get()
    if site is None:
        install_requirements(source_dir, constrain=True)
        return
    if site.install:
        site.root.mkdir(parents=True, exist_ok=True)
        with open(site.root.parent / "pip.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                install_requirements(source_dir, constrain=True, target=site.site)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    if site.site.is_dir() and str(site.site) not in sys.path:
        sys.path.append(str(site.site))


def _install_url(item: dict[str, Any]) -> str:
    """What to hand pip to install one entry of its installation report."""
    info = item["download_info"]
    vcs = info.get("vcs_info")
    if vcs:
        return f"{vcs['vcs']}+{info['url']}@{vcs['commit_id']}"
    return info["url"]


def _pip(
    command: list[str],
    cwd: Path,
    env: dict[str, str],
    requirements: Path,
    package: bool,
) -> None:
    logger.info("Installing %s: %s", cwd, " ".join(command))
    proc = subprocess.Popen(
        command,
        cwd=cwd,
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
    request time, would not be found: import siblings at the top of the script. The
    same holds for the packages of a multi-model load's ``CodeSite`` (its requirements).
    """
    if not isolated:
        yield
        return
    roots = [Path(source_dir).resolve()]
    site = _CODE_SITE.get()
    if site is not None:
        roots.append(site.root.resolve())
    with _SCOPE_LOCK:
        before = set(sys.modules)
        path_before = list(sys.path)
        try:
            yield
        finally:
            sys.path[:] = path_before
            for name in set(sys.modules) - before:
                file = getattr(sys.modules.get(name), "__file__", None)
                if file and any(Path(file).resolve().is_relative_to(r) for r in roots):
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
