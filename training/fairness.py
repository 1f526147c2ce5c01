"""Discrimination and calibration by sex, age band, site and (where recorded) ancestry.

Calibration within groups is the primary fairness criterion for a risk model (standards.md §5):
a probability must mean the same thing whoever the patient is. Each attribute gets its own
fairlearn `MetricFrame` (not their intersections, whose cells would be tiny) and percentile
bootstrap 95% CIs. Groups with few events are *flagged, not hidden*: dropping them would hide
exactly the patients an audit exists for, while a flag tells the reader not to trust the
numbers. Definitions follow standards.md §3 and `training.metrics`.

The CIs are the ones `MetricFrame(n_boot=..., ci_quantiles=[0.025, 0.975], random_state=seed)`
returns (same resamples, same quantiles; a test checks the equality), computed here directly:
fairlearn 0.15 converts every column element by element on each call, ~55 ms per metric and
resample at n=3000, which made this audit take six minutes instead of seconds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from scipy.special import expit, logit
from scipy.stats import rankdata

from training.calibration_metrics import loess_calibration

#: Age bands in years at baseline; the contract's minimum age is 18.
AGE_BANDS: tuple[str, ...] = ("18-34", "35-49", "50-64", "65+")
_AGE_EDGES = (-math.inf, 35.0, 50.0, 65.0, math.inf)
#: standards.md §5: estimates for groups with fewer events than this are unstable.
MIN_EVENTS = 50
#: Calibration and AUROC need non-events too; fewer than this is flagged as well.
MIN_NON_EVENTS = 10
#: Label of patients whose attribute was not recorded: a group of its own, never dropped.
NOT_RECORDED = "not recorded"
CI_QUANTILES = (0.025, 0.975)
_EPS = 1e-12
_MAX_COEF = 20.0  # a logistic coefficient beyond this means separation, not an estimate

# --------------------------------------------------------------------------- metrics
# Each takes (y_true, y_pred=probability), as MetricFrame passes them, and returns NaN where
# the estimate does not exist (one outcome class, constant predictions), so a degenerate
# bootstrap resample is skipped by the CI instead of crashing the audit.

Metric = Callable[[np.ndarray, np.ndarray], float]


def _logistic(y: np.ndarray, x: np.ndarray | None, offset: np.ndarray) -> np.ndarray | None:
    """MLE of logit P(y=1) = a [+ b·x] + offset; None on separation or no convergence.

    The model of `training.metrics.calibration_intercept_slope` (statsmodels GLM), fitted by
    Newton-Raphson with step halving, 2-5x faster, which the bootstrap needs; a test checks
    that both agree. Under separation the likelihood keeps rising as a coefficient runs off.
    """
    X = np.ones((len(y), 1)) if x is None else np.column_stack([np.ones(len(y)), x])

    def loglik(b: np.ndarray) -> float:
        eta = X @ b + offset
        return float(np.sum(y * eta - np.logaddexp(0.0, eta)))

    beta = np.zeros(X.shape[1])
    for _ in range(100):
        mu = expit(X @ beta + offset)
        try:
            step = np.linalg.solve(X.T @ (X * (mu * (1 - mu))[:, None]), X.T @ (y - mu))
        except np.linalg.LinAlgError:
            return None
        current = loglik(beta)
        while loglik(beta + step) < current and np.abs(step).max() > 1e-12:
            step = step / 2
        beta = beta + step
        if np.abs(beta).max() > _MAX_COEF:
            return None
        if np.abs(step).max() < 1e-10:
            return beta
    return None


def _lp(p: np.ndarray) -> np.ndarray:
    return logit(np.clip(p, _EPS, 1 - _EPS))


def _both_classes(y: np.ndarray) -> bool:
    return 0 < y.sum() < len(y)


def oe_ratio(y: np.ndarray, p: np.ndarray) -> float:
    """Observed / expected events (target 1); above 1 the model under-predicts."""
    return float(np.sum(y) / np.sum(p)) if np.sum(p) > 0 else math.nan


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Mann-Whitney AUROC (ties count 1/2), equal to `roc_auc_score`."""
    y = np.asarray(y, dtype=float)
    if not _both_classes(y):
        return math.nan
    n1 = y.sum()
    n0 = len(y) - n1
    return float((rankdata(p)[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def citl(y: np.ndarray, p: np.ndarray) -> float:
    """Calibration-in-the-large `a` in logit P(y=1) = a + offset(LP) (target 0)."""
    y = np.asarray(y, dtype=float)
    fit = _logistic(y, None, _lp(np.asarray(p))) if _both_classes(y) else None
    return math.nan if fit is None else float(fit[0])


def slope(y: np.ndarray, p: np.ndarray) -> float:
    """Calibration slope `b` in logit P(y=1) = a + b·LP (target 1)."""
    y = np.asarray(y, dtype=float)
    ok = _both_classes(y) and np.ptp(p) > 0
    fit = _logistic(y, _lp(np.asarray(p)), np.zeros(len(y))) if ok else None
    return math.nan if fit is None else float(fit[1])


def ici(y: np.ndarray, p: np.ndarray) -> float:
    """Integrated calibration index from `training.calibration_metrics.loess_calibration`.

    The same loess as the overall ICI (rms `val.prob`: it=0, span 2/3, delta 1% of the range),
    so a group's ICI and the cohort's are comparable. ICI is a mean absolute gap, so noise
    inflates it: small groups and bootstrap resamples read high, and the CI can sit above the
    estimate.
    """
    if len(y) == 0:
        return math.nan
    value = loess_calibration(np.asarray(y, dtype=float), np.asarray(p, dtype=float))["ici"]
    return value if math.isfinite(value) else math.nan


ESTIMATES: dict[str, Metric] = {
    "observed_rate": lambda y, p: float(np.mean(y)) if len(y) else math.nan,
    "mean_predicted": lambda y, p: float(np.mean(p)) if len(p) else math.nan,
    "oe_ratio": oe_ratio,
    "auroc": auroc,
    "citl": citl,
    "slope": slope,
    "ici": ici,
}
METRICS: dict[str, Metric] = {
    "n": lambda y, p: float(len(y)),
    "events": lambda y, p: float(np.sum(y)),
    **ESTIMATES,
}

# --------------------------------------------------------------------------- groups


def _labels(values: pd.Series | np.ndarray) -> np.ndarray:
    """Text labels, missing or blank as NOT_RECORDED (MetricFrame rejects missing values)."""
    series = pd.Series(np.asarray(values, dtype=object))
    text = series.astype(str).str.strip()
    return text.where(series.notna() & text.ne(""), NOT_RECORDED).to_numpy(dtype=object)


def age_band(age_years: pd.Series | np.ndarray) -> np.ndarray:
    """The AGE_BANDS label of each age (lower bound inclusive); missing is NOT_RECORDED."""
    ages = pd.to_numeric(pd.Series(age_years), errors="raise").astype(float)
    return _labels(pd.cut(ages, _AGE_EDGES, right=False, labels=list(AGE_BANDS)).astype(object))


def group_columns(frame: pd.DataFrame, ancestry: pd.Series | None = None) -> pd.DataFrame:
    """The audited attributes, one text column each, row for row with `frame`.

    `frame` is the canonical (validated) frame. `sex` and `age_years` are required fields, so
    their columns are always there; `site` (from `site_id`) and `ancestry` are optional and
    appear only when at least one patient has a value. Ancestry is not a data-dictionary field
    and `validate_table` drops it, so pass the raw table's column; it is aligned by position.
    """
    out = pd.DataFrame({"sex": _labels(frame["sex"]), "age_band": age_band(frame["age_years"])})
    optional = {"site": frame.get("site_id"), "ancestry": ancestry}
    for name, values in optional.items():
        if values is None:
            continue
        if len(values) != len(frame):
            raise ValueError(f"{name} has {len(values)} values for {len(frame)} patients")
        labels = _labels(values)
        if (labels != NOT_RECORDED).any():
            out[name] = labels
    return out


# --------------------------------------------------------------------------- audit


def _resamples(n: int, n_boot: int, seed: int) -> list[np.ndarray]:
    """Row indices drawn exactly as fairlearn 0.15 `generate_bootstrap_samples` draws them."""
    seeds = np.random.default_rng(seed).integers(
        0, np.iinfo(np.uint32).max, size=n_boot, dtype=np.uint32
    )
    return [np.random.RandomState(s).choice(n, size=n, replace=True) for s in seeds]


def _bootstrap_ci(
    y: np.ndarray, p: np.ndarray, labels: np.ndarray, groups: list[str], draws: list[np.ndarray]
) -> np.ndarray:
    """CI bounds, shape (2, groups, ESTIMATES); a group absent from a resample counts as NaN."""
    values = np.full((len(draws), len(groups), len(ESTIMATES)), np.nan)
    for b, idx in enumerate(draws):
        yb, pb, lb = y[idx], p[idx], labels[idx]
        for g, group in enumerate(groups):
            mask = lb == group
            if mask.any():
                values[b, g] = [f(yb[mask], pb[mask]) for f in ESTIMATES.values()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice -> NaN bound
        return np.nanquantile(values, CI_QUANTILES, axis=0)


def _flag(n: int, n_events: int) -> str | None:
    """Why a group's estimates should not be trusted, or None."""
    reasons = []
    if n_events < MIN_EVENTS:
        reasons.append(f"few events: {n_events} events < {MIN_EVENTS}, estimates unstable")
    if n - n_events < MIN_NON_EVENTS:
        reasons.append(f"few non-events: {n - n_events} < {MIN_NON_EVENTS}, estimates unstable")
    if n_events in (0, n):
        reasons.append("AUROC not computable: one outcome class")
    return "; ".join(reasons) or None


def _table(estimates: pd.DataFrame, ci: np.ndarray) -> pd.DataFrame:
    """n, events, each estimate followed by its CI bounds, and the flag; index = group."""
    table = pd.DataFrame(index=pd.Index(estimates.index.astype(str), name="group"))
    table["n"] = estimates["n"].to_numpy(dtype=int)
    table["events"] = estimates["events"].to_numpy(dtype=int)
    for k, name in enumerate(ESTIMATES):
        table[name] = estimates[name].to_numpy(dtype=float)
        table[f"{name}_ci_low"], table[f"{name}_ci_high"] = ci[0, :, k], ci[1, :, k]
    flags = [_flag(n, e) for n, e in zip(table["n"], table["events"], strict=True)]
    table["flag"] = pd.Series(flags, index=table.index, dtype=object)
    return table


def fairness_audit(
    y: np.ndarray, p: np.ndarray, groups: pd.DataFrame, *, n_boot: int = 200, seed: int = 0
) -> FairnessReport:
    """Per-group discrimination and calibration for every column of `groups`.

    `y` (0/1), `p` (predicted probabilities) and `groups` (from `group_columns`) are aligned by
    position. One set of resamples serves every attribute, so the CIs are reproducible from
    `seed` and match `MetricFrame(..., n_boot=n_boot, random_state=seed)`.
    """
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if not len(y) == len(p) == len(groups) > 0:
        raise ValueError(
            f"y, p, groups need one equal, non-zero length: {len(y)}, {len(p)}, {len(groups)}"
        )
    if not np.isin(y, (0.0, 1.0)).all() or not ((p >= 0) & (p <= 1)).all():
        raise ValueError("y must be 0/1 and p probabilities in [0, 1]")
    if groups.shape[1] == 0 or groups.isna().any().any():
        raise ValueError("groups needs columns and no missing values; use group_columns")
    draws = _resamples(len(y), n_boot, seed)
    overall = pd.DataFrame({k: [f(y, p)] for k, f in METRICS.items()}, index=["all"])
    ci = _bootstrap_ci(y, p, np.full(len(y), "all", dtype=object), ["all"], draws)
    tables = {}
    for name in groups.columns:
        labels = groups[name].to_numpy(dtype=object)
        frame = MetricFrame(
            metrics=METRICS, y_true=y, y_pred=p, sensitive_features=pd.Series(labels, name=name)
        )
        order = [str(g) for g in frame.by_group.index]
        tables[name] = _table(frame.by_group, _bootstrap_ci(y, p, labels, order, draws))
    return FairnessReport(tables, _table(overall, ci), n_boot, seed)


# --------------------------------------------------------------------------- report


def _json(value: Any) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


_COLUMNS = (
    ("Observed", "observed_rate", 3),
    ("Predicted", "mean_predicted", 3),
    ("O/E", "oe_ratio", 2),
    ("AUROC", "auroc", 2),
    ("CITL", "citl", 2),
    ("Slope", "slope", 2),
    ("ICI", "ici", 3),
)  # (heading, estimate, decimals)


def _cell(row: pd.Series, name: str, decimals: int) -> str:
    def fmt(v: float) -> str:
        return f"{v:.{decimals}f}" if np.isfinite(v) else "n/a"

    if not np.isfinite(row[name]):
        return "n/a"
    return f"{fmt(row[name])} ({fmt(row[f'{name}_ci_low'])}, {fmt(row[f'{name}_ci_high'])})"


def _markdown_table(table: pd.DataFrame) -> list[str]:
    headings = ["Group", "n", "Events", *(h for h, _, _ in _COLUMNS), "Flag"]
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    for group, row in table.iterrows():
        cells = [str(group), str(row["n"]), str(row["events"])]
        cells += [_cell(row, name, d) for _, name, d in _COLUMNS] + [row["flag"] or ""]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


@dataclass(frozen=True)
class FairnessReport:
    """One table per attribute (index: group) and the whole cohort as the one-row `overall`."""

    tables: dict[str, pd.DataFrame]
    overall: pd.DataFrame
    n_boot: int
    seed: int

    def worst_ici(self) -> float | None:
        """Largest ICI among unflagged groups, for the promotion gate; None if none has one."""
        values = [
            float(v)
            for t in self.tables.values()
            for v in t.loc[t["flag"].isna(), "ici"]
            if math.isfinite(v)
        ]
        return max(values, default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None, so `json.dumps(..., allow_nan=False)` succeeds."""

        def rows(table: pd.DataFrame) -> list[dict[str, Any]]:
            records = table.reset_index().to_dict(orient="records")
            return [{k: _json(v) for k, v in r.items()} for r in records]

        return {
            "n_boot": self.n_boot,
            "seed": self.seed,
            "ci_quantiles": list(CI_QUANTILES),
            "min_events": MIN_EVENTS,
            "min_non_events": MIN_NON_EVENTS,
            "worst_ici": self.worst_ici(),
            "overall": rows(self.overall)[0],
            "attributes": {name: rows(table) for name, table in self.tables.items()},
        }

    def to_markdown(self) -> str:
        """The overall row, then one table per attribute, for the model card."""
        lines = [
            f"Estimate (95% percentile bootstrap CI, {self.n_boot} resamples, seed {self.seed})."
            " Targets: O/E 1, CITL 0, slope 1, ICI 0. Flagged groups stay in the table: with "
            f"fewer than {MIN_EVENTS} events or {MIN_NON_EVENTS} non-events their estimates "
            "are unstable. ICI reads high in small groups.",
        ]
        sections = {"Overall": self.overall}
        sections |= {k.replace("_", " ").capitalize(): t for k, t in self.tables.items()}
        for title, table in sections.items():
            lines += ["", f"### {title}", "", *_markdown_table(table)]
        return "\n".join(lines) + "\n"
