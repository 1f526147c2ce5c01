"""The applicability block: multivariate typicality, training support, unseen missingness."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from features.schema import fields_in_group
from features.simulate import simulate_cohort
from features.validation import validate_table
from serving import typicality as st
from training import typicality as tt
from training.reference import reference_stats


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return validate_table(simulate_cohort(1000, seed=31), training=True).frame


@pytest.fixture(scope="module")
def fitted(cohort: pd.DataFrame) -> tuple[dict, dict]:
    state = json.loads(json.dumps(tt.fit_typicality(cohort, seed=2)))
    return state, reference_stats(cohort)


@pytest.fixture(scope="module")
def newcomers() -> pd.DataFrame:
    return validate_table(simulate_cohort(400, seed=32), training=True).frame


def _median_patient(frame: pd.DataFrame, state: dict) -> pd.DataFrame:
    score = st.unusualness(frame, state["model"])
    return frame.iloc[[int(np.argsort(score)[len(score) // 2])]].reset_index(drop=True)


def test_a_typical_patient_is_typical(fitted, newcomers) -> None:
    state, ref = fitted
    block = st.applicability(_median_patient(newcomers, state), ref, state)[0]
    assert block["typical"] is True
    assert 20 < block["typicality_percentile"] < 80
    assert block["unusual_features"] == [] and block["outside_training_support"] == []
    assert block["unseen_missingness_pattern"] is False
    assert st.warnings_from(block) == []


def test_about_one_percent_of_new_patients_are_flagged(fitted, newcomers) -> None:
    state, ref = fitted
    flagged = np.mean([not b["typical"] for b in st.applicability(newcomers, ref, state)])
    assert flagged < 0.05


def test_a_plausible_but_contradictory_combination_is_flagged_and_explained(
    fitted, newcomers
) -> None:
    state, ref = fitted
    patient = _median_patient(newcomers, state)
    patient[["hdd_90d", "audit_total", "peth_ng_ml"]] = [0.0, 40.0, 4000.0]
    block = st.applicability(patient, ref, state)[0]
    assert block["typical"] is False and block["typicality_percentile"] < 1
    named = {u["feature"]: u for u in block["unusual_features"]}
    assert {"hdd_90d", "audit_total", "peth_ng_ml"} <= set(named)
    assert named["hdd_90d"]["value"] == 0 and named["hdd_90d"]["direction"] == "low"
    assert named["audit_total"]["value"] == 40 and named["audit_total"]["direction"] == "high"
    assert named["peth_ng_ml"]["value"] == 4000.0
    (warning,) = st.warnings_from(block)
    assert warning["code"] == "atypical_patient" and "PEth 4000 ng/mL (high)" in warning["message"]


def test_an_unseen_missingness_pattern_is_flagged(fitted, newcomers) -> None:
    state, ref = fitted
    assert [] in state["missingness_patterns"]
    patient = _median_patient(newcomers, state)
    groups = ("psychiatric", "alcohol_biomarker", "inflammatory_biomarker", "genetic")
    for g in groups:
        patient[[f.name for f in fields_in_group(g)]] = np.nan
    assert list(groups) not in state["missingness_patterns"]
    block = st.applicability(patient, ref, state)[0]
    assert block["unseen_missingness_pattern"] is True
    assert block["missing_groups"] == list(groups)
    assert any(w["code"] == "unseen_missingness_pattern" for w in st.warnings_from(block))


def test_values_outside_the_training_range_and_unseen_levels_are_named(fitted) -> None:
    _, ref = fitted
    patient = pd.DataFrame([{**_row_like(ref), "ggt_u_l": ref["fields"]["ggt_u_l"]["max"] + 1}])
    patient["psychotherapy"] = "hypnosis"
    out = st.outside_support(patient, ref)
    assert out == [["ggt_u_l", "psychotherapy"]]
    inside = pd.DataFrame([_row_like(ref), {**_row_like(ref), "ggt_u_l": None}])
    assert st.outside_support(inside, ref) == [[], []], "missing is not outside"


def _row_like(ref: dict) -> dict:
    row = {}
    for name, entry in ref["fields"].items():
        row[name] = entry["levels"][0] if "levels" in entry else (entry["min"] + entry["max"]) / 2
    return row


def test_cutoff_uses_only_rows_the_scoring_model_never_saw(cohort, monkeypatch) -> None:
    real_fit, real_score = tt.fit_model, tt.unusualness
    scored: list[int] = []

    def spy_fit(frame: pd.DataFrame) -> dict:
        return {**real_fit(frame), "_rows": set(frame.index)}

    def spy_score(frame: pd.DataFrame, model: dict) -> np.ndarray:
        assert set(frame.index).isdisjoint(model["_rows"]), "scored a row the model was fit on"
        scored.extend(frame.index)
        return real_score(frame, model)

    monkeypatch.setattr(tt, "fit_model", spy_fit)
    monkeypatch.setattr(tt, "unusualness", spy_score)
    train, held = cohort.iloc[:700], cohort.iloc[700:]
    state = tt.fit_typicality(train, seed=4, folds=5, heldout=held)
    assert sorted(scored) == list(cohort.index)  # every row scored once, out of sample
    assert state["heldout"]["n"] == len(cohort)


def test_cutoff_with_explicit_holdout_is_its_quantile_and_ignores_fitting_extremes(cohort):
    train, held = cohort.iloc[:700].copy(), cohort.iloc[700:]
    state = tt.fit_typicality(train, seed=4, folds=0, heldout=held)
    expected = np.quantile(st.unusualness(held, tt.fit_model(train)), 0.99)
    assert state["cutoff"] == pytest.approx(expected)
    in_sample = np.quantile(st.unusualness(train, tt.fit_model(train)), 0.99)
    assert state["cutoff"] != pytest.approx(in_sample)
    with pytest.raises(ValueError, match="held-out"):
        tt.fit_typicality(train, seed=4, folds=0)


def test_state_round_trips_through_json(cohort, newcomers) -> None:
    state = tt.fit_typicality(cohort.iloc[:300], seed=7)
    text = json.dumps(state)  # no default=: only JSON types inside
    ref = reference_stats(cohort.iloc[:300])
    again = json.loads(text)
    assert again == json.loads(json.dumps(again))
    a = st.applicability(newcomers.iloc[:50], ref, state)
    b = st.applicability(newcomers.iloc[:50], ref, again)
    assert a == b


def test_mid_ranks_put_a_common_tied_value_near_the_centre() -> None:
    knots = tt.cdf_knots(np.array([0.0] * 8 + [1.0, 2.0]))
    assert knots == {"x": [0.0, 1.0, 2.0], "cdf": [0.4, 0.85, 0.95]}
    many = tt.cdf_knots(np.arange(5000, dtype=float))
    assert len(many["x"]) <= tt.KNOTS and many["x"][0] == 0.0 and many["x"][-1] == 4999.0


def test_percent_at_least_is_bounded_and_decreasing() -> None:
    q = np.linspace(0, 4, 201)
    p = st.percent_at_least(np.array([-1.0, 0.0, 2.0, 4.0, 9.0]), q)
    assert p[0] == 100.0 and p[-1] == 0.0 and np.all(np.diff(p) <= 0)
    assert p[2] == pytest.approx(50.0)


def test_a_corrupt_state_is_refused(fitted) -> None:
    state, _ = fitted
    st.check_state(state)
    with pytest.raises(ValueError, match="not"):
        st.check_state({**state, "format": 99})
    broken = json.loads(json.dumps(state))
    broken["model"]["correlation"] = broken["model"]["correlation"][:-1]
    with pytest.raises(ValueError, match="columns"):
        st.check_state(broken)


def test_a_patients_distance_is_the_same_to_the_bit_alone_or_in_a_batch(fitted, newcomers) -> None:
    """Inverses are stacked by pattern size and rows grouped by pattern; neither may change a
    patient's numbers by who else is in the batch (natural batching relies on it)."""
    state, _ = fitted
    z = st.normal_scores(newcomers, state["model"])
    correlation = np.asarray(state["model"]["correlation"], dtype=float)
    d2, contrib, df = st.distances(z, correlation)
    assert len(st.row_patterns(~np.isnan(z))[0]) > 20  # many patterns, several sizes
    for i in range(0, len(z), 7):
        alone = st.distances(z[i : i + 1], correlation)
        assert (
            alone[0][0] == d2[i]
            and np.array_equal(alone[1][0], contrib[i])
            and alone[2][0] == df[i]
        )
    np.testing.assert_allclose(contrib.sum(axis=1), d2, rtol=1e-12)


def test_row_patterns_group_rows_as_numpy_unique_does() -> None:
    rng = np.random.default_rng(3)
    for width in (5, 64, 70):  # the integer code, at its limit, and beyond it
        mask = rng.random((500, width)) < 0.1
        mask[:, 0] = rng.random(500) < 0.5
        patterns, inverse = st.row_patterns(mask)
        assert np.array_equal(patterns[inverse], mask)
        assert len(patterns) == len(np.unique(mask, axis=0))
