"""Script mode for serving: the official SageMaker scikit-learn container's ``inference.py``
run unchanged (``SAGEMAKER_PROGRAM``).

``ScriptPredictor`` handles every model directory when ``SMSERVE['PROGRAM']`` is set. It
finds the source in ``SMSERVE['SUBMIT_DIRECTORY']`` (``s3://``, ``file://``, a path) or in
``<model dir>/code/`` (the SDK's repacked ``model.tar.gz``), installs its
``requirements.txt``, imports the script and calls ``model_fn(model_dir)``, all in
``from_model_dir``: in gunicorn's master before the workers fork, so ``/ping`` is 200 only
once they are done, and a script that does not import or a ``model_fn`` that raises keeps
it at 503 with the reason (file and line).

Each request runs the script's hooks, each with the inference toolkit's optional trailing
``context`` (``ScriptContext``); a hook the script does not define is smserve's own step:

- ``input_fn(body, content_type)``: when defined, the predictor owns its input and gets
  the raw body for any Content-Type (``str`` for JSON and CSV, ``bytes`` otherwise, as in
  the toolkit); when not, smserve's parsers read the body and the batch becomes the 2-D
  array the official default gives (``float32`` for JSON and CSV).
- ``predict_fn(data, model)``: default ``model.predict(data)`` (or the method named by the
  ``method=`` custom attribute).
- ``output_fn(prediction, accept)``: default the official container's encoders, byte for
  byte (``encode_prediction``); it may return bytes, a string or ``(body, content_type)``.
  The predictor always owns its output, so the bodies are the official ones.
- ``transform_fn(model, body, content_type, accept)`` alone replaces the three.

A hook's exception answers ``{"detail", "code"}`` with its message (500, or the
exception's integer ``status_code``, e.g. ``smserve.errors.HTTPError``); the traceback
goes to the log only.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
from rest_framework.exceptions import APIException

from modelapp import conf
from modelapp.batch import Batch
from modelapp.exceptions import InvalidInput, NotAcceptable
from modelapp.formats import CSV, CUSTOM_ATTRIBUTES, JSON, NPY, base_type
from modelapp.metadata import ModelMetadata
from modelapp.predictors.base import (
    BasePredictor,
    InvocationResult,
    ModelLoadError,
    find_artifact,
    load_pickle,
)
from modelapp.predictors.sklearn import SklearnPredictor
from modelapp.usercode import (
    Hooks,
    UserCodeError,
    fetch_for_load,
    find_hooks,
    install_for_load,
    listing,
    load_user_module,
    local_path,
    user_code_scope,
    where,
)

logger = logging.getLogger(__name__)

CODE_DIR = "code"
DEFAULT_PROGRAM = "inference.py"
# The toolkit hands these to input_fn / transform_fn as text, everything else as bytes.
UTF8_TYPES = (JSON, CSV)
# What the default output_fn encodes (the official container's three).
ENCODABLE = (JSON, CSV, NPY)


class ScriptError(APIException):
    """An exception in the user's script: its message, with its ``status_code`` when it
    carries an integer one in 400..599 (``smserve.errors.HTTPError``), else 500."""

    status_code: int = HTTPStatus.INTERNAL_SERVER_ERROR
    default_code = "script_error"

    def __init__(self, detail: str, status: int | None = None, code: str = "") -> None:
        super().__init__(detail, code or self.default_code)
        if status is not None:
            self.status_code = status


def status_of(exc: BaseException) -> int | None:
    """An exception's own HTTP status (``status_code``, an int in 400..599), if any."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool) and 400 <= status < 600:
        return status
    return None


class ScriptContext:
    """The inference toolkit's ``context`` argument (multi-model-server's ``Context``),
    for one request: what a hook reads of the request and may set on the response.

    Unlike the toolkit, which keeps the first request's context for the life of the
    worker, every request gets its own.
    """

    def __init__(
        self,
        model_name: str,
        model_dir: Path,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.model_name = model_name
        self.manifest: dict[str, Any] = {}
        self.system_properties = {
            "model_dir": str(model_dir),
            "gpu_id": None,
            "batch_size": 1,
            "server_name": "smserve",
            "server_version": "",
        }
        self._request = {k.lower(): v for k, v in (headers or {}).items()}
        self.request_processor = [_RequestProcessor(self._request)]
        self.response_headers: dict[str, str] = {}
        self.response_content_type: str | None = None
        self.response_status: int | None = None

    @property
    def custom_attributes(self) -> str:
        """The request's ``X-Amzn-SageMaker-Custom-Attributes``, verbatim ("" if none)."""
        return self._request.get(CUSTOM_ATTRIBUTES.lower(), "")

    def get_request_id(self, idx: int = 0) -> str | None:
        return self._request.get("x-amzn-sagemaker-inference-id")

    def get_request_header(self, idx: int, key: str) -> str | None:
        return self._request.get(key.lower())

    def get_all_request_header(self, idx: int = 0) -> dict[str, str]:
        return dict(self._request)

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.response_headers[key] = str(value)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.response_content_type = value

    def get_response_content_type(self, idx: int = 0) -> str | None:
        return self.response_content_type

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0):
        self.response_status = int(code)

    def get_response_status(self, idx: int = 0) -> tuple[int, str]:
        return self.response_status or 200, ""


class _RequestProcessor:
    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = headers

    def get_request_properties(self) -> dict[str, str]:
        return dict(self._headers)

    def get_request_property(self, key: str) -> str | None:
        return self._headers.get(key.lower())


# --- the official container's default encoders, as documented ------------------------------
def _tolist(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def encode_prediction(prediction: Any, accept: str) -> bytes:
    """The official container's default ``output_fn`` body: JSON is ``json.dumps`` of the
    prediction as a bare list (``[0, 1, 2]``, Python's separators), CSV is
    ``numpy.savetxt(delimiter=",", fmt="%s")`` (one line per prediction), NPY is
    ``numpy.save``. Any other type is a 406."""
    media_type = base_type(accept)
    if media_type == JSON:
        return json.dumps(prediction, default=_tolist).encode()
    if media_type == CSV:
        out = io.StringIO()
        np.savetxt(out, prediction, delimiter=",", fmt="%s")
        return out.getvalue().encode()
    if media_type == NPY:
        array = np.asarray(prediction)
        if array.dtype.kind == "O":
            array = np.asarray(array.tolist())
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return buffer.getvalue()
    raise NotAcceptable(accept, ENCODABLE)


class ScriptPredictor(BasePredictor):
    """A user's ``inference.py`` (see the module doc)."""

    # The methods the ``method=`` custom attribute may name for the default predict_fn.
    methods = SklearnPredictor.methods
    owns_output = True
    # The request headers reach the hooks' context (custom attributes, inference id).
    wants_headers = True
    # Accept absent or */*: JSON (or SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT), as the
    # official container answers, not the request's own type.
    accept_follows_content_type = False

    @classmethod
    def handles(cls, model_dir: Path) -> bool:
        if _multi_model():
            # Many models: each model with its own code/<program> is a script (the
            # inference toolkit's default program: inference.py), as is every model when
            # the container names a script directory of its own.
            return bool(
                (model_dir / CODE_DIR / program_name()).is_file()
                or (conf.get("PROGRAM") and conf.get("SUBMIT_DIRECTORY"))
            )
        return bool(conf.get("PROGRAM"))

    @classmethod
    def from_model_dir(
        cls, model_dir: Path, metadata: ModelMetadata | None
    ) -> ScriptPredictor:
        program = program_name()
        try:
            source_dir = source_directory(model_dir)
        except UserCodeError as exc:
            raise ModelLoadError(str(exc)) from exc
        context = ScriptContext(model_dir.name, model_dir)
        artifact = None
        # Many models in one process: each script's modules are its own (two models'
        # inference.py, or utils.py, must not find each other's in sys.modules).
        with user_code_scope(source_dir, isolated=_multi_model()):
            try:
                install_for_load(source_dir)
                module = load_user_module(source_dir, program)
                hooks = find_hooks(module)
            except UserCodeError as exc:
                raise ModelLoadError(str(exc)) from exc
            if hooks.model_fn is not None:
                try:
                    model = hooks.model_fn(str(model_dir), context=context)
                except Exception as exc:  # the user's model_fn: /ping stays 503
                    logger.exception("%s: model_fn failed.", program)
                    raise ModelLoadError(
                        f"{program}: model_fn raised {type(exc).__name__}: {exc} "
                        f"({where(exc, source_dir) or program})"
                    ) from exc
            else:
                # The official container requires model_fn; smserve loads the joblib.
                artifact = find_artifact(model_dir)
                model = load_pickle(artifact)
        if artifact is None:
            try:
                artifact = find_artifact(model_dir)
            except ModelLoadError:
                # model_fn loaded something else: the script identifies the model.
                artifact = source_dir / program
        if metadata is not None and artifact.name != "model.joblib":
            metadata = None
        logger.info(
            "Script mode: %s from %s, hooks: %s.",
            program,
            source_dir,
            ", ".join(hooks.defined()) or "none (smserve's defaults)",
        )
        return cls(
            model,
            metadata,
            artifact,
            hooks=hooks,
            program=program,
            source_dir=source_dir,
            model_dir=model_dir,
        )

    def __init__(
        self,
        model: Any,
        metadata: ModelMetadata | None = None,
        artifact: Path | None = None,
        *,
        hooks: Any = None,
        program: str = "",
        source_dir: Path | None = None,
        model_dir: Path | None = None,
    ) -> None:
        super().__init__(model, metadata, artifact)
        self.hooks = hooks or Hooks()
        self.program = program
        self.source_dir = source_dir
        self.model_dir = model_dir or Path(".")
        # A script with input_fn (or transform_fn) takes the raw body: no parser step.
        self.owns_input = bool(self.hooks.input_fn or self.hooks.transform_fn)

    def describe_estimator(self, estimator: str) -> str:
        """What the admin and the stats call this model: the script, then the model."""
        return f"script:{self.program}" + (f" ({estimator})" if estimator else "")

    def warm_up(self) -> None:
        """Only when smserve's own predict step would run: a user's predict_fn or
        transform_fn may expect anything, so model_fn having returned is the test."""
        if self.hooks.predict_fn is None and self.hooks.transform_fn is None:
            super().warm_up()

    # --- one request ---
    def invoke(
        self,
        data: Any,
        attributes: dict[str, str],
        media_type: str,
        accept: str,
        headers: Mapping[str, str] | None = None,
    ) -> InvocationResult:
        hooks = self.hooks
        context = ScriptContext(self.model_dir.name, self.model_dir, headers)
        method = attributes.get("method") or self.default_method
        if self.owns_input:
            data = self._as_text(data, media_type)
            media_type = media_type or conf.get("DEFAULT_CONTENT_TYPE")
        records = 0
        if hooks.transform_fn is not None:
            result = self._call(
                hooks.transform_fn,
                self.model,
                data,
                media_type,
                accept,
                context=context,
            )
        else:
            if hooks.input_fn is not None:
                data = self._call(hooks.input_fn, data, media_type, context=context)
            else:
                data = self._default_input(data, media_type)
            if hooks.predict_fn is not None:
                prediction = self._call(
                    hooks.predict_fn, data, self.model, context=context
                )
            else:
                prediction = self._default_predict(data, method)
            records = _count(prediction)
            if hooks.output_fn is not None:
                result = self._call(
                    hooks.output_fn, prediction, accept, context=context
                )
            else:
                result = encode_prediction(prediction, accept)
        body, content_type = self._response(result, accept)
        if context.response_content_type:
            content_type = context.response_content_type
        return InvocationResult(
            method=method,
            records=records or 1,
            body=body,
            content_type=content_type,
            headers=context.response_headers,
            status=context.response_status or HTTPStatus.OK,
        )

    def _call(self, hook: Any, *args: Any, context: ScriptContext) -> Any:
        """Run one of the user's hooks; its exception becomes a ``ScriptError``."""
        try:
            return hook(*args, context=context)
        except APIException:
            raise  # already an HTTP answer (ours, or DRF's raised by the script)
        except Exception as exc:
            status = status_of(exc)
            logger.exception(
                "%s: %s raised %s.", self.program, hook.name, type(exc).__name__
            )
            message = str(getattr(exc, "message", "") or exc) or type(exc).__name__
            code = getattr(exc, "code", "")
            raise ScriptError(
                f"{self.program}: {hook.name} raised {type(exc).__name__}: {message}"
                if status is None
                else message,
                status,
                code if isinstance(code, str) else "",
            ) from exc

    @staticmethod
    def _as_text(body: bytes, media_type: str) -> Any:
        """JSON and CSV bodies as text, as the toolkit hands them to input_fn."""
        if base_type(media_type) not in UTF8_TYPES:
            return body
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"The {media_type} body is not UTF-8: {exc}.") from exc

    def _default_input(self, batch: Batch, media_type: str) -> np.ndarray:
        """The parsed batch as the official default input_fn's array: 2-D, float32 for
        the text formats (smserve's parsers read one-row CSV as one row, not 1-D)."""
        matrix = self.to_matrix(batch)
        if base_type(media_type) == NPY:
            return matrix
        return matrix.astype(np.float32)

    def _default_predict(self, data: Any, method: str) -> Any:
        """``model.predict(data)`` (or the requested method), as the official default."""
        if method != self.default_method or self.available_methods:
            method = self.check_method(method)
        predict = getattr(self.model, method, None)
        if not callable(predict):
            raise ScriptError(
                f"{self.program} defines no predict_fn and its model "
                f"({type(self.model).__name__}) has no {method} method."
            )
        try:
            return predict(data)
        except ValueError as exc:
            raise InvalidInput(f"The model rejected the input: {exc}") from exc

    def _response(self, result: Any, accept: str) -> tuple[bytes, str]:
        """What an output_fn or transform_fn returned, as (body, content type)."""
        content_type = accept
        if isinstance(result, tuple) and len(result) == 2:
            result, content_type = result
        elif hasattr(result, "get_data") and hasattr(result, "status_code"):
            # A Flask/Werkzeug Response: the official container's single-model path.
            content_type = getattr(result, "content_type", None) or accept
            status = status_of(result)
            body = result.get_data()
            if status is not None:
                raise ScriptError(
                    body.decode("utf-8", "replace").strip()
                    or HTTPStatus(status).phrase,
                    status,
                )
            result = body
        if isinstance(result, str):
            result = result.encode("utf-8")
        elif isinstance(result, (bytearray, memoryview)):
            result = bytes(result)
        elif not isinstance(result, bytes):
            raise ScriptError(
                f"{self.program}: the response must be bytes, a string or (body, "
                f"content_type); got {type(result).__name__}."
            )
        return result, str(content_type)


def program_name() -> str:
    """The script: ``SAGEMAKER_PROGRAM``, else the inference toolkit's default."""
    return conf.get("PROGRAM") or DEFAULT_PROGRAM


def source_directory(model_dir: Path) -> Path:
    """Where the script is: ``SUBMIT_DIRECTORY`` (a local directory is used in place;
    ``s3://`` and tarballs are fetched into a temporary directory), else
    ``<model dir>/code``. On a multi-model endpoint a model's own ``code/<program>``
    comes first."""
    own = Path(model_dir) / CODE_DIR
    if _multi_model() and (own / program_name()).is_file():
        return own
    uri = conf.get("SUBMIT_DIRECTORY")
    if not uri:
        code = Path(model_dir) / CODE_DIR
        if not code.is_dir():
            raise UserCodeError(
                f"SAGEMAKER_PROGRAM is {conf.get('PROGRAM')!r} but SAGEMAKER_SUBMIT_"
                f"DIRECTORY is not set and {model_dir} has no {CODE_DIR}/ directory "
                f"(it holds: {listing(Path(model_dir))})."
            )
        return code
    if not uri.startswith("s3://"):
        path = local_path(uri)
        if path.is_dir():
            return path
    return fetch_for_load(uri)


def _multi_model() -> bool:
    # ``multimodel.enabled()``, read here: multimodel imports the registry, which
    # imports the kinds.
    return bool(conf.get("MULTI_MODEL"))


def _count(prediction: Any) -> int:
    try:
        return len(prediction)
    except TypeError:
        return 1
