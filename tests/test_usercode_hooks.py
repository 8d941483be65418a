"""``load_user_module`` and ``find_hooks``: importing a user's inference script and
finding its hooks, with the inference toolkit's optional trailing ``context``."""

from __future__ import annotations

import sys

import joblib
import numpy as np
import pytest

from modelapp.usercode import UserCodeError, find_hooks, load_user_module
from tests.support.script_mode import source_dir

INFERENCE_PY = '''\
"""Our version of the SDK docs' inference.py: all four hooks."""
import json
import os

import joblib
import numpy as np

from helpers import scale


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def input_fn(request_body, request_content_type):
    if request_content_type != "application/json":
        raise ValueError(f"unsupported {request_content_type}")
    return scale(np.asarray(json.loads(request_body)))


def predict_fn(input_data, model):
    return model.predict(input_data)


def output_fn(prediction, accept, context):
    return json.dumps({"labels": prediction.tolist(), "context": context}), accept
'''

TRANSFORM_PY = """\
def model_fn(model_dir):
    return model_dir


def transform_fn(model, request_body, content_type, accept, context=None):
    return f"{model}|{request_body}|{content_type}|{accept}|{context}"
"""


@pytest.fixture
def isolated(monkeypatch):
    """sys.path and sys.modules as they were, whatever a test imports."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_an_inference_script_with_four_hooks_runs_them(
    tmp_path, iris, iris_model, isolated
):
    """The module imports with its siblings; each hook is called with its arguments,
    ``output_fn`` with the context too because it asks for it."""
    src = source_dir(
        tmp_path / "code",
        {"inference.py": INFERENCE_PY, "helpers.py": "def scale(x):\n    return x\n"},
    )
    joblib.dump(iris_model, tmp_path / "model.joblib")
    module = load_user_module(src, "inference.py")
    hooks = find_hooks(module)

    assert module.__name__ == "inference"
    assert hooks.defined() == ["model_fn", "input_fn", "predict_fn", "output_fn"]
    assert [h.takes_context for h in (hooks.input_fn, hooks.output_fn)] == [
        False,
        True,
    ]
    X, _ = iris
    model = hooks.model_fn(str(tmp_path), context="ignored")
    data = hooks.input_fn("[[5.1, 3.5, 1.4, 0.2]]", "application/json")
    prediction = hooks.predict_fn(data, model)
    body, content_type = hooks.output_fn(prediction, "application/json", context="c")
    assert body == '{"labels": [0], "context": "c"}'
    assert content_type == "application/json"
    assert np.array_equal(prediction, iris_model.predict(X[:1]))


def test_a_transform_fn_script_takes_context_by_a_default_argument(tmp_path, isolated):
    src = source_dir(tmp_path / "code", {"serve/transform.py": TRANSFORM_PY})
    hooks = find_hooks(load_user_module(src, "serve/transform.py"))
    assert hooks.defined() == ["model_fn", "transform_fn"]
    assert hooks.transform_fn("m", "b", "text/csv", "*/*", context="ctx") == (
        "m|b|text/csv|*/*|ctx"
    )


def test_transform_fn_with_the_other_hooks_is_refused(tmp_path, isolated):
    src = source_dir(
        tmp_path / "code",
        {"inference.py": TRANSFORM_PY + "\ndef input_fn(body, ct):\n    return body\n"},
    )
    module = load_user_module(src, "inference.py")
    with pytest.raises(UserCodeError, match="defines transform_fn and input_fn"):
        find_hooks(module)


def test_a_hook_with_the_wrong_arguments_names_its_line(tmp_path, isolated):
    src = source_dir(
        tmp_path / "code",
        {"inference.py": "X = 1\n\n\ndef predict_fn(data):\n    return data\n"},
    )
    module = load_user_module(src, "inference.py")
    with pytest.raises(UserCodeError) as caught:
        find_hooks(module)
    assert str(caught.value) == (
        f"{src / 'inference.py'}:4: predict_fn takes 1 arguments; expected "
        "predict_fn(input_data, model) or predict_fn(input_data, model, context)."
    )


def test_a_hook_that_is_not_callable_is_refused(tmp_path, isolated):
    src = source_dir(tmp_path / "code", {"inference.py": "model_fn = 'model.pkl'\n"})
    with pytest.raises(UserCodeError, match="model_fn must be a function, got str"):
        find_hooks(load_user_module(src, "inference.py"))


def test_a_script_that_does_not_import_names_the_file_and_line(tmp_path, isolated):
    """An exception at import time (here in a sibling module) names the innermost line
    of the user's code; a syntax error names its own line."""
    src = source_dir(
        tmp_path / "code",
        {
            "inference.py": "import helpers\n",
            "helpers.py": "x = 1\nraise RuntimeError('no GPU here')\n",
            "broken.py": "def model_fn(:\n",
        },
    )
    with pytest.raises(UserCodeError) as caught:
        load_user_module(src, "inference.py")
    assert str(caught.value) == (
        "inference.py could not be imported: RuntimeError: no GPU here "
        f"({src / 'helpers.py'}:2)"
    )
    assert "inference" not in sys.modules
    with pytest.raises(UserCodeError, match=rf"SyntaxError: .*\({src}/broken.py:1\)"):
        load_user_module(src, "broken.py")


def test_a_missing_or_escaping_program_is_refused(tmp_path, isolated):
    src = source_dir(tmp_path / "code", {"other.py": ""})
    with pytest.raises(UserCodeError, match=r"inference.py is not in .*other.py"):
        load_user_module(src, "inference.py")
    with pytest.raises(UserCodeError, match="must be a path inside"):
        load_user_module(src, "../inference.py")
