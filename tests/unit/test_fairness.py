"""Fairness audit: per-group metrics on hand cases, flags, miscalibration, report formats."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame
from scipy.special import expit, logit
from sklearn.metrics import roc_auc_score

from features.simulate import simulate_cohort
from features.validation import validate_table
from training.fairness import (
    AGE_BANDS,
    CI_QUANTILES,
    ESTIMATES,
    MIN_EVENTS,
    NOT_RECORDED,
    auroc,
    citl,
    fairness_audit,
    group_columns,
    ici,
    oe_ratio,
    slope,
)
from training.metrics import calibration_intercept_slope

# Group a: 9 positive-negative pairs, only (0.35 vs 0.4) misordered -> AUROC 8/9.
# Group b: pairs (0.6>0.3, 0.6>0.5, 0.4>0.3, 0.4<0.5) -> AUROC 3/4.
Y_A, P_A = [0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9]
Y_B, P_B = [1, 0, 1, 0], [0.6, 0.3, 0.4, 0.5]


def _cohort(n: int, seed: int, shift: dict[str, float] | None = None) -> tuple:
    """Outcomes drawn from known probabilities; predictions = truth + `shift` on the logit."""
    rng = np.random.default_rng(seed)
    group = rng.choice(np.array(["a", "b", "c"], dtype=object), n)
    truth = expit(rng.normal(-0.2, 1.2, n))
    y = (rng.random(n) < truth).astype(int)
    offset = np.array([(shift or {}).get(g, 0.0) for g in group])
    return y, expit(logit(truth) + offset), pd.DataFrame({"sex": group})


def test_metrics_on_a_hand_case() -> None:
    y, p = np.array(Y_A, dtype=float), np.array(P_A)
    assert auroc(y, p) == pytest.approx(8 / 9)
    assert oe_ratio(y, p) == pytest.approx(3 / 2.75)
    assert ESTIMATES["observed_rate"](y, p) == pytest.approx(0.5)
    assert ESTIMATES["mean_predicted"](y, p) == pytest.approx(2.75 / 6)


def test_calibration_fits_agree_with_training_metrics() -> None:
    rng = np.random.default_rng(5)
    lp = rng.normal(0.3, 1.5, 400)
    y = (rng.random(400) < expit(0.7 * lp - 0.4)).astype(float)
    p = expit(lp)
    expected_citl, expected_slope = calibration_intercept_slope(y, p)
    assert citl(y, p) == pytest.approx(expected_citl, abs=1e-6)
    assert slope(y, p) == pytest.approx(expected_slope, abs=1e-6)
    assert auroc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_ici_is_near_zero_for_calibrated_predictions() -> None:
    # robust lowess (statsmodels' default it=3) down-weights 0/1 outcomes and reads ~0.03 here
    rng = np.random.default_rng(9)
    p = expit(rng.normal(-0.2, 1.2, 2000))
    y = (rng.random(2000) < p).astype(float)
    assert ici(y, p) < 0.01
    assert ici(y, expit(logit(p) + 1.0)) > 0.1


def test_degenerate_samples_give_nan_not_errors() -> None:
    zeros, p = np.zeros(5), np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    assert all(math.isnan(f(zeros, p)) for f in (auroc, citl, slope))
    assert ici(zeros, p) == pytest.approx(0.3)  # the curve is 0, mean p is 0.3
    # separable: the slope runs off to infinity, so it has no estimate
    assert math.isnan(slope(np.array([0.0, 0, 1, 1]), np.array([0.1, 0.2, 0.7, 0.8])))
    constant = np.full(4, 0.3)
    assert math.isnan(slope(np.array([0.0, 1, 0, 1]), constant))
    assert ici(np.array([0.0, 1, 0, 1]), constant) == pytest.approx(0.2)


def test_per_group_values_of_a_hand_case_are_kept_and_flagged() -> None:
    y = np.array(Y_A + Y_B)
    p = np.array(P_A + P_B)
    groups = pd.DataFrame({"sex": ["female"] * 6 + ["male"] * 4})
    table = fairness_audit(y, p, groups, n_boot=20, seed=1).tables["sex"]
    assert list(table.index) == ["female", "male"]
    assert table["n"].tolist() == [6, 4]
    assert table["events"].tolist() == [3, 2]
    assert table["observed_rate"].tolist() == pytest.approx([0.5, 0.5])
    assert table["mean_predicted"].tolist() == pytest.approx([2.75 / 6, 1.8 / 4])
    assert table["oe_ratio"].tolist() == pytest.approx([3 / 2.75, 2 / 1.8])
    assert table["auroc"].tolist() == pytest.approx([8 / 9, 3 / 4])
    female_citl, _ = calibration_intercept_slope(np.array(Y_A), np.array(P_A))
    assert table.loc["female", "citl"] == pytest.approx(female_citl, abs=1e-6)
    assert table["flag"].str.startswith("few events: ").all()
    assert table.loc["male", "flag"].startswith(f"few events: 2 events < {MIN_EVENTS}")


def test_cis_are_the_ones_metricframe_bootstraps() -> None:
    y, p, groups = _cohort(150, seed=2)
    report = fairness_audit(y, p, groups, n_boot=15, seed=7)
    frame = MetricFrame(
        metrics=ESTIMATES,
        y_true=y,
        y_pred=p,
        sensitive_features=groups["sex"],
        n_boot=15,
        ci_quantiles=list(CI_QUANTILES),
        random_state=7,
    )
    low, high = frame.by_group_ci
    table = report.tables["sex"]
    for name in ESTIMATES:
        np.testing.assert_allclose(table[f"{name}_ci_low"], low[name].astype(float), atol=1e-6)
        np.testing.assert_allclose(table[f"{name}_ci_high"], high[name].astype(float), atol=1e-6)
    assert (table["auroc_ci_low"] < table["auroc"]).all()
    assert (table["auroc"] < table["auroc_ci_high"]).all()


def test_a_group_with_few_events_is_flagged_kept_and_left_out_of_the_gate() -> None:
    y, p, groups = _cohort(900, seed=3, shift={"c": 2.5})
    small = (groups["sex"] == "c").to_numpy()
    keep = ~small | (np.cumsum(small & (y == 1)) <= 20)  # group c keeps 20 events
    report = fairness_audit(y[keep], p[keep], groups[keep], n_boot=10, seed=0)
    table = report.tables["sex"]
    assert "c" in table.index
    assert table.loc["c", "events"] == 20
    assert table.loc["c", "flag"] == f"few events: 20 events < {MIN_EVENTS}, estimates unstable"
    assert table.loc[["a", "b"], "flag"].isna().all()
    assert table.loc["c", "ici"] > table.loc[["a", "b"], "ici"].max()
    assert report.worst_ici() == pytest.approx(table.loc[["a", "b"], "ici"].max())


def test_miscalibrating_one_group_shows_in_its_citl_and_ici() -> None:
    y, p, groups = _cohort(2400, seed=4, shift={"b": 1.0})
    report = fairness_audit(y, p, groups, n_boot=20, seed=0)
    table = report.tables["sex"]
    others = table.loc[["a", "c"]]
    assert table.loc["b", "citl"] == pytest.approx(-1.0, abs=0.25)
    assert others["citl"].abs().max() < 0.25
    assert table.loc["b", "citl_ci_high"] < others["citl_ci_low"].min()
    assert table.loc["b", "ici"] > 3 * others["ici"].max()
    assert table.loc["b", "oe_ratio"] < 0.9
    assert report.worst_ici() == pytest.approx(table.loc["b", "ici"])


def test_one_outcome_class_is_flagged_and_json_has_no_nan() -> None:
    y, p, groups = _cohort(600, seed=6)
    y = np.where(groups["sex"] == "c", 0, y)
    report = fairness_audit(y, p, groups, n_boot=10, seed=0)
    row = report.tables["sex"].loc["c"]
    assert "AUROC not computable: one outcome class" in row["flag"]
    assert math.isnan(row["auroc"]) and math.isnan(row["auroc_ci_low"])
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    c = next(r for r in data["attributes"]["sex"] if r["group"] == "c")
    assert c["auroc"] is None and c["citl"] is None and c["events"] == 0
    assert data["worst_ici"] == report.worst_ici()
    assert "n/a" in report.to_markdown() and "nan" not in report.to_markdown().lower()


def test_group_columns_from_a_validated_table_with_raw_ancestry() -> None:
    raw = simulate_cohort(60, seed=1)
    frame = validate_table(raw, training=True).frame
    assert "ancestry" not in frame
    groups = group_columns(frame, raw["ancestry"])
    assert list(groups.columns) == ["sex", "age_band", "site", "ancestry"]
    assert set(groups["age_band"]) <= set(AGE_BANDS)
    assert groups["ancestry"].tolist() == raw["ancestry"].tolist()
    assert list(group_columns(frame).columns) == ["sex", "age_band", "site"]


def test_missing_values_become_their_own_group_and_empty_attributes_vanish() -> None:
    frame = pd.DataFrame(
        {
            "sex": ["female", None, "male", "female", "male", "female", "male", "male", "male"],
            "age_years": [18, 34, 35, 49, 50, 64, 65, 90, np.nan],
            "site_id": [None] * 9,
        }
    )
    groups = group_columns(frame, pd.Series([None, "african", " ", *["european"] * 6]))
    assert list(groups.columns) == ["sex", "age_band", "ancestry"]
    bands = ["18-34", "18-34", "35-49", "35-49", "50-64", "50-64", "65+", "65+", NOT_RECORDED]
    assert groups["age_band"].tolist() == bands
    assert groups["sex"].tolist()[1] == NOT_RECORDED
    assert groups["ancestry"].tolist()[:3] == [NOT_RECORDED, "african", NOT_RECORDED]
    assert "ancestry" not in group_columns(frame, pd.Series([None] * 9, dtype=object))
    with pytest.raises(ValueError, match="ancestry has 2 values for 9 patients"):
        group_columns(frame, pd.Series(["a", "b"]))


def test_report_formats_and_seeded_reproducibility() -> None:
    y, p, groups = _cohort(300, seed=8)
    groups["age_band"] = np.where(np.arange(300) % 2, "18-34", "35-49")
    report = fairness_audit(y, p, groups, n_boot=10, seed=3)
    again = fairness_audit(y, p, groups, n_boot=10, seed=3)
    pd.testing.assert_frame_equal(report.tables["sex"], again.tables["sex"])
    other = fairness_audit(y, p, groups, n_boot=10, seed=4)
    assert not report.tables["sex"]["ici_ci_high"].equals(other.tables["sex"]["ici_ci_high"])
    markdown = report.to_markdown()
    assert [line for line in markdown.splitlines() if line.startswith("### ")] == [
        "### Overall",
        "### Sex",
        "### Age band",
    ]
    assert "| Group | n | Events |" in markdown
    assert report.overall.loc["all", "n"] == 300
    assert set(report.to_dict()["attributes"]) == {"sex", "age_band"}


def test_bad_inputs_are_refused() -> None:
    groups = pd.DataFrame({"sex": ["female", "male"]})
    with pytest.raises(ValueError, match="0/1"):
        fairness_audit(np.array([0, 2]), np.array([0.2, 0.3]), groups)
    with pytest.raises(ValueError, match="missing values"):
        fairness_audit(np.array([0, 1]), np.array([0.2, 0.3]), pd.DataFrame({"sex": ["f", None]}))
    with pytest.raises(ValueError, match="equal"):
        fairness_audit(np.array([0, 1, 1]), np.array([0.2, 0.3, 0.4]), groups)
