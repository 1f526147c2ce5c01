"""Is this patient like the development patients? The applicability block (standards.md §8).

Per-field range checks miss rare *combinations*: no heavy drinking days with an AUDIT of 40 and
a PEth of 4000 ng/mL are each plausible, together they describe nobody the model learned from.
The multivariate check here is a robust Mahalanobis distance in Gaussian-copula space:

- each numeric predictor field is mapped to a normal score through its training empirical
  CDF (stored as knots), which makes the distance rank-based (robust to outliers and to the
  skew of the laboratory values) and copes with 0/1/2 genotypes and flags;
- the correlation of those scores is estimated with pairwise deletion, so the 30-50% of
  patients missing a whole block of biomarkers still inform it;
- a patient is measured only on the fields they have: d² = z_Oᵀ R_OO⁻¹ z_O on the observed set
  O, converted to a χ² tail on |O| degrees of freedom so patients with different numbers of
  missing fields are comparable (`unusualness`, larger = more unusual).

Why not `MinCovDet` on median-imputed columns: with block missingness the imputed median is a
spike that the MCD subset collapses onto, and low-cardinality columns (genotypes) then have zero
spread in it, so the covariance is singular and distances explode (checked on simulated
cohorts; training/typicality.py). The cut-off and the "percent of development patients at
least this unusual" come from held-out development patients, never from the rows the
correlation was fitted on (training.typicality.fit_typicality).

`applicability` also reports fields outside the training range and missingness patterns over
data-dictionary groups that never occurred in training. Everything reads JSON state only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtri
from scipy.stats import chi2

from features.schema import BY_NAME, GROUP_LABELS, PREDICTOR_GROUPS, PREDICTORS

STATE_FORMAT = 1
METHOD = "gaussian_copula_mahalanobis"
#: At most this many features are named as making a patient unusual, and only those carrying at
#: least MIN_SHARE of the squared distance: a clinician needs the two or three reasons, not 30.
MAX_UNUSUAL = 4
MIN_SHARE = 0.08
_LN10 = math.log(10.0)


def normal_scores(frame: pd.DataFrame, model: Mapping[str, Any]) -> np.ndarray:
    """(n, p) normal scores of the model's columns; NaN where the value is missing.

    Values beyond the training range get the score of the range's end: the range check reports
    them, and a distance that grew without bound would hide every other reason.
    """
    n_train = float(model["n"])
    lo, hi = 0.5 / n_train, 1.0 - 0.5 / n_train
    values = frame[list(model["columns"])].astype(float).to_numpy()
    out = np.full(values.shape, np.nan)
    for j, name in enumerate(model["columns"]):
        x = values[:, j]
        knots = model["knots"][name]
        cdf = np.interp(x, knots["x"], knots["cdf"])
        out[:, j] = np.where(np.isnan(x), np.nan, ndtri(np.clip(cdf, lo, hi)))
    return out


def row_patterns(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of a boolean matrix and each row's index among them.

    `np.unique(axis=0)` sorts the rows as byte strings, which took a second per 50,000
    patients; with at most 64 columns each row is one integer, and unique integers are fast.
    """
    if mask.shape[1] > 64:
        patterns, inverse = np.unique(mask, axis=0, return_inverse=True)
        return patterns, inverse.ravel()
    codes = mask.astype(np.uint64) @ (np.uint64(1) << np.arange(mask.shape[1], dtype=np.uint64))
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    return mask[first], inverse.ravel()


def distances(z: np.ndarray, correlation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Squared distance, per-column contributions (summing to it) and observed-field counts.

    Rows are grouped by which columns they observe; each group needs one small inverse. The
    contribution of column j is z_j·(R_OO⁻¹ z_O)_j: it can be negative when a value is *less*
    surprising given the others, and the contributions add up exactly to d².
    """
    observed = ~np.isnan(z)
    d2 = np.zeros(len(z))
    contrib = np.zeros_like(z)
    patterns, inverse = row_patterns(observed)
    # rows of each pattern as slices of one sort: a mask per pattern would cost n per pattern,
    # and a large batch has tens of thousands of patterns
    order = np.argsort(inverse, kind="stable")
    ends = np.cumsum(np.bincount(inverse, minlength=len(patterns)))
    inverses = _pattern_inverses(patterns, correlation)
    for g, pattern in enumerate(patterns):
        rows = order[ends[g - 1] if g else 0 : ends[g]]
        cols = np.flatnonzero(pattern)
        if len(cols) == 0:
            continue
        zo = z[np.ix_(rows, cols)]
        # each pattern's inverse applied row by row (einsum): a multi-right-hand-side solve
        # would make a patient's distance depend, in the last bit, on who shares the batch
        c = zo * np.einsum("ij,jk->ik", zo, inverses[g])
        contrib[np.ix_(rows, cols)] = c
        d2[rows] = c.sum(axis=1)
    return d2, contrib, observed.sum(axis=1)


def _pattern_inverses(patterns: np.ndarray, correlation: np.ndarray) -> list[np.ndarray]:
    """R_OO⁻¹ for each pattern's observed set O, inverted in stacks of equal size.

    A stacked `np.linalg.inv` inverts each matrix on its own with the same LAPACK call as a
    single one, so the result does not depend on which other patterns are in the batch
    (tests/unit/test_typicality.py); stacking only removes per-call overhead, which was half
    the cost with thousands of patterns per batch.
    """
    out: list[np.ndarray] = [np.empty((0, 0))] * len(patterns)
    sizes = patterns.sum(axis=1)
    for k in np.unique(sizes[sizes > 0]).tolist():
        which = np.flatnonzero(sizes == k)
        cols = np.nonzero(patterns[which])[1].reshape(len(which), k)
        stacked = np.linalg.inv(correlation[cols[:, :, None], cols[:, None, :]])
        for g, inv in zip(which.tolist(), stacked, strict=True):
            out[g] = inv
    return out


def unusualness(frame: pd.DataFrame, model: Mapping[str, Any]) -> np.ndarray:
    """-log10 of the χ² tail probability of each patient's distance (0 = at the centre)."""
    z = normal_scores(frame, model)
    d2, _, df = distances(z, np.asarray(model["correlation"], dtype=float))
    return _tail_score(d2, df)


def _tail_score(d2: np.ndarray, df: np.ndarray) -> np.ndarray:
    safe_df = np.maximum(df, 1)
    return np.where(df > 0, -chi2.logsf(d2, safe_df) / _LN10, 0.0)


def percent_at_least(score: np.ndarray, heldout_quantiles: Sequence[float]) -> np.ndarray:
    """Percent of held-out development patients whose unusualness is >= `score`."""
    q = np.asarray(heldout_quantiles, dtype=float)
    levels = np.linspace(0.0, 1.0, len(q))
    below = np.interp(score, q, levels, left=0.0, right=1.0)
    return 100.0 * (1.0 - below)


def missing_groups(frame: pd.DataFrame) -> list[list[str]]:
    """Per patient: predictor groups of the data dictionary with every field missing."""
    patterns, inverse = missingness_patterns(frame)
    groups = pattern_groups(patterns)
    return [list(groups[g]) for g in inverse.tolist()]


_BOUNDED = [f.name for f in PREDICTORS if f.kind != "category"]
_LEVELLED = [f.name for f in PREDICTORS if f.kind == "category"]
_ORDER = [f.name for f in PREDICTORS]


def outside_support(frame: pd.DataFrame, reference: Mapping[str, Any]) -> list[list[str]]:
    """Per patient: fields whose value lies outside the training [min, max], or whose level
    never occurred, in schema order. A field the training data never recorded is outside
    whenever it is given. One float block and one array per category field, so a large batch
    costs a few comparisons per field and a single patient a handful of pandas calls."""
    fields = reference["fields"]
    num = frame[_BOUNDED].to_numpy(dtype=float, na_value=np.nan)
    lo = np.array([fields.get(n, {}).get("min", np.nan) for n in _BOUNDED], dtype=float)
    hi = np.array([fields.get(n, {}).get("max", np.nan) for n in _BOUNDED], dtype=float)
    flagged = dict(zip(_BOUNDED, (~np.isnan(num) & ~((num >= lo) & (num <= hi))).T, strict=True))
    for name in _LEVELLED:
        if "levels" in fields.get(name, {}):
            values = frame[name].to_numpy(dtype=object)
            known = np.isin(values, np.asarray(fields[name]["levels"], dtype=object))
            flagged[name] = ~pd.isna(values) & ~known
    matrix = np.column_stack([flagged.get(n, np.zeros(len(frame), dtype=bool)) for n in _ORDER])
    out: list[list[str]] = [[] for _ in range(len(frame))]
    for i in np.flatnonzero(matrix.any(axis=1)):
        out[i] = [_ORDER[j] for j in np.flatnonzero(matrix[i])]
    return out


def _value(name: str, v: object) -> object:
    kind = BY_NAME[name].kind
    if kind == "boolean":
        return bool(v)
    if kind == "integer":
        return int(v)  # type: ignore[call-overload]
    return float(v)  # type: ignore[arg-type]


def _unusual(row: Mapping[str, Any], columns: Sequence[str], z: np.ndarray, c: np.ndarray,
             d2: float) -> list[dict[str, Any]]:  # fmt: skip
    if d2 <= 0:
        return []
    order = np.argsort(-c, kind="stable")[:MAX_UNUSUAL]
    return [
        {
            "feature": columns[j],
            "label": BY_NAME[columns[j]].label,
            "value": _value(columns[j], row[columns[j]]),
            "unit": BY_NAME[columns[j]].unit_label,
            "direction": "high" if z[j] > 0 else "low",
            "share_of_distance": round(float(c[j] / d2), 3),
        }
        for j in order
        if c[j] / d2 >= MIN_SHARE
    ]


@dataclass(frozen=True)
class Applicability:
    """The applicability of a batch, column by column: one entry per patient, except the
    missingness patterns, which patients share (`pattern[i]` indexes `groups` and `unseen`).

    A batch of a million patients needs its JSON, not a million dicts (`block` builds one).
    `patterns[g]` marks the predictors (schema order) missing in pattern g.
    """

    typical: np.ndarray
    percentile: np.ndarray
    unusual: list[list[dict[str, Any]]]
    outside: list[list[str]]
    pattern: np.ndarray
    patterns: np.ndarray
    groups: list[list[str]]
    unseen: np.ndarray

    def block(self, i: int) -> dict[str, Any]:
        """Patient i's applicability block (the `/v1/predict` shape)."""
        g = int(self.pattern[i])
        return {
            "typical": bool(self.typical[i]),
            "typicality_percentile": float(self.percentile[i]),
            "unusual_features": self.unusual[i],
            "outside_training_support": self.outside[i],
            "unseen_missingness_pattern": bool(self.unseen[g]),
            "missing_groups": list(self.groups[g]),
        }


def missingness_patterns(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The distinct patterns of missing predictors (rows of a bool matrix) and each
    patient's pattern index: patients who lack the same inputs get the same warnings."""
    return row_patterns(frame[_ORDER].isna().to_numpy())


def applicability_columns(
    frame: pd.DataFrame, reference: Mapping[str, Any], typicality_state: Mapping[str, Any]
) -> Applicability:
    """The applicability of every patient of a canonical frame, in frame order.

    `unusual_features` is filled only for an atypical patient (it explains the flag);
    `typicality_percentile` is always given: the percent of held-out development patients at
    least as unusual (small = rare; below 1 means beyond the cut-off for most states).
    """
    model = typicality_state["model"]
    columns = list(model["columns"])
    z = normal_scores(frame, model)
    d2, contrib, df = distances(z, np.asarray(model["correlation"], dtype=float))
    score = _tail_score(d2, df)
    percent = percent_at_least(score, typicality_state["heldout"]["quantiles"])
    # Python's round (correctly rounded), not np.round (scales by 100 first)
    percent = np.array([round(p, 2) for p in percent.tolist()], dtype=float)
    typical = score <= typicality_state["cutoff"]
    unusual: list[list[dict[str, Any]]] = [[] for _ in range(len(frame))]
    atypical = np.flatnonzero(~typical)
    if len(atypical):  # the explanation of a flag needs the values: read them for those only
        values = frame[columns].iloc[atypical].to_numpy(dtype=object)
        for k, i in enumerate(atypical.tolist()):
            row = dict(zip(columns, values[k], strict=True))
            unusual[i] = _unusual(row, columns, z[i], contrib[i], d2[i])
    patterns, inverse = missingness_patterns(frame)
    groups = pattern_groups(patterns)
    seen = {tuple(p) for p in typicality_state["missingness_patterns"]}
    unseen = np.array([tuple(g) not in seen for g in groups], dtype=bool)
    return Applicability(
        typical=typical,
        percentile=percent,
        unusual=unusual,
        outside=outside_support(frame, reference),
        pattern=inverse,
        patterns=patterns,
        groups=groups,
        unseen=unseen,
    )


def pattern_groups(patterns: np.ndarray) -> list[list[str]]:
    """Per missingness pattern, the predictor groups with every field missing, in schema order."""
    members = {g: [j for j, f in enumerate(PREDICTORS) if f.group == g] for g in PREDICTOR_GROUPS}
    return [[g for g, cols in members.items() if p[cols].all()] for p in patterns]


def applicability(
    frame: pd.DataFrame, reference: Mapping[str, Any], typicality_state: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Per patient, the applicability block (see `applicability_columns`)."""
    columns = applicability_columns(frame, reference, typicality_state)
    return [columns.block(i) for i in range(len(frame))]


def _shown(u: Mapping[str, Any]) -> str:
    v = u["value"]
    text = ("yes" if v else "no") if isinstance(v, bool) else f"{v:g}"
    return f"{text} {u['unit']}".strip()


def _how_rare(percent: float) -> str:
    return "Fewer than 0.5%" if percent < 0.5 else f"Only {percent:.1f}%"


def warnings_from(block: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Clinician-facing warnings (code, fields, message) for one patient's applicability block.

    Values outside the training range are already worded by `serving.applicability`; these
    two cover what a per-field check cannot see.
    """
    out = []
    if not block["typical"]:
        feats = block["unusual_features"]
        what = "; ".join(f"{u['label']} {_shown(u)} ({u['direction']})" for u in feats)
        out.append(
            {
                "code": "atypical_patient",
                "fields": [u["feature"] for u in feats],
                "message": f"{_how_rare(block['typicality_percentile'])} of development patients "
                f"were this unusual{f' (mostly: {what})' if what else ''}; the model has seen few "
                "patients like this one, so treat the estimate with extra caution.",
            }
        )
    if block["unseen_missingness_pattern"]:
        labels = ", ".join(GROUP_LABELS[g] for g in block["missing_groups"])
        out.append(
            {
                "code": "unseen_missingness_pattern",
                "fields": [],
                "message": f"No development patient lacked exactly this set of inputs ({labels} "
                "all missing); the model's handling of this gap has not been checked.",
            }
        )
    return out


def check_state(state: Mapping[str, Any]) -> None:
    """Refuse a typicality state this code cannot apply (corrupt or newer), naming the problem."""
    if state.get("format") != STATE_FORMAT or state.get("method") != METHOD:
        raise ValueError(
            f"typicality state {state.get('method')!r} v{state.get('format')} is not "
            f"{METHOD!r} v{STATE_FORMAT}"
        )
    model = state["model"]
    p = len(model["columns"])
    corr = np.asarray(model["correlation"], dtype=float)
    if corr.shape != (p, p) or set(model["knots"]) != set(model["columns"]):
        raise ValueError("typicality state: correlation or knots do not match the columns")
    unknown = set(model["columns"]) - {f.name for f in PREDICTORS}
    if unknown:
        raise ValueError(f"typicality state: unknown columns {sorted(unknown)}")
