"""The modelling pipeline as pure functions: no files, no MLflow, just arrays in and models out.

`fit_pipeline` is *the whole* pipeline for one candidate (tune → out-of-fold margins →
recalibration → final fit). Internal validation repeats exactly that function inside each outer
fold (`select_candidate`), and the bootstrap members repeat the fit and recalibration on
resamples, so every estimate of performance or uncertainty covers every modelling choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold

from serving.predictor import Calibrator, Member
from serving.scorers import Scorer
from training import candidates
from training.candidates import Hyper
from training.config import TrainConfig


@dataclass(frozen=True)
class Fitted:
    kind: str
    hyper: Hyper
    scorer: Scorer
    calibrator: Calibrator


@dataclass(frozen=True)
class Selection:
    """Outer-fold log-loss of each candidate; the lowest mean is served."""

    chosen: str
    outer_log_loss: dict[str, list[float]]

    @property
    def mean_log_loss(self) -> dict[str, float]:
        return {k: float(np.mean(v)) for k, v in self.outer_log_loss.items()}


def fit_calibrator(margin: np.ndarray, y: np.ndarray) -> Calibrator:
    """Unpenalised logistic regression of the outcome on the margin (DESIGN decision 3).

    A slope at or below zero means the margin ranks patients no better than chance out of
    fold; the honest calibrated model is then the base rate (slope 0), never a reversed
    ranking whose explanations would flip sign.
    """
    if len(np.unique(y)) < 2:
        return Calibrator(1.0, 0.0)
    lr = LogisticRegression(C=np.inf, max_iter=1000).fit(margin.reshape(-1, 1), y)
    slope = float(lr.coef_[0, 0])
    if slope <= 0:
        rate = float(np.clip(np.mean(y), 1e-6, 1 - 1e-6))
        return Calibrator(0.0, float(np.log(rate / (1 - rate))))
    return Calibrator(slope, float(lr.intercept_[0]))


def _oof_margin(
    kind: str, X: np.ndarray, y: np.ndarray, hyper: Hyper, cfg: TrainConfig, seed: int
) -> np.ndarray:
    folds = StratifiedKFold(cfg.inner_folds, shuffle=True, random_state=seed + 1)
    out = np.empty(len(y))
    for fit_idx, pred_idx in folds.split(X, y):
        scorer = candidates.fit(kind, X[fit_idx], y[fit_idx], hyper, cfg, seed)
        out[pred_idx] = scorer.margin(X[pred_idx])
    return out


def fit_pipeline(kind: str, X: np.ndarray, y: np.ndarray, cfg: TrainConfig, seed: int) -> Fitted:
    """Tune, recalibrate on out-of-fold margins, and fit one candidate on all of X."""
    hyper = candidates.tune(kind, X, y, cfg, seed)
    calibrator = fit_calibrator(_oof_margin(kind, X, y, hyper, cfg, seed), y)
    scorer = candidates.fit(kind, X, y, hyper, cfg, seed)
    return Fitted(kind, hyper, scorer, calibrator)


def predict_proba(fitted: Fitted | Member, X: np.ndarray) -> np.ndarray:
    logit = fitted.calibrator(fitted.scorer.margin(X))
    return 1.0 / (1.0 + np.exp(-logit))


def select_candidate(X: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> Selection:
    """Nested cross-validation: the whole pipeline of each candidate inside each outer fold."""
    if len(cfg.candidates) == 1:
        return Selection(cfg.candidates[0], {cfg.candidates[0]: []})
    folds = StratifiedKFold(cfg.outer_folds, shuffle=True, random_state=cfg.seed)
    losses: dict[str, list[float]] = {k: [] for k in cfg.candidates}
    for i, (fit_idx, test_idx) in enumerate(folds.split(X, y)):
        for kind in cfg.candidates:
            fitted = fit_pipeline(kind, X[fit_idx], y[fit_idx], cfg, cfg.seed + 100 * i)
            p = predict_proba(fitted, X[test_idx])
            losses[kind].append(float(log_loss(y[test_idx], p, labels=[0, 1])))
    chosen = min(losses, key=lambda k: float(np.mean(losses[k])))
    return Selection(chosen, losses)


def develop(X: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> tuple[Selection, Fitted]:
    """The whole development pipeline: choose a candidate by nested CV, then fit it on all of X.

    Internal validation repeats exactly this function inside each of its resamples.
    """
    selection = select_candidate(X, y, cfg)
    return selection, fit_pipeline(selection.chosen, X, y, cfg, cfg.seed)


def bootstrap_members(
    kind: str,
    hyper: Hyper,
    X: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
) -> tuple[Member, ...]:
    """Refit the chosen pipeline on bootstrap resamples; recalibrate each on its out-of-bag rows.

    Hyperparameters stay at the values tuned on the full training data (tuning inside every
    resample would multiply the cost by the grid size for little change in spread).
    """
    rng = np.random.default_rng(cfg.seed + 7)
    n = len(y)
    members = []
    for b in range(cfg.n_bootstrap):
        idx = rng.integers(0, n, n)
        oob = np.setdiff1d(np.arange(n), idx)
        if len(np.unique(y[idx])) < 2 or len(np.unique(y[oob])) < 2:
            continue
        scorer = candidates.fit(kind, X[idx], y[idx], hyper, cfg, cfg.seed + 1000 + b)
        members.append(Member(scorer, fit_calibrator(scorer.margin(X[oob]), y[oob])))
    return tuple(members)
