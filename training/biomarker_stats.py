"""Paired statistics for nested-model comparisons: bootstrap weights, weighted AUROC, net
benefit terms and the likelihood-ratio test (reference/standards.md §3, incremental value).

Everything a bootstrap replicate needs is expressed as a *per-patient term* (deviance, squared
error, net-benefit contribution) or as a weighted rank statistic (AUROC), so that one matrix of
resampling counts `W` (replicates × patients) gives every replicate of every metric by a matrix
product. The same `W` is used for every model, which is what makes the differences paired.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2 as chi2_dist
from sklearn.linear_model import LogisticRegression

_EPS = 1e-12
#: L2 strength for the likelihood-ratio fits, on standardised columns: light enough that the
#: log-likelihood equals the unpenalised one to well under 0.01 at n >= 100, strong enough
#: that a quasi-separated rare level or a near-collinear pair still gives a finite optimum.
LR_C = 1e4
_CHUNK_CELLS = 2_000_000


@dataclass(frozen=True)
class LRTest:
    """Likelihood-ratio test of nested logistic fits on all patients."""

    chi2: float
    df: int
    p_value: float

    def to_dict(self) -> dict[str, float | int | None]:
        p = None if np.isnan(self.p_value) else float(self.p_value)
        return {"chi2": float(self.chi2), "df": int(self.df), "p_value": p}


def bootstrap_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """Counts (resamples × n): how often each patient appears in each bootstrap resample.

    Resampling patients with replacement is the same as drawing these counts; keeping them as
    a matrix lets every statistic be a weighted sum, computed for all replicates at once.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    flat = (np.arange(resamples)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(float)


def deviance_terms(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Each patient's contribution to the deviance, −2·log-likelihood."""
    q = np.clip(p, _EPS, 1 - _EPS)
    return -2.0 * (y * np.log(q) + (1 - y) * np.log1p(-q))


def net_benefit_terms(y: np.ndarray, p: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Per-patient terms (n × thresholds) whose mean is the net benefit at each threshold.

    NB(pt) = TP/n − FP/n · pt/(1 − pt), treating patients with p ≥ pt: a treated responder
    adds 1, a treated non-responder subtracts the odds of the threshold.

    >>> net_benefit_terms(np.array([1, 0]), np.array([0.9, 0.6]), [0.5]).mean(axis=0)
    array([0.])
    """
    t = np.asarray(thresholds, dtype=float)[None, :]
    treated = p[:, None] >= t
    return treated * (y[:, None] - (1 - y[:, None]) * t / (1 - t))


def net_benefit(y: np.ndarray, p: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Net benefit of treating by `p` at each threshold (standards.md §3, decision curves)."""
    return net_benefit_terms(y, p, thresholds).mean(axis=0)


def weighted_auroc(weights: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUROC under each row of case weights (ties count one half), vectorised over rows.

    With integer bootstrap counts as weights this equals `roc_auc_score` on the resample; a
    row with no responders or no non-responders gives NaN.
    """
    w = np.atleast_2d(weights)
    order = np.argsort(p, kind="stable")
    ps, ys = p[order], y[order].astype(float)
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    rows = max(1, _CHUNK_CELLS // len(p))  # bounds the temporaries at a few tens of MB
    return np.concatenate(
        [_auroc_rows(w[i : i + rows, order], ys, starts) for i in range(0, len(w), rows)]
    )


def _auroc_rows(ws: np.ndarray, ys: np.ndarray, starts: np.ndarray) -> np.ndarray:
    pos = np.add.reduceat(ws * ys, starts, axis=1)
    neg = np.add.reduceat(ws * (1.0 - ys), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(axis=1) / pairs


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval; replicates without a value (NaN) are skipped."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)


# ------------------------------------------------------------------ paired gains
@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap 95% interval."""

    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class Gain:
    """Paired out-of-sample gains of a model over its reference; positive is better.

    Deviance and Brier are reference minus model (the deviance summed over patients, on the
    scale of the LR χ²); AUROC and net benefit are model minus reference. `net_benefit` is the
    mean over the decision thresholds of the net-benefit difference.
    """

    deviance: Interval
    brier: Interval
    auroc: Interval
    net_benefit: Interval
    net_benefit_by_threshold: tuple[Interval, ...]


@dataclass(frozen=True)
class Terms:
    """One model's out-of-fold predictions as bootstrap-ready per-patient terms."""

    deviance: np.ndarray
    squared_error: np.ndarray
    net_benefit: np.ndarray
    auroc: float
    auroc_replicates: np.ndarray

    def summary(self) -> dict[str, float]:
        """Out-of-fold deviance, Brier, AUROC and mean net benefit of the model itself."""
        return {
            "deviance": float(self.deviance.sum()),
            "brier": float(self.squared_error.mean()),
            "auroc": self.auroc,
            "net_benefit": float(self.net_benefit.mean()),
        }


def terms(y: np.ndarray, p: np.ndarray, weights: np.ndarray, thresholds: Sequence[float]) -> Terms:
    """Per-patient terms of `p` and its AUROC under each bootstrap resample in `weights`."""
    return Terms(
        deviance=deviance_terms(y, p),
        squared_error=(p - y) ** 2,
        net_benefit=net_benefit_terms(y, p, thresholds),
        auroc=float(weighted_auroc(np.ones(len(y)), y, p)[0]),
        auroc_replicates=weighted_auroc(weights, y, p),
    )


def _interval(estimate: float, replicates: np.ndarray) -> Interval:
    return Interval(float(estimate), *percentile_interval(replicates))


def paired_gain(new: Terms, ref: Terms, weights: np.ndarray) -> Gain:
    """Gains of `new` over `ref` with CIs from the same resamples for both (paired)."""
    n = weights.shape[1]
    deviance = ref.deviance - new.deviance
    brier = ref.squared_error - new.squared_error
    nb = new.net_benefit - ref.net_benefit
    nb_replicates = weights @ nb / n
    return Gain(
        deviance=_interval(deviance.sum(), weights @ deviance),
        brier=_interval(brier.mean(), weights @ brier / n),
        auroc=_interval(new.auroc - ref.auroc, new.auroc_replicates - ref.auroc_replicates),
        net_benefit=_interval(nb.mean(), nb_replicates.mean(axis=1)),
        net_benefit_by_threshold=tuple(
            _interval(nb[:, j].mean(), nb_replicates[:, j]) for j in range(nb.shape[1])
        ),
    )


# ------------------------------------------------------------------ likelihood-ratio test
def lr_design(X: np.ndarray, stages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The logistic design of the LR test and the stage of each of its columns.

    Missing values are handled as in the served logistic candidate: median imputation plus a
    0/1 missing indicator for every column with a missing value. Columns missing in every
    patient carry nothing and are dropped; so are constant columns. Exact duplicates are
    dropped too, keeping the copy of the earliest stage: a block of fields measured together
    (all genotypes, or all inflammatory markers) has one missingness pattern, so it adds one
    indicator parameter, not one per field.
    """
    missing = np.isnan(X)
    present = ~missing.all(axis=0)
    observed = X[:, present]
    filled = np.where(np.isnan(observed), np.nanmedian(observed, axis=0), observed)
    flagged = missing.any(axis=0) & present
    design = np.hstack([filled, missing[:, flagged].astype(float)])
    design_stages = np.r_[stages[present], stages[flagged]]
    order = np.argsort(design_stages, kind="stable")
    design, design_stages = design[:, order], design_stages[order]
    sd = design.std(axis=0)
    keep = sd > 0
    design = (design[:, keep] - design[:, keep].mean(axis=0)) / sd[keep]
    design_stages = design_stages[keep]
    _, first = np.unique(np.round(design, 10), axis=1, return_index=True)
    first = np.sort(first)
    return design[:, first], design_stages[first]


def log_likelihood(design: np.ndarray, y: np.ndarray) -> float:
    """Maximised log-likelihood of a (lightly penalised) logistic fit with an intercept."""
    if design.shape[1] == 0:
        rate = float(np.clip(y.mean(), _EPS, 1 - _EPS))
        return float(np.sum(y * np.log(rate) + (1 - y) * np.log1p(-rate)))
    model = LogisticRegression(C=LR_C, solver="newton-cholesky", max_iter=500).fit(design, y)
    p = model.predict_proba(design)[:, 1]
    return float(-0.5 * deviance_terms(y, p).sum())


def rank(design: np.ndarray) -> int:
    """Number of free parameters in a design (its column rank), without the intercept."""
    return int(np.linalg.matrix_rank(design)) if design.shape[1] else 0


def lr_test(design: np.ndarray, y: np.ndarray, full: np.ndarray, reference: np.ndarray) -> LRTest:
    """LR χ² of the `full` columns against the nested `reference` columns (boolean masks).

    df is the number of parameters the full model adds, counted as a rank difference so that
    a column that is a combination of others (say, a missing indicator equal to the sum of
    two others) is not counted. With df = 0 (the group has no data) there is nothing to test:
    p is NaN.
    """
    if np.any(reference & ~full):
        raise ValueError("the reference model must be nested in the full model")
    df = rank(design[:, full]) - rank(design[:, reference])
    if df <= 0:
        return LRTest(0.0, 0, float("nan"))
    stat = max(
        0.0, 2 * (log_likelihood(design[:, full], y) - log_likelihood(design[:, reference], y))
    )
    return LRTest(stat, df, float(chi2_dist.sf(stat, df)))
