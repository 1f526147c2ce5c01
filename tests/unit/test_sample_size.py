"""Riley sample-size criteria against the R package and the table in reference/standards.md §2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats

from training.sample_size import (
    candidate_parameters,
    cstat_to_r2cs,
    expected_shrinkage,
    max_parameters,
    riley_binary,
    sample_size_report,
)


def test_reproduces_the_pmsampsize_example() -> None:
    # pmsampsize(type="b", csrsquared=0.288, parameters=24, prevalence=0.174), R v1.1.3
    s = riley_binary(0.174, 24, r2_cs=0.288)
    assert (s.n1, s.n2, s.n3, s.n) == (623, 662, 221, 662)
    assert s.events == pytest.approx(662 * 0.174)
    assert s.epp == pytest.approx(4.80, abs=0.005)
    assert s.shrinkage == pytest.approx(0.905, abs=0.0005)  # criterion 2 binds


def test_criteria_follow_the_formulas_by_hand() -> None:
    p, r2, phi = 10, 0.2, 0.4
    s = riley_binary(phi, p, r2_cs=r2)
    assert s.n1 == math.ceil(p / ((0.9 - 1) * math.log(1 - r2 / 0.9)))
    max_r2 = 1 - math.exp(2 * (phi * math.log(phi) + (1 - phi) * math.log(1 - phi)))
    s2 = r2 / (r2 + 0.05 * max_r2)
    assert s.n2 == math.ceil(p / ((s2 - 1) * math.log(1 - r2 / s2)))
    assert s.n3 == math.ceil((1.96 / 0.05) ** 2 * phi * (1 - phi))
    assert s.n == max(s.n1, s.n2, s.n3)


# prevalence, C, R2cs, n needed, events, EPP, expected S at n = 100/300/500/1000/2000 (p = 30)
TABLE = [
    (0.3, 0.70, 0.103, 2462, 739, 24.6, (0.30, 0.53, 0.65, 0.79, 0.88)),
    (0.3, 0.75, 0.160, 1536, 461, 15.4, (0.40, 0.65, 0.75, 0.85, 0.92)),
    (0.3, 0.80, 0.228, 1030, 309, 10.3, (0.50, 0.73, 0.82, 0.90, 0.95)),
    (0.5, 0.70, 0.121, 2074, 1037, 34.6, (0.33, 0.58, 0.69, 0.81, 0.90)),
    (0.5, 0.75, 0.186, 1300, 650, 21.7, (0.44, 0.68, 0.78, 0.87, 0.93)),
]


@pytest.mark.parametrize(("prev", "c", "r2", "n", "events", "epp", "shrink"), TABLE)
def test_standards_table_rows(prev, c, r2, n, events, epp, shrink) -> None:
    # The table used pmsampsize's simulated cstat2rsq (Monte Carlo error ~0.001 in R²cs, which
    # moves n by a few tenths of a percent); ours is the noiseless limit of that simulation.
    assert cstat_to_r2cs(c, prev) == pytest.approx(r2, abs=0.001)
    s = riley_binary(prev, 30, cstatistic=c)
    assert s.n == pytest.approx(n, rel=0.005)
    assert s.events == pytest.approx(events, rel=0.005)
    assert s.epp == pytest.approx(epp, abs=0.15)
    got = [expected_shrinkage(m, 30, s.r2_cs) for m in (100, 300, 500, 1000, 2000)]
    assert got == pytest.approx(shrink, abs=0.011)


def test_cstat_to_r2cs_matches_a_seeded_cstat2rsq_simulation() -> None:
    c, prev, n = 0.75, 0.3, 200_000
    rng = np.random.default_rng(7)
    mu = math.sqrt(2) * stats.norm.ppf(c)
    n1 = round(prev * n)
    lp = np.concatenate([rng.normal(mu, 1, n1), rng.normal(0, 1, n - n1)])
    y = np.concatenate([np.ones(n1), np.zeros(n - n1)])
    fit = sm.GLM(y, sm.add_constant(lp), family=sm.families.Binomial()).fit()
    simulated = 1 - math.exp(-(fit.null_deviance - fit.deviance) / n)
    assert cstat_to_r2cs(c, prev) == pytest.approx(simulated, abs=0.003)


def test_r2cs_grows_with_c_and_is_symmetric_in_prevalence() -> None:
    values = [cstat_to_r2cs(c, 0.4) for c in (0.55, 0.65, 0.75, 0.85)]
    assert values == sorted(values) and values[0] > 0
    assert cstat_to_r2cs(0.7, 0.2) == pytest.approx(cstat_to_r2cs(0.7, 0.8), abs=1e-9)


def test_expected_shrinkage_and_max_parameters_invert_criterion_one() -> None:
    s = riley_binary(0.45, 20, cstatistic=0.72)
    assert expected_shrinkage(s.n1, 20, s.r2_cs) == pytest.approx(0.9, abs=0.002)
    assert max_parameters(s.n1, s.r2_cs) == 20
    assert max_parameters(s.n1 - 100, s.r2_cs) < 20
    assert expected_shrinkage(100, 20, s.r2_cs) < expected_shrinkage(1000, 20, s.r2_cs) < 1


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        riley_binary(0.3, 10)
    with pytest.raises(ValueError, match="exactly one"):
        riley_binary(0.3, 10, cstatistic=0.7, r2_cs=0.1)
    with pytest.raises(ValueError):
        riley_binary(0.1, 10, r2_cs=0.5)  # above the maximum R²cs at 10% prevalence
    with pytest.raises(ValueError):
        sample_size_report(100, 0, 10)


def test_report_calls_a_small_cohort_exploratory() -> None:
    r = sample_size_report(500, 220, 58, 0.70)
    assert r["adequate"] is False
    assert r["max_parameters"] in range(5, 9)
    assert "Treat the model as exploratory" in r["verdict"]
    assert f"support about {r['max_parameters']} parameters" in r["verdict"]
    assert "has 58" in r["verdict"]
    assert r["expected_shrinkage"] < 0.9


def test_report_accepts_a_large_cohort() -> None:
    r = sample_size_report(10_000, 4500, 30, 0.75)
    assert r["adequate"] is True
    assert r["expected_shrinkage"] > 0.9
    assert "meet" in r["verdict"] and "exploratory" not in r["verdict"]


def test_candidate_parameters_count_one_coefficient_per_column() -> None:
    X = np.array([[1.0, np.nan, 3.0], [2.0, 5.0, 4.0]])
    assert candidate_parameters(X) == 3
