"""The synthetic cohort: its contract, its plausibility, its ground truth and its missingness."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from features.schema import FIELDS, OUTCOME, PREDICTORS, REQUIRED_INPUTS, fields_in_group
from features.simulate import (
    ANCESTRIES,
    DEFAULT_EFFECTS,
    EXTRA_COLUMNS,
    GENETICS_NO_EFFECT,
    INFLAMMATION_CLEAR_EFFECT,
    SITES,
    Effects,
    simulate_cohort,
    true_logit,
    write_cohort,
)

N = 20_000
_DTYPES = {"integer": "Int64", "number": "float64", "boolean": "boolean"}
_GENOTYPES = [f.name for f in fields_in_group("genetic")]
_INFLAMMATORY = [f.name for f in fields_in_group("inflammatory_biomarker")]


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return simulate_cohort(N, seed=0)


@pytest.fixture(scope="module")
def complete_rows(cohort: pd.DataFrame) -> pd.DataFrame:
    """Rows whose predictors all survived masking: there the truth can be recomputed."""
    rows = cohort.dropna(subset=[f.name for f in PREDICTORS]).reset_index(drop=True)
    assert len(rows) > 300
    return rows


def _with(row: pd.DataFrame, **values: object) -> pd.DataFrame:
    changed = row.copy()
    for name, value in values.items():
        changed[name] = pd.Series([value], dtype=row[name].dtype)
    return changed


def _spearman(frame: pd.DataFrame, a: str, b: str) -> float:
    pair = frame[[a, b]].astype(float).dropna()
    return float(pair[a].rank().corr(pair[b].rank()))


def test_same_seed_gives_the_same_frame_and_another_seed_does_not() -> None:
    first = simulate_cohort(500, seed=3)
    pd.testing.assert_frame_equal(first, simulate_cohort(500, seed=3), check_exact=True)
    assert not first.equals(simulate_cohort(500, seed=4))


def test_columns_follow_schema_order_then_extras(cohort: pd.DataFrame) -> None:
    assert list(cohort.columns) == [f.name for f in FIELDS] + list(EXTRA_COLUMNS)
    assert EXTRA_COLUMNS == ("true_probability", "ancestry")


def test_dtypes_follow_the_contract(cohort: pd.DataFrame) -> None:
    for f in FIELDS:
        expected = _DTYPES.get(f.kind, "object")
        assert str(cohort[f.name].dtype) == expected, f.name
    assert cohort["true_probability"].dtype == np.float64
    for name in ["patient_id", "site_id", "sex", "psychotherapy", "concurrent_medication"]:
        kinds = {type(v) for v in cohort[name]}
        assert kinds <= {str, type(None)}, (name, kinds)
    assert {type(v) for v in cohort["ancestry"]} == {str}


def test_values_lie_inside_schema_ranges(cohort: pd.DataFrame) -> None:
    for f in FIELDS:
        values = cohort[f.name].dropna()
        if f.minimum is not None:
            assert values.astype(float).between(f.minimum, f.maximum).all(), f.name
        if f.levels:
            assert set(values) <= set(f.levels), f.name
    both = cohort[["aud_onset_age_years", "age_years"]].dropna()
    assert (both["aud_onset_age_years"] <= both["age_years"]).all()
    assert cohort["patient_id"].map(lambda v: bool(re.fullmatch(r"SIM-\d{6}", v))).all()
    assert cohort["patient_id"].is_unique
    assert set(cohort["site_id"]) == set(SITES)
    assert set(cohort["ancestry"]) == set(ANCESTRIES)


def test_required_fields_and_extras_are_never_missing(cohort: pd.DataFrame) -> None:
    never_missing = [*REQUIRED_INPUTS, OUTCOME, *EXTRA_COLUMNS]
    assert not cohort[never_missing].isna().any().any()


def test_drinking_counts_are_coherent(cohort: pd.DataFrame) -> None:
    """Heavy days fit inside drinking days, and mean drinks reach the heavy-day threshold."""
    rows = cohort.dropna(subset=["percent_days_abstinent_90d"])
    drinking_days = np.rint(90 - 0.9 * rows["percent_days_abstinent_90d"].astype(float))
    assert (rows["hdd_90d"] <= drinking_days).all()
    threshold = np.where(rows["sex"] == "male", 5.0, 4.0)
    drinks = rows["drinks_per_drinking_day"] * drinking_days
    assert (drinks >= threshold * rows["hdd_90d"].astype(float) - 1e-6).all()


def test_response_rate_and_true_probability_agree(cohort: pd.DataFrame) -> None:
    rate = cohort[OUTCOME].astype(float).mean()
    probability = cohort["true_probability"]
    assert 0.40 <= rate <= 0.50
    assert abs(probability.mean() - rate) < 0.02
    assert ((probability > 0) & (probability < 1)).all()


def test_true_probability_auroc_is_realistic(cohort: pd.DataFrame) -> None:
    auroc = roc_auc_score(cohort[OUTCOME].astype(int), cohort["true_probability"])
    print(f"true-probability AUROC, n={N}, seed 0: {auroc:.3f}")
    assert 0.72 <= auroc <= 0.80


@pytest.mark.parametrize(
    ("a", "b", "sign"),
    [
        ("hdd_90d", "ggt_u_l", 1),
        ("hdd_90d", "peth_ng_ml", 1),
        ("hdd_90d", "audit_total", 1),
        ("phq9_total", "il6_pg_ml", 1),
        ("phq9_total", "bdnf_serum_ng_ml", -1),
        ("hdd_90d", "bdnf_serum_ng_ml", -1),
        ("phq9_total", "current_mdd", 1),
        ("aud_prs_z", "family_history_aud", 1),
        ("adh1b_rs1229984_his", "hdd_90d", -1),
    ],
)
def test_correlations_have_the_intended_sign(
    cohort: pd.DataFrame, a: str, b: str, sign: int
) -> None:
    assert sign * _spearman(cohort, a, b) > 0.05


@pytest.mark.parametrize(
    ("name", "target", "tolerance"),
    [
        ("il6_pg_ml", 1 / 3, 0.03),
        ("bdnf_rs6265_met", 0.5, 0.03),
        ("peth_ng_ml", 0.40, 0.03),
        ("cdt_percent", 0.30, 0.03),
        ("ggt_u_l", 0.10, 0.02),
    ],
)
def test_lab_missingness_is_near_its_target(
    cohort: pd.DataFrame, name: str, target: float, tolerance: float
) -> None:
    assert abs(cohort[name].isna().mean() - target) <= tolerance


def test_optional_answers_and_safety_screens_are_sometimes_missing(cohort: pd.DataFrame) -> None:
    """Optional questionnaires 5-15% missing, safety fields a few percent."""
    rates = cohort.isna().mean()
    questionnaires = [
        f.name for f in FIELDS if f.group in ("alcohol_use", "psychiatric") and not f.required
    ]
    assert rates[questionnaires].between(0.04, 0.16).all(), rates[questionnaires]
    safety = [f.name for f in fields_in_group("safety")]
    assert rates[safety].between(0.005, 0.06).all(), rates[safety]


@pytest.mark.parametrize("block", [_INFLAMMATORY, _GENOTYPES, ["ggt_u_l", "ast_u_l", "alt_u_l"]])
def test_panels_are_missing_as_blocks(cohort: pd.DataFrame, block: list[str]) -> None:
    missing_per_row = cohort[block].isna().sum(axis=1)
    assert missing_per_row.isin([0, len(block)]).all()


def test_missingness_depends_on_site_never_on_outcome(cohort: pd.DataFrame) -> None:
    """Same seed, very different outcomes: the missingness pattern must not move."""
    shifted = simulate_cohort(N, seed=0, effects=dataclasses.replace(DEFAULT_EFFECTS, intercept=2))
    assert not shifted[OUTCOME].equals(cohort[OUTCOME])
    pd.testing.assert_frame_equal(shifted.isna(), cohort.isna())
    by_site = cohort["il6_pg_ml"].isna().groupby(cohort["site_id"]).mean()
    assert by_site["site-d"] - by_site["site-a"] > 0.2


def test_genotype_frequencies_follow_ancestry(cohort: pd.DataFrame) -> None:
    """OPRM1 G carriers: East Asian > European > African, near clinical.md §4."""
    typed = cohort.dropna(subset=_GENOTYPES)
    carriers = (typed["oprm1_rs1799971_g"] >= 1).groupby(typed["ancestry"]).mean()
    assert carriers["east_asian"] > carriers["european"] > carriers["african"]
    for ancestry, published in [("european", 0.292), ("african", 0.023), ("east_asian", 0.622)]:
        assert abs(carriers[ancestry] - published) < 0.06, ancestry
    allele = typed.groupby("ancestry")[["adh1b_rs1229984_his", "bdnf_rs6265_met"]].mean() / 2
    assert allele.loc["east_asian"].gt(allele.loc["european"]).all()


def test_true_logit_reproduces_true_probability(complete_rows: pd.DataFrame) -> None:
    recomputed = 1 / (1 + np.exp(-true_logit(complete_rows)))
    np.testing.assert_allclose(recomputed, complete_rows["true_probability"], rtol=1e-12)


def test_without_genetics_the_logit_ignores_genotypes(complete_rows: pd.DataFrame) -> None:
    rng = np.random.default_rng(1)
    scrambled = complete_rows.copy()
    for name in _GENOTYPES:
        scrambled[name] = complete_rows[name].to_numpy()[rng.permutation(len(complete_rows))]
    assert GENETICS_NO_EFFECT == DEFAULT_EFFECTS.without_group("genetic")
    np.testing.assert_array_equal(
        true_logit(scrambled, GENETICS_NO_EFFECT), true_logit(complete_rows, GENETICS_NO_EFFECT)
    )
    assert not np.allclose(true_logit(scrambled), true_logit(complete_rows))


def test_scaled_group_touches_only_that_group() -> None:
    scaled = DEFAULT_EFFECTS.scaled_group("inflammatory_biomarker", 2.0)
    for f in dataclasses.fields(Effects):
        factor = 2.0 if "inflammatory_biomarker" in f.metadata["groups"] else 1.0
        assert getattr(scaled, f.name) == factor * getattr(DEFAULT_EFFECTS, f.name), f.name
    assert INFLAMMATION_CLEAR_EFFECT.hscrp_ge3 < DEFAULT_EFFECTS.hscrp_ge3 < 0
    with pytest.raises(ValueError, match="genetics"):
        DEFAULT_EFFECTS.without_group("genetics")


def test_every_effect_cites_its_source() -> None:
    for f in dataclasses.fields(Effects):
        assert re.search(r"§\d|\[DESIGN\]", f.metadata["source"]), f.name


def test_oprm1_g_carriers_benefit_only_on_naltrexone(complete_rows: pd.DataFrame) -> None:
    row = complete_rows.iloc[[0]]

    def gain(medication: str) -> float:
        carrier = _with(row, oprm1_rs1799971_g=1, concurrent_medication=medication)
        non_carrier = _with(row, oprm1_rs1799971_g=0, concurrent_medication=medication)
        return float(true_logit(carrier)[0] - true_logit(non_carrier)[0])

    assert gain("naltrexone") == pytest.approx(DEFAULT_EFFECTS.oprm1_g_on_naltrexone)
    assert gain("none") == pytest.approx(0.0)


def test_heavy_drinking_harm_saturates(complete_rows: pd.DataFrame) -> None:
    row = complete_rows.iloc[[0]]
    logits = [float(true_logit(_with(row, hdd_90d=days))[0]) for days in (0, 30, 60, 90)]
    drops = -np.diff(logits)
    assert (drops > 0).all()
    assert drops[0] > drops[1] > drops[2]


def test_true_logit_rejects_masked_values(cohort: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="missing"):
        true_logit(cohort)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_cohort_round_trips(tmp_path: Path, suffix: str) -> None:
    frame = simulate_cohort(300, seed=5)
    path = tmp_path / f"cohort{suffix}"
    write_cohort(frame, path)
    dtypes = {f.name: _DTYPES.get(f.kind, object) for f in FIELDS}
    dtypes |= {"true_probability": "float64", "ancestry": object}
    back = pd.read_csv(path, dtype=dtypes) if suffix == ".csv" else pd.read_parquet(path)
    for name, dtype in dtypes.items():
        if dtype is object:
            back[name] = back[name].astype(object).where(back[name].notna(), None)
    pd.testing.assert_frame_equal(back, frame, check_exact=True)


def test_write_cohort_rejects_other_extensions(tmp_path: Path) -> None:
    path = tmp_path / "cohort.xlsx"
    with pytest.raises(ValueError, match=r"\.xlsx"):
        write_cohort(simulate_cohort(3, seed=0), path)
    assert not path.exists()


def test_a_single_patient_is_a_cohort() -> None:
    one = simulate_cohort(1, seed=0)
    assert len(one) == 1
    assert list(one.columns) == [f.name for f in FIELDS] + list(EXTRA_COLUMNS)
    with pytest.raises(ValueError, match="at least 1"):
        simulate_cohort(0, seed=0)
