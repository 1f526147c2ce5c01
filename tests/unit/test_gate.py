"""The promotion gate: pass and fail paths of every criterion, and the criteria file itself."""

from __future__ import annotations

import pytest

from training.gate import ACCEPTANCE_FILE, Criteria, evaluate_gate

CRIT = Criteria(
    version="t",
    slope_ci_contains_one=True,
    max_abs_intercept=0.2,
    min_nb_fraction=0.8,
    max_nb_shortfall=0.01,
    max_group_ici=0.1,
    brier_tolerance=0.002,
)


def _evidence(**overrides: object) -> dict:
    ev = {
        "calibration_slope": {"value": 0.97, "low": 0.85, "high": 1.10},
        "calibration_intercept": {"value": 0.03, "low": -0.1, "high": 0.15},
        "net_benefit": [
            {"threshold": t, "model": 0.2, "treat_all": 0.1, "treat_none": 0.0}
            for t in (0.1, 0.2, 0.3, 0.4, 0.5)
        ],
        "worst_group_ici": 0.04,
        "candidate_brier": 0.200,
        "champion_brier": 0.201,
    }
    ev.update(overrides)
    return ev


def test_good_evidence_passes_every_criterion() -> None:
    verdict = evaluate_gate(_evidence(), CRIT)
    assert verdict.passed
    assert [c.name for c in verdict.checks] == [
        "calibration_slope_ci_contains_1",
        "abs_calibration_intercept",
        "net_benefit_above_references",
        "max_group_ici",
        "not_worse_than_champion",
    ]


@pytest.mark.parametrize(
    ("override", "failing"),
    [
        (
            {"calibration_slope": {"value": 0.7, "low": 0.6, "high": 0.8}},
            "calibration_slope_ci_contains_1",
        ),
        (
            {"calibration_intercept": {"value": -0.3, "low": -0.4, "high": -0.2}},
            "abs_calibration_intercept",
        ),
        (
            {
                "net_benefit": [
                    {"threshold": 0.1, "model": 0.05, "treat_all": 0.1, "treat_none": 0},
                    {"threshold": 0.2, "model": 0.2, "treat_all": 0.1, "treat_none": 0},
                ]
            },
            "net_benefit_above_references",
        ),
        (
            {
                "net_benefit": [
                    {
                        "threshold": t,
                        "model": 0.2,
                        "treat_all": 0.1,
                        "treat_none": 0.0,
                        "advantage_high": 0.2 if t < 0.5 else -0.02,
                    }
                    for t in (0.1, 0.3, 0.5)
                ]
            },
            "net_benefit_above_references",
        ),
        ({"worst_group_ici": 0.15}, "max_group_ici"),
        ({"candidate_brier": 0.21, "champion_brier": 0.20}, "not_worse_than_champion"),
        ({"worst_group_ici": None}, "max_group_ici"),
    ],
)
def test_each_criterion_can_fail_alone(override: dict, failing: str) -> None:
    verdict = evaluate_gate(_evidence(**override), CRIT)
    assert not verdict.passed
    assert [c.name for c in verdict.checks if not c.passed] == [failing]


def test_first_version_has_no_champion_to_beat() -> None:
    verdict = evaluate_gate(_evidence(champion_brier=None), CRIT)
    assert verdict.passed
    assert verdict.checks[-1].detail == "no champion yet"


def test_tolerance_allows_a_tiny_loss_to_the_champion() -> None:
    assert evaluate_gate(_evidence(candidate_brier=0.2015, champion_brier=0.200), CRIT).passed


def test_the_versioned_criteria_file_loads() -> None:
    c = Criteria.load(ACCEPTANCE_FILE)
    assert c.version and 0 < c.max_abs_intercept < 1 and 0 < c.min_nb_fraction <= 1
    assert evaluate_gate(_evidence(), c).to_dict()["criteria_version"] == c.version


def test_a_negligible_net_benefit_shortfall_is_not_harm() -> None:
    rows = [
        {
            "threshold": t,
            "model": 0.2,
            "treat_all": 0.1,
            "treat_none": 0.0,
            "advantage_high": -0.004 if t == 0.1 else 0.2,
        }
        for t in (0.1, 0.3, 0.5)
    ]
    assert evaluate_gate(_evidence(net_benefit=rows), CRIT).passed
