"""The pieces of the serving API's OpenAPI description that the views' annotations share.

``docs/openapi.yaml`` is generated from the views by drf-spectacular (``manage.py
spectacular``; ``tests/test_openapi.py`` checks the file is current): each view's
``extend_schema`` says what it answers, with the shapes below. The views build their
bodies by hand (the inference path stays free of DRF serializers); the serializers here
only name those shapes for the document, and the tests hold the document to the views and
to the real server (schemathesis).

The views that read batches (``/invocations``, ``/models/{name}/invoke``) use
``BatchSchema``: their request and response media types are those of the parsers and
renderers the view is configured with (``SMSERVE['PARSERS']``/``['RENDERERS']``) and the
aliases ``formats.ALIASES`` maps to them, so the document lists what the negotiation
accepts. Text here is the document's, so it is Markdown (single backticks).
"""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse
from rest_framework import serializers

from modelapp import conf, formats
from modelapp.negotiation import GENERIC_TYPES

CUSTOM_ATTRIBUTES = formats.CUSTOM_ATTRIBUTES


# --- JSON bodies ------------------------------------------------------------------------
# Their docstrings are the components' descriptions in the document.
class ErrorSerializer(serializers.Serializer):
    """Every error, from the app and from nginx alike. `detail` says what was wrong and
    what to send instead (SageMaker hands the caller the first 2 KB of the body); `code`
    names the error for programs. Fields may be added, never removed or retyped."""

    detail = serializers.CharField()
    code = serializers.CharField()


class PingSerializer(serializers.Serializer):
    """`ready`: the model is loaded and warmed up (with the `sha256` of its artifact when
    nginx answers from the ready file); `alive`: a multi-model server is up."""

    status = serializers.ChoiceField(choices=["ready", "alive"])
    sha256 = serializers.CharField(required=False)


class ExecutionParametersSerializer(serializers.Serializer):
    """How SageMaker batch transform should call this container."""

    MaxConcurrentTransforms = serializers.IntegerField(
        help_text="The gunicorn workers (SAGEMAKER_MODEL_SERVER_WORKERS)."
    )
    BatchStrategy = serializers.ChoiceField(choices=["MULTI_RECORD"])
    MaxPayloadInMB = serializers.IntegerField(
        help_text="The payload limit (SAGEMAKER_MAX_PAYLOAD_IN_MB); 0: any size."
    )


class ModelSerializer(serializers.Serializer):
    """A model loaded in a multi-model container."""

    modelName = serializers.CharField()
    modelUrl = serializers.CharField(
        help_text="The directory it was loaded from, as the load request named it."
    )


class ModelListSerializer(serializers.Serializer):
    """One page of the loaded models, by name."""

    models = ModelSerializer(many=True)
    nextPageToken = serializers.CharField(
        required=False,
        help_text="Present when more models follow: pass it as `next_page_token`.",
    )


class LoadRequestSerializer(serializers.Serializer):
    """Load the model in the directory `url` under the name `model_name`."""

    model_name = serializers.CharField(min_length=1)
    url = serializers.CharField(
        min_length=1,
        help_text="The model directory (SageMaker downloads the artifact there).",
    )


class ModelStatusSerializer(ModelSerializer):
    """A model after its load or unload."""

    status = serializers.ChoiceField(choices=["loaded", "unloaded"])


# --- responses of the JSON-only views -----------------------------------------------------
def ok(serializer: type[serializers.Serializer], description: str) -> OpenApiResponse:
    return OpenApiResponse(serializer, description=description)


def error(description: str) -> OpenApiResponse:
    """An error of a JSON-only view."""
    return OpenApiResponse(ErrorSerializer, description=description)


UNAVAILABLE = (
    "The model server is not answering: starting, restarting or stopping "
    "(`model_server_unavailable`, from nginx)."
)
NOT_MULTI_MODEL = (
    "Or not a multi-model container (`not_multi_model`): the /models API needs "
    "SAGEMAKER_MULTI_MODEL=true."
)
MODEL_NOT_FOUND = (
    "No model is loaded under this name (`model_not_found`). " + NOT_MULTI_MODEL
)

# The errors of a batch view, rendered in the negotiated format (``BatchSchema``).
BATCH_ERRORS = {
    400: (
        "The body is not a batch the model accepts (`invalid_input`, `empty_body`, "
        "`unknown_method`, ...: the detail says what to send), or nginx could not read "
        "the request (`bad_request`)."
    ),
    404: (
        "A multi-model container (`multi_model`): invoke a loaded model with "
        "POST /models/{name}/invoke."
    ),
    406: (
        "No renderer satisfies the Accept header, or its format cannot carry the keys "
        "SAGEMAKER_INFERENCE_OUTPUT names (NPY: one key of numbers) "
        "(`not_acceptable`)."
    ),
    413: "The body is over the payload limit (`payload_too_large`).",
    415: "No parser reads this Content-Type (`unsupported_media_type`).",
    500: (
        "The model's own code failed (`server_error`); the traceback is in the "
        "container's log."
    ),
    503: (
        "The model is not loaded or failed its warm-up (`model_not_ready`). "
        + UNAVAILABLE
    ),
    504: (
        "The invocation took longer than the model server timeout "
        "(`model_server_timeout`, from nginx); the worker is replaced."
    ),
}


# --- batches ----------------------------------------------------------------------------
def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# Schemas the batch views' bodies are made of, registered as components when used.
SCHEMAS: dict[str, dict[str, Any]] = {
    "Value": {
        "description": "A feature or a prediction: a number (NaN is null) or text.",
        "anyOf": [
            {"type": "number", "nullable": True},
            {"type": "string"},
            {"type": "boolean"},
        ],
    },
    "Record": {
        "description": (
            "One record: its features in order, or by name, or one value (a record "
            "of one feature, or one value per record of a one-feature model)."
        ),
        "anyOf": [
            {"type": "array", "items": _ref("Value")},
            {"type": "object", "additionalProperties": _ref("Value")},
            _ref("Value"),
        ],
    },
    "CSVBatch": {
        "type": "string",
        "description": (
            "One record per line, fields separated by commas and quoted with double "
            "quotes where they hold commas or line breaks. No header unless the "
            "Content-Type says `header=present`; `charset` names the encoding (UTF-8 "
            "by default). Fields that are not numbers go to the model's schema."
        ),
    },
    "JSONBatch": {
        "description": (
            '`[[...], ...]` (records as arrays, or as objects of features), `{"instances": '
            '[...]}` or `{"inputs": [...]}`. Several documents one per line are read as '
            "JSON Lines (batch transform, `SplitType=Line`)."
        ),
        # anyOf: an object with both keys is read by its "instances".
        "anyOf": [
            {"type": "array", "items": _ref("Record")},
            {
                "type": "object",
                "required": ["instances"],
                "properties": {"instances": {"type": "array", "items": _ref("Record")}},
            },
            {
                "type": "object",
                "required": ["inputs"],
                "properties": {"inputs": {"type": "array", "items": _ref("Record")}},
            },
        ],
    },
    "JSONLinesBatch": {
        "type": "string",
        "description": (
            "One record per line: a JSON array of features, an object of features, or "
            'one number (a record of one feature); `{"features": [...]}` (Clarify\'s '
            "records; the key is SMSERVE_JSONLINES_FEATURES_KEY) is the array."
        ),
    },
    "NPYBatch": {
        "type": "string",
        "format": "binary",
        "description": (
            "`numpy.save` of a numeric array, 2-D (records x features) or 1-D (one "
            "record); pickled objects are refused."
        ),
    },
    "ParquetBatch": {
        "type": "string",
        "format": "binary",
        "description": (
            "A Parquet file: one record per row, one column per feature, by name "
            "(in the file's order for a model without feature names)."
        ),
    },
    "JSONPredictions": {
        "type": "object",
        "required": ["predictions"],
        "properties": {
            "predictions": {
                "type": "array",
                "description": (
                    "One per record, in order: a label or a value, or a row of scores "
                    "(`predict_proba`); with SAGEMAKER_INFERENCE_OUTPUT, an object of "
                    "the keys it names, in its order."
                ),
                "items": {
                    "anyOf": [
                        _ref("Value"),
                        {"type": "array", "items": _ref("Value")},
                        {"type": "object", "additionalProperties": True},
                    ]
                },
            }
        },
    },
    "CSVPredictions": {
        "type": "string",
        "description": (
            "One line per record: a label, or a comma-joined row of scores; with "
            "SAGEMAKER_INFERENCE_OUTPUT, the values of its keys in order, a list as "
            'one quoted field (`0,0.11,"[0.89, 0.11]","[0, 1]"`).'
        ),
    },
    "JSONLinesPredictions": {
        "type": "string",
        "description": (
            "One JSON value per line, one line per record (with "
            "SAGEMAKER_INFERENCE_OUTPUT, an object of its keys)."
        ),
    },
    "NPYPredictions": {
        "type": "string",
        "format": "binary",
        "description": "`numpy.save` of the predictions (never pickled).",
    },
    "ParquetPredictions": {
        "type": "string",
        "format": "binary",
        "description": (
            "A Parquet file, one row per record: a column `prediction`, or one column "
            'per score named by its position ("0", "1", ...).'
        ),
    },
    "CSVError": {"type": "string", "description": "The error's detail, as one line."},
    "Bytes": {"type": "string", "format": "binary"},
}
# Media type (as smserve names it) -> the component of its bodies; another format's are
# ``Bytes``.
REQUEST_BODIES = {
    formats.CSV: "CSVBatch",
    formats.JSON: "JSONBatch",
    formats.JSONLINES: "JSONLinesBatch",
    formats.NPY: "NPYBatch",
    formats.PARQUET: "ParquetBatch",
}
PREDICTIONS = {
    formats.JSON: "JSONPredictions",
    formats.CSV: "CSVPredictions",
    formats.JSONLINES: "JSONLinesPredictions",
    formats.NPY: "NPYPredictions",
    formats.PARQUET: "ParquetPredictions",
}
ERROR_BODIES = {formats.CSV: "CSVError"}
_REFERENCE = re.compile(r"#/components/schemas/(\w+)")

IRIS_RECORDS = [[5.1, 3.5, 1.4, 0.2], [6.2, 3.4, 5.4, 2.3]]
BATCH_EXAMPLES = [
    OpenApiExample(
        "CSV",
        value="5.1,3.5,1.4,0.2\n6.2,3.4,5.4,2.3\n",
        media_type=formats.CSV,
        request_only=True,
    ),
    OpenApiExample(
        "JSON",
        value={"instances": IRIS_RECORDS},
        media_type=formats.JSON,
        request_only=True,
    ),
    OpenApiExample(
        "JSON Lines",
        value="[5.1, 3.5, 1.4, 0.2]\n[6.2, 3.4, 5.4, 2.3]\n",
        media_type=formats.JSONLINES,
        request_only=True,
    ),
    OpenApiExample(
        "Labels",
        value={"predictions": [0, 2]},
        media_type=formats.JSON,
        response_only=True,
        status_codes=[200],
    ),
    OpenApiExample(
        "Labels as CSV",
        value="0\n2\n",
        media_type=formats.CSV,
        response_only=True,
        status_codes=[200],
    ),
]


def request_media_types(parser_type: str, default_type: str) -> list[str]:
    """The Content-Types a parser of ``parser_type`` reads: its own, the aliases
    ``formats.canonical`` maps to it, and ``application/octet-stream`` when it reads the
    default type."""
    types = [parser_type]
    types += [
        alias
        for alias, canonical in formats.ALIASES.items()
        if canonical == parser_type and alias != parser_type
    ]
    if formats.canonical(default_type) == parser_type:
        types += sorted(t for t in GENERIC_TYPES if t)
    return types


class BatchSchema(AutoSchema):
    """The description of a view that reads batches and renders predictions: its media
    types are its parsers' and renderers', read from the view as configured; errors are
    rendered in the negotiated format (each renderer's ``error_media_type``)."""

    errors: dict[int, str] = BATCH_ERRORS
    success = (
        "One prediction per record, in input order, in the format the Accept header asks "
        "for (absent or `*/*`: SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT if set, else the "
        "request's own format if one is rendered, else JSON)."
    )

    def component(self, name: str) -> dict[str, str]:
        """A reference to ``SCHEMAS[name]``, registered with those it refers to."""
        schema = SCHEMAS[name]
        self.registry.register_on_missing(
            ResolvedComponent(name, ResolvedComponent.SCHEMA, schema, name)
        )
        for used in _REFERENCE.findall(str(schema)):
            self.component(used)
        return _ref(name)

    def get_request_serializer(self) -> dict[str, Any]:
        default_type = conf.get("DEFAULT_CONTENT_TYPE")
        bodies: dict[str, Any] = {}
        for parser in self.view.get_parsers():
            body = self.component(REQUEST_BODIES.get(parser.media_type, "Bytes"))
            for media_type in request_media_types(parser.media_type, default_type):
                bodies.setdefault(media_type, body)
        return bodies

    def get_response_serializers(self) -> dict[Any, Any]:
        renderers = self.view.get_renderers()
        responses: dict[Any, Any] = {}
        for renderer in renderers:
            body: Any = self.component(PREDICTIONS.get(renderer.media_type, "Bytes"))
            responses[200, renderer.media_type] = OpenApiResponse(
                body, description=self.success
            )
        error_types = dict.fromkeys(r.error_media_type for r in renderers)
        for status, description in sorted(self.errors.items()):
            for media_type in error_types:
                name = ERROR_BODIES.get(media_type)
                body = self.component(name) if name else ErrorSerializer
                responses[status, media_type] = OpenApiResponse(
                    body, description=description
                )
        return responses


class ModelBatchSchema(BatchSchema):
    """``BatchSchema`` for a model of a multi-model container, which may not be loaded."""

    errors = {**BATCH_ERRORS, 404: MODEL_NOT_FOUND}


CUSTOM_ATTRIBUTES_REQUEST = OpenApiParameter(
    CUSTOM_ATTRIBUTES,
    location=OpenApiParameter.HEADER,
    description=(
        "`key=value` pairs separated by commas or semicolons. `method` picks the "
        "prediction method (`predict`, `predict_proba`, `predict_log_proba`, "
        "`decision_function`, `transform`, those the model has; another is a 400; "
        "by default `predict`, or `transform` for a featurizer), and answers "
        "with it alone even when SAGEMAKER_INFERENCE_OUTPUT names keys; a script-mode "
        "model gets them all."
    ),
)
CUSTOM_ATTRIBUTES_RESPONSE = OpenApiParameter(
    CUSTOM_ATTRIBUTES,
    location=OpenApiParameter.HEADER,
    response=[200],
    required=True,
    description=(
        "`method=<the prediction method that answered>`; with "
        "SAGEMAKER_INFERENCE_OUTPUT, the methods its keys called, joined by `+` "
        "(`predict+predict_proba`)."
    ),
)
MODEL_NAME = OpenApiParameter(
    "name",
    location=OpenApiParameter.PATH,
    description="The `model_name` the model was loaded under.",
    examples=[OpenApiExample("A model", value="iris")],
)
TARGET_MODEL = OpenApiParameter(
    "X-Amzn-SageMaker-Target-Model",
    location=OpenApiParameter.HEADER,
    description="SageMaker's TargetModel (the artifact's path): only logged.",
)
