"""A candidate's evaluation report: JSON for machines, one self-contained HTML page for people.

The HTML is rendered from the JSON alone (plots are embedded PNGs), so any stored
report can be re-rendered, and the page opens from an artifact store with no server.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Figures are made without pyplot: no global state, no display backend to choose.
from matplotlib.figure import Figure

REPORT_JSON, REPORT_HTML = "report.json", "report.html"
_METRICS = ("style_accuracy", "content_preservation", "distinct_2")
_LANGUAGE_METRICS = (
    "style_accuracy",
    "content_preservation",
    "loop_rate",
    "leakage_rate",
    "length_ratio",
)


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _metric_bars(variants: Mapping[str, Mapping[str, Any]]) -> str:
    figure = Figure(figsize=(7, 3.2))
    axis = figure.subplots()
    width = 0.8 / len(variants)
    for index, (name, metrics) in enumerate(variants.items()):
        positions = [m + index * width for m in range(len(_METRICS))]
        axis.bar(positions, [metrics[m] for m in _METRICS], width, label=name)
    axis.set_xticks([m + 0.4 - width / 2 for m in range(len(_METRICS))], list(_METRICS))
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=8)
    axis.set_title("held-out metrics at the headline strength")
    return _png(figure)


def _strength_curve(curves: Mapping[str, Mapping[str, float]]) -> str:
    figure = Figure(figsize=(4.5, 3.2))
    axis = figure.subplots()
    for name, curve in curves.items():
        strengths = sorted(curve, key=float)
        axis.plot([float(s) for s in strengths], [curve[s] for s in strengths], "o-", label=name)
    axis.set_xlabel("strength")
    axis.set_ylabel("p(persona)")
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=8)
    axis.set_title("strength monotonicity")
    return _png(figure)


def _loss_curve(history: list[Mapping[str, float]]) -> str:
    figure = Figure(figsize=(4.5, 3.2))
    axis = figure.subplots()
    axis.plot([h["step"] for h in history], [h["loss"] for h in history])
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title("training loss")
    return _png(figure)


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _number(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _judge_section(heldout: Mapping[str, Mapping[str, Any]]) -> str:
    """The judge's held-out accuracy, wrapper rejection and confusion matrix per language."""
    parts = []
    for language, table in heldout.items():
        confusion = table["confusion"]
        classes = list(confusion)
        rows = [[truth, *(str(confusion[truth][guess]) for guess in classes)] for truth in classes]
        parts.append(
            f"<h3>{html.escape(language)}: accuracy {table['accuracy']:.3f} over "
            f"{table['texts']} texts; wrapped neutral inputs called neutral: "
            f"{table['wrapped_neutral_rejected']:.3f}</h3>"
            + _table(rows, ["true \\ predicted", *classes])
        )
    return "".join(parts)


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one HTML page with its plots inline."""
    evaluation = report["evaluation"]
    variants = evaluation["variants"]
    columns = list(next(iter(variants.values())))
    metric_rows = [[name, *(_number(m[c]) for c in columns)] for name, m in variants.items()]
    gate_rows = [
        [
            "PASS" if g["passed"] else "FAIL",
            g["name"],
            _number(g["value"]),
            _number(g["bound"]),
            g["detail"],
        ]
        for g in report["gates"]
    ]
    strength_rows = [
        [name, strength, _number(m["style_accuracy"]), _number(m["content_preservation"])]
        for name, table in evaluation.get("by_strength", {}).items()
        for strength, m in table.items()
    ]
    language_rows = [
        [name, language, *(_number(m[k]) for k in _LANGUAGE_METRICS)]
        for name, table in evaluation.get("by_language", {}).items()
        for language, m in table.items()
    ]
    sample_rows = [list(sample.values()) for sample in evaluation["samples"]]
    images = [_metric_bars(variants), _strength_curve(evaluation["strength_curve"])]
    if report.get("training", {}).get("history"):
        images.append(_loss_curve(report["training"]["history"]))
    facts = [
        [key, json.dumps(value, ensure_ascii=False)] for key, value in report["lineage"].items()
    ]
    title = f"{report['persona']} candidate of retrain run {report['run_id']}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }}
img {{ margin: 0 1em 1em 0; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(report["summary"])}</p>
<h2>Gates</h2>
{_table(gate_rows, ["", "gate", "value", "bound", "what"])}
<h2>Metrics ({evaluation["inputs"]} held-out inputs, strength {evaluation["strength"]:g})</h2>
<p>Persona classifier held-out accuracy: {report["classifier_heldout_accuracy"]:.3f}</p>
{_table(metric_rows, ["variant", *columns])}
{"".join(f'<img alt="plot" src="data:image/png;base64,{image}">' for image in images)}
<h2>By language (strength {evaluation["strength"]:g})</h2>
{_table(language_rows, ["variant", "language", *_LANGUAGE_METRICS])}
<h2>Persona judge on its held-out split</h2>
{_judge_section(report.get("classifier_heldout", {}))}
<h2>By strength</h2>
{_table(strength_rows, ["variant", "strength", "style accuracy", "content preservation"])}
<h2>Sizes (bytes)</h2>
{_table([[k, str(v)] for k, v in report["sizes"].items()], ["artifact", "bytes"])}
<h2>Samples</h2>
{_table(sample_rows, list(evaluation["samples"][0]) if sample_rows else [])}
<h2>Lineage</h2>
{_table(facts, ["field", "value"])}
</body></html>
"""


def write_report(report: Mapping[str, Any], directory: Path) -> tuple[Path, Path]:
    """``report.json`` and ``report.html`` under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, html_path = directory / REPORT_JSON, directory / REPORT_HTML
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path
