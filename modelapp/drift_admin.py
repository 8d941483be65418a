"""The drift page of a model in the admin, and the drift column of the model list.

A window's ``DriftCount`` rows (every worker's, every hour in it) are added up and
compared with the model's reference: its training distributions (``metadata.json``), or
for a model trained elsewhere its first served records (``DriftReference``). The
formulas are ``modelapp/drift.py``'s; the chart is an inline SVG of the selected
feature's PSI per hour, built here like the traffic chart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib import admin
from django.http import Http404, HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.utils.safestring import SafeString, mark_safe

from modelapp import drift
from modelapp.metadata import ModelMetadata
from modelapp.models import DriftCount, DriftReference, TrainedModel

WINDOWS = {
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "week": timedelta(days=7),
}
DEFAULT_WINDOW = "day"
# The chart shows at least this many hours, whatever the window.
CHART_MIN_HOURS = 24


@dataclass
class Report:
    """A model's drift in one window."""

    source: str | None  # drift.TRAINING, drift.SERVED, or None: no reference
    reference_records: int
    records: int
    features: list[drift.FeatureDrift] = field(default_factory=list)
    outputs: list[drift.FeatureDrift] = field(default_factory=list)
    reference: dict[str, Any] | None = None

    @property
    def drifting(self) -> list[drift.FeatureDrift]:
        return [f for f in [*self.features, *self.outputs] if f.drifting]


def reference_for(model: TrainedModel) -> tuple[dict[str, Any] | None, int]:
    """The model's reference and how many records it was built from."""
    metadata = ModelMetadata.from_dict(model.metadata or {})
    reference = drift.reference_of(metadata)
    if reference is not None:
        rows = metadata.rows.get("train") if isinstance(metadata.rows, dict) else None
        return reference, int(rows or 0)
    served = DriftReference.objects.filter(model=model).first()
    if served is None or not served.reference:
        return None, 0
    return served.reference, served.records


def summed(rows: Any) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for counts in rows:
        total = drift.add(total, counts or {})
    return total


def report_for(
    model: TrainedModel,
    window: str = DEFAULT_WINDOW,
    now: datetime | None = None,
    thresholds: drift.Thresholds | None = None,
) -> Report:
    reference, reference_records = reference_for(model)
    since = _hour(now) - WINDOWS[window] + timedelta(hours=1)
    rows = DriftCount.objects.filter(model=model, hour__gte=since)
    counts = summed(rows.values_list("counts", flat=True))
    report = Report(
        source=reference["source"] if reference else None,
        reference_records=reference_records,
        records=int(counts.get("records") or 0),
        reference=reference,
    )
    if reference is not None:
        report.features, report.outputs = drift.compare(
            reference, counts, thresholds or drift.Thresholds.from_settings()
        )
    return report


def _hour(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)


def list_column(model: TrainedModel) -> str:
    """The model list's word on drift over the last day ("—": nothing sampled, or no
    reference yet)."""
    counted = getattr(model, "has_drift_counts", None)  # the list's annotation
    if counted is None:
        counted = DriftCount.objects.filter(model=model).exists()
    if not counted:
        return "—"
    report = report_for(model)
    names = [f.name for f in report.drifting]
    return f"drifting: {', '.join(names)}" if names else "no drift"


# --- the chart ----------------------------------------------------------------------------------
def psi_chart(
    model: TrainedModel,
    reference: dict[str, Any],
    position: int,
    hours: int,
    thresholds: drift.Thresholds,
    now: datetime | None = None,
) -> SafeString:
    """The selected feature's PSI per hour over the last ``hours``, as an inline SVG."""
    end = _hour(now) + timedelta(hours=1)
    start = end - timedelta(hours=hours)
    per_hour: dict[datetime, dict[str, Any]] = {}
    for hour, counts in DriftCount.objects.filter(
        model=model, hour__gte=start, hour__lt=end
    ).values_list("hour", "counts"):
        per_hour[hour] = drift.add(per_hour.get(hour, {}), counts or {})
    distribution = reference["features"][position]["distribution"]
    points = []
    for index in range(hours):
        hour = start + timedelta(hours=index)
        counted = (per_hour.get(hour) or {}).get("features", {}).get(str(position))
        if not counted:
            continue
        value = drift.compare_one(position, "", "", distribution, counted, thresholds)
        points.append((index, hour, value.psi, value.records))
    return mark_safe(
        render_to_string(
            "modelapp/drift_chart.html",
            chart_geometry(points, start, hours, thresholds.psi),
        )
    )


def chart_geometry(
    points: list[tuple[int, datetime, float, int]],
    start: datetime,
    hours: int,
    threshold: float,
) -> dict[str, Any]:
    """A bar per hour with records (height: PSI), the threshold as a line."""
    width, height, left, bottom, top = 720, 160, 44, 22, 10
    plot_w, plot_h = width - left - 24, height - bottom - top
    peak = max([p[2] for p in points] + [threshold * 1.5])
    scale = plot_h / peak
    bar_w = plot_w / hours
    bars = []
    for index, hour, value, records in points:
        h = max(value * scale, 1.0)
        bars.append(
            (
                f"{left + index * bar_w:.1f}",
                f"{top + plot_h - h:.1f}",
                f"{max(bar_w - 1, 1):.1f}",
                f"{h:.1f}",
                f"{hour:%Y-%m-%d %H}:00 UTC: PSI {value:.3f} over {records} records",
                "drifting" if value >= threshold else "steady",
            )
        )
    step = max(hours // 6, 1)
    ticks = [
        (f"{left + i * bar_w:.1f}", f"{start + timedelta(hours=i):%d %H}h")
        for i in range(0, hours + 1, step)
    ]
    return {
        "width": width,
        "height": height,
        "left": left,
        "top": top,
        "plot_w": plot_w,
        "axis_y": top + plot_h,
        "label_y": height - 6,
        "threshold_y": f"{top + plot_h - threshold * scale:.1f}",
        "threshold": threshold,
        "peak": f"{peak:.2f}",
        "bars": bars,
        "ticks": ticks,
        "hours": hours,
    }


# --- the page -------------------------------------------------------------------------------------
def drift_view(
    model_admin: admin.ModelAdmin, request: HttpRequest, object_id: str
) -> HttpResponse:
    """``/admin/modelapp/trainedmodel/<id>/drift/?window=day&feature=<position>``."""
    model = model_admin.get_object(request, object_id)
    if model is None or not model_admin.has_view_permission(request, model):
        raise Http404("No such model.")
    window = request.GET.get("window", DEFAULT_WINDOW)
    if window not in WINDOWS:
        window = DEFAULT_WINDOW
    thresholds = drift.Thresholds.from_settings()
    report = report_for(model, window, thresholds=thresholds)
    selected = None
    chart = None
    if report.features and report.reference is not None:
        wanted = request.GET.get("feature", "")
        positions = {str(f.position): f for f in report.features}
        selected = positions.get(wanted) or report.features[0]
        hours = max(int(WINDOWS[window].total_seconds() // 3600), CHART_MIN_HOURS)
        assert selected.position is not None
        chart = psi_chart(model, report.reference, selected.position, hours, thresholds)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "original": model,
        "title": f"Drift of {model}",
        "report": report,
        "window": window,
        "windows": list(WINDOWS),
        "thresholds": thresholds,
        "selected": selected,
        "chart": chart,
        "training": drift.TRAINING,
    }
    return TemplateResponse(request, "admin/modelapp/trainedmodel/drift.html", context)
