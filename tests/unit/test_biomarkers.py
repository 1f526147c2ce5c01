"""Biomarker added value: the statistics, the nested models, the verdicts, the report and CLI."""

from __future__ import annotations

import argparse
import json
import re

import mlflow
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from dcurves import dca
from sklearn.metrics import roc_auc_score

from features.schema import fields_in_group
from features.simulate import simulate_cohort
from features.transform import COLUMNS, FEATURE_NAMES
from features.validation import InvalidInput, validate_table
from ketapredict import cli
from training import biomarker_stats as bs
from training.biomarker_report import render_html, render_json
from training.biomarkers import (
    STAGES,
    STEPS,
    VERDICTS,
    BiomarkerReport,
    biomarker_value,
    verdict,
    verdict_text,
)
from training.biomarkers_cli import HTML_NAME, JSON_NAME, add_parser, run


def _ci(estimate: float, low: float, high: float) -> bs.Interval:
    return bs.Interval(estimate, low, high)


@pytest.fixture(scope="module")
def small_report() -> BiomarkerReport:
    """The whole analysis, both estimators, on a small cohort (quick, not for inference)."""
    frame = validate_table(simulate_cohort(240, seed=11), training=True).frame
    return biomarker_value(frame, seed=3, folds=3, resamples=60)


# ------------------------------------------------------------------ nested models
def test_each_column_enters_with_its_data_dictionary_group() -> None:
    stage = dict(zip(FEATURE_NAMES, STAGES, strict=True))
    for group, expected in (
        ("alcohol_biomarker", 1),
        ("inflammatory_biomarker", 2),
        ("genetic", 3),
    ):
        fields = {f.name for f in fields_in_group(group)}
        columns = [c.name for c in COLUMNS if c.factor in fields]
        assert columns and all(stage[c] == expected for c in columns), group
    assert stage["ast_alt_ratio"] == 1  # derived from AST and ALT: an alcohol biomarker
    assert stage["aud_duration_years"] == 0  # age and onset: clinical
    assert stage["hdd_90d"] == 0 and stage["dose_mg_per_kg"] == 0
    assert stage["concurrent_medication=naltrexone"] == 0
    assert [(s.model, s.reference) for s in STEPS] == [(1, 0), (2, 1), (3, 2), (3, 0)]


# ------------------------------------------------------------------ statistics
def test_bootstrap_weights_resample_every_patient_count_n_times() -> None:
    w = bs.bootstrap_weights(50, 200, seed=1)
    assert w.shape == (200, 50)
    assert np.all(w.sum(axis=1) == 50)
    assert np.array_equal(w, bs.bootstrap_weights(50, 200, seed=1))
    assert not np.array_equal(w, bs.bootstrap_weights(50, 200, seed=2))
    assert 0.62 < (w > 0).mean() < 0.65  # a patient is in 1 - (1 - 1/n)^n = 64% of resamples


def test_weighted_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) * 0.5 + 0.3 * y, 1)  # coarse: many ties
    w = bs.bootstrap_weights(300, 5, seed=4)
    got = bs.weighted_auroc(w, y, p)
    expected = [roc_auc_score(y, p, sample_weight=row) for row in w]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert np.isnan(bs.weighted_auroc(np.ones(3), np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3])))


def test_net_benefit_matches_dcurves() -> None:
    rng = np.random.default_rng(0)
    p = np.round(rng.random(400), 2)  # values exactly on the thresholds count as treated
    y = (rng.random(400) < p).astype(int)
    thresholds = (0.1, 0.25, 0.5, 0.6)
    ref = dca(
        data=pd.DataFrame({"y": y, "m": p}), outcome="y", modelnames=["m"], thresholds=thresholds
    )
    expected = ref.loc[ref["model"] == "m", "net_benefit"].to_numpy()
    np.testing.assert_allclose(bs.net_benefit(y, p, thresholds), expected, atol=1e-12)


def test_paired_gain_is_zero_against_itself_and_positive_for_the_truth() -> None:
    rng = np.random.default_rng(5)
    truth = rng.uniform(0.05, 0.95, 2000)
    y = (rng.random(2000) < truth).astype(int)
    w = bs.bootstrap_weights(2000, 200, seed=1)
    flat = bs.terms(y, np.full(2000, y.mean()), w, (0.2, 0.4))
    same = bs.paired_gain(flat, flat, w)
    assert same.deviance == _ci(0.0, 0.0, 0.0) and same.auroc.estimate == 0.0
    better = bs.paired_gain(bs.terms(y, truth, w, (0.2, 0.4)), flat, w)
    for ci in (better.deviance, better.brier, better.auroc, better.net_benefit):
        assert 0 < ci.low < ci.estimate < ci.high
    assert len(better.net_benefit_by_threshold) == 2


def test_lr_design_gives_fields_missing_together_one_indicator() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    block = rng.random(200) < 0.3
    X[block, 2:4] = np.nan  # two fields of stage 1, missing together
    X[:, 4] = np.nan  # a field nobody has: no parameter
    design, stage = bs.lr_design(X, np.array([0, 0, 1, 1, 2]))
    assert design.shape == (200, 5)  # 4 values + 1 shared indicator
    assert list(stage) == [0, 0, 1, 1, 1]
    assert not np.isnan(design).any()


def test_lr_test_matches_unpenalised_statsmodels() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(800, 4))
    y = (rng.random(800) < 1 / (1 + np.exp(-(X[:, 0] + 0.3 * X[:, 2])))).astype(int)
    design, stage = bs.lr_design(X, np.array([0, 0, 1, 1]))
    got = bs.lr_test(design, y, stage <= 1, stage <= 0)
    full = sm.Logit(y, sm.add_constant(X)).fit(disp=0)
    ref = sm.Logit(y, sm.add_constant(X[:, :2])).fit(disp=0)
    assert got.df == 2
    assert got.chi2 == pytest.approx(2 * (full.llf - ref.llf), abs=0.01)
    assert got.p_value < 0.05
    with pytest.raises(ValueError, match="nested"):
        bs.lr_test(design, y, stage <= 0, stage <= 1)
    empty = bs.lr_test(design, y, stage <= 0, stage <= 0)
    assert (empty.df, np.isnan(empty.p_value)) == (0, True)


# ------------------------------------------------------------------ verdicts
@pytest.mark.parametrize(
    ("p", "low", "expected"),
    [
        (0.001, 2.0, "added_value"),
        (0.001, -1.0, "association_only"),
        (0.40, 2.0, "out_of_sample_only"),
        (0.40, -1.0, "no_evidence"),
        (0.05, 2.0, "out_of_sample_only"),  # p = alpha is not significant
    ],
)
def test_verdict_needs_the_lr_test_and_the_out_of_sample_gain(p, low, expected) -> None:
    assert verdict(bs.LRTest(10.0, 3, p), _ci(5.0, low, 9.0)) == expected
    assert verdict(bs.LRTest(0.0, 0, float("nan")), _ci(0, 0, 0)) == "not_assessed"


def test_verdict_text_reads_like_the_issue_example() -> None:
    zero = _ci(0.0, -0.001, 0.001)
    gain = bs.Gain(_ci(-0.4, -2.1, 1.0), zero, zero, zero, (zero,))
    text = verdict_text(STEPS[2], "no_evidence", {"logistic": gain}, bs.LRTest(3.1, 5, 0.6845))
    assert text == (
        "Genetic variants: no evidence of added value "
        "(Δdeviance −0.4, 95% CI −2.1 to 1.0; LR χ² 3.1 on 5 df, p = 0.68)"
    )


# ------------------------------------------------------------------ the analysis
def test_report_has_every_step_for_every_estimator(small_report: BiomarkerReport) -> None:
    r = small_report
    assert (r.n, r.folds, r.resamples, r.estimators) == (240, 3, 60, ("logistic", "lightgbm"))
    assert [s.spec.key for s in r.steps] == [s.key for s in STEPS]
    for step in r.steps:
        assert set(step.gains) == {"logistic", "lightgbm"}
        assert step.verdict in VERDICTS and step.text.startswith(step.spec.label)
        assert step.lr.df > 0
        for gain in step.gains.values():
            assert gain.deviance.low <= gain.deviance.estimate <= gain.deviance.high
    assert r.steps[3].lr.df == sum(s.lr.df for s in r.steps[:3])
    for per_model in r.performance.values():
        assert list(per_model) == ["clinical", "+alcohol", "+inflammatory", "+genetic"]
        assert all(0.0 <= m["auroc"] <= 1.0 for m in per_model.values())
    assert set(r.lr_given_others) == {"alcohol_biomarker", "inflammatory_biomarker", "genetic"}
    assert r.lr_given_others["genetic"] == r.steps[2].lr  # genotypes come last
    assert len(r.warnings) == 1 and "unreliable" in r.warnings[0]  # 240 patients, ~70 params
    assert r.summary_lines()[0] == f"warning: {r.warnings[0]}"


def test_analysis_is_deterministic_in_its_seed() -> None:
    frame = validate_table(simulate_cohort(150, seed=12), training=True).frame
    a = biomarker_value(frame, seed=1, folds=3, resamples=30, estimators=("logistic",))
    b = biomarker_value(frame, seed=1, folds=3, resamples=30, estimators=("logistic",))
    assert a.to_dict() == b.to_dict()


def test_a_group_nobody_has_is_not_assessed() -> None:
    raw = simulate_cohort(150, seed=13)
    for f in fields_in_group("genetic"):
        raw[f.name] = pd.NA
    frame = validate_table(raw, training=True).frame
    r = biomarker_value(frame, seed=1, folds=3, resamples=30, estimators=("logistic",))
    genetic = r.steps[2]
    assert genetic.verdict == "not_assessed" and genetic.lr.df == 0
    assert genetic.text == "Genetic variants: not assessed: no patient has data for this group"
    assert r.to_dict()["steps"][2]["lr_test"]["p_value"] is None


def test_too_few_events_or_no_outcome_is_an_error() -> None:
    frame = validate_table(simulate_cohort(60, seed=1), training=True).frame
    with pytest.raises(ValueError, match="too few"):
        biomarker_value(frame.assign(response_6m=[1.0] * 55 + [0.0] * 5), seed=1)
    with pytest.raises(ValueError, match="response_6m"):
        biomarker_value(frame.drop(columns="response_6m"), seed=1)


# ------------------------------------------------------------------ report and CLI
def test_html_is_self_contained_and_json_is_strict(small_report: BiomarkerReport) -> None:
    html = render_html(small_report)
    assert html.count("data:image/png;base64,") == 2
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # no CDN, no remote asset
    for step in small_report.steps:
        assert step.text.replace("<", "&lt;") in html
    data = json.loads(render_json(small_report))
    assert data == json.loads(json.dumps(small_report.to_dict()))
    assert data["steps"][2]["key"] == "genetic"
    assert data["models"]["+genetic"][-1] == "genetic"


def _args(tmp_path, data, **extra) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    argv = ["biomarkers", "--data", str(data), "--out-dir", str(tmp_path / "reports")]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in extra.items()]
    return parser.parse_args([*argv, "--logistic-only"])


def test_cli_writes_both_reports_and_logs_an_mlflow_run(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "cohort.csv"
    simulate_cohort(150, seed=5).to_csv(data, index=False)
    args = _args(tmp_path, data, folds=3, resamples=40)
    assert args.func is run
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "Genetic variants:" in out and "mlflow run id:" in out
    report = json.loads((tmp_path / "reports" / JSON_NAME).read_text(encoding="utf-8"))
    assert report["n"] == 150 and report["estimators"] == ["logistic"]
    assert (tmp_path / "reports" / HTML_NAME).stat().st_size > 10_000
    runs = mlflow.search_runs(experiment_names=["ketamine-aud-response-biomarkers"])
    assert len(runs) == 1
    run_id = runs.loc[0, "run_id"]
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "biomarkers")}
    assert {f"biomarkers/{HTML_NAME}", f"biomarkers/{JSON_NAME}"} <= logged
    assert "metrics.genetic.lr_p" in runs.columns


def test_cli_rejects_an_invalid_table_with_invalid_input(tmp_path) -> None:
    data = tmp_path / "bad.csv"
    simulate_cohort(20, seed=5).assign(age_years=200).to_csv(data, index=False)
    with pytest.raises(InvalidInput) as caught:  # ketapredict.cli.main maps this to exit 2
        run(_args(tmp_path, data))
    assert any(p.field == "age_years" for p in caught.value.problems)
    assert not (tmp_path / "reports").exists()


def test_ketapredict_main_exits_2_on_an_invalid_table(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.csv"
    simulate_cohort(20, seed=5).assign(age_years=200).to_csv(bad, index=False)
    argv = ["biomarkers", "--data", str(bad), "--out-dir", str(tmp_path / "reports")]
    try:
        cli.build_parser().parse_args(argv)
    except SystemExit:
        pytest.skip("ketapredict.cli does not register the biomarkers subcommand yet")
    assert cli.main(argv) == 2
    assert "age_years" in capsys.readouterr().err
