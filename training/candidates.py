"""The candidate estimators and their tuning, each returning a serving-ready `Scorer`.

Both are tuned on cross-validated log-loss inside the data they are given (DESIGN decision 4);
which of them is served is decided elsewhere (`training.selection`), by internal validation,
never by the score used here for tuning.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightgbm as lgb
import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from features.transform import FEATURE_NAMES
from serving.scorers import LinearScorer, Scorer, TreeScorer
from training.config import LightGBMConfig, TrainConfig

Hyper = dict[str, float]


# ------------------------------------------------------------------ penalised logistic
def _logistic_pipeline(c: float) -> Pipeline:
    """Median imputation, standardisation, L2-penalised logistic regression.

    No missing-value indicators: in the simulator and in the registries this product targets,
    whole biomarker panels are missing by site and assay availability rather than by outcome,
    so indicators add parameters (39 here) without signal; on 500 simulated patients dropping
    them raised fresh-cohort AUROC by 0.005-0.01. LightGBM keeps native missing handling.
    """
    return Pipeline(
        [
            (
                "impute",
                SimpleImputer(strategy="median", keep_empty_features=True),
            ),
            ("scale", StandardScaler()),
            ("model", LogisticRegression(C=c, max_iter=5000)),
        ]
    )


def tune_logistic(X: np.ndarray, y: np.ndarray, cfg: TrainConfig, seed: int) -> Hyper:
    """Choose the L2 penalty by inner-CV log-loss."""
    cv = StratifiedKFold(cfg.inner_folds, shuffle=True, random_state=seed)
    search = GridSearchCV(
        _logistic_pipeline(1.0),
        {"model__C": list(cfg.logistic_c_grid)},
        scoring="neg_log_loss",
        cv=cv,
    )
    search.fit(X, y)
    return {"C": float(search.best_params_["model__C"])}


def fit_logistic(X: np.ndarray, y: np.ndarray, hyper: Hyper, seed: int) -> LinearScorer:
    """Fit the pipeline and export it as numpy arrays (see `serving.scorers.LinearScorer`)."""
    del seed  # lbfgs is deterministic
    pipe = _logistic_pipeline(hyper["C"]).fit(X, y)
    imputer: SimpleImputer = pipe.named_steps["impute"]
    scaler: StandardScaler = pipe.named_steps["scale"]
    model: LogisticRegression = pipe.named_steps["model"]
    indicator = imputer.indicator_
    indicator_of = (
        np.asarray(indicator.features_, dtype=int) if indicator is not None else np.zeros(0, int)
    )
    return LinearScorer(
        impute=np.asarray(imputer.statistics_, dtype=float),
        indicator_of=indicator_of,
        mean=np.asarray(scaler.mean_, dtype=float),
        scale=np.asarray(scaler.scale_, dtype=float),
        coef=np.asarray(model.coef_[0], dtype=float),
        intercept=float(model.intercept_[0]),
    )


# ------------------------------------------------------------------ LightGBM
def lgb_params(
    cfg: LightGBMConfig,
    leaves: int,
    min_frac: float,
    n: int,
    seed: int,
    *,
    learning_rate: float | None = None,
    columns: Sequence[str] = FEATURE_NAMES,
) -> dict:
    """Small-data LightGBM parameters for `n` rows over `columns` (the biomarker analysis
    fits column subsets, so the monotone vector follows the columns it is given)."""
    return {
        "objective": "binary",
        "metric": "binary_logloss",
        "learning_rate": cfg.learning_rate if learning_rate is None else learning_rate,
        "num_leaves": leaves,
        "max_depth": -1,
        "min_data_in_leaf": max(10, round(min_frac * n)),
        "lambda_l2": cfg.lambda_l2,
        "feature_fraction": cfg.feature_fraction,
        "bagging_fraction": cfg.bagging_fraction,
        "bagging_freq": 1,
        "max_bin": cfg.max_bin,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": cfg.num_threads,
        "verbosity": -1,
        "monotone_constraints": _monotone_vector(cfg, columns),
    }


def _monotone_vector(cfg: LightGBMConfig, columns: Sequence[str]) -> list[int]:
    """One entry per model column (all numeric, so LightGBM cannot abort on a category)."""
    wanted = dict(cfg.monotone)
    unknown = set(wanted) - set(FEATURE_NAMES)
    if unknown:
        raise ValueError(f"monotone constraint on unknown features: {sorted(unknown)}")
    return [wanted.get(name, 0) for name in columns]


def tune_lightgbm(X: np.ndarray, y: np.ndarray, cfg: TrainConfig, seed: int) -> Hyper:
    """Grid over tree size and leaf size; rounds by early stopping on inner-CV log-loss."""
    lcfg = cfg.lightgbm
    folds = StratifiedKFold(cfg.inner_folds, shuffle=True, random_state=seed)
    best: tuple[float, Hyper] | None = None
    inner_n = round(len(y) * (cfg.inner_folds - 1) / cfg.inner_folds)
    for leaves, min_frac in lcfg.grid:
        params = lgb_params(lcfg, leaves, min_frac, inner_n, seed)
        result = lgb.cv(
            params,
            lgb.Dataset(X, y, params={"max_bin": lcfg.max_bin}, free_raw_data=False),
            num_boost_round=lcfg.max_rounds,
            folds=folds,
            callbacks=[lgb.early_stopping(lcfg.early_stopping_rounds, verbose=False)],
        )
        curve = result["valid binary_logloss-mean"]
        score = float(curve[-1])
        hyper = {"num_leaves": leaves, "min_data_fraction": min_frac, "rounds": len(curve)}
        if best is None or score < best[0]:
            best = (score, hyper)
    assert best is not None
    return best[1]


def fit_lightgbm(
    X: np.ndarray, y: np.ndarray, hyper: Hyper, cfg: TrainConfig, seed: int
) -> TreeScorer:
    """Fit the booster with tuned settings; rounds scaled to the larger training set."""
    lcfg = cfg.lightgbm
    params = lgb_params(lcfg, int(hyper["num_leaves"]), hyper["min_data_fraction"], len(y), seed)
    rounds = max(1, round(hyper["rounds"] * cfg.inner_folds / (cfg.inner_folds - 1)))
    booster = lgb.train(
        params, lgb.Dataset(X, y, params={"max_bin": lcfg.max_bin}), num_boost_round=rounds
    )
    return TreeScorer(lgb.Booster(model_str=booster.model_to_string()))


# ------------------------------------------------------------------ dispatch
def tune(kind: str, X: np.ndarray, y: np.ndarray, cfg: TrainConfig, seed: int) -> Hyper:
    if kind == "logistic":
        return tune_logistic(X, y, cfg, seed)
    if kind == "lightgbm":
        return tune_lightgbm(X, y, cfg, seed)
    raise ValueError(f"unknown candidate {kind!r}")


def fit(
    kind: str, X: np.ndarray, y: np.ndarray, hyper: Hyper, cfg: TrainConfig, seed: int
) -> Scorer:
    if kind == "logistic":
        return fit_logistic(X, y, hyper, seed)
    if kind == "lightgbm":
        return fit_lightgbm(X, y, hyper, cfg, seed)
    raise ValueError(f"unknown candidate {kind!r}")
