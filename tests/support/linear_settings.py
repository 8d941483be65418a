"""smserve's settings with the test kind ``LinearJSONPredictor`` first among the predictor
kinds: the way a deployment adds a kind of its own (``docs/settings.md``: code may set
``PREDICTORS``), used with ``DJANGO_SETTINGS_MODULE``."""

from smserve.settings import *  # noqa: F403
from smserve.settings import SMSERVE

SMSERVE = {
    **SMSERVE,
    "PREDICTORS": [
        "tests.support.linear_kind.LinearJSONPredictor",
        "modelapp.predictors.ScriptPredictor",
        "modelapp.predictors.SklearnPredictor",
    ],
}
