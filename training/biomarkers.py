"""Added value of biomarker groups over clinical data (issue 3; reference/standards.md §3).

**Nested models.** Each model adds one data-dictionary group to the one before, in the order
a clinic would add tests (routine liver/alcohol labs, an inflammatory panel, genotyping):

    (1) clinical = demographic, alcohol_use, psychiatric, treatment_plan
    (2) (1) + alcohol_biomarker
    (3) (2) + inflammatory_biomarker (inflammatory markers and BDNF)
    (4) (3) + genetic

The steps compare (2) with (1), (3) with (2), (4) with (3), and "all biomarkers" = (4) with
(1). Each group is judged given the clinical data *and every group before it*; genotypes,
last, are judged given everything else, which is the right null for them: they correlate with
drinking severity, so the question is added value, not association. Because the order
matters, the LR test of each group given all the others is reported too (`lr_given_others`).

**Out-of-sample gains** come from `training.biomarker_fits` (every model refitted inside the
same folds, so differences are paired) and `training.biomarker_stats` (patient-level bootstrap
of the out-of-fold predictions: the CIs cover the sampling of patients, not the refitting).
The penalised logistic is the primary estimator, being the family of the LR test; LightGBM,
with a fixed small-data configuration, shows whether a flexible model finds more.

**LR test.** Nested logistic fits on all patients, lightly penalised (`biomarker_stats.LR_C`),
with median imputation + missing indicators as in the served logistic candidate; df counts
the added parameters, indicators included (a block of fields missing together adds one).

**Verdict** (pre-specified, per step): "added value" needs both LR p < `ALPHA` and a deviance
gain of the primary estimator whose 95% CI lies above 0; see `verdict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from features.schema import BY_NAME, OUTCOME
from features.transform import COLUMNS, DERIVED_FACTORS, FEATURE_NAMES, transform_array
from training import biomarker_stats as bs
from training.biomarker_fits import ESTIMATORS, out_of_fold
from training.decision_curve import THRESHOLDS

CLINICAL_GROUPS: tuple[str, ...] = ("demographic", "alcohol_use", "psychiatric", "treatment_plan")
#: The blocks in the order they are added; model m uses blocks 0..m.
BLOCKS: tuple[tuple[str, ...], ...] = (
    CLINICAL_GROUPS,
    ("alcohol_biomarker",),
    ("inflammatory_biomarker",),
    ("genetic",),
)
MODEL_NAMES: tuple[str, ...] = ("clinical", "+alcohol", "+inflammatory", "+genetic")
#: Decision thresholds of the net-benefit comparison (0.10-0.60): the decision curve's own,
#: so the report and the model's decision curve use one range.
DECISION_THRESHOLDS: tuple[float, ...] = THRESHOLDS
ALPHA = 0.05
#: Below this many outcome events (of the rarer class) per parameter of the full model, the
#: fits overfit and the χ² approximation of the LR test fails: the report says so.
MIN_EVENTS_PER_PARAMETER = 10


@dataclass(frozen=True)
class StepSpec:
    """Model `model` against its nested `reference` (indices into BLOCKS)."""

    key: str
    label: str
    model: int
    reference: int


STEPS: tuple[StepSpec, ...] = (
    StepSpec("alcohol_biomarker", "Alcohol biomarkers", 1, 0),
    StepSpec("inflammatory_biomarker", "Inflammatory markers and BDNF", 2, 1),
    StepSpec("genetic", "Genetic variants", 3, 2),
    StepSpec("all_biomarkers", "All biomarkers", 3, 0),
)


def _column_stage(factor: str) -> int:
    """A derived feature needs all its fields, so it enters with the latest of their blocks."""
    fields = {d.name: d.fields for d in DERIVED_FACTORS}.get(factor, (factor,))
    block = {g: i for i, groups in enumerate(BLOCKS) for g in groups}
    return max(block[BY_NAME[f].group] for f in fields)


#: Block index of each model column, aligned with `FEATURE_NAMES`.
STAGES: np.ndarray = np.array([_column_stage(c.factor) for c in COLUMNS])


@dataclass(frozen=True)
class Step:
    spec: StepSpec
    added_columns: tuple[str, ...]
    gains: dict[str, bs.Gain]
    """estimator -> paired out-of-sample gains; the first estimator is the primary one."""
    lr: bs.LRTest
    verdict: str
    text: str

    def to_dict(self) -> dict:
        return {
            "key": self.spec.key,
            "label": self.spec.label,
            "model": MODEL_NAMES[self.spec.model],
            "reference": MODEL_NAMES[self.spec.reference],
            "added_columns": list(self.added_columns),
            "gains": {k: asdict(g) for k, g in self.gains.items()},
            "lr_test": self.lr.to_dict(),
            "verdict": self.verdict,
            "text": self.text,
        }


@dataclass(frozen=True)
class BiomarkerReport:
    n: int
    events: int
    seed: int
    folds: int
    resamples: int
    estimators: tuple[str, ...]
    performance: dict[str, dict[str, dict[str, float]]]
    """estimator -> model name -> out-of-fold deviance, Brier, AUROC, mean net benefit."""
    steps: tuple[Step, ...]
    lr_given_others: dict[str, bs.LRTest]
    """Biomarker group -> LR test of the full model against the full model without it."""
    warnings: tuple[str, ...] = ()
    """What the data cannot support, in words (empty when nothing needs saying)."""

    def to_dict(self) -> dict:
        """Plain JSON-ready data (NaN becomes None)."""
        return _clean(
            {
                "n": self.n,
                "events": self.events,
                "seed": self.seed,
                "folds": self.folds,
                "resamples": self.resamples,
                "alpha": ALPHA,
                "estimators": list(self.estimators),
                "decision_thresholds": list(DECISION_THRESHOLDS),
                "models": {
                    m: [g for b in BLOCKS[: i + 1] for g in b] for i, m in enumerate(MODEL_NAMES)
                },
                "performance": self.performance,
                "steps": [s.to_dict() for s in self.steps],
                "lr_given_others": {k: v.to_dict() for k, v in self.lr_given_others.items()},
                "warnings": list(self.warnings),
            }
        )

    def summary_lines(self) -> list[str]:
        """The warnings, then one verdict line per step."""
        return [f"warning: {w}" for w in self.warnings] + [s.text for s in self.steps]


def _clean(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


# ------------------------------------------------------------------ verdicts
VERDICTS: dict[str, str] = {
    "added_value": "evidence of added value",
    "association_only": "associated with response given the reference predictors, "
    "but no clear out-of-sample gain",
    "out_of_sample_only": "an out-of-sample gain without a significant LR test "
    "(interpret with care)",
    "no_evidence": "no evidence of added value",
    "not_assessed": "not assessed: no patient has data for this group",
}
#: Added to "no evidence" when the primary estimator's deviance CI lies below zero.
WORSE = "; out-of-sample predictions are worse with it"


def verdict(lr: bs.LRTest, deviance: bs.Interval, alpha: float = ALPHA) -> str:
    """The pre-specified rule, as a key of `VERDICTS`.

    The LR test asks *whether* the group is a risk factor given the reference predictors
    (standards.md §3); the out-of-sample deviance gain asks whether using it improves
    predictions for new patients. "Added value" needs both.
    """
    if lr.df == 0:
        return "not_assessed"
    significant = lr.p_value < alpha
    gain = deviance.low > 0
    if significant and gain:
        return "added_value"
    if significant:
        return "association_only"
    return "out_of_sample_only" if gain else "no_evidence"


def signed(x: float, digits: int = 1) -> str:
    """A number with a true minus sign, as a reader expects in a report."""
    text = f"{x:.{digits}f}"
    if float(text) == 0:
        text = text.lstrip("-")  # no "−0.0"
    return text.replace("-", "−")


def format_p(p: float) -> str:
    """p to two significant places, floored at 0.001."""
    if np.isnan(p):
        return "p not available"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def verdict_text(spec: StepSpec, code: str, gains: dict[str, bs.Gain], lr: bs.LRTest) -> str:
    """One line a data scientist can read: the verdict, then the numbers behind it."""
    if code == "not_assessed":
        return f"{spec.label}: {VERDICTS[code]}"
    kinds = list(gains)
    d = gains[kinds[0]].deviance
    phrase = VERDICTS[code] + (WORSE if code == "no_evidence" and d.high < 0 else "")
    parts = [
        f"Δdeviance {signed(d.estimate)}, 95% CI {signed(d.low)} to {signed(d.high)}",
        f"LR χ² {lr.chi2:.1f} on {lr.df} df, {format_p(lr.p_value)}",
    ]
    for kind in kinds[1:]:
        o = gains[kind].deviance
        parts.append(f"{kind} Δdeviance {signed(o.estimate)} ({signed(o.low)} to {signed(o.high)})")
    return f"{spec.label}: {phrase} ({'; '.join(parts)})"


# ------------------------------------------------------------------ the analysis
def _outcome(frame: pd.DataFrame, folds: int, resamples: int) -> np.ndarray:
    if OUTCOME not in frame.columns:
        raise ValueError(f"the frame has no {OUTCOME!r} column; validate with training=True")
    y = frame[OUTCOME].to_numpy(dtype=float)
    if not np.all(np.isin(y, (0.0, 1.0))):
        raise ValueError(f"{OUTCOME} must be 0 or 1 for every patient")
    if folds < 2 or resamples < 1:
        raise ValueError(f"need folds >= 2 and resamples >= 1, got {folds} and {resamples}")
    smaller = int(min(y.sum(), len(y) - y.sum()))
    if smaller < 2 * folds:
        raise ValueError(
            f"{smaller} patient(s) in the smaller outcome class: too few for {folds}-fold "
            f"comparisons with inner tuning (need at least {2 * folds})"
        )
    return y.astype(int)


def biomarker_value(
    frame: pd.DataFrame,
    *,
    seed: int,
    folds: int = 5,
    resamples: int = 1000,
    estimators: Sequence[str] = ESTIMATORS,
) -> BiomarkerReport:
    """Nested-model comparison of the biomarker groups on a validated training frame.

    BLAS is held to one thread meanwhile: the many small logistic fits run several times
    faster on one thread than with threads competing for two cores.
    """
    y = _outcome(frame, folds, resamples)
    X = transform_array(frame)
    column_sets = [np.flatnonzero(STAGES <= m) for m in range(len(BLOCKS))]
    with threadpool_limits(1):
        oof = out_of_fold(
            X, y, column_sets, FEATURE_NAMES, folds=folds, seed=seed, estimators=estimators
        )
        design, stage = bs.lr_design(X, STAGES)
        weights = bs.bootstrap_weights(len(y), resamples, seed)
        terms = {k: [bs.terms(y, p, weights, DECISION_THRESHOLDS) for p in oof[k]] for k in oof}
        steps = tuple(_step(spec, terms, weights, design, stage, y) for spec in STEPS)
        others = {
            BLOCKS[b][0]: bs.lr_test(design, y, stage >= 0, stage != b)
            for b in range(1, len(BLOCKS))
        }
    return BiomarkerReport(
        n=len(y),
        events=int(y.sum()),
        seed=seed,
        folds=folds,
        resamples=resamples,
        estimators=tuple(estimators),
        performance={
            k: {MODEL_NAMES[m]: t.summary() for m, t in enumerate(v)} for k, v in terms.items()
        },
        steps=steps,
        lr_given_others=others,
        warnings=_support_warnings(y, bs.rank(design)),
    )


def _support_warnings(y: np.ndarray, parameters: int) -> tuple[str, ...]:
    """DESIGN decision 4: say so when the data cannot support the analysis."""
    smaller = int(min(y.sum(), len(y) - y.sum()))
    per_parameter = smaller / max(parameters, 1)
    if per_parameter >= MIN_EVENTS_PER_PARAMETER:
        return ()
    return (
        f"{smaller} patients in the rarer outcome class for {parameters} parameters of the full "
        f"model ({per_parameter:.1f} per parameter, below {MIN_EVENTS_PER_PARAMETER}): the "
        "fits overfit and LR p-values run too small, so the verdicts are unreliable; read the "
        "out-of-sample gains and their CIs only",
    )


def _step(
    spec: StepSpec,
    terms: dict[str, list[bs.Terms]],
    weights: np.ndarray,
    design: np.ndarray,
    stage: np.ndarray,
    y: np.ndarray,
) -> Step:
    gains = {k: bs.paired_gain(t[spec.model], t[spec.reference], weights) for k, t in terms.items()}
    lr = bs.lr_test(design, y, stage <= spec.model, stage <= spec.reference)
    code = verdict(lr, next(iter(gains.values())).deviance)
    added = np.flatnonzero((STAGES <= spec.model) & (STAGES > spec.reference))
    return Step(
        spec,
        tuple(FEATURE_NAMES[i] for i in added),
        gains,
        lr,
        code,
        verdict_text(spec, code, gains, lr),
    )
