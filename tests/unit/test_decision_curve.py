"""Net benefit by hand, against dcurves, with bootstrap intervals, and as a figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from dcurves import dca
from matplotlib.figure import Figure
from scipy.special import expit

from training.decision_curve import (
    THRESHOLDS,
    decision_curve_figure,
    net_benefit,
    net_benefit_ci,
)


def _cohort(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lp = rng.normal(-0.2, 1.0, n)
    return (rng.random(n) < expit(lp)).astype(int), expit(lp)


def test_thresholds_are_the_documented_range() -> None:
    assert THRESHOLDS[0] == 0.10 and THRESHOLDS[-1] == 0.60
    assert np.allclose(np.diff(THRESHOLDS), 0.05)


def test_net_benefit_of_a_hand_case() -> None:
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([0.9, 0.4, 0.5, 0.1, 0.2])
    table = net_benefit(y, p, (0.25, 0.5))
    # pt = 0.25: treated p >= 0.25 -> 0.9 (TP), 0.4 (TP), 0.5 (FP); NB = 2/5 - 1/5 * 1/3
    # pt = 0.5: treated 0.9 (TP), 0.5 (FP, ties are treated); NB = 1/5 - 1/5 * 1
    assert table["model"].tolist() == pytest.approx([2 / 5 - 1 / 15, 0.0])
    assert table["treat_all"].tolist() == pytest.approx([3 / 5 - 2 / 5 / 3, 3 / 5 - 2 / 5])
    assert table["treat_none"].tolist() == [0.0, 0.0]
    assert list(table.columns) == ["threshold", "model", "treat_all", "treat_none"]


def test_matches_dcurves() -> None:
    y, p = _cohort(500, 3)
    ours = net_benefit(y, p)
    theirs = dca(
        data=pd.DataFrame({"y": y, "m": p}), outcome="y", modelnames=["m"], thresholds=THRESHOLDS
    )

    def column(name: str) -> np.ndarray:
        return theirs.loc[theirs["model"] == name].sort_values("threshold")["net_benefit"].values

    assert ours["model"].to_numpy() == pytest.approx(column("m"), abs=1e-12)
    assert ours["treat_all"].to_numpy() == pytest.approx(column("all"), abs=1e-12)
    assert ours["treat_none"].to_numpy() == pytest.approx(column("none"), abs=1e-12)


def test_an_informative_model_beats_both_defaults_near_the_base_rate() -> None:
    y, p = _cohort(20_000, 4)
    table = net_benefit(y, p).set_index("threshold")
    best_default = np.maximum(table["treat_all"], 0.0)
    assert (table["model"] >= best_default - 1e-9).all()
    assert table.loc[0.45, "model"] > best_default.loc[0.45] + 0.02


def test_bootstrap_interval_covers_the_estimate_and_narrows_with_n() -> None:
    y, p = _cohort(200, 5)
    small = net_benefit_ci(y, p, resamples=300, seed=1)
    y, p = _cohort(5000, 5)
    big = net_benefit_ci(y, p, resamples=300, seed=1)
    for table in (small, big):
        assert (table["model_low"] <= table["model"] + 1e-12).all()
        assert (table["model"] <= table["model_high"] + 1e-12).all()
        assert (table["advantage_low"] <= table["advantage_high"]).all()
    width = {k: t["model_high"] - t["model_low"] for k, t in (("small", small), ("big", big))}
    assert (width["big"] < width["small"]).all()
    assert net_benefit_ci(y, p, resamples=300, seed=1).equals(big)


def test_bootstrap_weights_reproduce_a_resampled_net_benefit() -> None:
    # one resample by weights must equal net_benefit on the explicitly resampled patients
    y, p = _cohort(300, 6)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 300, 300)
    explicit = net_benefit(y[idx], p[idx])["model"].to_numpy()
    table = net_benefit_ci(y, p, resamples=1, seed=0)
    assert table["model_low"].to_numpy() == pytest.approx(explicit)


def test_useless_model_has_no_advantage() -> None:
    rng = np.random.default_rng(7)
    y = (rng.random(3000) < 0.45).astype(int)
    table = net_benefit_ci(y, rng.random(3000), resamples=200, seed=0)
    assert (table["advantage_high"] < 0.02).all()
    assert (table["advantage"] <= 0.01).all()


def test_figure_draws_three_strategies_and_the_band() -> None:
    y, p = _cohort(300, 8)
    fig = decision_curve_figure(net_benefit_ci(y, p, resamples=50), "Decision curve")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == [
        "model",
        "offer to all",
        "offer to none",
    ]
    assert len(ax.collections) == 1  # the interval band
    assert ax.get_xlim() == (0.10, 0.60)
