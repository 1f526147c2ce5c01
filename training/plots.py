"""Figures logged with each run: a calibration plot and a SHAP summary of the served model."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import shap
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from statsmodels.nonparametric.smoothers_lowess import lowess


def calibration_figure(y: np.ndarray, p: np.ndarray, title: str) -> Figure:
    """Deciles of predicted probability against observed rate, with a loess curve.

    The loess uses it=0 (no robustness reweighting), as rms::val.prob does
    (reference/standards.md §3): robust reweighting would discount exactly the patients whose
    outcomes disagree with the prediction.
    """
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    frac, mean = calibration_curve(y, p, n_bins=10, strategy="quantile")
    smooth = lowess(y, p, frac=2 / 3, it=0, return_sorted=True)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="ideal")
    ax.plot(mean, frac, "o", color="#1f4e79", label="deciles")
    ax.plot(smooth[:, 0], smooth[:, 1], color="#c55a11", label="loess")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="Predicted probability of response",
        ylabel="Observed response rate",
        title=title,
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def shap_summary_figure(
    contributions: np.ndarray,
    values: pd.DataFrame,
    labels: list[str],
) -> Figure:
    """Beeswarm of per-factor SHAP values (calibrated log-odds) on held-out patients.

    Category factors are coloured by level code; missing values are grey, as shap draws NaN.
    """
    data = values.apply(
        lambda c: (
            c if c.dtype.kind in "fiub" else c.astype("category").cat.codes.replace(-1, np.nan)
        )
    ).to_numpy(dtype=float)
    explanation = shap.Explanation(values=contributions, data=data, feature_names=labels)
    plt.figure(figsize=(8, 7))
    shap.plots.beeswarm(explanation, max_display=15, show=False)
    fig = plt.gcf()
    fig.suptitle("SHAP contributions (calibrated log-odds), held-out patients")
    fig.tight_layout()
    return fig
