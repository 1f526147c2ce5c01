"""Exact additive explanations: SHAP of each estimator sums to its margin, and serving's
`pred_contrib` equals shap's TreeExplainer."""

from __future__ import annotations

import numpy as np
import pytest
import shap

from features import transform as tf
from features.simulate import simulate_cohort
from features.validation import validate_table
from serving.scorers import LinearScorer, TreeScorer, load_scorer
from training import candidates
from training.config import TrainConfig


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    frame = validate_table(simulate_cohort(600, seed=5), training=True).frame
    return tf.transform(frame).to_numpy(dtype=float), frame["response_6m"].to_numpy(dtype=int)


@pytest.fixture(scope="module")
def tree(data: tuple[np.ndarray, np.ndarray]) -> TreeScorer:
    X, y = data
    hyper = {"num_leaves": 8, "min_data_fraction": 0.03, "rounds": 60}
    return candidates.fit_lightgbm(X, y, hyper, TrainConfig(), seed=0)


@pytest.fixture(scope="module")
def linear(data: tuple[np.ndarray, np.ndarray]) -> LinearScorer:
    X, y = data
    return candidates.fit_logistic(X, y, {"C": 0.1}, seed=0)


def test_tree_contributions_sum_to_margin(tree: TreeScorer, data) -> None:
    X, _ = data
    phi, base = tree.contributions(X)
    np.testing.assert_allclose(phi.sum(axis=1) + base, tree.margin(X), atol=1e-6)


def test_tree_contributions_equal_shap_tree_explainer(tree: TreeScorer, data) -> None:
    X, _ = data
    phi, base = tree.contributions(X[:50])
    explainer = shap.TreeExplainer(tree.booster)
    np.testing.assert_allclose(explainer.shap_values(X[:50]), phi, atol=1e-9)
    assert float(np.ravel(explainer.expected_value)[0]) == pytest.approx(base[0], abs=1e-9)


def test_linear_contributions_sum_to_margin_and_centre_on_reference(
    linear: LinearScorer, data
) -> None:
    X, _ = data
    phi, base = linear.contributions(X)
    np.testing.assert_allclose(phi.sum(axis=1) + base, linear.margin(X), atol=1e-9)
    # coefficient x (value - training mean): centred on the training data
    np.testing.assert_allclose(phi.mean(axis=0), 0.0, atol=1e-9)


def test_linear_scorer_matches_sklearn_pipeline(data) -> None:
    X, y = data
    pipe = candidates._logistic_pipeline(0.1).fit(X, y)
    scorer = candidates.fit_logistic(X, y, {"C": 0.1}, seed=0)
    np.testing.assert_allclose(scorer.margin(X), pipe.decision_function(X), atol=1e-9)


@pytest.mark.parametrize("name", ["tree", "linear"])
def test_serialisation_round_trip(name: str, request: pytest.FixtureRequest, data) -> None:
    scorer = request.getfixturevalue(name)
    X, _ = data
    again = load_scorer(scorer.kind, scorer.dumps())
    np.testing.assert_array_equal(again.margin(X), scorer.margin(X))


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown estimator kind"):
        load_scorer("pickle", "{}")


def test_monotone_constraint_holds_for_heavy_drinking_days(tree: TreeScorer, data) -> None:
    X, _ = data
    j = tf.FEATURE_NAMES.index("hdd_90d")
    grid = np.linspace(0, 90, 19)
    margins = []
    for v in grid:
        Xv = X[:100].copy()
        Xv[:, j] = v
        margins.append(tree.margin(Xv))
    assert np.all(np.diff(np.vstack(margins), axis=0) <= 1e-12)
