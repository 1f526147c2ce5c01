"""The predictor artifact: calibrated additivity, intervals, save/load, corrupt models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from features.schema import INPUT_FIELDS, PREDICTORS
from features.simulate import simulate_cohort
from features.validation import validate_table
from serving.audit.keys import output_summary
from serving.batch_results import batch_scores
from serving.predictor import Predictor
from serving.results import batch_table, explain
from tests.unit.conftest import FAST
from training.train import train


@pytest.fixture(scope="module")
def trained():
    frame = validate_table(simulate_cohort(500, seed=8), training=True).frame
    return frame, train(frame, FAST, name="ketamine-aud-response", synthetic=True)


def test_contributions_in_calibrated_log_odds_sum_to_the_served_logit(trained) -> None:
    frame, result = trained
    s = result.predictor.score(frame)
    np.testing.assert_allclose(s.base_log_odds + s.contributions.sum(axis=1), s.logit, atol=1e-6)
    np.testing.assert_allclose(s.probability, expit(s.logit))


def test_interval_contains_the_probability(trained) -> None:
    frame, result = trained
    s = result.predictor.score(frame)
    assert np.all(s.lower <= s.probability) and np.all(s.probability <= s.upper)
    assert np.all(s.upper - s.lower > 0)


def test_save_load_round_trip_is_exact(trained, tmp_path: Path) -> None:
    frame, result = trained
    result.predictor.save(tmp_path / "p")
    again = Predictor.load(tmp_path / "p")
    a, b = result.predictor.score(frame), again.score(frame)
    np.testing.assert_array_equal(a.probability, b.probability)
    np.testing.assert_array_equal(a.upper, b.upper)
    assert again.metadata["model_card"]["training_data"]["synthetic"] is True


def test_corrupt_or_mismatched_artifacts_are_refused(trained, tmp_path: Path) -> None:
    _, result = trained
    path = tmp_path / "p"
    result.predictor.save(path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["feature_names"] = manifest["feature_names"][:-1]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="different feature transformer"):
        Predictor.load(path)
    with pytest.raises(FileNotFoundError):
        Predictor.load(tmp_path / "missing")


def test_training_metrics_and_card(trained) -> None:
    _, result = trained
    m = result.metrics
    assert 0.5 < m["auroc"] < 1 and m["auroc_ci_low"] <= m["auroc"] <= m["auroc_ci_high"]
    assert set(result.selection.outer_log_loss) == {"logistic", "lightgbm"}
    assert result.selection.chosen in {"logistic", "lightgbm"}
    assert len(np.intersect1d(result.train_idx, result.test_idx)) == 0
    card = result.predictor.metadata["model_card"]
    assert card["performance_heldout"]["auroc"][0] == m["auroc"]
    assert "synthetic" in card["training_data"]["warning"]


def test_batch_scores_equal_the_per_patient_explanations(each_kind) -> None:
    """The array path of the batch CLI gives exactly the table and audit summaries of the
    per-patient path, on patients with gaps, unseen levels, out-of-range values and
    contraindications."""
    predictor = each_kind
    raw = simulate_cohort(300, seed=10)[[f.name for f in INPUT_FIELDS]]
    raw.loc[3, "ggt_u_l"] = 2999.0
    raw.loc[4, "psychotherapy"] = None
    raw.loc[5, "psychosis_history"] = True
    raw.loc[6, ["hscrp_mg_l", "il6_pg_ml", "tnfa_pg_ml", "il1b_pg_ml", "bdnf_serum_ng_ml"]] = None
    raw.loc[7:8, [f.name for f in PREDICTORS if not f.required]] = None  # no patient like it
    frame = validate_table(raw).frame
    items = explain(predictor, frame)
    table, outputs = batch_scores(predictor, frame)
    expected = batch_table(predictor, frame, results=items)
    pd.testing.assert_frame_equal(table, expected, check_exact=True)
    assert [json.loads(o) for o in outputs] == [output_summary(i) for i in items]
    # both of batch_scores' paths ran: patients alike by missingness, and the others
    assert (table["eligibility"] == "contraindicated").any()
    assert (~table["typical"]).any() and table["unseen_missingness_pattern"].any()
    assert table["warnings"].str.contains("outside_training_data").any()
    assert table["warnings"].str.contains("missing_input").sum() > 50


def test_a_patient_gets_the_same_numbers_alone_as_in_any_batch(each_kind) -> None:
    """To the last bit: requests scored together (natural batching) must not change answers."""
    raw = simulate_cohort(150, seed=13)[[f.name for f in INPUT_FIELDS]]
    frame = validate_table(raw).frame
    together = explain(each_kind, frame)
    for i in (0, 7, 64, 149):
        assert explain(each_kind, frame.iloc[[i]].reset_index(drop=True))[0] == together[i]
