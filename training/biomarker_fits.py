"""Out-of-fold predictions of nested models, for paired comparisons (training.biomarkers).

Every model is refitted inside each outer fold, tuning included, and all models and
estimators share the same folds and seeds: each patient then has one out-of-fold prediction
per model, and differences between models are paired patient by patient.

Estimators:
- penalised logistic, as the served candidate: median imputation + missing indicators,
  standardisation, L2 chosen by inner-CV log-loss over the candidates' grid;
- LightGBM with one fixed small-data configuration instead of the candidates' grid (five
  folds times four models would otherwise cost twelve times more): 4 leaves, leaves of at
  least 3% of the patients, the candidates' bins, L2, subsampling and monotone constraints,
  learning rate `LIGHTGBM_LEARNING_RATE`, rounds by inner-CV early stopping.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightgbm as lgb
import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from training.candidates import lgb_params
from training.config import LightGBMConfig, TrainConfig

ESTIMATORS: tuple[str, ...] = ("logistic", "lightgbm")
INNER_FOLDS = 3
#: Faster than the candidates' 0.03: about half the rounds for a similar log-loss at a few
#: thousand patients; at 0.1 the step-to-step noise in out-of-fold deviance doubled.
LIGHTGBM_LEARNING_RATE = 0.05
LIGHTGBM_LEAVES = 4
LIGHTGBM_MIN_LEAF_FRACTION = 0.03


def fit_logistic(X: np.ndarray, y: np.ndarray, seed: int) -> Pipeline:
    """The penalised logistic candidate, its L2 tuned on inner-CV log-loss."""
    inner = StratifiedKFold(INNER_FOLDS, shuffle=True, random_state=seed)
    return make_pipeline(
        SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
        StandardScaler(),
        LogisticRegressionCV(
            Cs=list(TrainConfig().logistic_c_grid),
            l1_ratios=(0.0,),
            cv=inner,
            scoring="neg_log_loss",
            max_iter=5000,
            use_legacy_attributes=False,
        ),
    ).fit(X, y)


def lightgbm_params(columns: Sequence[str], n: int, seed: int) -> dict:
    """The fixed small-data configuration for `n` training rows with these `columns`."""
    return lgb_params(
        LightGBMConfig(),
        LIGHTGBM_LEAVES,
        LIGHTGBM_MIN_LEAF_FRACTION,
        n,
        seed,
        learning_rate=LIGHTGBM_LEARNING_RATE,
        columns=columns,
    )


def fit_lightgbm(X: np.ndarray, y: np.ndarray, columns: Sequence[str], seed: int) -> lgb.Booster:
    """Rounds by inner-CV early stopping, then one fit on all rows with rounds scaled up."""
    cfg = LightGBMConfig()
    inner = StratifiedKFold(INNER_FOLDS, shuffle=True, random_state=seed)
    inner_n = round(len(y) * (INNER_FOLDS - 1) / INNER_FOLDS)
    data = lgb.Dataset(X, y, params={"max_bin": cfg.max_bin}, free_raw_data=False)
    curve = lgb.cv(
        lightgbm_params(columns, inner_n, seed),
        data,
        num_boost_round=cfg.max_rounds,
        folds=list(inner.split(X, y)),
        callbacks=[lgb.early_stopping(cfg.early_stopping_rounds, verbose=False)],
    )["valid binary_logloss-mean"]
    rounds = max(1, round(len(curve) * INNER_FOLDS / (INNER_FOLDS - 1)))
    return lgb.train(lightgbm_params(columns, len(y), seed), data, num_boost_round=rounds)


def fit_predict(
    kind: str,
    train: tuple[np.ndarray, np.ndarray],
    X_new: np.ndarray,
    columns: Sequence[str],
    seed: int,
) -> np.ndarray:
    """Fit estimator `kind` on `train` = (X, y) and return probabilities for `X_new`."""
    X, y = train
    if kind == "logistic":
        return fit_logistic(X, y, seed).predict_proba(X_new)[:, 1]
    if kind == "lightgbm":
        return fit_lightgbm(X, y, columns, seed).predict(X_new)
    raise ValueError(f"unknown estimator {kind!r}; one of {ESTIMATORS}")


def out_of_fold(
    X: np.ndarray,
    y: np.ndarray,
    column_sets: Sequence[np.ndarray],
    names: Sequence[str],
    *,
    folds: int,
    seed: int,
    estimators: Sequence[str] = ESTIMATORS,
) -> dict[str, np.ndarray]:
    """estimator -> (models × patients) out-of-fold probabilities.

    Model m uses the columns `column_sets[m]` of X (`names` are the names of all columns of
    X). The folds, and the seed of every fit in a fold, are the same for every model.
    """
    unknown = set(estimators) - set(ESTIMATORS)
    if unknown:
        raise ValueError(f"unknown estimator(s) {sorted(unknown)}; one of {ESTIMATORS}")
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    out = {k: np.full((len(column_sets), len(y)), np.nan) for k in estimators}
    for i, (fit_idx, test_idx) in enumerate(splitter.split(X, y)):
        for m, cols in enumerate(column_sets):
            train = (X[np.ix_(fit_idx, cols)], y[fit_idx])
            X_test = X[np.ix_(test_idx, cols)]
            columns = [names[c] for c in cols]
            for kind in estimators:
                out[kind][m, test_idx] = fit_predict(kind, train, X_test, columns, seed + 100 * i)
    return out
