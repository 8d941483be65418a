"""Read-only admin pages: what is deployed, how it was trained, how it is used.

Every page reads; none writes (no add, change, delete or actions): the rows are written by
the serving side, ``manage.py train`` and the stats flusher. The traffic chart is an inline
SVG built here, so nothing is fetched from the internet.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import Exists, OuterRef, QuerySet, Sum
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from modelapp import drift_admin, report_admin
from modelapp.metadata import Feature, ModelMetadata
from modelapp.models import (
    DriftCount,
    InvocationStat,
    ModelEvent,
    TrainedModel,
    TrainingRun,
)

# Users and groups are no smserve table, and their admin pages could add a superuser or
# change a password: logins come from DJANGO_SUPERUSER_* and `manage.py createsuperuser`.
# (axes' pages are off: AXES_ENABLE_ADMIN.)
for _model in (Group, get_user_model()):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)

admin.site.site_header = "smserve"
admin.site.site_title = "smserve admin"
admin.site.index_title = "Model, training and traffic"
admin.site.site_url = None  # "/" is not a page here: no "View site" link

CHART_HOURS = 3
# Loads and unloads shown on a model's page (the full history is its own list).
EVENTS_SHOWN = 20


class ReadOnlyAdmin(admin.ModelAdmin):
    """Viewing only: the database is written by the serving and training code."""

    actions = None

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- readable renderings of JSON fields -----------------------------------------------------
def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if value is None:
        return "None"
    return str(value)


def key_value_table(data: Any, empty: str = "—") -> SafeString:
    """A dict as a two-column table (nested dicts flattened as ``a.b``)."""
    if not isinstance(data, dict) or not data:
        return format_html("{}", empty)
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key in sorted(value, key=str):
                walk(f"{prefix}.{key}" if prefix else str(key), value[key])
        else:
            rows.append((prefix, _scalar(value)))

    walk("", data)
    body = format_html_join(
        "", '<tr><th scope="row">{}</th><td><code>{}</code></td></tr>', rows
    )
    return format_html('<table class="smserve-kv">{}</table>', body)


def item_list(items: Any, empty: str = "—") -> SafeString:
    """A list as a numbered list (features keep their column order)."""
    if not isinstance(items, list) or not items:
        return format_html("{}", empty)
    body = format_html_join(
        "", "<li><code>{}</code></li>", ((_scalar(i),) for i in items)
    )
    return format_html('<ol class="smserve-list" start="0">{}</ol>', body)


def schema_table(features: list[Feature], shown: int = 8) -> SafeString:
    """A model's input schema (``ModelMetadata.features``) as a table: a row per
    feature, in column order."""
    rows = []
    for position, feature in enumerate(features):
        categories = feature.categories
        if isinstance(categories, list):
            listed = ", ".join(_scalar(c) for c in categories[:shown])
            total = feature.n_categories or len(categories)
            values = f"{listed}{', …' if total > shown else ''} ({total} in all)"
        elif feature.typical is not None:
            values = f"typical {_scalar(feature.typical)}"
        else:
            values = "—"
        missing = feature.missing
        rows.append(
            (
                position,
                feature.name or f"column {position}",
                feature.kind,
                values,
                f"{missing:.1%}" if missing is not None else "—",
            )
        )
    body = format_html_join(
        "",
        "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
        rows,
    )
    return format_html(
        '<table class="smserve-schema"><thead><tr><th>#</th><th>feature</th>'
        "<th>kind</th><th>categories or typical value</th><th>missing in training</th>"
        "</tr></thead><tbody>{}</tbody></table>",
        body,
    )


def headline_metric(metrics: Any) -> str:
    """The first metric by name, validation before the rest (``validation:accuracy``)."""
    if not isinstance(metrics, dict) or not metrics:
        return "—"
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                flat[f"{key}:{sub}"] = subvalue
        else:
            flat[key] = value
    name = sorted(flat, key=lambda k: (not k.startswith("validation"), k))[0]
    return f"{name} = {_scalar(flat[name])}"


def search_table(search: Any) -> SafeString:
    """A search's summary: its settings, then one row per candidate (rank, mean, std,
    parameters), best first."""
    if not isinstance(search, dict) or not search:
        return format_html("{}", "no search")
    settings = {k: v for k, v in search.items() if k != "results"}
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
        (
            (
                _scalar(r.get("rank")),
                _scalar(r.get("mean")),
                _scalar(r.get("std")),
                json.dumps(r.get("params"), sort_keys=True),
            )
            for r in search.get("results") or []
            if isinstance(r, dict)
        ),
    )
    return format_html(
        '{}<table class="smserve-search"><tr><th>rank</th><th>mean</th><th>std</th>'
        "<th>parameters</th></tr>{}</table>",
        key_value_table(settings),
        rows,
    )


# --- the traffic chart ----------------------------------------------------------------------
def traffic_chart(
    stats: QuerySet[InvocationStat],
    hours: int = CHART_HOURS,
    now: datetime | None = None,
) -> SafeString:
    """Requests and errors per minute over the last ``hours``, as an inline SVG."""
    now = now or datetime.now(UTC)
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(hours=hours)
    per_minute = {
        row["minute"]: row
        for row in stats.filter(minute__gte=start, minute__lt=end)
        .order_by()
        .values("minute")
        .annotate(
            requests=Sum("requests"),
            errors_4xx=Sum("errors_4xx"),
            errors_5xx=Sum("errors_5xx"),
        )
    }
    return mark_safe(
        render_to_string(
            "modelapp/traffic_chart.html", chart_geometry(per_minute, start, hours)
        )
    )


def chart_geometry(
    per_minute: dict[datetime, dict[str, Any]], start: datetime, hours: int
) -> dict[str, Any]:
    """The chart's drawing from counts per minute (``requests``, ``errors_4xx``,
    ``errors_5xx``) starting at ``start``: a bar per minute with traffic, an error bar
    within it, an hour tick per hour. No database: a test can call it as it is."""
    slots = hours * 60
    width, height, left, bottom, top = 720, 160, 44, 22, 10
    plot_w, plot_h = width - left - 24, height - bottom - top
    peak = max((r["requests"] for r in per_minute.values()), default=0)
    scale = plot_h / peak if peak else 0
    bar_w = plot_w / slots
    bars = []
    for index in range(slots):
        minute = start + timedelta(minutes=index)
        row = per_minute.get(minute)
        if not row or not row["requests"]:
            continue
        x = left + index * bar_w
        errors = row["errors_4xx"] + row["errors_5xx"]
        req_h = row["requests"] * scale
        err_h = errors * scale
        bars.append(
            (
                f"{x:.1f}",
                f"{top + plot_h - req_h:.1f}",
                f"{max(bar_w - 0.5, 0.5):.1f}",
                f"{req_h:.1f}",
                f"{minute:%H:%M} UTC: {row['requests']} requests, "
                f"{row['errors_4xx']} 4xx, {row['errors_5xx']} 5xx",
                f"{top + plot_h - err_h:.1f}",
                f"{err_h:.1f}",
            )
        )
    ticks = [
        (f"{left + i * 60 * bar_w:.1f}", f"{start + timedelta(hours=i):%H:%M}")
        for i in range(hours + 1)
    ]
    totals = {
        "requests": sum(r["requests"] for r in per_minute.values()),
        "errors": sum(r["errors_4xx"] + r["errors_5xx"] for r in per_minute.values()),
    }
    return {
        "width": width,
        "height": height,
        "left": left,
        "top": top,
        "plot_w": plot_w,
        "plot_h": plot_h,
        "axis_y": top + plot_h,
        "label_y": height - 6,
        "bars": bars,
        "ticks": ticks,
        "peak": peak,
        "hours": hours,
        "totals": totals,
    }


# --- the pages ------------------------------------------------------------------------------
@admin.register(TrainedModel)
class TrainedModelAdmin(ReadOnlyAdmin):
    list_display = [
        "__str__",
        "estimator",
        "n_features",
        "class_count",
        "headline_metric",
        "training_job_name",
        "requests",
        "drift",
        "source",
        "last_seen",
    ]
    list_filter = ["source", "estimator", "last_seen"]
    search_fields = ["sha256", "estimator", "training_job_name", "loaded_from"]
    date_hierarchy = "last_seen"
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "sha256",
                    "estimator",
                    "source",
                    "loaded_from",
                    "artifact_size",
                    "first_seen",
                    "last_seen",
                ]
            },
        ),
        (
            "Traffic",
            {"fields": ["traffic", "drift_link"]},
        ),
        (
            "Multi-model loads and unloads",
            {"fields": ["events_table"]},
        ),
        (
            "Training",
            {
                "fields": [
                    "training_job_name",
                    "training_started_at",
                    "training_finished_at",
                    "metrics_table",
                    "hyperparameters_table",
                ]
            },
        ),
        (
            "Inputs and outputs",
            {"fields": ["n_features", "features_list", "classes_list"]},
        ),
        (
            "Model report",
            {"fields": ["model_report"]},
        ),
        (
            "Prediction engines",
            {"fields": ["engines_table"]},
        ),
        (
            "Environment",
            {"fields": ["versions_table", "raw_metadata"], "classes": ["collapse"]},
        ),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[TrainedModel]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                total_requests=Sum("stats__requests"),
                # The drift column asks once per page, not once per row.
                has_drift_counts=Exists(
                    DriftCount.objects.filter(model=OuterRef("sha256"))
                ),
            )
        )

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view(
            lambda request, object_id: drift_admin.drift_view(self, request, object_id)
        )
        return [
            path("<path:object_id>/drift/", view, name="modelapp_trainedmodel_drift"),
            *super().get_urls(),
        ]

    @admin.display(description="drift (last day)")
    def drift(self, obj: TrainedModel) -> str:
        return drift_admin.list_column(obj)

    @admin.display(description="drift")
    def drift_link(self, obj: TrainedModel) -> SafeString:
        return format_html(
            '<a class="smserve-drift-link" href="{}">drift against training: {}</a>',
            reverse("admin:modelapp_trainedmodel_drift", args=[obj.pk]),
            drift_admin.list_column(obj),
        )

    @admin.display(description="classes")
    def class_count(self, obj: TrainedModel) -> int | str:
        return len(obj.classes) if obj.classes else "—"

    @admin.display(description="metric")
    def headline_metric(self, obj: TrainedModel) -> str:
        return headline_metric(obj.metrics)

    @admin.display(description="requests", ordering="total_requests")
    def requests(self, obj: TrainedModel) -> int:
        return obj.total_requests or 0

    @admin.display(description=f"requests and errors per minute, last {CHART_HOURS} h")
    def traffic(self, obj: TrainedModel) -> SafeString:
        return traffic_chart(InvocationStat.objects.filter(model=obj))

    @admin.display(description="metrics")
    def metrics_table(self, obj: TrainedModel) -> SafeString:
        return key_value_table(obj.metrics, "no metrics recorded")

    @admin.display(description=f"latest {EVENTS_SHOWN}")
    def events_table(self, obj: TrainedModel) -> SafeString:
        events = obj.events.all()[:EVENTS_SHOWN]
        if not events:
            return format_html("{}", "none (not loaded through the /models API)")
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            (
                (
                    f"{e.at:%Y-%m-%d %H:%M:%S} UTC",
                    e.kind,
                    e.name,
                    _seconds(e.seconds),
                    _megabytes(e.memory_bytes),
                )
                for e in events
            ),
        )
        return format_html(
            '<table class="smserve-events"><tr><th>when</th><th>what</th>'
            "<th>model name</th><th>took</th><th>memory</th></tr>{}</table>",
            rows,
        )

    @admin.display(description="hyperparameters")
    def hyperparameters_table(self, obj: TrainedModel) -> SafeString:
        return key_value_table(obj.params)

    @admin.display(description="input schema")
    def features_list(self, obj: TrainedModel) -> SafeString:
        metadata = ModelMetadata.from_dict(obj.metadata or {})
        # Version 1 of metadata.json named the columns only: a list says that.
        if metadata.schema_version >= 2 and metadata.features:
            return schema_table(metadata.features)
        return item_list(obj.feature_names, "unnamed (columns by position)")

    @admin.display(description="on held-out data")
    def model_report(self, obj: TrainedModel) -> SafeString:
        return report_admin.report_section((obj.metadata or {}).get("report"))

    @admin.display(description="classes")
    def classes_list(self, obj: TrainedModel) -> SafeString:
        return item_list(obj.classes, "none (a regressor or transformer)")

    @admin.display(description="engine per method, and its verification")
    def engines_table(self, obj: TrainedModel) -> SafeString:
        return key_value_table(obj.engines, "not recorded (scikit-learn)")

    @admin.display(description="library versions")
    def versions_table(self, obj: TrainedModel) -> SafeString:
        return key_value_table(obj.versions)

    @admin.display(description="metadata.json")
    def raw_metadata(self, obj: TrainedModel) -> SafeString:
        if not obj.metadata:
            return format_html("{}", "none: described from the estimator itself")
        return format_html("<pre>{}</pre>", obj.pretty("metadata"))


@admin.register(TrainingRun)
class TrainingRunAdmin(ReadOnlyAdmin):
    list_display = [
        "__str__",
        "status",
        "estimator",
        "train_rows",
        "headline_metric",
        "duration_seconds",
        "started_at",
    ]
    list_filter = ["status", "estimator", "started_at"]
    search_fields = ["job_name", "estimator", "failure_reason", "model_sha256"]
    date_hierarchy = "started_at"
    fields = [
        "job_name",
        "status",
        "estimator",
        "started_at",
        "finished_at",
        "duration_seconds",
        "model_sha256",
        "base_dir",
        "failure",
        "metrics_table",
        "search_table",
        "hyperparameters_table",
        "channels_table",
    ]

    @admin.display(description="train rows")
    def train_rows(self, obj: TrainingRun) -> Any:
        channel = obj.channels.get("train") if isinstance(obj.channels, dict) else None
        return channel.get("rows", "—") if isinstance(channel, dict) else "—"

    @admin.display(description="metric")
    def headline_metric(self, obj: TrainingRun) -> str:
        return headline_metric(obj.metrics)

    @admin.display(description="failure reason")
    def failure(self, obj: TrainingRun) -> SafeString:
        if not obj.failure_reason:
            return format_html("{}", "—")
        return format_html("<pre>{}</pre>", obj.failure_reason)

    @admin.display(description="metrics")
    def metrics_table(self, obj: TrainingRun) -> SafeString:
        return key_value_table(obj.metrics, "no metrics recorded")

    @admin.display(description="hyperparameter search")
    def search_table(self, obj: TrainingRun) -> SafeString:
        return search_table(obj.search)

    @admin.display(description="hyperparameters (as given)")
    def hyperparameters_table(self, obj: TrainingRun) -> SafeString:
        return key_value_table(obj.hyperparameters)

    @admin.display(description="channels")
    def channels_table(self, obj: TrainingRun) -> SafeString:
        return key_value_table(obj.channels)


@admin.register(InvocationStat)
class InvocationStatAdmin(ReadOnlyAdmin):
    list_display = [
        "minute",
        "model",
        "requests",
        "records",
        "errors_4xx",
        "errors_5xx",
        "mean_latency",
        "max_latency",
    ]
    list_filter = ["model", "minute"]
    list_select_related = ["model"]
    search_fields = ["model__sha256", "model__estimator"]
    date_hierarchy = "minute"
    change_list_template = "admin/modelapp/invocationstat/change_list.html"

    @admin.display(description="mean latency (ms)")
    def mean_latency(self, obj: InvocationStat) -> str:
        return f"{obj.latency_ms_mean:.1f}"

    @admin.display(description="max latency (ms)", ordering="latency_ms_max")
    def max_latency(self, obj: InvocationStat) -> str:
        return f"{obj.latency_ms_max:.1f}"

    def changelist_view(
        self, request: HttpRequest, extra_context: dict | None = None
    ) -> Any:
        response = super().changelist_view(request, extra_context)
        if isinstance(response, TemplateResponse) and "cl" in response.context_data:
            # The chart follows the list's filters (one model, a day, a search).
            stats = response.context_data["cl"].queryset
            response.context_data["traffic_chart"] = traffic_chart(stats)
        return response


@admin.register(ModelEvent)
class ModelEventAdmin(ReadOnlyAdmin):
    list_display = ["at", "kind", "name", "model", "took", "memory"]
    list_filter = ["kind", "at"]
    list_select_related = ["model"]
    search_fields = ["name", "url", "model__sha256"]
    date_hierarchy = "at"
    fields = ["at", "kind", "name", "url", "model", "seconds", "memory_bytes"]

    @admin.display(description="took", ordering="seconds")
    def took(self, obj: ModelEvent) -> str:
        return _seconds(obj.seconds)

    @admin.display(description="memory", ordering="memory_bytes")
    def memory(self, obj: ModelEvent) -> str:
        return _megabytes(obj.memory_bytes)


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f} s"


def _megabytes(value: int | None) -> str:
    return "—" if value is None else f"{value / (1 << 20):.1f} MB"
