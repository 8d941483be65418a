"""Loading ``model.joblib`` / ``*.pkl`` without letting the file run code of its choosing.

A pickle is a program: each ``GLOBAL`` opcode names a module attribute that the file may
then call with arguments of its choosing (``os.system("...")``, ``builtins.eval``). The
only door to those callables is the unpickler's ``find_class``; this module keeps it
(``RestrictedUnpickler``, joblib's own ``NumpyUnpickler`` with one method changed), so
an artifact may name classes and functions of the scientific stack and of the modules the
operator trusts (``SMSERVE_TRUSTED_MODULES``), and nothing else. A refused name stops the
load with ``RefusedGlobal``, whose message names it and the settings that admit it.
``SMSERVE_ALLOW_UNSAFE_DESERIALIZATION`` restores plain ``joblib.load``.

What a name must pass, in order (``Policy.check``):

1. Its module is allowed: a package of ``ALLOWED`` (every name, or the listed ones) or a
   trusted module, or a submodule of one. Checked before anything is imported, since an
   import runs the module's code.
2. Its module is not one of ``DENIED_MODULES``: the parts of the allowed packages that
   read or write files, open URLs, run code or import modules by name (``numpy.f2py``,
   ``pandas.io``, ``joblib.externals``...). A trusted module that names one exactly (or a
   submodule) lifts that entry; nothing else does.
3. A dotted name (``Outer.Inner``, pickle protocol 4) walks through classes only and no
   dunder: ``sklearn.base.clone.__globals__.get`` would hand out any module global, and
   ``numpy.ndarray.tofile`` writes files.
4. The object found is checked again by where it really lives: its defining module (a
   Python function's ``__globals__``, unwrapped), its ``__module__``, the class of an
   instance; and by identity against ``DENIED_OBJECTS`` for what numpy re-labels
   ``__module__ = "numpy"`` (``numpy.load``, ``numpy.fromfile``, ``numpy.memmap``).
   Re-exports (``sklearn.utils._joblib.load``, ``pandas.read_pickle``) and modules as
   objects (``sklearn.base.os``) are refused here.

The objects ``find_class`` hands out may be called, never changed: ``BUILD`` and the
opcodes that fill a dict, list or set are refused on them, and on any class, function or
module, so a file cannot patch ``DecisionTreeClassifier.predict`` or a library's global
settings for the whole process.

Object arrays: joblib writes an array of Python objects as a nested pickle and reads it
with a second, plain unpickler. ``RestrictedUnpickler`` reads those arrays itself with an
unpickler that uses the same ``find_class``, so the nested pickle meets the same policy
whatever joblib version does the rest. joblib's pre-0.10 format (``NDArrayWrapper``, which
loads a side file with ``numpy.load(allow_pickle=True)``) is refused.

``builtins.getattr`` is replaced by a version that fetches a classmethod of an admitted
class and nothing else: pickle writes ``cls.method`` that way, and pandas' time-zone
columns need it (``ZoneInfo._unpickle``).

Why ``functools.partial`` and ``copyreg._reconstructor`` are admitted: they only call what
is already on the unpickler's stack, and everything on it came through ``find_class``;
``partial(os.system, ...)`` needs ``os.system`` as a global first, which is refused.

What this is not: a sandbox. The allowed packages hold thousands of functions, and a file
may call any of them with arguments of its choosing; the deny lists remove the ones known
to touch files, the network or the interpreter, not every conceivable misuse. Loading an
artifact still trusts the stack's code with the file's data (docs/reliability.md).
"""

from __future__ import annotations

import _compat_pickle
import functools
import inspect
import logging
import pickle
import sys
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler
from joblib.numpy_pickle_utils import (
    _ensure_native_byte_order,
    _validate_fileobject_and_memmap,
)

logger = logging.getLogger(__name__)

# The pure-Python unpickler joblib builds on; typeshed knows only the C one's methods.
_PyUnpickler: Any = pickle._Unpickler

TRUSTED_SETTING = "SMSERVE_TRUSTED_MODULES"
UNSAFE_SETTING = "SMSERVE_ALLOW_UNSAFE_DESERIALIZATION"

# module -> the names an artifact may use from it; None: every name in the module and
# its submodules (less DENIED_MODULES and DENIED_OBJECTS).
ALLOWED: dict[str, frozenset[str] | None] = {
    "sklearn": None,
    "numpy": None,
    "scipy": None,
    "pandas": None,
    # joblib's own array placeholder; the rest of joblib loads, writes files or starts
    # processes.
    "joblib.numpy_pickle": frozenset({"NumpyArrayWrapper"}),
    # Values and containers; not getattr, eval, exec, __import__, open, type...
    "builtins": frozenset(
        {
            "bool",
            "bytearray",
            "bytes",
            "complex",
            "dict",
            "Ellipsis",
            "float",
            "frozenset",
            "int",
            "list",
            "NotImplemented",
            "object",
            "range",
            "set",
            "slice",
            "str",
            "tuple",
        }
    ),
    # How pickle rebuilds objects (protocols 0-1) and bytes (protocol 2).
    "copyreg": frozenset({"_reconstructor"}),
    "_codecs": frozenset({"encode"}),
    "collections": frozenset({"OrderedDict", "defaultdict", "Counter", "deque"}),
    "functools": frozenset({"partial"}),
    "datetime": frozenset({"date", "datetime", "time", "timedelta", "timezone"}),
    "zoneinfo": frozenset({"ZoneInfo"}),
    # pandas' string columns are pyarrow arrays: what their pickles name, no more (the
    # rest of pyarrow reads files, maps memory and opens connections).
    "pyarrow.lib": frozenset({"_restore_array", "py_buffer", "type_for_alias"}),
}

# Parts of the allowed packages that an artifact may not reach, with the reason.
DENIED_MODULES: dict[str, str] = {
    "numpy.testing": "it runs code (test helpers)",
    "numpy._pytesttester": "it runs pytest",
    "numpy.f2py": "it compiles and imports code",
    "numpy.distutils": "it runs compilers and shell commands",
    "numpy.ctypeslib": "it loads shared libraries",
    "numpy.lib._npyio_impl": "it reads and writes files and unpickles them",
    "numpy.lib.npyio": "it reads and writes files and unpickles them",
    "numpy.lib._datasource": "it opens files and URLs",
    "numpy.lib.format": "it reads arrays from files with allow_pickle and maps files",
    "numpy.lib._format_impl": "it reads arrays from files with allow_pickle",
    "numpy.lib._utils_impl": "it imports modules and prints (numpy.info)",
    "numpy._core.memmap": "it maps and creates files",
    "numpy.__config__": "it prints the build configuration",
    "scipy._lib._testutils": "it runs pytest",
    "scipy._lib._ccallback": "it calls native function pointers (LowLevelCallable)",
    "scipy.io": "it reads and writes files",
    "scipy.datasets": "it downloads files",
    "pandas.io": "it reads and writes files and unpickles them",
    "pandas.core.computation": "it evaluates expressions (pandas.eval)",
    "pandas.plotting": "it imports a plotting backend by name",
    "pandas.testing": "test helpers",
    "pandas._testing": "test helpers that write files",
    "pandas.util._tester": "it runs pytest",
    "pandas.util._print_versions": "it imports modules and prints",
    "pandas.compat._optional": "it imports modules by name",
    "pandas._config": "it changes pandas' global options",
    "sklearn.datasets": "it downloads, reads and writes files",
    "sklearn.utils._testing": "test helpers that run code",
    "sklearn.utils.estimator_checks": "test helpers",
    "sklearn.utils._show_versions": "it imports modules and prints",
    "sklearn.utils.discovery": "it imports every scikit-learn module",
    "sklearn.externals": "vendored code outside scikit-learn's own",
}

# (where it lives, name) -> reason, compared by identity: what numpy labels
# ``__module__ = "numpy"`` (so its name alone does not say where it lives), and what
# touches files from a module that is otherwise harmless. Trusting the module it lives in
# (not just ``numpy``) lifts an entry.
DENIED_OBJECTS: dict[tuple[str, str], str] = {
    ("numpy.lib._npyio_impl", "load"): "it reads files and unpickles them",
    ("numpy.lib._npyio_impl", "save"): "it writes files",
    ("numpy.lib._npyio_impl", "savez"): "it writes files",
    ("numpy.lib._npyio_impl", "savez_compressed"): "it writes files",
    ("numpy.lib._npyio_impl", "savetxt"): "it writes files",
    ("numpy.lib._npyio_impl", "loadtxt"): "it reads files",
    ("numpy.lib._npyio_impl", "genfromtxt"): "it reads files",
    ("numpy.lib._npyio_impl", "fromregex"): "it reads files",
    ("numpy._core.multiarray", "fromfile"): "it reads files",
    ("numpy._core.records", "fromfile"): "it reads files",
    ("numpy._core.memmap", "memmap"): "it maps and creates files",
    ("numpy.lib._utils_impl", "info"): "it imports modules and prints",
    ("numpy.lib._utils_impl", "show_runtime"): "it imports modules and prints",
    ("numpy.__config__", "show_config"): "it prints the build configuration",
}

# Dotted names are refused unless every step is a class (a nested class).
_PLAIN_DATA = (type(None), bool, int, float, complex, str, bytes)


class RefusedGlobal(pickle.UnpicklingError):
    """The artifact names a global the safe loader does not admit."""


class Policy:
    """Which globals an artifact may name: ``ALLOWED`` and ``trusted`` modules, less
    ``DENIED_MODULES`` and ``DENIED_OBJECTS`` (a trusted module lifts the denials under
    it)."""

    def __init__(self, trusted: Iterable[str] = ()) -> None:
        self.trusted = tuple(sorted({m.strip() for m in trusted if m.strip()}))
        self._checked: dict[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        """The object ``module.name`` names, imported, or ``RefusedGlobal``."""
        key = (module, name)
        if key not in self._checked:
            self._checked[key] = self._resolve(module, name)
        return self._checked[key]

    def _resolve(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "getattr") and not self._trusted(module):
            return self._class_getattr
        self._check_module(module, name, f"{module}.{name}")
        __import__(module, level=0)
        parts = name.split(".")
        obj: Any = sys.modules[module]
        for i, part in enumerate(parts):
            if part.startswith("__") and len(parts) > 1 or part == "<locals>":
                raise self._refuse(module, name, "a dotted name through a dunder")
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise pickle.UnpicklingError(
                    f"Can't get attribute {name!r} on module {module!r}"
                ) from None
            if i < len(parts) - 1 and not isinstance(obj, type):
                raise self._refuse(
                    module,
                    name,
                    "a dotted name that goes through something not a class",
                )
        if len(parts) > 1 and not isinstance(obj, type):
            raise self._refuse(module, name, "a method or attribute of a class")
        self._check_object(module, name, obj)
        return obj

    def _class_getattr(self, owner: Any, name: str) -> Any:
        """What a pickle's ``getattr(cls, "name")`` may fetch: a classmethod of an
        admitted class (``ZoneInfo._unpickle``, how pandas' time-zone columns pickle),
        never an attribute of an instance or a dunder."""
        shown = (
            f"getattr({getattr(owner, '__qualname__', type(owner).__name__)}, {name!r})"
        )
        if not isinstance(owner, type) or not isinstance(name, str):
            raise self._refuse_shown(
                shown, "builtins", "getattr is admitted on classes only"
            )
        if name.startswith("__"):
            raise self._refuse("builtins", shown, "a dunder attribute")
        self.find_class(owner.__module__, owner.__qualname__)
        value = getattr(owner, name)
        if getattr(value, "__self__", None) is not owner:
            raise self._refuse(
                "builtins", shown, "getattr is admitted for classmethods only"
            )
        return value

    def _trusted(self, module: str) -> bool:
        return any(_under(module, t) for t in self.trusted)

    def _check_module(self, module: str, name: str, shown: str) -> None:
        """``module.name`` by its names alone (before any import)."""
        trusted = self._trusted(module)
        if not trusted:
            allowed = [
                names
                for prefix, names in ALLOWED.items()
                if (names is None and _under(module, prefix)) or module == prefix
            ]
            if not allowed or (allowed[0] is not None and name not in allowed[0]):
                raise self._refuse_shown(
                    shown, module, "it is not in the allowed stack"
                )
        for prefix, reason in DENIED_MODULES.items():
            if _under(module, prefix) and not any(
                _under(module, t) and _under(t, prefix) for t in self.trusted
            ):
                raise self._refuse_shown(shown, prefix, reason)

    def _check_object(self, module: str, name: str, obj: Any) -> None:
        """Where the object found really lives, and whether it is a denied one."""
        shown = f"{module}.{name}"
        if isinstance(obj, types.ModuleType):
            raise self._refuse(module, name, "a module, not a class or function")
        for (home, attr), reason in DENIED_OBJECTS.items():
            if _lookup(home, attr) is obj and not any(
                _under(home, t) and t != _root(home) for t in self.trusted
            ):
                raise self._refuse_shown(shown, home, reason, f"{home}.{attr}")
        if isinstance(obj, _PLAIN_DATA):
            return
        homes = set()
        if isinstance(obj, type) or callable(obj):
            for layer in _layers(obj):
                owner = getattr(layer, "__globals__", {}).get("__name__")
                if isinstance(owner, str):
                    homes.add((owner, getattr(layer, "__name__", name)))
            declared = getattr(obj, "__module__", None)
            if isinstance(declared, str):
                homes.add((declared, getattr(obj, "__qualname__", name)))
        if not isinstance(obj, type) and not _is_function(obj):
            cls = type(obj)
            homes.add((cls.__module__, cls.__qualname__))
        for home, home_name in sorted(homes):
            if (home, home_name) != (module, name):
                self._check_module(home, home_name.split(".")[0], shown)

    def _refuse(self, module: str, name: str, why: str) -> RefusedGlobal:
        return RefusedGlobal(
            f"the artifact names {module}.{name}, which the safe loader refuses: {why}. "
            f"If you trust this artifact, set {UNSAFE_SETTING}=true."
        )

    def _refuse_shown(
        self, shown: str, module: str, why: str, real: str = ""
    ) -> RefusedGlobal:
        what = f"{shown} ({real})" if real and real != shown else shown
        return RefusedGlobal(
            f"the artifact names {what}, which the safe loader refuses: {why}. "
            f"If you trust this artifact, admit the module with "
            f"{TRUSTED_SETTING}={module}, or set {UNSAFE_SETTING}=true."
        )


class RestrictedUnpickler(NumpyUnpickler):
    """joblib's unpickler with ``find_class`` kept by a ``Policy``; object arrays are
    read by a nested unpickler under the same policy."""

    dispatch = NumpyUnpickler.dispatch.copy()

    def __init__(self, policy: Policy, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policy = policy
        # What find_class handed out (classes, functions, module-level objects): the
        # file may use them, never change them (see _unchanged).
        self._found: set[int] = set()

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:  # Python 2 names, as pickle maps them
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        found = self.policy.find_class(module, name)
        self._found.add(id(found))
        return found

    def load_build(self) -> None:
        _unchanged(self, self.stack[-2], "BUILD")
        _PyUnpickler.load_build(self)
        built = self.stack[-1]
        if isinstance(built, NumpyArrayWrapper) and built.dtype.hasobject:
            # joblib would read the nested pickle with a second unpickler of its own.
            array = _NestedUnpickler(self).load()
            if self.ensure_native_byte_order:
                array = _ensure_native_byte_order(array)
            self.stack[-1] = array
        elif isinstance(built, NumpyArrayWrapper):
            self.stack[-1] = built.read(self, self.ensure_native_byte_order)

    dispatch[pickle.BUILD[0]] = load_build


def _unchanged(unpickler: Any, target: Any, opcode: str) -> None:
    """BUILD, SETITEM(S), APPEND(S) and ADDITEMS change the object under them: on a
    class, a function or a module-level object that would patch it for the whole process
    (``DecisionTreeClassifier.predict = ...``, a library's global dict). The file may
    only change the objects it made."""
    if id(target) in unpickler._found or isinstance(
        target, (type, types.ModuleType, types.FunctionType, types.MethodType)
    ):
        what = getattr(target, "__qualname__", type(target).__qualname__)
        raise RefusedGlobal(
            f"the artifact changes {what} with {opcode}, which the safe loader refuses: "
            f"only objects the file creates may be changed. If you trust this artifact, "
            f"set {UNSAFE_SETTING}=true."
        )


def _guarded(name: str, target: Callable[[Any], Any]) -> Any:
    base = getattr(_PyUnpickler, f"load_{name.lower()}")

    def load(unpickler: Any) -> None:
        _unchanged(unpickler, target(unpickler), name)
        base(unpickler)

    return load


# The target of each changing opcode, where the base class will look for it.
_CHANGES: dict[bytes, tuple[str, Callable[[Any], Any]]] = {
    pickle.SETITEM: ("SETITEM", lambda u: u.stack[-3]),
    pickle.APPEND: ("APPEND", lambda u: u.stack[-2]),
    # After the MARK: the object below it.
    pickle.SETITEMS: ("SETITEMS", lambda u: u.metastack[-1][-1]),
    pickle.APPENDS: ("APPENDS", lambda u: u.metastack[-1][-1]),
    pickle.ADDITEMS: ("ADDITEMS", lambda u: u.metastack[-1][-1]),
}
for _opcode, (_name, _target) in _CHANGES.items():
    RestrictedUnpickler.dispatch[_opcode[0]] = _guarded(_name, _target)


class _NestedUnpickler(_PyUnpickler):
    """The nested pickle of an object array, under the outer unpickler's policy."""

    dispatch = _PyUnpickler.dispatch.copy()
    dispatch.update(
        {
            opcode[0]: _guarded(name, target)
            for opcode, (name, target) in _CHANGES.items()
        }
    )

    def __init__(self, outer: RestrictedUnpickler) -> None:
        super().__init__(outer.file_handle)
        self._outer = outer
        self._found = outer._found

    def find_class(self, module: str, name: str) -> Any:
        return self._outer.find_class(module, name)

    def load_build(self) -> None:
        _unchanged(self, self.stack[-2], "BUILD")
        _PyUnpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build


def load(path: Path, trusted: Iterable[str] = ()) -> Any:
    """The object in the joblib or pickle file ``path``, read under ``Policy(trusted)``;
    ``RefusedGlobal`` names what it refused."""
    policy = Policy(trusted)
    filename = str(path)
    with open(filename, "rb") as fh:
        with _validate_fileobject_and_memmap(fh, filename, None) as (fobj, _):
            if isinstance(fobj, str):
                raise RefusedGlobal(
                    f"{Path(filename).name} was written by joblib older than 0.10, "
                    "whose arrays are read with numpy.load(allow_pickle=True): save it "
                    f"again with a current joblib, or set {UNSAFE_SETTING}=true."
                )
            unpickler = RestrictedUnpickler(policy, filename, fobj, True)
            return unpickler.load()


def load_artifact(path: Path) -> Any:
    """The model in ``path`` as the settings say: restricted (the default), or plain
    ``joblib.load`` when ``ALLOW_UNSAFE_DESERIALIZATION`` is on."""
    from modelapp import conf

    if conf.get("ALLOW_UNSAFE_DESERIALIZATION"):
        import joblib

        logger.warning(
            "%s=true: %s is loaded with plain joblib, which runs any code the file "
            "holds.",
            UNSAFE_SETTING,
            path.name,
        )
        return joblib.load(path)
    return load(path, conf.get("TRUSTED_MODULES"))


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _root(module: str) -> str:
    return module.split(".")[0]


def _lookup(module: str, name: str) -> Any:
    found = sys.modules.get(module)
    return getattr(found, name, None) if found is not None else None


def _is_function(obj: Any) -> bool:
    return isinstance(
        obj, (types.FunctionType, types.BuiltinFunctionType, functools.partial)
    ) or type(obj).__name__ in (
        "ufunc",
        "cython_function_or_method",
        "fused_cython_function",
    )


def _layers(obj: Any) -> list[Any]:
    """``obj`` and what it wraps (``functools.wraps``), outermost first."""
    layers = [obj]
    try:
        inner = inspect.unwrap(obj)
    except ValueError:
        return layers
    if inner is not obj:
        layers.append(inner)
    return layers
