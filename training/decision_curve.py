"""Decision curve analysis: is deciding with the model better than treating all or none?

The decision the model informs is whether to offer a patient the ketamine infusion course. A
clinician who offers it when the predicted probability of *response* is at least pt is saying
that treating one non-responder costs pt/(1−pt) of the benefit of treating one responder
(Vickers et al. 2019; reference/standards.md §3). Net benefit, in responders per patient:

    NB(pt) = TP/n − FP/n · pt/(1−pt)      (treated = predicted probability ≥ pt, as dcurves)

against "treat all" (NB = φ − (1−φ)·pt/(1−pt), φ the response rate) and "treat none" (NB = 0).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

THRESHOLDS: tuple[float, ...] = tuple(round(0.10 + 0.05 * i, 2) for i in range(11))
"""Threshold probabilities of response 0.10, 0.15, ..., 0.60 at which a clinician would offer
the course.

Why this range: about 40-50% of patients in AUD trials have no heavy drinking days at the end
of treatment (COMBINE 44-51%; clinical.md §2), and ketamine plus therapy adds 10-17 points
(clinical.md §7), so treat-all is the default and its net benefit crosses zero near pt ≈ 0.45.
A course is three weekly monitored 40-minute infusions with a transient blood-pressure rise,
dissociation, clinic time and cost, and no serious adverse events in the trials (clinical.md
§1, §5): modest harms against the benefit of months without heavy drinking. A clinician
willing to treat nine non-responders to reach one responder sits at pt = 0.10; below that no
one would withhold the course on a model's advice. One who asks for better-than-even odds of
response (pt = 0.60, 1.5 non-responders' harm per responder's benefit) is at the strict end;
refusing patients with a 60% chance of response is hard to defend for a treatment this safe.
"""


def _counts(
    y: np.ndarray, p: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort once so any weighting of patients gives TP and FP by cumulative sums."""
    order = np.argsort(p, kind="stable")
    p_sorted = p[order]
    first_treated = np.searchsorted(p_sorted, thresholds, side="left")
    return order, y[order].astype(float), first_treated


def _net_benefits(
    ys: np.ndarray, first_treated: np.ndarray, odds: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Model and treat-all NB with patient weights `weight` (in sorted order)."""
    n = weight.sum()
    pos = np.concatenate([[0.0], np.cumsum(weight * ys)])
    neg = np.concatenate([[0.0], np.cumsum(weight * (1 - ys))])
    tp = (pos[-1] - pos[first_treated]) / n
    fp = (neg[-1] - neg[first_treated]) / n
    prevalence = pos[-1] / n
    return tp - fp * odds, prevalence - (1 - prevalence) * odds


def net_benefit(
    y: np.ndarray, p: np.ndarray, thresholds: tuple[float, ...] = THRESHOLDS
) -> pd.DataFrame:
    """Net benefit of the model, treat-all and treat-none at each threshold."""
    y, p = np.asarray(y), np.asarray(p, dtype=float)
    t = np.asarray(thresholds, dtype=float)
    _, ys, first = _counts(y, p, t)
    model, treat_all = _net_benefits(ys, first, t / (1 - t), np.ones(len(y)))
    return pd.DataFrame(
        {"threshold": t, "model": model, "treat_all": treat_all, "treat_none": np.zeros(len(t))}
    )


def net_benefit_ci(
    y: np.ndarray,
    p: np.ndarray,
    thresholds: tuple[float, ...] = THRESHOLDS,
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """`net_benefit` plus patient-bootstrap 95% percentile intervals.

    `advantage` is the model's NB minus the better of treat-all and treat-none, resampled
    jointly: an interval above zero says the model adds benefit at that threshold. Each
    resample is a vector of bootstrap counts, so it costs O(n) whatever the number of
    thresholds (about 2 s for 1,000 resamples at n = 100,000).
    """
    y, p = np.asarray(y), np.asarray(p, dtype=float)
    t = np.asarray(thresholds, dtype=float)
    odds = t / (1 - t)
    order, ys, first = _counts(y, p, t)
    n = len(y)
    table = net_benefit(y, p, thresholds)
    rng = np.random.default_rng(seed)
    model_b, all_b = [], []
    for _ in range(resamples):
        weight = np.bincount(rng.integers(0, n, n), minlength=n)[order].astype(float)
        m, a = _net_benefits(ys, first, odds, weight)
        model_b.append(m)
        all_b.append(a)
    model_arr, all_arr = np.asarray(model_b), np.asarray(all_b)
    advantage_arr = model_arr - np.maximum(all_arr, 0.0)
    table["advantage"] = table["model"] - np.maximum(table["treat_all"], 0.0)
    for name, arr in (("model", model_arr), ("treat_all", all_arr), ("advantage", advantage_arr)):
        table[f"{name}_low"], table[f"{name}_high"] = np.percentile(arr, [2.5, 97.5], axis=0)
    return table


def decision_curve_figure(table: pd.DataFrame, title: str, *, label: str = "model") -> Figure:
    """Net benefit against threshold, with the model's interval when the table has one."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    t = table["threshold"]
    if "model_low" in table:
        ax.fill_between(
            t, table["model_low"], table["model_high"], color="#1f4e79", alpha=0.2, lw=0
        )
    ax.plot(t, table["model"], color="#1f4e79", lw=2, label=label)
    ax.plot(t, table["treat_all"], color="#c55a11", lw=1.5, label="offer to all")
    ax.plot(t, table["treat_none"], color="grey", lw=1.5, linestyle="--", label="offer to none")
    top = float(max(table["model"].max(), table["treat_all"].max(), 0.0))
    if "model_high" in table:
        top = max(top, float(table["model_high"].max()))
    ax.set(
        xlim=(float(t.min()), float(t.max())),
        ylim=(-0.05, top + 0.05),
        xlabel="Threshold probability of response for offering the infusion course",
        ylabel="Net benefit (responders per patient)",
        title=title,
    )
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig
