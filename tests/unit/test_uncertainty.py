"""The served interval: bootstrap spread plus missing-input spread, from JSON state only."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from features import transform as tf
from features.simulate import simulate_cohort
from features.validation import validate_table
from serving import uncertainty as u
from serving.scorers import LinearScorer
from training.uncertainty import fit_uncertainty

BMI = tf.FEATURE_NAMES.index("bmi_kg_m2")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return validate_table(simulate_cohort(300, seed=21), training=True).frame


@pytest.fixture(scope="module")
def state(frame: pd.DataFrame) -> dict:
    return json.loads(json.dumps(fit_uncertainty(frame, n_members=30, seed=5, k=16)))


def test_variances_add_and_the_interval_is_centred_on_the_served_logit() -> None:
    logit = np.array([0.2, -1.0])
    members = np.array([[0.2 - 0.3, -1.0], [0.2 + 0.3, -1.0]])  # SD 0.3*sqrt(2), then 0
    missing = np.array([0.4, 0.0])
    lo, hi = u.interval(logit, members, missing, z=2.0)
    total = np.sqrt((0.3 * np.sqrt(2)) ** 2 + 0.4**2)
    np.testing.assert_allclose([lo[0], hi[0]], expit([0.2 - 2 * total, 0.2 + 2 * total]))
    np.testing.assert_allclose([lo[1], hi[1]], expit([-1.0, -1.0]))
    assert np.all(lo <= expit(logit)) and np.all(expit(logit) <= hi)


def test_fewer_than_two_members_give_no_spread_rather_than_nan() -> None:
    assert u.member_sd(np.array([[0.5, 1.0]])).tolist() == [0.0, 0.0]
    lo, hi = u.interval(np.array([0.0]), np.zeros((0, 1)))
    assert lo[0] == hi[0] == 0.5


def test_state_is_plain_json_and_checks(frame: pd.DataFrame, state: dict) -> None:
    assert state == json.loads(json.dumps(fit_uncertainty(frame, n_members=30, seed=5, k=16)))
    u.check_state(state)
    with pytest.raises(ValueError, match="not"):
        u.check_state({**state, "method": "venn_abers"})
    bad = json.loads(json.dumps(state))
    bad["missing_inputs"]["values"]["bmi_kg_m2"] = [25.0]
    with pytest.raises(ValueError, match="bmi_kg_m2"):
        u.check_state(bad)


def test_typical_values_are_observed_values_in_proportion(frame: pd.DataFrame, state: dict):
    values = state["missing_inputs"]["values"]
    assert "age_years" not in values  # required fields are never missing
    counts = values["prior_detox_count"]
    assert all(float(v).is_integer() for v in counts)
    assert set(counts) <= set(frame["prior_detox_count"].dropna())
    assert set(values["psychotherapy"]) <= set(frame["psychotherapy"].dropna())
    share = np.mean(values["family_history_aud"])
    assert abs(share - frame["family_history_aud"].mean()) < 1 / 16 + 1e-9


def _optional(state: dict) -> list[str]:
    return list(state["missing_inputs"]["values"])


def test_missing_sd_measures_how_much_the_model_depends_on_the_missing_input(
    frame: pd.DataFrame, state: dict
) -> None:
    def logit_of(X: np.ndarray) -> np.ndarray:  # a model that reads BMI only
        return 0.1 * X[:, BMI]

    complete = frame[~frame[_optional(state)].isna().any(axis=1)].iloc[:1]
    no_bmi, no_craving = complete.copy(), complete.copy()
    no_bmi["bmi_kg_m2"] = np.nan
    no_craving["craving_pacs"] = np.nan
    rows = pd.concat([complete, no_bmi, no_craving], ignore_index=True)
    sd = u.missing_input_sd(rows, logit_of, state)
    expected = 0.1 * np.std(state["missing_inputs"]["values"]["bmi_kg_m2"], ddof=1)
    assert sd[0] == 0.0  # nothing missing
    np.testing.assert_allclose(sd[1], expected)
    assert sd[2] == 0.0  # craving missing, but this model ignores craving
    assert set(u.imputed_copies(rows, state)[1]) == {1, 2}  # the complete patient is not copied


def test_missing_sd_is_deterministic_and_row_wise(frame: pd.DataFrame, state: dict) -> None:
    def logit_of(X: np.ndarray) -> np.ndarray:
        return np.nan_to_num(X) @ np.linspace(-0.01, 0.01, X.shape[1])

    batch = u.missing_input_sd(frame.iloc[:40], logit_of, state)
    one_by_one = [u.missing_input_sd(frame.iloc[[i]], logit_of, state)[0] for i in range(40)]
    np.testing.assert_allclose(batch, one_by_one, rtol=1e-12)
    np.testing.assert_array_equal(batch, u.missing_input_sd(frame.iloc[:40], logit_of, state))
    complete = ~frame.iloc[:40][_optional(state)].isna().any(axis=1)
    assert np.all(batch[complete.to_numpy()] == 0) and np.all(batch[~complete.to_numpy()] > 0)


def test_imputed_onset_never_exceeds_age(frame: pd.DataFrame, state: dict) -> None:
    young = frame[~frame[_optional(state)].isna().any(axis=1)].iloc[:1].copy()
    young["age_years"] = 18.0
    young["aud_onset_age_years"] = np.nan
    expanded, rows = u.imputed_copies(young, state)
    assert len(expanded) == 16 and set(rows) == {0}
    assert (expanded["aud_onset_age_years"] <= 18.0).all()
    assert not expanded.isna().any().any()
    assert expanded["aud_onset_age_years"].nunique() > 1


def test_closed_form_for_a_linear_margin_equals_the_copies(
    frame: pd.DataFrame, state: dict
) -> None:
    """The linear fast path gives the general path's SD on every kind of gap: single fields,
    categories, the derived AST/ALT ratio and the age-capped onset, a field with no stored
    values, and complete rows."""
    rng = np.random.default_rng(7)
    p = len(tf.COLUMNS)
    indicators = np.array([0, 5, 11, p - 1])
    k = p + len(indicators)
    scorer = LinearScorer(
        impute=rng.normal(size=p),
        indicator_of=indicators,
        mean=rng.normal(size=k),
        scale=rng.uniform(0.5, 2.0, size=k),
        coef=rng.normal(size=k),
        intercept=0.3,
    )
    slope = 0.8
    edited = frame.head(300).copy()
    edited.loc[0:40, "aud_onset_age_years"] = np.nan
    edited.loc[20:60, "ast_u_l"] = np.nan
    edited.loc[50:90, "psychotherapy"] = None
    no_values = {**state, "missing_inputs": dict(state["missing_inputs"])}
    no_values["missing_inputs"]["values"] = {
        **state["missing_inputs"]["values"],
        "aud_onset_age_years": [],
    }
    X = tf.transform_array(edited)
    weights, on_missing, _ = scorer.folded
    for s in (state, no_values):
        general = u.missing_input_sd(edited, lambda M: slope * scorer.margin(M) + 1.0, s)
        fast = u.missing_input_sd_linear(edited, X, weights, on_missing, slope, s)
        np.testing.assert_allclose(fast, general, rtol=1e-10, atol=1e-12)
        assert (general > 0).sum() > 100 and (general == 0).any()
