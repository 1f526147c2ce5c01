"""The promotion gate: pre-specified criteria (acceptance.toml) applied to a run's evidence.

Pure: evidence in, verdict out. `training.tracking` collects the evidence, logs the criteria
file, every criterion's value and the verdict, and moves the registry alias accordingly.
A criterion whose evidence is missing fails (an unmeasured property is not a passed one).
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ACCEPTANCE_FILE = Path(__file__).with_name("acceptance.toml")


@dataclass(frozen=True)
class Criteria:
    version: str
    slope_ci_contains_one: bool
    max_abs_intercept: float
    min_nb_fraction: float
    max_nb_shortfall: float
    max_group_ici: float
    brier_tolerance: float

    @classmethod
    def load(cls, path: Path = ACCEPTANCE_FILE) -> Criteria:
        d = tomllib.loads(path.read_text())
        return cls(
            version=str(d["version"]),
            slope_ci_contains_one=bool(d["calibration"]["slope_ci_contains_one"]),
            max_abs_intercept=float(d["calibration"]["max_abs_intercept"]),
            min_nb_fraction=float(d["clinical_utility"]["min_fraction_of_thresholds"]),
            max_nb_shortfall=float(d["clinical_utility"]["max_shortfall"]),
            max_group_ici=float(d["fairness"]["max_group_ici"]),
            brier_tolerance=float(d["champion"]["brier_tolerance"]),
        )


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    value: Any
    threshold: Any
    detail: str


@dataclass(frozen=True)
class Verdict:
    passed: bool
    checks: tuple[Check, ...]
    criteria_version: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "criteria_version": self.criteria_version,
            "checks": [asdict(c) for c in self.checks],
        }


def _slope(ev: dict[str, Any], c: Criteria) -> Check:
    s = ev.get("calibration_slope")
    if s is None:
        return Check("calibration_slope_ci_contains_1", False, None, 1.0, "not measured")
    ok = (s["low"] <= 1.0 <= s["high"]) or not c.slope_ci_contains_one
    return Check(
        "calibration_slope_ci_contains_1",
        ok,
        [s["value"], s["low"], s["high"]],
        1.0,
        f"slope {s['value']:.3f} (95% CI {s['low']:.3f}-{s['high']:.3f})",
    )


def _intercept(ev: dict[str, Any], c: Criteria) -> Check:
    i = ev.get("calibration_intercept")
    if i is None:
        return Check("abs_calibration_intercept", False, None, c.max_abs_intercept, "not measured")
    return Check(
        "abs_calibration_intercept",
        abs(i["value"]) <= c.max_abs_intercept,
        i["value"],
        c.max_abs_intercept,
        f"intercept {i['value']:+.3f}",
    )


def _net_benefit(ev: dict[str, Any], c: Criteria) -> Check:
    """Never credibly worse than the better reference, and better at enough thresholds.

    Rows carry the model's advantage over max(treat-all, treat-none) and its bootstrap upper
    bound; without a bound (hand-made evidence) the point advantage stands for both.
    """
    rows = ev.get("net_benefit")
    if not rows:
        return Check("net_benefit_above_references", False, None, c.min_nb_fraction, "not measured")
    adv = [r["model"] - max(r["treat_all"], r["treat_none"]) for r in rows]
    upper = [r.get("advantage_high", a) for r, a in zip(rows, adv, strict=True)]
    worse = [r["threshold"] for r, u in zip(rows, upper, strict=True) if u < -c.max_nb_shortfall]
    fraction = sum(a > 0 for a in adv) / len(adv)
    ok = not worse and fraction >= c.min_nb_fraction
    detail = f"above both references at {sum(a > 0 for a in adv)} of {len(adv)} thresholds"
    if worse:
        detail += f"; credibly worse at {', '.join(f'{t:.2f}' for t in worse)}"
    return Check("net_benefit_above_references", ok, fraction, c.min_nb_fraction, detail)


def _fairness(ev: dict[str, Any], c: Criteria) -> Check:
    worst = ev.get("worst_group_ici")
    if worst is None:
        return Check("max_group_ici", False, None, c.max_group_ici, "not measured")
    return Check(
        "max_group_ici",
        worst <= c.max_group_ici,
        worst,
        c.max_group_ici,
        f"largest lower 95% bound of a group's ICI {worst:.3f}",
    )


def _champion(ev: dict[str, Any], c: Criteria) -> Check:
    new, old = ev.get("candidate_brier"), ev.get("champion_brier")
    if new is None:
        return Check("not_worse_than_champion", False, None, c.brier_tolerance, "not measured")
    if old is None:
        return Check("not_worse_than_champion", True, new, None, "no champion yet")
    return Check(
        "not_worse_than_champion",
        new <= old + c.brier_tolerance,
        new - old,
        c.brier_tolerance,
        f"held-out Brier {new:.4f} vs champion {old:.4f} on the same patients",
    )


def evaluate_gate(evidence: dict[str, Any], criteria: Criteria) -> Verdict:
    """Every criterion checked and reported; the version passes only if all pass."""
    checks = tuple(
        f(evidence, criteria) for f in (_slope, _intercept, _net_benefit, _fairness, _champion)
    )
    return Verdict(all(ch.passed for ch in checks), checks, criteria.version)
