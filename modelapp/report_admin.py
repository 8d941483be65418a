"""The model report on the admin's model page: tables and inline SVG, drawn on the server.

``report_section`` turns ``metadata.json``'s ``report`` (``modelapp/report.py``) into
HTML: the confusion matrix and per-class precision/recall as tables, the ROC,
precision-recall, calibration and predicted-against-actual charts as SVG with a title,
a text label and a caption that says the figures, the permutation importance as bars.
No script runs and nothing is fetched.
"""

from __future__ import annotations

from typing import Any

from django.template.loader import render_to_string
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

# Lines per class on a curve chart (cycled); the admin's own blue and red first.
COLOURS = ("#447e9b", "#ba2121", "#2e8540", "#a05a00", "#6a3d9a", "#555555")
SIZE, MARGIN = 220, 50


def report_section(report: Any) -> SafeString:
    """The whole report, or a line saying there is none."""
    if not isinstance(report, dict) or not report:
        return format_html(
            "{}", "none recorded (a transformer, or trained before the report)"
        )
    context: dict[str, Any] = {"source": _source(report.get("source") or {})}
    classification = report.get("classification")
    if isinstance(classification, dict):
        context["confusion"] = _confusion(classification)
        context["per_class"] = classification.get("per_class") or []
        curves = classification.get("curves") or []
        context["charts"] = [
            _chart(
                "ROC",
                "false positive rate",
                "true positive rate",
                [(c["class"], c["roc"]) for c in curves],
                diagonal=True,
                summary=", ".join(
                    f"class {c['class']}: AUC {c['roc_auc']:.3f}" for c in curves
                ),
            ),
            _chart(
                "Precision-recall",
                "recall",
                "precision",
                [(c["class"], c["precision_recall"]) for c in curves],
                summary=", ".join(
                    f"class {c['class']}: average precision "
                    f"{c['average_precision']:.3f}"
                    for c in curves
                ),
            ),
        ]
        if curves and len(curves) > 1:
            context["one_vs_rest"] = True
        bins = (classification.get("calibration") or {}).get("bins") or []
        if bins:
            of = classification["calibration"].get("of")
            context["charts"].append(
                _chart(
                    "Calibration",
                    "mean predicted probability"
                    + (" (predicted class)" if of == "predicted" else ""),
                    "observed share",
                    [("bins", _points(bins, "predicted", "observed"))],
                    diagonal=True,
                    dots=True,
                    summary="; ".join(
                        f"{b['low']:.1f}–{b['high']:.1f}: predicted "
                        f"{b['predicted']:.2f}, observed {b['observed']:.2f} "
                        f"({b['count']} rows)"
                        for b in bins
                    ),
                )
            )
    regression = report.get("regression")
    if isinstance(regression, dict):
        context["residuals"] = list(
            (regression.get("residual_quantiles") or {}).items()
        )
        bins = regression.get("predicted_vs_actual") or []
        if bins:
            context["charts"] = [
                _chart(
                    "Predicted against actual",
                    "mean predicted",
                    "mean actual",
                    [("bins", _points(bins, "predicted", "actual"))],
                    diagonal=True,
                    dots=True,
                    scaled=True,
                    summary="; ".join(
                        f"predicted {b['predicted']:.3g}: actual {b['actual']:.3g} "
                        f"({b['count']} rows)"
                        for b in bins
                    ),
                )
            ]
    context["importance"] = _importance(report.get("permutation_importance"))
    return mark_safe(render_to_string("modelapp/model_report.html", context))


def _source(source: dict[str, Any]) -> str:
    rows = source.get("rows")
    if source.get("data") == "train_holdout":
        return (
            f"a held-out {source.get('fraction', 0):.0%} of train ({rows} rows), "
            f"scored by a copy of the model fitted on the other "
            f"{source.get('fitted_rows')} rows"
        )
    return f"the {source.get('data', 'validation')} channel ({rows} rows)"


def _confusion(classification: dict[str, Any]) -> dict[str, Any]:
    classes = classification.get("classes") or []
    matrix = classification.get("confusion_matrix") or []
    peak = max((max(row, default=0) for row in matrix), default=0) or 1
    rows = [
        (
            label,
            [
                (count, f"rgba(68,126,155,{0.1 + 0.6 * count / peak:.2f})")
                for count in row
            ],
        )
        for label, row in zip(classes, matrix, strict=False)
    ]
    return {"classes": classes, "rows": rows}


def _points(bins: list[dict[str, Any]], x: str, y: str) -> dict[str, list[float]]:
    return {"x": [b[x] for b in bins], "y": [b[y] for b in bins]}


def _chart(
    title: str,
    x_label: str,
    y_label: str,
    series: list[tuple[Any, dict[str, list[float]]]],
    *,
    summary: str,
    diagonal: bool = False,
    dots: bool = False,
    scaled: bool = False,
) -> dict[str, Any]:
    """A square chart of ``series`` (a label and its ``x``, ``y`` points) on 0..1, or on
    the points' own range when ``scaled``."""
    values = [v for _, s in series for v in (*s["x"], *s["y"])]
    low, high = (min(values), max(values)) if scaled and values else (0.0, 1.0)
    span = (high - low) or 1.0

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            MARGIN + (x - low) / span * SIZE,
            MARGIN // 2 + (1 - (y - low) / span) * SIZE,
        )

    lines = []
    for index, (label, points) in enumerate(series):
        xy = [at(x, y) for x, y in zip(points["x"], points["y"], strict=True)]
        lines.append(
            {
                "label": label,
                "colour": COLOURS[index % len(COLOURS)],
                "points": " ".join(f"{x:.1f},{y:.1f}" for x, y in xy),
                "dots": [(f"{x:.1f}", f"{y:.1f}") for x, y in xy] if dots else [],
            }
        )
    x0, y0 = at(low, low)
    x1, y1 = at(high, high)
    return {
        "title": title,
        "x_label": x_label,
        "y_label": y_label,
        "summary": summary,
        "lines": lines,
        "diagonal": (f"{x0:.1f}", f"{y0:.1f}", f"{x1:.1f}", f"{y1:.1f}")
        if diagonal
        else None,
        "low": f"{low:.3g}",
        "high": f"{high:.3g}",
        "width": SIZE + MARGIN + 10,
        "height": SIZE + MARGIN + MARGIN // 2,
        "left": MARGIN,
        "bottom": MARGIN // 2 + SIZE,
        "right": MARGIN + SIZE,
        "top": MARGIN // 2,
        "label_y": SIZE + MARGIN + MARGIN // 2 - 4,
    }


def _importance(importance: Any) -> dict[str, Any] | None:
    """Bars of the permutation importance, widest first; negative ones drawn as none."""
    if not isinstance(importance, dict) or not importance.get("columns"):
        return None
    columns = importance["columns"]
    peak = max((c["mean"] for c in columns), default=0) or 1.0
    bars = [
        (
            c["name"],
            f"{c['mean']:.4f}",
            f"{c['std']:.4f}",
            f"{max(c['mean'], 0) / peak * 300:.1f}",
            i * 22,
        )
        for i, c in enumerate(columns)
    ]
    return {
        "bars": bars,
        "height": len(bars) * 22 + 4,
        "rows": importance.get("rows"),
        "repeats": importance.get("repeats"),
    }
