"""The biomarker added-value report as one self-contained HTML page and as JSON.

The page embeds its plots as base64 PNG and carries its own CSS, so it can be mailed, attached
to an MLflow run or opened offline without any external asset. Figures are built with the
object-oriented matplotlib API (no pyplot state), so building a report leaves nothing open.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping

import jinja2
import numpy as np
from matplotlib.figure import Figure

from training.biomarker_stats import Interval
from training.biomarkers import (
    ALPHA,
    BLOCKS,
    DECISION_THRESHOLDS,
    MODEL_NAMES,
    STEPS,
    VERDICTS,
    BiomarkerReport,
    format_p,
    signed,
)

FOREST_PNG = "biomarkers_forest.png"
NET_BENEFIT_PNG = "biomarkers_net_benefit.png"
_COLOURS = {"logistic": "#1f4e79", "lightgbm": "#c55a11"}
_METRICS = (
    ("deviance", "Δ deviance (total)", 1),
    ("brier", "Δ Brier", 4),
    ("auroc", "Δ AUROC", 3),
    ("net_benefit", "Δ net benefit (mean, 0.10-0.60)", 4),
)


# ------------------------------------------------------------------ figures
def forest_figure(report: BiomarkerReport) -> Figure:
    """Each step's gains with 95% CIs, one panel per metric; right of the line is better."""
    fig = Figure(figsize=(11, 1.2 + 0.7 * len(report.steps)))
    axes = fig.subplots(1, len(_METRICS), sharey=True)
    offsets = np.linspace(-0.15, 0.15, len(report.estimators))
    rows = np.arange(len(report.steps))[::-1]
    for ax, (metric, title, _) in zip(axes, _METRICS, strict=True):
        for off, kind in zip(offsets, report.estimators, strict=True):
            cis = [getattr(s.gains[kind], metric) for s in report.steps]
            est = np.array([c.estimate for c in cis])
            err = np.array([[c.estimate - c.low for c in cis], [c.high - c.estimate for c in cis]])
            ax.errorbar(
                est, rows + off, xerr=err, fmt="o", ms=4, capsize=2, color=_COLOURS.get(kind, "k")
            )
            ax.plot([], [], "o", color=_COLOURS.get(kind, "k"), label=kind)
        ax.axvline(0, color="grey", linestyle="--", linewidth=1)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    axes[0].set_yticks(rows, [s.spec.label for s in report.steps], fontsize=8)
    axes[-1].legend(fontsize=8, loc="best")
    fig.suptitle("Gain over the reference model (out of fold, 95% bootstrap CI; > 0 is better)")
    fig.tight_layout()
    return fig


def net_benefit_figure(report: BiomarkerReport) -> Figure:
    """Net-benefit difference by decision threshold for each step, with 95% CI bands."""
    fig = Figure(figsize=(11, 3.2))
    axes = fig.subplots(1, len(report.steps), sharey=True)
    t = np.asarray(DECISION_THRESHOLDS)
    for ax, step in zip(np.atleast_1d(axes), report.steps, strict=True):
        for kind in report.estimators:
            cis = step.gains[kind].net_benefit_by_threshold
            colour = _COLOURS.get(kind, "k")
            ax.plot(t, [c.estimate for c in cis], color=colour, label=kind)
            ax.fill_between(
                t, [c.low for c in cis], [c.high for c in cis], color=colour, alpha=0.15
            )
        ax.axhline(0, color="grey", linestyle="--", linewidth=1)
        ax.set_title(step.spec.label, fontsize=9)
        ax.set_xlabel("Decision threshold", fontsize=8)
        ax.tick_params(labelsize=8)
    np.atleast_1d(axes)[0].set_ylabel("Δ net benefit", fontsize=8)
    np.atleast_1d(axes)[-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def figures(report: BiomarkerReport) -> dict[str, Figure]:
    """The report's figures by artifact file name (also logged to MLflow as they are)."""
    return {FOREST_PNG: forest_figure(report), NET_BENEFIT_PNG: net_benefit_figure(report)}


def png_base64(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ------------------------------------------------------------------ HTML and JSON
_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Biomarker added value - ketapredict</title>
<style>
body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
.verdict{font-weight:600}.added_value{color:#1b6e20}.no_evidence{color:#555}
img{max-width:100%}.note{color:#555;font-size:.9em}
.warning{border-left:4px solid #c55a11;padding:.4em .8em;background:#fdf3ec}
</style></head><body>
<h1>Added value of biomarkers over clinical data</h1>
<p>{{ r.n }} patients, {{ r.events }} responders; {{ r.folds }}-fold cross-validation (every
model refitted in the same folds), {{ r.resamples }} patient-level bootstrap resamples of the
out-of-fold predictions; seed {{ r.seed }}; significance level {{ alpha }}.</p>
{% for w in r.warnings %}<p class="warning">Warning: {{ w }}</p>{% endfor %}
<h2>Verdicts</h2>
<ul>{% for s in r.steps %}<li class="verdict {{ s.verdict }}">{{ s.text }}</li>{% endfor %}</ul>
<h2>Nested models</h2>
<table><tr><th>Model</th><th>Data-dictionary groups</th></tr>
{% for m in models %}<tr><td>{{ m.name }}</td><td>{{ m.groups }}</td></tr>{% endfor %}</table>
<p class="note">Steps: each biomarker group against the model before it, and all biomarkers
against clinical only. Missing values: median imputation plus a missing indicator per
column (fields missing together share one indicator in the LR test).</p>
<h2>Gains per step</h2>
<p class="note">Positive is better: reference minus model for deviance (summed over patients)
and Brier; model minus reference for AUROC and mean net benefit over thresholds
{{ thresholds }}. 95% CIs in brackets. The LR test uses nested logistic fits on all
patients; ΔAUROC is an estimate, not a test.</p>
<table><tr><th>Step</th><th>Estimator</th>{% for m in metrics %}<th>{{ m[1] }}</th>{% endfor %}
<th>LR χ² (df)</th><th>LR p</th></tr>
{% for s in r.steps %}{% for kind in r.estimators %}<tr>
<td>{{ s.spec.label if loop.first else "" }}</td><td>{{ kind }}</td>
{% for m in metrics %}<td>{{ ci(s.gains[kind][m[0]], m[2]) }}</td>{% endfor %}
{% if loop.first %}<td rowspan="{{ r.estimators|length }}">{{ "%.1f"|format(s.lr.chi2) }}
({{ s.lr.df }})</td><td rowspan="{{ r.estimators|length }}">{{ p(s.lr.p_value) }}</td>{% endif %}
</tr>{% endfor %}{% endfor %}</table>
<h2>Each group given all the others (LR test)</h2>
<table><tr><th>Group</th><th>χ²</th><th>df</th><th>p</th></tr>
{% for g, t in r.lr_given_others.items() %}<tr><td>{{ label(g) }}</td>
<td>{{ "%.1f"|format(t.chi2) }}</td><td>{{ t.df }}</td><td>{{ p(t.p_value) }}</td></tr>
{% endfor %}</table>
<h2>Out-of-fold performance of each model</h2>
<table><tr><th>Estimator</th><th>Model</th><th>Deviance</th><th>Brier</th><th>AUROC</th>
<th>Mean net benefit</th></tr>
{% for kind, per in r.performance.items() %}{% for name, v in per.items() %}<tr>
<td>{{ kind }}</td><td>{{ name }}</td><td>{{ "%.1f"|format(v.deviance) }}</td>
<td>{{ "%.4f"|format(v.brier) }}</td><td>{{ "%.3f"|format(v.auroc) }}</td>
<td>{{ "%.4f"|format(v.net_benefit) }}</td></tr>{% endfor %}{% endfor %}</table>
{% for name, data in images.items() %}<p><img alt="{{ name }}"
src="data:image/png;base64,{{ data }}"></p>{% endfor %}
<h2>Reading this report</h2>
<ul class="note">
<li>Verdict rule: {{ verdict_rule }}</li>
<li>The CIs resample patients with their out-of-fold predictions; they do not repeat the
model fitting, so they are somewhat narrow for the flexible estimator.</li>
<li>NRI and IDI are not reported: they can favour an uninformative marker when models are
miscalibrated (reference standards §3).</li>
</ul></body></html>
"""


def _ci(interval: Interval, digits: int) -> str:
    return (
        f"{signed(interval.estimate, digits)} "
        f"[{signed(interval.low, digits)}, {signed(interval.high, digits)}]"
    )


def _label(group: str) -> str:
    """The step's label ("Genetic variants"), so both tables name a group the same way."""
    return next((s.label for s in STEPS if s.key == group), group)


def render_html(report: BiomarkerReport, images: Mapping[str, Figure] | None = None) -> str:
    """The self-contained page; `images` defaults to `figures(report)`."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    models = [
        {"name": name, "groups": ", ".join(g for b in BLOCKS[: i + 1] for g in b)}
        for i, name in enumerate(MODEL_NAMES)
    ]
    figs = figures(report) if images is None else images
    return env.from_string(_TEMPLATE).render(
        r=report,
        alpha=ALPHA,
        models=models,
        metrics=_METRICS,
        thresholds=f"{DECISION_THRESHOLDS[0]:.2f}-{DECISION_THRESHOLDS[-1]:.2f}",
        images={name: png_base64(fig) for name, fig in figs.items()},
        ci=_ci,
        p=format_p,
        label=_label,
        verdict_rule=(
            f"“{VERDICTS['added_value']}” needs LR p < {ALPHA} and a 95% CI of the "
            f"{report.estimators[0]} deviance gain above 0."
        ),
    )


def render_json(report: BiomarkerReport) -> str:
    """`report.to_dict()` as strict JSON (no NaN), UTF-8 text."""
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False, allow_nan=False)
