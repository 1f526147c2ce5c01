"""What the data can support: Riley et al.'s minimum sample size for a binary outcome.

Riley et al. (Stat Med 2019;38:1276; reference/standards.md §2) ask three things of a
development sample, and the minimum n is the largest of the three:

1. small overfitting: expected uniform shrinkage S ≥ 0.9, n₁ = p / ((S−1)·ln(1 − R²cs/S));
2. small optimism in apparent fit: apparent − adjusted Nagelkerke R² ≤ 0.05, i.e. criterion 1
   with S₂ = R²cs / (R²cs + 0.05·maxR²cs), maxR²cs = 1 − exp(2·lnL_null/n);
3. a precise overall risk: n₃ = (1.96/0.05)²·φ(1−φ) (±0.05 margin of error).

This re-implements R pmsampsize v1.1.3 (`pmsampsize_bin.R`), which no longer rounds maxR²cs or
S₂ (older versions did, giving 668 instead of 662 in the package example); `pmsampsize` itself
does not install on Python 3.11. "Parameters" counts every coefficient a regression would fit,
dummies and missing-indicator columns included.

The same equation read the other way gives what a sample of n supports: the expected
shrinkage at n (`expected_shrinkage`) and the largest number of parameters that keep S ≥ 0.9
(`max_parameters`). Those two numbers, in plain language, are what `sample_size_report` tells
a data scientist, and its `adequate` flag is what makes the pipeline prefer the simpler, more
strongly penalised candidate (`training.internal_validation.prefer_simple`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import integrate, optimize, stats

ANTICIPATED_CSTATISTIC = 0.70
"""C-statistic assumed before the data are seen. Riley et al. advise a conservative value from
the literature; for AUD outcomes the known predictors have odds ratios of about 1.3-2 per SD
(clinical.md §3, §7), which puts a realistic model at C ≈ 0.70. A run may recompute the report
with its optimism-corrected C afterwards, but the decision uses the pre-specified value."""


@dataclass(frozen=True)
class SampleSize:
    """The three criteria, the required n, its events and events per parameter (EPP)."""

    n1: int
    n2: int
    n3: int
    n: int
    events: float
    epp: float
    shrinkage: float
    """Shrinkage targeted by the binding criterion (criterion 2's S₂ when it is stricter)."""
    r2_cs: float
    max_r2_cs: float
    parameters: int
    prevalence: float

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def cstat_to_r2cs(cstatistic: float, prevalence: float) -> float:
    """Cox-Snell R² implied by a C-statistic, as pmsampsize's `cstat2rsq` but without noise.

    `cstat2rsq` simulates 10⁶ linear predictors, N(0, 1) in one class and N(μ, 1) in the other
    with μ = √2·Φ⁻¹(C), fits a logistic regression and returns 1 − exp(−LR/n). For two normals
    of equal variance that logistic model is exact, so as n → ∞ LR/n tends to twice the mutual
    information between outcome and predictor. We compute that limit by quadrature instead of
    simulating: deterministic, seed-free, and equal to `cstat2rsq` up to its Monte Carlo error
    (about ±0.001; checked against a seeded simulation in the tests).
    """
    if not 0.5 <= cstatistic < 1 or not 0 < prevalence < 1:
        raise ValueError("need 0.5 <= cstatistic < 1 and 0 < prevalence < 1")
    mu = math.sqrt(2.0) * stats.norm.ppf(cstatistic)
    base = math.log(prevalence / (1 - prevalence))

    x = np.linspace(-12.0, mu + 12.0, 20_001)
    logit_post = base + mu * x - mu * mu / 2  # log-odds of the N(μ, 1) class given x
    log_post1, log_post0 = -np.logaddexp(0, -logit_post), -np.logaddexp(0, logit_post)
    f1, f0 = stats.norm.pdf(x, mu, 1), stats.norm.pdf(x, 0, 1)
    integrand = prevalence * f1 * (log_post1 - math.log(prevalence)) + (1 - prevalence) * f0 * (
        log_post0 - math.log(1 - prevalence)
    )
    info = float(integrate.simpson(integrand, x=x))
    return float(1 - math.exp(-2 * info))


def max_r2cs(prevalence: float) -> float:
    """Largest Cox-Snell R² possible at this prevalence: 1 − exp(2·lnL_null/n)."""
    ln_null = prevalence * math.log(prevalence) + (1 - prevalence) * math.log(1 - prevalence)
    return 1 - math.exp(2 * ln_null)


def _criterion_n(parameters: int, r2_cs: float, shrinkage: float) -> int:
    return math.ceil(parameters / ((shrinkage - 1) * math.log(1 - r2_cs / shrinkage)))


def _r2cs(prevalence: float, cstatistic: float | None, r2_cs: float | None) -> float:
    if (cstatistic is None) == (r2_cs is None):
        raise ValueError("give exactly one of cstatistic and r2_cs")
    return r2_cs if r2_cs is not None else cstat_to_r2cs(float(cstatistic), prevalence)


def riley_binary(
    prevalence: float,
    parameters: int,
    *,
    cstatistic: float | None = None,
    r2_cs: float | None = None,
    shrinkage: float = 0.9,
    precision: float = 0.05,
) -> SampleSize:
    """Minimum development sample size for a binary outcome (pmsampsize `type="b"`).

    `precision` is criterion 3's margin of error for the overall risk (0.05 in Riley et al.).
    """
    r2 = _r2cs(prevalence, cstatistic, r2_cs)
    max_r2 = max_r2cs(prevalence)
    if not 0 < r2 < min(shrinkage, max_r2):
        raise ValueError(f"R²cs {r2:.3f} must lie in (0, min(shrinkage, max R²cs {max_r2:.3f}))")
    n1 = _criterion_n(parameters, r2, shrinkage)
    s2 = r2 / (r2 + 0.05 * max_r2)
    n2 = _criterion_n(parameters, r2, s2)
    n3 = math.ceil((1.96 / precision) ** 2 * prevalence * (1 - prevalence))
    n = max(n1, n2, n3)
    return SampleSize(
        n1=n1,
        n2=n2,
        n3=n3,
        n=n,
        events=n * prevalence,
        epp=n * prevalence / parameters,
        shrinkage=max(shrinkage, s2),
        r2_cs=r2,
        max_r2_cs=max_r2,
        parameters=parameters,
        prevalence=prevalence,
    )


def expected_shrinkage(n: int, parameters: int, r2_cs: float) -> float:
    """The S that criterion 1 would need at this n: solves p/n = (S−1)·ln(1 − R²cs/S).

    The right-hand side falls from +∞ (S → R²cs) to 0 (S → 1), so the root is unique. A value
    of 0.5 means a fitted regression's log-odds would have to be halved to be calibrated.
    """
    target = parameters / n

    def gap(s: float) -> float:
        return (s - 1) * math.log(1 - r2_cs / s) - target

    return float(optimize.brentq(gap, r2_cs * (1 + 1e-12), 1 - 1e-12))


def max_parameters(n: int, r2_cs: float, shrinkage: float = 0.9) -> int:
    """Largest number of parameters whose expected shrinkage at n is still ≥ `shrinkage`."""
    return max(0, math.floor(n * (shrinkage - 1) * math.log(1 - r2_cs / shrinkage)))


def sample_size_report(
    n: int,
    events: int,
    parameters: int,
    cstatistic: float = ANTICIPATED_CSTATISTIC,
    *,
    shrinkage: float = 0.9,
) -> dict[str, object]:
    """Riley criteria for the data at hand, with a verdict a data scientist can act on.

    `adequate` is False when n falls short of the required size; the pipeline then prefers the
    simpler, more strongly penalised candidate and the model card calls the model exploratory.
    """
    prevalence = events / n
    if not 0 < prevalence < 1:
        raise ValueError("the sample needs both outcomes to assess its size")
    required = riley_binary(prevalence, parameters, cstatistic=cstatistic, shrinkage=shrinkage)
    r2 = required.r2_cs
    supported = max_parameters(n, r2, shrinkage)
    s_here = expected_shrinkage(n, parameters, r2)
    adequate = n >= required.n
    if adequate:
        verdict = (
            f"The data ({n} patients, {events} responders) meet Riley et al.'s criteria for "
            f"{parameters} parameters at C={cstatistic:.2f} (required n={required.n}); "
            f"expected shrinkage {s_here:.2f}."
        )
    else:
        verdict = (
            f"The data support about {supported} parameters at shrinkage {shrinkage}; "
            f"the candidate model has {parameters} (required n={required.n}, "
            f"{required.events:.0f} events, for C={cstatistic:.2f}; here n={n}, "
            f"{events} events, expected shrinkage {s_here:.2f}). Treat the model as "
            "exploratory; the pipeline prefers the more strongly penalised model."
        )
    return {
        "n": n,
        "events": events,
        "parameters": parameters,
        "cstatistic": cstatistic,
        "r2_cs": r2,
        "required": required.to_dict(),
        "expected_shrinkage": s_here,
        "max_parameters": supported,
        "adequate": adequate,
        "verdict": verdict,
    }


def candidate_parameters(X: np.ndarray) -> int:
    """Parameters of the logistic candidate: one coefficient per model column.

    The logistic candidate imputes medians without missing indicators (missingness in these
    registries is driven by site and assay availability, not by the outcome; LightGBM still
    sees missingness natively), so every column is one fitted coefficient. This is the count
    Riley's criteria need; LightGBM has no such count, so the logistic one stands for the
    candidate set, as is conventional.
    """
    return int(X.shape[1])
