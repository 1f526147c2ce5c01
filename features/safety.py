"""Eligibility for ketamine infusion: clinical.md §5 safety flags and §1 KARE exclusions.

A contraindication is a reason not to treat, not a predictor of response, so these rules sit
beside the model rather than inside it. They read canonical-frame rows (NaN/None = not recorded)
and never guess: when a field needed to rule out a contraindication is missing, the verdict is
"unknown", not "eligible". Precedence: contraindicated > unknown > caution > eligible; every
caution and every unknown is listed whatever the final status, so a clinician sees the whole
picture. Pregnancy does not apply when sex is "male"; when sex is missing it does.
`assess` and `assess_frame` run the same vectorised code (a row is a frame of one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from features.schema import BY_NAME

Severity = Literal["contraindicated", "caution"]
Status = Literal["eligible", "caution", "contraindicated", "unknown"]

#: Above either value infusion is contraindicated (ED ketamine-AUD trial NCT05661669 excluded
#: SBP >180; the product owner's rule is "above 180/110").
SBP_CONTRAINDICATED_ABOVE_MMHG = 180.0
DBP_CONTRAINDICATED_ABOVE_MMHG = 110.0
#: At or above either value (and not above 180/110): caution (KARE's "uncontrolled hypertension").
SBP_CAUTION_FROM_MMHG = 140.0
DBP_CAUTION_FROM_MMHG = 90.0
#: Largest mean acute rise during a 0.5 mg/kg infusion (clinical.md §5, 741 infusions).
INFUSION_BP_RISE_MMHG = (7.4, 6.0)
#: KARE excluded BMI below 16 or above 35 kg/m².
BMI_CAUTION_BELOW = 16.0
BMI_CAUTION_ABOVE = 35.0
#: ASSUMPTION: clinical.md gives no upper limit of normal (ULN) for ALT/AST; 40 U/L is a common
#: laboratory ULN. Local laboratories differ, so the clinical lead should confirm it.
LIVER_ENZYME_ULN_U_L = 40.0
#: KARE excluded liver function tests above 3x normal.
LIVER_ENZYME_ULN_MULTIPLE = 3.0
#: The sex level for which pregnancy or breastfeeding does not apply.
NOT_PREGNANCY_CAPABLE = "male"

if NOT_PREGNANCY_CAPABLE not in BY_NAME["sex"].levels:  # pragma: no cover - schema guard
    raise ImportError(f"sex level {NOT_PREGNANCY_CAPABLE!r} is not in the schema")

_SBP, _DBP, _BMI = "systolic_bp_mmhg", "diastolic_bp_mmhg", "bmi_kg_m2"
_PREGNANT = "pregnant_or_breastfeeding"
_LIVER = ("alt_u_l", "ast_u_l")
_MMHG, _KG_M2, _U_L = (BY_NAME[n].unit_label for n in (_SBP, _BMI, _LIVER[0]))
_LIVER_LIMIT = LIVER_ENZYME_ULN_U_L * LIVER_ENZYME_ULN_MULTIPLE
_BP_LIMIT = f"{SBP_CONTRAINDICATED_ABOVE_MMHG:.0f}/{DBP_CONTRAINDICATED_ABOVE_MMHG:.0f} {_MMHG}"
_BP_CAUTION = f"{SBP_CAUTION_FROM_MMHG:.0f}/{DBP_CAUTION_FROM_MMHG:.0f} {_MMHG}"
_KARE = "clinical.md §1 KARE exclusions (Grabski 2022, NCT02649231)"
_CYSTITIS = "clinical.md §5 cystitis (Health Psychol Res 2022, 38247)"


@dataclass(frozen=True)
class Rule:
    """One eligibility rule; `source` cites clinical.md and the trial or paper behind it."""

    id: str
    severity: Severity
    description: str
    source: str


@dataclass(frozen=True)
class Reason:
    """Why a rule fired (or, with severity "unknown", could not be checked) for one patient."""

    rule: str
    severity: Literal["contraindicated", "caution", "unknown"]
    message: str
    source: str
    fields: tuple[str, ...]


@dataclass(frozen=True)
class Eligibility:
    """The verdict for one patient and every reason behind it."""

    status: Status
    reasons: tuple[Reason, ...] = ()


RULES: tuple[Rule, ...] = (
    Rule("BP-CONTRA", "contraindicated",
         f"Blood pressure above {_BP_LIMIT} (ED ketamine-AUD trial NCT05661669 excluded SBP >180)",
         "clinical.md §5: ED ketamine-AUD trial NCT05661669 (SBP >180); product owner: above "
         "180/110 mmHg"),
    Rule("PSYCHOSIS", "contraindicated",
         "Psychosis in the patient or a first-degree relative (KARE exclusion)",
         f"{_KARE}; §5 common exclusions"),
    Rule("PREGNANCY", "contraindicated", "Pregnant or breastfeeding (KARE exclusion)",
         f"{_KARE}; §5 common exclusions"),
    Rule("KETAMINE-MISUSE", "contraindicated",
         "Past non-medical ketamine use (trials exclude any recreational use; regular use "
         "carries 3-4x the risk of ketamine cystitis)",
         f"clinical.md §5 common exclusions (any recreational ketamine use); {_CYSTITIS}"),
    Rule("BP-CAUTION", "caution",
         f"Blood pressure at or above {_BP_CAUTION} (KARE exclusion: uncontrolled hypertension)",
         f"{_KARE}: uncontrolled hypertension; clinical.md §5 acute rise +7.4/+6.0 mmHg"),
    Rule("OTHER-SUD", "caution",
         "Another current substance use disorder (KARE excluded dependence on other substances)",
         f"{_KARE}: dependence on another substance; clinical.md §5 common exclusions"),
    Rule("SEIZURE", "caution",
         "Seizures other than alcohol-withdrawal seizures (KARE exclusion)",
         f"{_KARE}: seizures; clinical.md §5 common exclusions"),
    Rule("CYSTITIS", "caution",
         "Cystitis or urinary symptoms (ketamine is linked to cystitis; regular recreational use "
         "carries 3-4x the risk)", _CYSTITIS),
    Rule("BMI", "caution",
         f"BMI below {BMI_CAUTION_BELOW:.0f} or above {BMI_CAUTION_ABOVE:.0f} {_KG_M2} "
         "(KARE exclusion)",
         f"{_KARE}: BMI <16 or >35; clinical.md §5 common exclusions"),
    Rule("LIVER", "caution",
         f"ALT or AST above {LIVER_ENZYME_ULN_MULTIPLE:.0f}x the upper limit of normal, taken as "
         f"{LIVER_ENZYME_ULN_U_L:.0f} {_U_L} (KARE exclusion: LFTs >3x normal)",
         f"{_KARE}: LFTs >3x normal; clinical.md §5 LFTs >3x ULN; the 40 U/L ULN is assumed"),
)  # fmt: skip
_BY_ID = {r.id: r for r in RULES}
#: Yes/no rules: rule id -> the boolean field that triggers it.
_FLAG_FIELDS = {
    "PSYCHOSIS": "psychosis_history",
    "PREGNANCY": _PREGNANT,
    "KETAMINE-MISUSE": "ketamine_misuse_history",
    "OTHER-SUD": "other_sud",
    "SEIZURE": "seizure_history",
    "CYSTITIS": "cystitis_or_urinary_symptoms",
}
_NUMERIC = (_SBP, _DBP, _BMI, *_LIVER, *_FLAG_FIELDS.values())
_VERDICT = {"contraindicated": "ketamine is contraindicated", "caution": "use caution"}

_Columns = Mapping[str, np.ndarray]
_Mask = Callable[[_Columns], np.ndarray]
_Values = Mapping[str, list]  # the same columns as Python lists, for messages
_Words = Callable[[_Values, int], tuple[str, tuple[str, ...]]]  # -> (message, fields)


def assess(row: Mapping[str, float | str | None]) -> Eligibility:
    """Eligibility of one patient from a canonical-frame row (NaN or None = not recorded)."""
    columns = {name: np.array([_number(row.get(name))]) for name in _NUMERIC}
    columns["sex"] = np.array([row.get("sex")], dtype=object)
    return _evaluate(columns, 1)[0]


def assess_frame(frame: pd.DataFrame) -> list[Eligibility]:
    """Eligibility of every patient of a canonical frame, in row order."""
    n = len(frame)
    columns = {
        name: frame[name].to_numpy(dtype=float, na_value=np.nan)
        if name in frame
        else np.full(n, np.nan)
        for name in _NUMERIC
    }
    columns["sex"] = (
        frame["sex"].to_numpy(dtype=object) if "sex" in frame else np.full(n, None, object)
    )
    return _evaluate(columns, n)


@dataclass(frozen=True)
class _Check:
    """Where a rule fires (or cannot be ruled out) and how to say so for one row."""

    rule: str
    severity: Literal["contraindicated", "caution", "unknown"]
    mask: _Mask
    words: _Words


def _evaluate(columns: _Columns, n: int) -> list[Eligibility]:
    """Run every check on whole columns, then assemble each row's verdict and reasons."""
    reasons: dict[int, list[Reason]] = {}
    seen = {s: np.zeros(n, bool) for s in ("contraindicated", "unknown", "caution")}
    values = {name: column.tolist() for name, column in columns.items()}  # fast scalar access
    for check in _CHECKS:
        mask = check.mask(columns)
        seen[check.severity] |= mask
        source = _BY_ID[check.rule].source
        for i in np.flatnonzero(mask).tolist():
            message, fields = check.words(values, i)
            reasons.setdefault(i, []).append(
                Reason(check.rule, check.severity, message, source, fields)
            )
    status = np.select(
        [seen["contraindicated"], seen["unknown"], seen["caution"]],
        ["contraindicated", "unknown", "caution"],
        "eligible",
    ).tolist()
    eligible = Eligibility("eligible")
    return [
        Eligibility(status[i], tuple(reasons[i])) if i in reasons else eligible for i in range(n)
    ]


# --- masks: which rows a check applies to -----------------------------------------------------


def _bp_contra(c: _Columns) -> np.ndarray:
    return (c[_SBP] > SBP_CONTRAINDICATED_ABOVE_MMHG) | (c[_DBP] > DBP_CONTRAINDICATED_ABOVE_MMHG)


def _bp_caution(c: _Columns) -> np.ndarray:
    high = (c[_SBP] >= SBP_CAUTION_FROM_MMHG) | (c[_DBP] >= DBP_CAUTION_FROM_MMHG)
    return high & ~_bp_contra(c)


def _bp_unknown(c: _Columns) -> np.ndarray:
    return (np.isnan(c[_SBP]) | np.isnan(c[_DBP])) & ~_bp_contra(c)


def _bmi_outside(c: _Columns) -> np.ndarray:
    return (c[_BMI] < BMI_CAUTION_BELOW) | (c[_BMI] > BMI_CAUTION_ABOVE)


def _liver_high(c: _Columns) -> np.ndarray:
    return np.logical_or.reduce([c[n] > _LIVER_LIMIT for n in _LIVER])


def _applies(name: str, c: _Columns) -> np.ndarray:
    """Pregnancy does not apply to men; every other flag applies to everyone."""
    if name == _PREGNANT:
        return c["sex"] != NOT_PREGNANCY_CAPABLE
    return np.ones(len(c[name]), bool)


def _flag_check(rule: Rule) -> _Check:
    name = _FLAG_FIELDS[rule.id]
    message = f"{rule.description}: {_VERDICT[rule.severity]}."
    return _Check(
        rule.id,
        rule.severity,
        lambda c: (c[name] == 1.0) & _applies(name, c),
        lambda c, i: (message, (name,)),
    )


def _unknown_check(rule: Rule, names: tuple[str, ...], mask: _Mask | None = None) -> _Check:
    """Severity "unknown": a field needed to rule out this contraindication is missing."""
    what = rule.description[0].lower() + rule.description[1:]

    def words(c: _Values, i: int) -> tuple[str, tuple[str, ...]]:
        missing = tuple(n for n in names if math.isnan(c[n][i]))
        labels = " and ".join(BY_NAME[n].label for n in missing)
        return (
            f"{labels} not recorded, so this contraindication cannot be ruled out: {what}.",
            missing,
        )

    def flag_missing(c: _Columns) -> np.ndarray:
        return np.isnan(c[names[0]]) & _applies(names[0], c)

    return _Check(rule.id, "unknown", mask or flag_missing, words)


# --- words -------------------------------------------------------------------------------------


def _bp_words(contra: bool) -> _Words:
    rise = "/".join(f"{v:.0f}" for v in INFUSION_BP_RISE_MMHG)
    text = (
        f"is above {_BP_LIMIT} (ED ketamine-AUD trial NCT05661669 excluded SBP >180)"
        if contra
        else f"is at or above {_BP_CAUTION} (KARE exclusion: uncontrolled hypertension)"
    )

    def words(c: _Values, i: int) -> tuple[str, tuple[str, ...]]:
        sbp, dbp = c[_SBP][i], c[_DBP][i]
        if contra:
            high = (sbp > SBP_CONTRAINDICATED_ABOVE_MMHG, dbp > DBP_CONTRAINDICATED_ABOVE_MMHG)
        else:
            high = (sbp >= SBP_CAUTION_FROM_MMHG, dbp >= DBP_CAUTION_FROM_MMHG)
        fields = tuple(name for name, h in zip((_SBP, _DBP), high, strict=True) if h)
        return (
            f"Blood pressure {_bp(sbp, dbp)} {text}; infusion raises BP by about {rise} {_MMHG}.",
            fields,
        )

    return words


def _bmi_words(c: _Values, i: int) -> tuple[str, tuple[str, ...]]:
    bmi = c[_BMI][i]
    low = bmi < BMI_CAUTION_BELOW
    side = f"below {BMI_CAUTION_BELOW:.0f}" if low else f"above {BMI_CAUTION_ABOVE:.0f}"
    return f"BMI {_fmt(bmi)} {_KG_M2} is {side} {_KG_M2} (KARE exclusion): use caution.", (_BMI,)


def _liver_words(c: _Values, i: int) -> tuple[str, tuple[str, ...]]:
    high = tuple(n for n in _LIVER if c[n][i] > _LIVER_LIMIT)
    values = " and ".join(f"{BY_NAME[n].label} {_fmt(c[n][i])} {_U_L}" for n in high)
    return (
        f"{values} {'is' if len(high) == 1 else 'are'} above {_fmt(_LIVER_LIMIT)} {_U_L}, "
        f"{LIVER_ENZYME_ULN_MULTIPLE:.0f}x an assumed upper limit of normal of "
        f"{_fmt(LIVER_ENZYME_ULN_U_L)} {_U_L} (KARE exclusion: LFTs >3x normal): use caution.",
        high,
    )


def _bp(sbp: float, dbp: float) -> str:
    text = f"{_fmt(sbp)}/{_fmt(dbp)} {_MMHG}"
    missing = [n for n, v in (("systolic", sbp), ("diastolic", dbp)) if math.isnan(v)]
    return f"{text} ({missing[0]} not recorded)" if missing else text


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _number(value: object) -> float:
    """A canonical cell as float: booleans 1.0/0.0; None, pd.NA and NaN are NaN."""
    if value is None or value is pd.NA:
        return np.nan
    if isinstance(value, str):
        raise TypeError("assess expects a canonical-frame row: numbers and booleans, not text")
    return float(value)  # type: ignore[arg-type]  # bool, int, float or numpy scalar


_CONTRA_FLAGS = tuple(_BY_ID[r] for r in _FLAG_FIELDS if _BY_ID[r].severity == "contraindicated")
_CAUTION_FLAGS = tuple(_BY_ID[r] for r in _FLAG_FIELDS if _BY_ID[r].severity == "caution")
#: Output order of reasons: contraindications, then what could not be ruled out, then cautions.
_CHECKS: tuple[_Check, ...] = (
    _Check("BP-CONTRA", "contraindicated", _bp_contra, _bp_words(contra=True)),
    *(_flag_check(r) for r in _CONTRA_FLAGS),
    _unknown_check(_BY_ID["BP-CONTRA"], (_SBP, _DBP), _bp_unknown),
    *(_unknown_check(r, (_FLAG_FIELDS[r.id],)) for r in _CONTRA_FLAGS),
    _Check("BP-CAUTION", "caution", _bp_caution, _bp_words(contra=False)),
    *(_flag_check(r) for r in _CAUTION_FLAGS),
    _Check("BMI", "caution", _bmi_outside, _bmi_words),
    _Check("LIVER", "caution", _liver_high, _liver_words),
)
