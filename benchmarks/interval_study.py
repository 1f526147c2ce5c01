"""Which per-patient probability interval is honest? Bootstrap ensembles against Venn–Abers.

On simulated cohorts, where every patient's true response probability is known, each method's
95% interval is judged on a large fresh cohort by how often it contains the *true probability*
(coverage), how wide it is, its interval score (width plus 2/α times any miss, lower is
better), and coverage within deciles of the served probability (an interval that covers 95% on
average but 60% among the patients the model calls most likely to respond is not honest where
it matters).

Methods, all on the same training cohort and the same tuned hyperparameters:
- `bootstrap_normal_B30`: the current serving interval: served logit ± 1.96·SD of the member
  logits, with the first 30 members (today's `TrainConfig.n_bootstrap`);
- `bootstrap_normal`: the same with all members (`--members`, default 200);
- `bootstrap_percentile_B30`, `bootstrap_percentile`: the 2.5-97.5% percentiles of the member
  probabilities (Riley & Collins 2023; standards.md §4);
- `venn_abers_ivap`: MAPIE `VennAbersCalibrator`, inductive (2/3 proper training, 1/3
  calibration), interval [p0, p1] from `predict_proba(X, p0_p1_output=True)`;
- `venn_abers_cvap`: MAPIE cross Venn–Abers with 5 folds; the folds' [p0, p1] merged as in
  Vovk et al. 2015 (p1 = GM(p1_k), p0 = 1 − GM(1 − p0_k), the log-loss merge MAPIE uses);
- `venn_abers_oof`: MAPIE `VennAbersCalibrator(cv="prefit")` on the served pipeline's own
  out-of-fold margins, applied to the served margin (what serving could ship with no extra
  model: one isotonic pair as JSON);
- `hull_normal_cvap`: the union of `bootstrap_normal` and `venn_abers_cvap` (a combination);
- `bootstrap_normal_missing`, `bootstrap_normal_missing_B30`: the served method
  (`serving.uncertainty`): the normal interval with the bootstrap SD and the SD of the served
  logit over K imputations of the patient's missing inputs added in variance.

Beside coverage by decile, coverage is split by the number of missing predictor fields: the
true probability is defined on complete values, so a patient's missing inputs are a source of
uncertainty that estimation intervals cannot see. `normal_multiplier_for_95` is the multiple
of the member SD the normal interval would have needed to reach 95% (1.96 if honest).

Training uses `training.pipeline` unchanged except LightGBM runs single-threaded (the machine is
shared; the fitted trees barely differ). Usage:
`.venv/bin/python benchmarks/interval_study.py --out benchmarks/interval_study.json`
(`--quick` for a two-minute smoke run). Results go to stdout and the JSON file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from mapie.calibration import VennAbersCalibrator
from scipy.special import expit, logit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import StratifiedKFold

from features import transform as tf
from features.schema import OUTCOME, PREDICTORS
from features.simulate import simulate_cohort
from serving.uncertainty import interval, missing_input_sd
from training import candidates, pipeline
from training.config import TrainConfig
from training.uncertainty import fit_uncertainty

ALPHA = 0.05
Z = 1.959963984540054
Interval = tuple[np.ndarray, np.ndarray]


class PipelineClassifier(ClassifierMixin, BaseEstimator):
    """One candidate with fixed hyperparameters as an sklearn classifier, for MAPIE to refit.

    `predict_proba` returns expit(margin): Venn–Abers only uses the order of the scores.
    """

    def __init__(
        self, kind: str = "logistic", hyper: dict | None = None, cfg: Any = None, seed: int = 0
    ) -> None:
        self.kind, self.hyper, self.cfg, self.seed = kind, hyper, cfg, seed

    def fit(self, X: np.ndarray, y: np.ndarray) -> PipelineClassifier:
        y = np.asarray(y).astype(int).ravel()
        self.classes_ = np.array([0, 1])
        self.scorer_ = candidates.fit(self.kind, X, y, self.hyper, self.cfg, self.seed)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = expit(self.scorer_.margin(np.asarray(X, dtype=float)))
        return np.column_stack([1 - p, p])


class MarginAsProba(ClassifierMixin, BaseEstimator):
    """A 'fitted' classifier whose single input column is already the score (prefit VA)."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> MarginAsProba:
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = expit(np.asarray(X, dtype=float)[:, 0])
        return np.column_stack([1 - p, p])


def _oof_margin(
    kind: str, X: np.ndarray, y: np.ndarray, fitted: pipeline.Fitted, cfg: TrainConfig, seed: int
) -> np.ndarray:
    """Out-of-fold margins with the pipeline's own folds (as `fit_pipeline` recalibrates)."""
    folds = StratifiedKFold(cfg.inner_folds, shuffle=True, random_state=seed + 1)
    out = np.empty(len(y))
    for fit_idx, pred_idx in folds.split(X, y):
        scorer = candidates.fit(kind, X[fit_idx], y[fit_idx], fitted.hyper, cfg, seed)
        out[pred_idx] = scorer.margin(X[pred_idx])
    return out


def bootstrap_intervals(
    served: np.ndarray, members: np.ndarray, b_small: int
) -> dict[str, Interval]:
    """Normal-on-logit and percentile intervals from member logits (B, n) and the served logit."""
    out: dict[str, Interval] = {}
    for suffix, m in ((f"_B{b_small}", members[:b_small]), ("", members)):
        sd = m.std(axis=0, ddof=1)
        out[f"bootstrap_normal{suffix}"] = (expit(served - Z * sd), expit(served + Z * sd))
        lo, hi = np.percentile(m, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)], axis=0)
        out[f"bootstrap_percentile{suffix}"] = (expit(lo), expit(hi))
    return out


def _binary(p0_p1: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """MAPIE returns one array per one-vs-one pair outside prefit mode; binary has one pair."""
    return np.asarray(p0_p1[0] if isinstance(p0_p1, list) else p0_p1)


def _geo_mean(a: np.ndarray) -> np.ndarray:
    return np.exp(np.log(np.clip(a, 1e-12, 1)).mean(axis=1))


def venn_abers_intervals(
    kind: str,
    X: np.ndarray,
    y: np.ndarray,
    X_test: np.ndarray,
    fitted: pipeline.Fitted,
    cfg: TrainConfig,
    seed: int,
) -> dict[str, Interval]:
    """IVAP and CVAP through MAPIE, and prefit VA on the served pipeline's OOF margins."""
    est = PipelineClassifier(kind, fitted.hyper, cfg, seed)
    ivap = VennAbersCalibrator(estimator=est, inductive=True, random_state=seed)
    ivap.fit(X, y, calib_size=1 / 3, stratify=y)
    p01 = _binary(ivap.predict_proba(X_test, p0_p1_output=True)[1])
    out: dict[str, Interval] = {"venn_abers_ivap": (p01[:, 0], p01[:, 1])}
    cvap = VennAbersCalibrator(estimator=est, inductive=False, n_splits=5, random_state=seed)
    cvap.fit(X, y)
    p01 = _binary(cvap.predict_proba(X_test, p0_p1_output=True)[1])
    k = p01.shape[1] // 2
    out["venn_abers_cvap"] = (1 - _geo_mean(1 - p01[:, :k]), _geo_mean(p01[:, k:]))
    oof = _oof_margin(kind, X, y, fitted, cfg, seed)
    prefit = VennAbersCalibrator(estimator=MarginAsProba().fit(None, None), cv="prefit")
    prefit.fit(oof[:, None], y)
    p01 = _binary(prefit.predict_proba(fitted.scorer.margin(X_test)[:, None], p0_p1_output=True)[1])
    out["venn_abers_oof"] = (p01[:, 0], p01[:, 1])
    return out


MISSING_BINS: tuple[tuple[int, int], ...] = ((0, 0), (1, 4), (5, 9), (10, 99))


def summarise(
    lo: np.ndarray,
    hi: np.ndarray,
    truth: np.ndarray,
    served_p: np.ndarray,
    edges: np.ndarray,
    n_missing: np.ndarray,
) -> dict[str, Any]:
    """Coverage of the true probability, width, interval score; by decile and by missingness.

    `n_missing` counts the patient's missing predictor fields: the true probability is defined
    on complete values, so with missing inputs part of its uncertainty is not estimation
    uncertainty at all and no amount of training data removes it.
    """
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    cover = (lo <= truth) & (truth <= hi)
    width = hi - lo
    score = width + (2 / ALPHA) * (np.clip(lo - truth, 0, None) + np.clip(truth - hi, 0, None))
    decile = np.clip(np.searchsorted(edges, served_p, side="right") - 1, 0, 9)
    return {
        "coverage": float(cover.mean()),
        "mean_width": float(width.mean()),
        "median_width": float(np.median(width)),
        "interval_score": float(score.mean()),
        "contains_served": float(((lo <= served_p) & (served_p <= hi)).mean()),
        "coverage_by_decile": [float(cover[decile == d].mean()) for d in range(10)],
        "width_by_decile": [float(width[decile == d].mean()) for d in range(10)],
        "coverage_by_missing": [
            float(cover[(n_missing >= a) & (n_missing <= b)].mean()) for a, b in MISSING_BINS
        ],
    }


def run_one(
    kind: str,
    n: int,
    rep: int,
    test: dict[str, Any],
    cfg: TrainConfig,
    n_members: int,
    b_small: int,
) -> dict[str, Any]:
    """One training cohort of size n: fit, bootstrap, Venn–Abers, evaluate every interval."""
    seed = 1000 * rep + n
    frame = simulate_cohort(n, seed=seed)
    X, y = tf.transform_array(frame), frame[OUTCOME].to_numpy(dtype=int)
    start = time.perf_counter()
    fitted = pipeline.fit_pipeline(kind, X, y, cfg, seed)
    members = pipeline.bootstrap_members(
        kind, fitted.hyper, X, y, dataclasses.replace(cfg, n_bootstrap=n_members, seed=seed)
    )
    served = fitted.calibrator(fitted.scorer.margin(test["X"]))
    member_logits = np.vstack([m.calibrator(m.scorer.margin(test["X"])) for m in members])
    intervals = bootstrap_intervals(served, member_logits, b_small)
    intervals |= venn_abers_intervals(kind, X, y, test["X"], fitted, cfg, seed)
    (blo, bhi), (vlo, vhi) = intervals["bootstrap_normal"], intervals["venn_abers_cvap"]
    intervals["hull_normal_cvap"] = (np.minimum(blo, vlo), np.maximum(bhi, vhi))
    state = fit_uncertainty(frame, n_members=len(members), seed=seed)
    miss_sd = missing_input_sd(
        test["frame"], lambda M: fitted.calibrator(fitted.scorer.margin(M)), state
    )
    intervals[f"bootstrap_normal_missing_B{b_small}"] = interval(
        served, member_logits[:b_small], miss_sd
    )
    intervals["bootstrap_normal_missing"] = interval(served, member_logits, miss_sd)
    truth, served_p = test["p"], expit(served)
    edges = np.quantile(served_p, np.linspace(0, 1, 11))
    sd = member_logits.std(axis=0, ddof=1)
    sd_small = member_logits[:b_small].std(axis=0, ddof=1)
    z = np.abs(logit(truth) - served) / sd
    complete = test["n_missing"] == 0
    return {
        "kind": kind,
        "n_train": n,
        "rep": rep,
        "members": len(members),
        "seconds": round(time.perf_counter() - start, 1),
        "served_rmse": float(np.sqrt(np.mean((served_p - truth) ** 2))),
        "normal_multiplier_for_95": float(np.quantile(z, 1 - ALPHA)),
        "sd_relative_error_small_b": float(np.median(np.abs(sd_small - sd) / sd)),
        "median_missing_sd": float(np.median(miss_sd[test["n_missing"] > 0])),
        "median_member_sd": float(np.median(sd)),
        "normal_multiplier_for_95_complete": float(np.quantile(z[complete], 1 - ALPHA)),
        "methods": {
            k: summarise(lo, hi, truth, served_p, edges, test["n_missing"])
            for k, (lo, hi) in intervals.items()
        },
    }


SCALARS = (
    "served_rmse",
    "normal_multiplier_for_95",
    "normal_multiplier_for_95_complete",
    "sd_relative_error_small_b",
    "median_member_sd",
    "median_missing_sd",
)


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over repetitions of every scalar and every per-decile list, per (kind, n, method)."""
    rows = []
    for kind, n in sorted({(r["kind"], r["n_train"]) for r in runs}):
        group = [r for r in runs if r["kind"] == kind and r["n_train"] == n]
        row: dict[str, Any] = {"kind": kind, "n_train": n, "reps": len(group)}
        for key in SCALARS:
            row[key] = float(np.mean([r[key] for r in group]))
        row["methods"] = {
            m: {
                k: np.mean([r["methods"][m][k] for r in group], axis=0).tolist()
                for k in group[0]["methods"][m]
            }
            for m in group[0]["methods"]
        }
        rows.append(row)
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'kind':9} {'n':>5} {'method':29} {'cover':>6} {'width':>6} {'score':>6} "
        f"{'min dec':>7}  by missing fields 0|1-4|5-9|10+  by decile of served probability"
    ]
    for r in rows:
        for m, s in r["methods"].items():
            dec = " ".join(f"{c:.2f}" for c in s["coverage_by_decile"])
            mis = "|".join(f"{c:.2f}" for c in s["coverage_by_missing"])
            lines.append(
                f"{r['kind']:9} {r['n_train']:5d} {m:29} {s['coverage']:6.3f} "
                f"{s['mean_width']:6.3f} {s['interval_score']:6.3f} "
                f"{min(s['coverage_by_decile']):7.2f}  {mis:32} {dec}"
            )
        lines.append(
            f"{'':16}served RMSE {r['served_rmse']:.3f}; normal multiplier needed for 95% "
            f"coverage {r['normal_multiplier_for_95']:.2f}, among patients with complete inputs "
            f"{r['normal_multiplier_for_95_complete']:.2f} (1.96 used)"
        )
        lines.append(
            f"{'':16}median logit SD: members {r['median_member_sd']:.3f}, missing inputs "
            f"{r['median_missing_sd']:.3f} (patients with any missing); SD from the first "
            f"B_small members off by {100 * r['sd_relative_error_small_b']:.0f}% (median)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, nargs="+", default=[150, 500, 3000])
    ap.add_argument("--n-test", type=int, default=20_000)
    ap.add_argument("--kinds", nargs="+", default=["logistic", "lightgbm"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--members", type=int, default=200)
    ap.add_argument("--small-b", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="1 rep, 40 members, 5000 test patients")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/interval_study.json"))
    a = ap.parse_args(argv)
    if a.quick:
        a.reps, a.members, a.small_b, a.n_test = 1, min(a.members, 40), 20, 5000
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    np.seterr(invalid="ignore", divide="ignore")  # MAPIE's hull search divides 0/0 by design
    base = TrainConfig()
    cfg = dataclasses.replace(base, lightgbm=dataclasses.replace(base.lightgbm, num_threads=1))
    test_frame = simulate_cohort(a.n_test, seed=987_654)
    test = {
        "frame": test_frame,
        "X": tf.transform_array(test_frame),
        "p": test_frame["true_probability"].to_numpy(dtype=float),
        "n_missing": test_frame[[f.name for f in PREDICTORS]].isna().sum(axis=1).to_numpy(),
    }
    runs = []
    for kind in a.kinds:
        for n in a.n_train:
            for rep in range(a.reps):
                runs.append(run_one(kind, n, rep, test, cfg, a.members, a.small_b))
                print(f"done {kind} n={n} rep={rep} in {runs[-1]['seconds']} s", flush=True)
    rows = aggregate(runs)
    print(_table(rows))
    meta = {
        "n_test": a.n_test,
        "reps": a.reps,
        "members": a.members,
        "small_b": a.small_b,
        "alpha": ALPHA,
        "python": platform.python_version(),
        "test_seed": 987_654,
    }
    a.out.write_text(json.dumps({"settings": meta, "summary": rows, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
