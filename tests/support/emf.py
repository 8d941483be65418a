"""CloudWatch's Embedded Metric Format, as AWS specifies it ("Specification: Embedded
metric format", docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/
CloudWatch_Embedded_Metric_Format_Specification.html), for checking the lines we write.

``SCHEMA`` holds the document's required structure (a JSON Schema, checked with
``jsonschema``): the ``_aws`` metadata with an epoch-milliseconds ``Timestamp`` and its
``CloudWatchMetrics`` directives (a namespace, dimension sets of at most 30 keys, at most
100 metric definitions with a name, a CloudWatch unit and a storage resolution of 1 or
60). What a schema cannot say, that every dimension and metric a directive names is a
member of the root (a dimension's value a string, a metric's a number or an array of at
most 100 numbers), ``validate`` checks explicitly.
"""

from __future__ import annotations

from typing import Any

import jsonschema

UNITS = [
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
]

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["_aws"],
    "properties": {
        "_aws": {
            "type": "object",
            "required": ["Timestamp", "CloudWatchMetrics"],
            "properties": {
                "Timestamp": {"type": "integer", "minimum": 0},
                "CloudWatchMetrics": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/MetricDirective"},
                },
            },
        }
    },
    "$defs": {
        "MetricDirective": {
            "type": "object",
            "required": ["Namespace", "Dimensions", "Metrics"],
            "additionalProperties": False,
            "properties": {
                "Namespace": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 1024,
                    "pattern": r"\S",
                },
                "Dimensions": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/DimensionSet"},
                },
                "Metrics": {
                    "type": "array",
                    "maxItems": 100,
                    "items": {"$ref": "#/$defs/MetricDefinition"},
                },
            },
        },
        "DimensionSet": {
            "type": "array",
            "maxItems": 30,
            "uniqueItems": True,
            "items": {"type": "string", "minLength": 1, "maxLength": 250},
        },
        "MetricDefinition": {
            "type": "object",
            "required": ["Name"],
            "additionalProperties": False,
            "properties": {
                "Name": {"type": "string", "minLength": 1, "maxLength": 1024},
                "Unit": {"enum": UNITS},
                "StorageResolution": {"enum": [1, 60]},
            },
        },
    },
}


def validate(document: dict[str, Any]) -> None:
    """Raise (``jsonschema.ValidationError`` or ``AssertionError``) unless ``document``
    is an EMF document by the specification."""
    jsonschema.validate(document, SCHEMA)
    for directive in document["_aws"]["CloudWatchMetrics"]:
        for dimensions in directive["Dimensions"]:
            for key in dimensions:
                value = document.get(key)
                assert isinstance(value, str), (key, value)
                assert 0 < len(value) <= 1024, (key, value)
        for metric in directive["Metrics"]:
            value = document.get(metric["Name"])
            values = value if isinstance(value, list) else [value]
            assert 0 < len(values) <= 100, (metric["Name"], value)
            assert all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values
            ), (metric["Name"], value)
