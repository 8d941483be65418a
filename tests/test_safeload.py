"""Safe model loading (``modelapp/safeload.py``): every known way for a pickle to run code
is refused with the global named, every model family of the scientific stack still loads,
and the real server answers a refused artifact with a 503 (or a multi-model 400) that says
which setting admits it."""

from __future__ import annotations

import builtins
import functools
import json
import operator
import os
import pickle
import subprocess
from http import HTTPStatus
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from joblib.numpy_pickle_compat import NDArrayWrapper
from scipy import stats
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from modelapp import safeload
from modelapp.safeload import DENIED_OBJECTS, Policy, RefusedGlobal
from tests.support.models import SlowPredictClassifier, write_model

# How pickle names os.mkdir and os.system (posix.mkdir on Linux).
MKDIR = f"{os.mkdir.__module__}.mkdir"
SYSTEM = f"{os.system.__module__}.system"


class Call:
    """Pickles as ``func(*args)``: how a malicious artifact runs what it names."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def dump(obj: Any, path: Path, protocol: int = 5) -> Path:
    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)
    return path


def refused(path: Path, *names: str) -> str:
    """Load ``path`` safely: it must be refused, the message naming each of ``names``."""
    with pytest.raises(RefusedGlobal) as caught:
        safeload.load(path)
    message = str(caught.value)
    for name in names:
        assert name in message
    return message


# --- the bypasses, each refused with the global named ------------------------------------
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_a_pickle_calling_os_is_refused_and_nothing_runs(tmp_path, protocol):
    """The classic: ``os.mkdir`` (a stand-in for ``os.system``) as a global. Plain joblib
    runs it, which proves the artifact is live."""
    marker = tmp_path / "pwned"
    path = dump(Call(os.mkdir, str(marker)), tmp_path / "m.pkl", protocol)
    message = refused(path, MKDIR, "not in the allowed stack")
    assert f"SMSERVE_TRUSTED_MODULES={os.mkdir.__module__}" in message
    assert "SMSERVE_ALLOW_UNSAFE_DESERIALIZATION=true" in message
    assert not marker.exists()
    joblib.load(path)
    assert marker.exists()


def test_an_object_array_with_a_malicious_inner_pickle_is_refused(tmp_path):
    """joblib writes an object array as a nested pickle, read by a second unpickler: the
    outer pickle names only numpy and joblib, the call hides in the nested one."""
    marker = tmp_path / "pwned"
    array = np.array([Call(os.mkdir, str(marker)), 1], dtype=object)
    path = tmp_path / "m.joblib"
    joblib.dump({"coef": array}, path)
    refused(path, MKDIR)
    assert not marker.exists()
    joblib.load(path)
    assert marker.exists()


def test_an_object_array_of_plain_values_loads(tmp_path):
    array = np.array(["a", 1, None, 2.5], dtype=object)
    path = tmp_path / "m.joblib"
    joblib.dump({"categories": [array]}, path, compress=3)
    loaded = safeload.load(path)["categories"][0]
    assert loaded.dtype == object
    assert list(loaded) == ["a", 1, None, 2.5]


def test_an_old_joblib_side_file_is_never_read(tmp_path):
    """joblib < 0.10's ``NDArrayWrapper`` loads the file it names with
    ``numpy.load(allow_pickle=True)``: a second, unchecked pickle anywhere on disk."""
    marker = tmp_path / "pwned"
    side = tmp_path / "elsewhere" / "side.npy"
    side.parent.mkdir()
    np.save(side, np.array([Call(os.mkdir, str(marker))], dtype=object))
    wrapper = NDArrayWrapper(str(side), np.ndarray)
    path = dump(wrapper, tmp_path / "m.pkl", protocol=2)
    refused(path, "joblib.numpy_pickle_compat.NDArrayWrapper")
    assert not marker.exists()
    joblib.load(path)
    assert marker.exists()


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (Call(builtins.eval, "1"), "builtins.eval"),
        (Call(builtins.exec, "x = 1"), "builtins.exec"),
        (Call(builtins.__import__, "os"), "builtins.__import__"),
        (Call(builtins.open, "/etc/hostname"), "io.open"),
        # getattr(os module, "system"): refused at the first step, the import.
        (Call(getattr, Call(builtins.__import__, "os"), "system"), "__import__"),
        (Call(operator.attrgetter, "system"), "operator.attrgetter"),
        (Call(subprocess.run, ["true"]), "subprocess.run"),
        (Call(pickle.loads, b"."), "loads"),
        (Call(np.load, "/tmp/x.npy", None, True), "numpy.load"),
        (Call(np.fromfile, "/etc/hostname"), "numpy.fromfile"),
        (Call(pd.read_pickle, "/tmp/x.pkl"), "pandas.read_pickle"),
        (Call(pd.read_csv, "/etc/hostname"), "pandas.read_csv"),
        (Call(pd.eval, "1 + 1"), "pandas.eval"),
        (Call(joblib.load, "/tmp/x.joblib"), "joblib.numpy_pickle.load"),
        # partial itself is admitted; what it wraps still has to be.
        (functools.partial(os.system, "true"), SYSTEM),
        (functools.partial(np.load, "/tmp/x.npy"), "numpy.load"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_code_running_globals_are_refused(tmp_path, payload, named):
    refused(dump(payload, tmp_path / "m.pkl"), named)


@pytest.mark.parametrize(
    ("module", "name", "why"),
    [
        ("numpy", "load", "numpy.lib._npyio_impl.load"),
        ("numpy.lib.npyio", "load", "unpickles"),
        ("numpy", "fromfile", "reads files"),
        ("numpy", "memmap", "maps and creates files"),
        ("numpy.rec", "fromfile", "reads files"),
        ("numpy", "savetxt", "writes files"),
        ("numpy.testing._private.utils", "runstring", "numpy.testing"),
        ("numpy.f2py", "run_main", "compiles"),
        ("numpy.distutils.exec_command", "exec_command", "shell"),
        ("numpy.ctypeslib", "load_library", "shared libraries"),
        ("numpy.lib.format", "read_array", "allow_pickle"),
        ("numpy", "test", "pytest"),
        ("numpy", "info", "imports modules"),
        ("numpy", "ndarray.tofile", "method"),
        ("pandas", "read_pickle", "pandas.io"),
        ("pandas.io.pickle", "read_pickle", "unpickles"),
        ("pandas", "eval", "evaluates expressions"),
        ("pandas.compat._optional", "import_optional_dependency", "imports modules"),
        ("pandas.plotting", "plot_params", "plotting backend"),
        ("scipy._lib._testutils", "PytestTester", "pytest"),
        ("scipy", "LowLevelCallable", "function pointers"),
        ("scipy.io", "loadmat", "files"),
        ("scipy.datasets", "face", "downloads"),
        ("sklearn", "show_versions", "sklearn.utils._show_versions"),
        ("sklearn.utils._show_versions", "show_versions", "imports modules"),
        ("sklearn.datasets", "fetch_openml", "downloads"),
        ("sklearn.utils._testing", "assert_run_python_script_without_output", "test"),
        # importlib.import_module, imported into an allowed module.
        ("scipy._lib.deprecation", "import_module", "importlib"),
        ("joblib", "load", "not in the allowed stack"),
        ("joblib.externals.cloudpickle.cloudpickle", "subimport", "joblib.externals"),
        ("joblib.memory", "Memory", "not in the allowed stack"),
        ("sklearn.base", "copy", "a module"),
        ("sklearn.base", "clone.__globals__", "dotted name"),
        ("sklearn.base", "clone.__builtins__", "dotted name"),
        ("sklearn.base", "BaseEstimator.get_params", "method"),
        ("builtins", "getattr.__self__", "not in the allowed stack"),
        ("copyreg", "_reconstructor.__globals__", "not in the allowed stack"),
    ],
)
def test_dangerous_names_inside_the_allowed_stack_are_refused(module, name, why):
    with pytest.raises(RefusedGlobal, match="refuses") as caught:
        Policy().find_class(module, name)
    assert why in str(caught.value)


@pytest.mark.parametrize(
    "payload",
    [
        # BUILD on a class: _Scorer.__call__ = numpy.zeros, process-wide.
        b"csklearn.metrics._scorer\n_Scorer\n(N(dS'__call__'\ncnumpy\nzeros\nstb.",
        # BUILD on a function: a new attribute on sklearn.base.clone.
        b"csklearn.base\nclone\n(dS'patched'\nI01\nsb.",
        # SETITEMS on a library's global dict: scikit-learn's configuration.
        b"csklearn._config\n_global_config\n(S'assume_finite'\nI01\nu.",
        # SETITEM on the same dict, the one-item form.
        b"csklearn._config\n_global_config\nS'assume_finite'\nI01\ns.",
    ],
    ids=[
        "build-on-a-class",
        "build-on-a-function",
        "setitems-on-a-global",
        "setitem-on-a-global",
    ],
)
def test_a_file_cannot_change_what_it_imports(tmp_path, payload):
    """The objects find_class hands out may be called, never patched (each payload
    does patch them under the checks of names alone)."""
    from sklearn._config import _global_config
    from sklearn.base import clone
    from sklearn.metrics._scorer import _Scorer

    call = _Scorer.__call__
    path = tmp_path / "m.pkl"
    path.write_bytes(payload)
    refused(path, "only objects the file creates may be changed")
    assert _Scorer.__call__ is call
    assert _global_config["assume_finite"] is False
    assert not hasattr(clone, "patched")


def test_getattr_fetches_classmethods_of_admitted_classes_only():
    """pickle writes ``cls.method`` as ``getattr(cls, "method")`` (pandas' time-zone
    columns: ``ZoneInfo._unpickle``); on anything else getattr is refused."""
    getattr_ = Policy().find_class("builtins", "getattr")
    assert getattr_ is not getattr
    import zoneinfo

    assert getattr_(zoneinfo.ZoneInfo, "_unpickle") == zoneinfo.ZoneInfo._unpickle
    with pytest.raises(RefusedGlobal, match="classes only"):
        getattr_(os, "system")
    with pytest.raises(RefusedGlobal, match="dunder"):
        getattr_(np.ndarray, "__reduce__")
    with pytest.raises(RefusedGlobal, match="classmethods only"):
        getattr_(np.ndarray, "tofile")
    with pytest.raises(RefusedGlobal, match="os._wrap_close"):
        getattr_(os._wrap_close, "close")


def test_every_denied_object_is_found():
    """The identity deny list names objects that exist: a renamed numpy function would
    otherwise leave it silently empty."""
    policy = Policy()
    for module, name in DENIED_OBJECTS:
        __import__(module)
        with pytest.raises(RefusedGlobal):
            policy.find_class(module, name)
        assert safeload._lookup(module, name) is not None


def test_trusted_modules_admit_their_globals_and_lift_a_denial():
    with pytest.raises(RefusedGlobal, match="SMSERVE_TRUSTED_MODULES=tests.support"):
        Policy().find_class("tests.support.models", "SlowPredictClassifier")
    trusted = Policy(["tests.support"])
    assert (
        trusted.find_class("tests.support.models", "SlowPredictClassifier")
        is SlowPredictClassifier
    )
    # Naming the denied module itself lifts that denial; naming its package does not.
    with pytest.raises(RefusedGlobal):
        Policy(["numpy"]).find_class("numpy", "load")
    assert Policy(["numpy.lib._npyio_impl"]).find_class("numpy", "load") is np.load


# --- what must keep loading ----------------------------------------------------------------
def _table() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=60),
            "y": np.where(np.arange(60) % 7 == 0, np.nan, rng.normal(size=60)),
            "colour": pd.Categorical(
                np.array(["red", "green", "blue"])[np.arange(60) % 3]
            ),
            "name": pd.Series(["a", "b", "c", "d"] * 15, dtype="string"),
        }
    )
    return frame, (np.arange(60) % 2)


def _families() -> dict[str, tuple[Any, Any]]:
    X = np.random.default_rng(1).normal(size=(60, 4))
    y = (X[:, 0] > 0).astype(int)
    frame, labels = _table()
    table = make_pipeline(
        ColumnTransformer(
            [
                ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["x", "y"]),
                ("cat", OneHotEncoder(handle_unknown="ignore"), ["colour", "name"]),
            ]
        ),
        LogisticRegression(),
    )
    return {
        "tree": (DecisionTreeClassifier(random_state=0).fit(X, y), X),
        "forest": (RandomForestClassifier(5, random_state=0).fit(X, y), X),
        "hist_gradient_boosting": (
            HistGradientBoostingClassifier(max_iter=5).fit(X, y),
            X,
        ),
        "table": (table.fit(frame, labels), frame),
        "function_transformer": (
            make_pipeline(FunctionTransformer(np.abs), Ridge()).fit(X, y),
            X,
        ),
        "grid_search": (
            GridSearchCV(
                DecisionTreeClassifier(random_state=0),
                {"max_depth": [1, 2]},
                scoring=["accuracy", "f1"],
                refit="accuracy",
                cv=2,
            ).fit(X, y),
            X,
        ),
        "random_search": (
            RandomizedSearchCV(
                LogisticRegression(),
                {"C": stats.loguniform(0.1, 10)},
                n_iter=2,
                cv=2,
                random_state=0,
            ).fit(X, y),
            X,
        ),
    }


@pytest.mark.parametrize("compress", [0, 3])
@pytest.mark.parametrize("family", list(_families()))
def test_each_model_family_loads_and_predicts_the_same(tmp_path, family, compress):
    model, X = _families()[family]
    path = tmp_path / "model.joblib"
    joblib.dump(model, path, compress=compress)
    np.testing.assert_array_equal(safeload.load(path).predict(X), model.predict(X))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_data_frame_with_every_pandas_dtype_loads(tmp_path, protocol):
    """Strings (pyarrow), categories, time zones (getattr of ``ZoneInfo._unpickle``),
    nullable integers, periods, intervals, timedeltas."""
    frame = pd.DataFrame(
        {
            "s": pd.Series(["x", "y", None], dtype="string"),
            "o": pd.Series(["a", "b", "c"]),
            "c": pd.Categorical(["a", "b", "a"]),
            "t": pd.date_range("2020", periods=3, tz="Europe/Paris"),
            "i": pd.array([1, None, 3], dtype="Int64"),
            "p": pd.period_range("2020", periods=3, freq="M"),
            "iv": pd.interval_range(0, 3),
            "td": pd.to_timedelta([1, 2, 3], unit="s"),
        }
    )
    path = dump({"frame": frame}, tmp_path / "m.pkl", protocol)
    pd.testing.assert_frame_equal(safeload.load(path)["frame"], frame)


def test_an_artifact_of_joblib_before_0_10_is_refused_with_advice(tmp_path):
    path = tmp_path / "old.pkl"
    path.write_bytes(b"ZF0x" + b"\x00" * 32)
    refused(path, "joblib older than 0.10", "SMSERVE_ALLOW_UNSAFE_DESERIALIZATION")


# --- through the real server ---------------------------------------------------------------
@pytest.fixture
def evil_base(tmp_path, iris) -> Path:
    """A model whose pickle calls ``os.mkdir`` (a stand-in for ``os.system``) when
    loaded, inside an otherwise working iris tree's dict."""
    base = tmp_path / "evil"
    (base / "model").mkdir(parents=True)
    X, y = iris
    marker = tmp_path / "pwned"
    model = DecisionTreeClassifier(random_state=0).fit(X, y)
    model.payload = Call(os.mkdir, str(marker))
    joblib.dump(model, base / "model" / "model.joblib")
    return base


def test_serve_refuses_the_artifact_with_the_reason_on_ping(serve_factory, evil_base):
    """A model whose pickle would run code is not loaded: /ping's 503 names the global
    and the settings that would admit it, and nothing ran.
    docs/serving.md, Errors, `model_not_ready`: "refused by the safe loader (naming the
    global and the setting that admits it)".
    """
    server = serve_factory(evil_base, expect_status=HTTPStatus.SERVICE_UNAVAILABLE)
    status, _, body = server.request("GET", "/ping")
    assert status == HTTPStatus.SERVICE_UNAVAILABLE
    detail = json.loads(body)["detail"]
    assert MKDIR in detail
    assert f"SMSERVE_TRUSTED_MODULES={os.mkdir.__module__}" in detail
    assert "SMSERVE_ALLOW_UNSAFE_DESERIALIZATION=true" in detail
    assert not (evil_base.parent / "pwned").exists()


def test_trusted_modules_admit_a_custom_estimator(serve_factory, tmp_path, iris):
    """An estimator of the operator's own package is refused until its package is
    trusted. docs/settings.md, Settings: "`SMSERVE_TRUSTED_MODULES`"."""
    X, y = iris
    base = tmp_path / "custom"
    write_model(base, SlowPredictClassifier(delay=0).fit(X, y))
    server = serve_factory(
        base,
        expect_status=HTTPStatus.SERVICE_UNAVAILABLE,
        env={"SMSERVE_TRUSTED_MODULES": ""},  # the suite trusts tests.support
    )
    detail = json.loads(server.request("GET", "/ping")[2])["detail"]
    assert "tests.support.models.SlowPredictClassifier" in detail
    server = serve_factory(base, env={"SMSERVE_TRUSTED_MODULES": "tests.support"})
    assert server.request("GET", "/ping")[0] == HTTPStatus.OK


def test_the_unsafe_switch_loads_plain_joblib_with_a_warning(serve_factory, evil_base):
    """The switch loads with plain joblib (the payload runs) and says so in a WARNING.
    docs/settings.md, Settings: "`SMSERVE_ALLOW_UNSAFE_DESERIALIZATION`"."""
    server = serve_factory(
        evil_base, env={"SMSERVE_ALLOW_UNSAFE_DESERIALIZATION": "true"}
    )
    assert server.request("GET", "/ping")[0] == HTTPStatus.OK
    assert (evil_base.parent / "pwned").exists()  # what the default prevents
    assert "WARNING" in server.log
    assert "SMSERVE_ALLOW_UNSAFE_DESERIALIZATION=true: model.joblib is loaded" in (
        server.log
    )


def test_a_multi_model_load_of_a_refused_artifact_is_a_400(
    serve_factory, tmp_path, evil_base
):
    """docs/serving.md, Multi-model API, `POST /models`: "400 `model_load_failed` with
    the reason (a path the file system refuses, e.g. too long; no such directory, no
    artifact, not a pickle, a global the safe loader refuses, no `predict`, warm-up
    failed)": here the global the safe loader refuses, named, and nothing ran.
    """
    empty = tmp_path / "mme_base"
    empty.mkdir()
    server = serve_factory(
        empty,
        env={
            "SAGEMAKER_MULTI_MODEL": "true",
            "SMSERVE_MME_MEMORY_MB": "512",
            "SMSERVE_MME_MODEL_ROOT": str(tmp_path),
        },
    )
    body = json.dumps({"model_name": "evil", "url": str(evil_base / "model")}).encode()
    status, _, data = server.request(
        "POST", "/models", body, {"Content-Type": "application/json"}
    )
    assert status == HTTPStatus.BAD_REQUEST
    answer = json.loads(data)
    assert answer["code"] == "model_load_failed"
    assert MKDIR in answer["detail"]
    assert "SMSERVE_TRUSTED_MODULES" in answer["detail"]
    assert not (evil_base.parent / "pwned").exists()
