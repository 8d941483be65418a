"""Predictor kinds: a fat base (``base.BasePredictor``) and short concrete kinds chosen
by one setting, ``SMSERVE['PREDICTORS']``, in the shape of Django's
``contrib/sessions/backends``.

- ``base``: ``BasePredictor`` (the checks, the batch aligned to the model, ``invoke``,
  the warm-up), ``InvocationResult``, ``ModelLoadError``, ``find_artifact``,
  ``load_pickle``;
- ``schema``: ``InputSchema``, a model's input schema applied to a request's records;
- ``sklearn``: ``SklearnPredictor``, a scikit-learn estimator saved with joblib;
- ``compiled``: the compiled engine (ONNX Runtime) that serves a scikit-learn model's
  verified methods;
- ``script``: ``ScriptPredictor``, a user's ``inference.py`` (script mode).

A new kind is one module here, one line in ``conf.DEFAULTS['PREDICTORS']`` (before
``SklearnPredictor``, which serves any directory) and one line in the contract suite's
``KINDS`` (``tests/test_predictors_contract.py``); ``docs/development.md`` has the recipe.
"""

from modelapp.predictors.base import (
    BasePredictor,
    InvocationResult,
    ModelLoadError,
    find_artifact,
    load_pickle,
)
from modelapp.predictors.schema import InputSchema
from modelapp.predictors.script import ScriptPredictor
from modelapp.predictors.sklearn import SklearnPredictor

__all__ = [
    "BasePredictor",
    "InputSchema",
    "InvocationResult",
    "ModelLoadError",
    "ScriptPredictor",
    "SklearnPredictor",
    "find_artifact",
    "load_pickle",
]
