"""Synthetic ketamine-AUD cohorts whose response mechanism is known exactly.

Real cohorts have 40-100 patients and nobody knows their true mechanism (clinical.md §7), so
model code can only be checked against data whose truth we wrote down. Every number here is
explained, with its source in `shared/reference/clinical.md`, in `simulate_ground_truth.md`
beside this file; `[DESIGN]` marks our own choices where the literature gives no number.

A cohort is drawn in three steps, and the order is the point:

1. latent variables (site, ancestry, drinking severity, depression) -> complete field values;
2. `true_logit` of those complete, *observable* values -> `true_probability` -> `response_6m`,
   so a model could in principle learn the truth from the fields alone;
3. missingness, which depends on the site only (missing at random), never on the outcome.

Each step draws from its own stream spawned from `np.random.default_rng(seed)`: for a given
`(n, seed)` the patients and their missingness are identical whatever the `Effects`; only the
outcome changes, which keeps comparisons between effect variants free of sampling noise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy.special import expit

from features.schema import (
    FIELDS,
    MEDICATION_LEVELS,
    PREDICTORS,
    PSYCHOTHERAPY_LEVELS,
    Field,
    fields_in_group,
)

ANCESTRIES: tuple[str, ...] = ("european", "african", "east_asian", "south_asian", "admixed_other")
SITES: tuple[str, ...] = ("site-a", "site-b", "site-c", "site-d")
EXTRA_COLUMNS: tuple[str, ...] = ("true_probability", "ancestry")
_GROUPS = frozenset(f.group for f in FIELDS)


def _effect(value: float, groups: str, source: str) -> Any:
    """A documented effect; `groups` are the data-dictionary groups of the fields it reads."""
    return field(default=value, metadata={"groups": tuple(groups.split()), "source": source})


@dataclass(frozen=True)
class Effects:
    """True effects on the log-odds of `response_6m`, one per term of `true_logit`.

    Each term is centred on a typical patient, so switching a group off with `without_group`
    or `scaled_group` moves the response rate only a little and tests need not re-tune the
    intercept. Units are in the names; each field's `metadata` holds its groups and a short
    source, and `simulate_ground_truth.md` has the full table with covariates and centres.
    """

    intercept: float = _effect(
        -0.26, "", "[DESIGN] response rate ~45% (§7: control 15-45%, +10-17 pp)"
    )
    hdd_saturation: float = _effect(
        -1.8, "alcohol_use", "§3 Adamson 2009: consumption/severity explain most variance"
    )
    audit_per_point: float = _effect(-0.03, "alcohol_use", "§3 Adamson 2009: dependence severity")
    craving_per_sd: float = _effect(-0.34, "alcohol_use", "§3 Vafaie & Kober 2022: OR 1.31-2.05")
    ciwa_per_point: float = _effect(-0.02, "alcohol_use", "§3 PMC7439020: OR 1.126/point, shrunk")
    prior_detox_per_count: float = _effect(
        -0.05, "alcohol_use", "§3 PMC2715386: more prior treatment, worse outcome"
    )
    medications_failed_per_count: float = _effect(
        -0.12, "alcohol_use", "§3 PMC2715386: more prior treatment, worse outcome"
    )
    family_history: float = _effect(0.2, "alcohol_use", "§3 Phelps 2009: FH+ respond more")
    age_per_year: float = _effect(0.02, "demographic", "§3 PMC7439020: relapse OR 0.975/year")
    current_mdd: float = _effect(-0.6, "psychiatric", "§3 Greenfield 1998: relapse HR 2.03-2.12")
    phq9_per_point: float = _effect(0.0, "psychiatric", "§3 Greenfield 1998: score did not predict")
    ptsd: float = _effect(-0.3, "psychiatric", "§3 PMC6561399: poorer prognosis")
    peth_per_log: float = _effect(-0.08, "alcohol_biomarker", "§4 PEth: objective heavy use")
    hscrp_ge3: float = _effect(-0.15, "inflammatory_biomarker", "§4 CRP>=3: no ketamine advantage")
    il6_per_log2: float = _effect(0.05, "inflammatory_biomarker", "§4 Yang 2015; §7 sign uncertain")
    bdnf_serum_per_10: float = _effect(
        0.05, "inflammatory_biomarker", "§4 Sen 2008/Brunoni 2008: low in depression"
    )
    bdnf_met_per_allele: float = _effect(-0.15, "genetic", "§4 Laje 2012: Met responded less")
    oprm1_g_on_naltrexone: float = _effect(
        0.5, "genetic treatment_plan", "§4 Oslin 2003: G carriers benefit from naltrexone"
    )
    grin2b_per_allele: float = _effect(0.0, "genetic", "§4 Beanes 2022: no link to response")
    adh1b_his_per_allele: float = _effect(0.0, "genetic", "§7 genetics act through drinking")
    aud_prs_per_sd: float = _effect(0.0, "genetic", "§7 genetics act through drinking")
    naltrexone: float = _effect(0.28, "treatment_plan", "§2 COMBINE no-HDD 44.0% -> 51.0%")
    acamprosate: float = _effect(0.1, "treatment_plan", "[DESIGN] small, no §2 figure")
    disulfiram: float = _effect(0.1, "treatment_plan", "[DESIGN] small, no §2 figure")
    other_medication: float = _effect(0.3, "treatment_plan", "§2 topiramate/varenicline, halved")
    psychotherapy: float = _effect(0.25, "treatment_plan", "§1 KARE: therapy +5.8 PDA points")
    infusions_saturation: float = _effect(0.4, "treatment_plan", "§1 KARE 3 vs Dakwar 1 infusion")
    dose_per_mg_kg: float = _effect(
        0.4, "treatment_plan", "§1 Das 2019: exposure predicted benefit"
    )

    def scaled_group(self, group: str, factor: float) -> Effects:
        """Multiply every direct effect that reads a field of `group` by `factor`."""
        if group not in _GROUPS:
            raise ValueError(f"unknown data-dictionary group {group!r}; one of {sorted(_GROUPS)}")
        changes = {
            f.name: getattr(self, f.name) * factor
            for f in fields(self)
            if group in f.metadata["groups"]
        }
        return replace(self, **changes)

    def without_group(self, group: str) -> Effects:
        """Zero every direct effect of `group`; indirect paths (genes -> drinking) remain."""
        return self.scaled_group(group, 0.0)


DEFAULT_EFFECTS = Effects()
#: Genotypes carry no information about response beyond the other fields.
GENETICS_NO_EFFECT = DEFAULT_EFFECTS.without_group("genetic")
#: [DESIGN] Inflammation that matters clearly: the default inflammatory effects, five times
#: larger (hs-CRP >= 3 mg/L -0.75, IL-6 +0.25 per doubling, BDNF +0.25 per 10 ng/mL).
INFLAMMATION_CLEAR_EFFECT = DEFAULT_EFFECTS.scaled_group("inflammatory_biomarker", 5.0)

# --------------------------------------------------------------------------- true logit

_Columns = Mapping[str, np.ndarray]
_HDD_SATURATION_DAYS = 30.0  # [DESIGN] half the attainable harm by ~21 heavy days
_PACS_SD = 5.5  # SD of craving_pacs in the simulated cohort (n=10^6)


class _Term(NamedTuple):
    columns: tuple[str, ...]
    covariate: Callable[[_Columns], np.ndarray]
    reference: float


_MED = "concurrent_medication"
#: Covariate of each effect and the typical value it is centred on (the cohort mean at seed 0,
#: n=10^6, rounded), so that the intercept is the log-odds of a typical patient.
_TERMS: dict[str, _Term] = {
    "hdd_saturation": _Term(
        ("hdd_90d",), lambda c: -np.expm1(-c["hdd_90d"] / _HDD_SATURATION_DAYS), 0.61
    ),
    "audit_per_point": _Term(("audit_total",), lambda c: c["audit_total"], 22.0),
    "craving_per_sd": _Term(("craving_pacs",), lambda c: c["craving_pacs"] / _PACS_SD, 2.82),
    "ciwa_per_point": _Term(("ciwa_ar",), lambda c: c["ciwa_ar"], 10.0),
    "prior_detox_per_count": _Term(
        ("prior_detox_count",), lambda c: np.minimum(c["prior_detox_count"], 10.0), 1.5
    ),
    "medications_failed_per_count": _Term(
        ("prior_aud_medications_failed",), lambda c: c["prior_aud_medications_failed"], 0.78
    ),
    "family_history": _Term(("family_history_aud",), lambda c: c["family_history_aud"], 0.44),
    "age_per_year": _Term(("age_years",), lambda c: c["age_years"], 46.0),
    "current_mdd": _Term(("current_mdd",), lambda c: c["current_mdd"], 0.34),
    "phq9_per_point": _Term(("phq9_total",), lambda c: c["phq9_total"], 10.0),
    "ptsd": _Term(("ptsd",), lambda c: c["ptsd"], 0.2),
    "peth_per_log": _Term(("peth_ng_ml",), lambda c: np.log1p(c["peth_ng_ml"]), 5.7),
    "hscrp_ge3": _Term(("hscrp_mg_l",), lambda c: c["hscrp_mg_l"] >= 3.0, 0.31),
    "il6_per_log2": _Term(("il6_pg_ml",), lambda c: np.log2(np.maximum(c["il6_pg_ml"], 0.1)), 1.42),
    "bdnf_serum_per_10": _Term(("bdnf_serum_ng_ml",), lambda c: c["bdnf_serum_ng_ml"] / 10, 2.72),
    "bdnf_met_per_allele": _Term(("bdnf_rs6265_met",), lambda c: c["bdnf_rs6265_met"], 0.39),
    "oprm1_g_on_naltrexone": _Term(
        ("oprm1_rs1799971_g", _MED),
        lambda c: (c["oprm1_rs1799971_g"] >= 1) & (c[_MED] == "naltrexone"),
        0.083,
    ),
    "grin2b_per_allele": _Term(("grin2b_rs1805502_g",), lambda c: c["grin2b_rs1805502_g"], 0.28),
    "adh1b_his_per_allele": _Term(
        ("adh1b_rs1229984_his",), lambda c: c["adh1b_rs1229984_his"], 0.19
    ),
    "aud_prs_per_sd": _Term(("aud_prs_z",), lambda c: c["aud_prs_z"], 0.25),
    "naltrexone": _Term((_MED,), lambda c: c[_MED] == "naltrexone", 0.245),
    "acamprosate": _Term((_MED,), lambda c: c[_MED] == "acamprosate", 0.079),
    "disulfiram": _Term((_MED,), lambda c: c[_MED] == "disulfiram", 0.038),
    "other_medication": _Term((_MED,), lambda c: c[_MED] == "other", 0.061),
    "psychotherapy": _Term(("psychotherapy",), lambda c: c["psychotherapy"] != "none", 0.84),
    "infusions_saturation": _Term(
        ("infusions_planned",), lambda c: -np.expm1(-(c["infusions_planned"] - 1) / 2), 0.54
    ),
    "dose_per_mg_kg": _Term(("dose_mg_per_kg",), lambda c: c["dose_mg_per_kg"], 0.65),
}


def _read(frame: pd.DataFrame, name: str) -> np.ndarray:
    """One column as float (NaN missing), or as objects for the two category fields."""
    if name not in frame.columns:
        raise ValueError(f"true_logit needs column {name!r}")
    if name in ("psychotherapy", _MED):
        return frame[name].to_numpy(dtype=object)
    return frame[name].to_numpy(dtype=float, na_value=np.nan)


def true_logit(frame: pd.DataFrame, effects: Effects = DEFAULT_EFFECTS) -> np.ndarray:
    """The ground-truth linear predictor of `response_6m` from complete field values.

    Only terms with a non-zero effect read their columns, and those columns must be complete:
    the truth is defined on values before masking, so a missing value is a caller error.
    """
    logit = np.full(len(frame), effects.intercept, dtype=float)
    active = {name: t for name, t in _TERMS.items() if getattr(effects, name) != 0.0}
    needed = sorted({col for t in active.values() for col in t.columns})
    columns = {name: _read(frame, name) for name in needed}
    for name, values in columns.items():
        if pd.isna(values).any():
            raise ValueError(f"true_logit needs complete values; {name!r} has missing values")
    for name, term in active.items():
        logit += getattr(effects, name) * (term.covariate(columns) - term.reference)
    return logit


# --------------------------------------------------------------------------- generation

# Case mix by site [DESIGN]: a = academic trial clinic (KARE-like), b = community clinic,
# c = depression service (Yoon-like), d = inpatient unit (Dakwar-like single infusion).
_SITE_WEIGHTS = np.array([0.35, 0.30, 0.20, 0.15])
_ANCESTRY_BY_SITE = np.array(  # rows: sites; columns: ANCESTRIES
    [
        [0.75, 0.05, 0.05, 0.07, 0.08],
        [0.60, 0.12, 0.06, 0.10, 0.12],
        [0.40, 0.08, 0.25, 0.15, 0.12],
        [0.35, 0.40, 0.05, 0.05, 0.15],
    ]
)
_SITE_SEVERITY = np.array([-0.2, 0.1, 0.0, 0.4])
_SITE_DEPRESSION = np.array([0.0, 0.0, 0.5, 0.1])
_SITE_AGE_MEAN = np.array([44.0, 47.0, 45.0, 50.0])  # §1: KARE mean 44, Dakwar 53
_SITE_MISSING_FACTOR = np.array([0.6, 1.0, 1.3, 1.6])  # weighted mean 1.01


def _allele_from_carriers(carriers: list[float]) -> np.ndarray:
    """Allele frequency q from carrier frequency 1 - (1 - q)^2 (Hardy-Weinberg)."""
    return 1.0 - np.sqrt(1.0 - np.asarray(carriers))


#: Allele frequency by ancestry, columns in ANCESTRIES order (§4 genetics table).
_ALLELE_FREQUENCY: dict[str, np.ndarray] = {
    "bdnf_rs6265_met": np.array([0.195, 0.05, 0.463, 0.20, 0.15]),
    "oprm1_rs1799971_g": _allele_from_carriers([0.292, 0.023, 0.622, 0.693, 0.25]),
    "grin2b_rs1805502_g": np.array([0.14, 0.10, 0.20, 0.15, 0.14]),
    "adh1b_rs1229984_his": _allele_from_carriers([0.075, 0.04, 0.90, 0.10, 0.06]),
}

_INFUSION_COUNTS = np.array([1, 2, 3, 4, 5, 6, 8, 12])
_INFUSIONS_BY_SITE = np.array(
    [
        [0.05, 0.05, 0.70, 0.10, 0.03, 0.04, 0.02, 0.01],
        [0.35, 0.15, 0.25, 0.12, 0.04, 0.05, 0.03, 0.01],
        [0.05, 0.05, 0.15, 0.55, 0.05, 0.10, 0.04, 0.01],
        [0.50, 0.15, 0.20, 0.10, 0.02, 0.02, 0.01, 0.00],
    ]
)
_DOSES = np.array([0.5, 0.71, 0.8])  # §1: Yoon, Dakwar, KARE; last column = anything 0.3-1.0
_DOSE_BY_SITE = np.array(
    [
        [0.10, 0.10, 0.70, 0.10],
        [0.45, 0.25, 0.15, 0.15],
        [0.75, 0.05, 0.10, 0.10],
        [0.55, 0.25, 0.10, 0.10],
    ]
)
_PSYCHOTHERAPY_BY_SITE = np.array(  # columns: PSYCHOTHERAPY_LEVELS
    [
        [0.05, 0.05, 0.30, 0.10, 0.50],
        [0.25, 0.30, 0.20, 0.20, 0.05],
        [0.20, 0.10, 0.15, 0.45, 0.10],
        [0.20, 0.50, 0.15, 0.10, 0.05],
    ]
)
_MEDICATION_BY_SITE = np.array(  # columns: MEDICATION_LEVELS
    [
        [0.85, 0.05, 0.05, 0.02, 0.03],
        [0.45, 0.30, 0.12, 0.05, 0.08],
        [0.35, 0.50, 0.05, 0.02, 0.08],
        [0.50, 0.25, 0.10, 0.08, 0.07],
    ]
)


def _categorical(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    """One category code per row, each row with its own probabilities (vectorised)."""
    cumulative = np.cumsum(probabilities, axis=1)
    codes = (rng.random(len(probabilities))[:, None] > cumulative).sum(axis=1)
    return np.minimum(codes, probabilities.shape[1] - 1)


def _integer(x: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip(np.rint(x), low, high).astype(np.int64)


def _levels(levels: tuple[str, ...], codes: np.ndarray) -> np.ndarray:
    """Python `str` objects, not numpy strings, so the frame holds plain object columns."""
    return np.array(levels, dtype=object)[codes]


def _draw_demographics(rng: np.random.Generator, site: np.ndarray) -> dict[str, np.ndarray]:
    n = len(site)
    return {
        "age_years": _integer(rng.normal(_SITE_AGE_MEAN[site], 11.0), 18, 90),
        "sex": _levels(("female", "male"), (rng.random(n) < 0.64).astype(int)),  # §1 KARE
        "bmi_kg_m2": np.clip(np.round(26.5 * np.exp(rng.normal(0.0, 0.17, n)), 1), 12, 70),
    }


def _draw_inheritance(rng: np.random.Generator, ancestry: np.ndarray) -> dict[str, np.ndarray]:
    """Genotypes by ancestry; PRS enriched in a clinic population; family history follows PRS."""
    values = {name: rng.binomial(2, q[ancestry]) for name, q in _ALLELE_FREQUENCY.items()}
    prs = np.clip(np.round(rng.normal(0.25, 1.0, len(ancestry)), 3), -6, 6)
    values["aud_prs_z"] = prs
    values["family_history_aud"] = rng.random(len(prs)) < expit(-0.4 + 0.5 * prs)
    return values


def _draw_latents(
    rng: np.random.Generator, v: Mapping[str, np.ndarray], site: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Drinking severity (genes shape baseline drinking, §7) and depression correlated with it."""
    n = len(site)
    male = v["sex"] == "male"
    severity = (
        _SITE_SEVERITY[site]
        + 0.30 * (v["aud_prs_z"] - 0.25)
        - 0.30 * v["adh1b_rs1229984_his"]
        + 0.15 * male
        + rng.normal(0.0, 0.9, n)
    )
    depression = _SITE_DEPRESSION[site] + 0.35 * severity + 0.25 * ~male + rng.normal(0.0, 0.9, n)
    return severity, depression


def _drinks_per_day(
    rng: np.random.Generator,
    severity: np.ndarray,
    male: np.ndarray,
    days: np.ndarray,
    hdd: np.ndarray,
) -> np.ndarray:
    """Mean drinks per drinking day, kept coherent with the heavy-day count and threshold."""
    threshold = np.where(male, 5.0, 4.0)
    raw = 8.0 * np.exp(0.30 * severity + 0.15 * male + rng.normal(0.0, 0.3, len(days)))
    safe = np.maximum(days, 1)
    low = np.ceil(10 * np.maximum(1.0, threshold * hdd / safe)) / 10
    high = np.floor(10 * (60 * hdd + (threshold - 1) * (safe - hdd)) / safe) / 10
    return np.where(days > 0, np.clip(np.round(raw, 1), low, high), 0.0)


def _draw_drinking(
    rng: np.random.Generator, severity: np.ndarray, v: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Timeline-followback counts: heavy days <= drinking days = 90 - abstinent days."""
    n = len(severity)
    days = rng.binomial(90, expit(0.7 + 0.9 * severity + rng.normal(0.0, 0.7, n)))
    hdd = rng.binomial(days, expit(0.2 + 0.9 * severity + rng.normal(0.0, 0.6, n)))
    onset_share = expit(-0.6 - 0.35 * severity + rng.normal(0.0, 0.6, n))
    return {
        "hdd_90d": hdd,
        "drinks_per_drinking_day": _drinks_per_day(rng, severity, v["sex"] == "male", days, hdd),
        "percent_days_abstinent_90d": np.round(100 * (90 - days) / 90, 1),
        "aud_onset_age_years": 12 + np.rint(onset_share * (v["age_years"] - 12)).astype(np.int64),
    }


def _draw_history(
    rng: np.random.Generator,
    severity: np.ndarray,
    depression: np.ndarray,
    v: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Questionnaires and history: drinking scales follow severity, mood scales depression."""
    n = len(severity)
    female = v["sex"] == "female"
    return {
        "audit_total": _integer(22 + 4.5 * severity + rng.normal(0, 3.0, n), 0, 40),
        "prior_detox_count": np.minimum(
            rng.poisson(np.exp(0.1 + 0.7 * severity + 0.01 * (v["age_years"] - 45))), 50
        ),
        "prior_aud_medications_failed": np.minimum(
            rng.poisson(np.exp(-0.4 + 0.3 * severity + 0.2 * depression)), 5
        ),
        "craving_pacs": _integer(
            15 + 3.0 * severity + 1.5 * depression + rng.normal(0, 4.0, n), 0, 30
        ),
        "ciwa_ar": _integer(8 * np.exp(0.4 * severity + rng.normal(0, 0.5, n)), 0, 67),
        "phq9_total": _integer(9 + 5.0 * depression + rng.normal(0, 2.5, n), 0, 27),
        "gad7_total": _integer(7 + 3.5 * depression + rng.normal(0, 2.5, n), 0, 21),
        "current_mdd": rng.random(n) < expit(-1.3 + 1.6 * depression),
        "ptsd": rng.random(n) < expit(-1.9 + 0.7 * depression + 0.3 * severity + 0.4 * female),
        "tobacco_use": rng.random(n) < expit(0.2 + 0.6 * severity),
    }


def _draw_alcohol_labs(
    rng: np.random.Generator, v: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Lognormal labs driven by grams of ethanol per day (§4 ranges and cut-offs)."""
    n = len(v["sex"])
    male = v["sex"] == "male"
    days = 90 - np.rint(0.9 * v["percent_days_abstinent_90d"])
    grams = 14.0 * v["drinks_per_drinking_day"] * days / 90
    load = np.log1p(grams / 20)
    bmi_z = (v["bmi_kg_m2"] - 27) / 5
    liver = rng.normal(0.0, 0.35, n)
    ggt = np.where(male, 25.0, 17.0) * np.exp(0.6 * load + 0.15 * bmi_z + rng.normal(0, 0.5, n))
    ast = np.where(male, 22.0, 18.0) * np.exp(0.25 * load + liver + rng.normal(0, 0.15, n))
    alt = np.where(male, 24.0, 18.0) * np.exp(
        0.15 * load + 0.15 * bmi_z + liver + rng.normal(0, 0.15, n)
    )
    cdt = 1.9 * np.exp(0.7 * expit((grams - 60) / 15) + rng.normal(0, 0.18, n))
    return {
        "ggt_u_l": np.clip(np.rint(ggt), 1, 3000),
        "ast_u_l": np.clip(np.rint(ast), 1, 3000),
        "alt_u_l": np.clip(np.rint(alt), 1, 3000),
        "peth_ng_ml": np.clip(np.rint(4.0 * grams * np.exp(rng.normal(0, 0.6, n))), 0, 5000),
        "cdt_percent": np.clip(np.round(cdt, 1), 0, 30),
        "mcv_fl": np.clip(
            np.round(89 + 7 * expit((grams - 60) / 20) + rng.normal(0, 3.5, n), 1), 50, 130
        ),
    }


def _draw_inflammation(
    rng: np.random.Generator,
    severity: np.ndarray,
    depression: np.ndarray,
    v: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Cytokines share one inflammatory factor; BDNF falls with depression and drinking (§4)."""
    n = len(severity)
    bmi_z = (v["bmi_kg_m2"] - 27) / 5
    factor = (
        0.3 * depression
        + 0.25 * severity
        + 0.3 * bmi_z
        + 0.01 * (v["age_years"] - 45)
        + rng.normal(0, 0.5, n)
    )

    def lab(median: float, loading: float, noise: float, high: float) -> np.ndarray:
        value = median * np.exp(loading * factor + rng.normal(0, noise, n))
        return np.clip(np.round(value, 2), 0.1, high)

    return {
        "hscrp_mg_l": lab(1.6, 1.0, 0.8, 300),
        "il6_pg_ml": lab(2.5, 0.8, 0.5, 1000),
        "tnfa_pg_ml": lab(1.5, 0.3, 0.35, 500),
        "il1b_pg_ml": lab(0.8, 0.3, 0.5, 500),
        "bdnf_serum_ng_ml": np.clip(
            np.round(28 - 3.0 * depression - 2.0 * severity + rng.normal(0, 5, n), 1), 1, 100
        ),
    }


def _draw_safety(
    rng: np.random.Generator, severity: np.ndarray, v: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """A treated cohort: mostly negative screens, a few raised BPs, very rare contraindications."""
    n = len(severity)
    age = v["age_years"]
    sbp = 122 + 0.35 * (age - 45) + 0.6 * (v["bmi_kg_m2"] - 27) + 2.5 * severity
    sbp = np.clip(np.rint(sbp + rng.normal(0, 9, n)), 60, 260)
    misuse = rng.random(n) < 0.005
    return {
        "systolic_bp_mmhg": sbp,
        "diastolic_bp_mmhg": np.clip(
            np.rint(78 + 0.4 * (sbp - 122) + rng.normal(0, 6, n)), 30, 160
        ),
        "psychosis_history": rng.random(n) < 0.003,
        "ketamine_misuse_history": misuse,
        "other_sud": rng.random(n) < 0.02,
        "pregnant_or_breastfeeding": (v["sex"] == "female") & (age < 45) & (rng.random(n) < 0.01),
        "seizure_history": rng.random(n) < 0.005,
        "cystitis_or_urinary_symptoms": rng.random(n) < np.where(misuse, 0.25, 0.015),
    }


def _draw_treatment(rng: np.random.Generator, site: np.ndarray) -> dict[str, np.ndarray]:
    """Course length, dose, therapy and medication follow each site's protocol (§1 trials)."""
    dose_code = _categorical(rng, _DOSE_BY_SITE[site])
    other_dose = np.round(rng.uniform(0.3, 1.0, len(site)) / 0.05) * 0.05
    dose = np.where(dose_code < len(_DOSES), _DOSES[np.minimum(dose_code, 2)], other_dose)
    return {
        "infusions_planned": _INFUSION_COUNTS[_categorical(rng, _INFUSIONS_BY_SITE[site])],
        "dose_mg_per_kg": np.round(dose, 2),
        "psychotherapy": _levels(
            PSYCHOTHERAPY_LEVELS, _categorical(rng, _PSYCHOTHERAPY_BY_SITE[site])
        ),
        "concurrent_medication": _levels(
            MEDICATION_LEVELS, _categorical(rng, _MEDICATION_BY_SITE[site])
        ),
    }


def _draw_fields(
    rng: np.random.Generator, n: int
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Complete values of every input field, plus the site and ancestry codes."""
    site = rng.choice(len(SITES), size=n, p=_SITE_WEIGHTS)
    ancestry = _categorical(rng, _ANCESTRY_BY_SITE[site])
    ids = np.char.add("SIM-", np.char.zfill(np.arange(1, n + 1).astype(str), 6))
    v: dict[str, np.ndarray] = {"patient_id": ids.astype(object), "site_id": _levels(SITES, site)}
    v |= _draw_demographics(rng, site)
    v |= _draw_inheritance(rng, ancestry)
    severity, depression = _draw_latents(rng, v, site)
    v |= _draw_drinking(rng, severity, v)
    v |= _draw_history(rng, severity, depression, v)
    v |= _draw_alcohol_labs(rng, v)
    v |= _draw_inflammation(rng, severity, depression, v)
    v |= _draw_safety(rng, severity, v)
    v |= _draw_treatment(rng, site)
    return v, site, ancestry


# --------------------------------------------------------------------------- missingness

#: Fields missing together, with their mean rate (scaled per site by _SITE_MISSING_FACTOR).
_BLOCK_MISSING: tuple[tuple[tuple[str, ...], float], ...] = (
    (tuple(f.name for f in fields_in_group("inflammatory_biomarker")), 1 / 3),
    (tuple(f.name for f in fields_in_group("genetic")), 0.5),
    (("ggt_u_l", "ast_u_l", "alt_u_l"), 0.10),
    (("systolic_bp_mmhg", "diastolic_bp_mmhg"), 0.02),
    (("peth_ng_ml",), 0.40),
    (("cdt_percent",), 0.30),
    (("mcv_fl",), 0.10),
    (("bmi_kg_m2",), 0.05),
    (("percent_days_abstinent_90d",), 0.05),
    (("aud_onset_age_years",), 0.10),
    (("prior_detox_count",), 0.05),
    (("prior_aud_medications_failed",), 0.08),
    (("craving_pacs",), 0.12),
    (("ciwa_ar",), 0.15),
    (("family_history_aud",), 0.10),
    (("phq9_total",), 0.08),
    (("gad7_total",), 0.10),
    (("current_mdd",), 0.05),
    (("ptsd",), 0.08),
    (("tobacco_use",), 0.05),
    *(((f.name,), 0.03) for f in fields_in_group("safety") if f.kind == "boolean"),
    (("psychotherapy",), 0.05),
    (("concurrent_medication",), 0.03),
)


def _missing_masks(rng: np.random.Generator, site: np.ndarray) -> dict[str, np.ndarray]:
    """Missing at random given the site; the outcome is never consulted."""
    masks: dict[str, np.ndarray] = {}
    for names, rate in _BLOCK_MISSING:
        missing = rng.random(len(site)) < np.minimum(rate * _SITE_MISSING_FACTOR[site], 0.95)
        masks |= dict.fromkeys(names, missing)
    return masks


# --------------------------------------------------------------------------- frames and files


def _column(kind: str, values: np.ndarray, missing: np.ndarray | None) -> Any:
    """One column in the contract's dtype: Int64, float64, boolean, or object with None."""
    mask = np.zeros(len(values), dtype=bool) if missing is None else missing
    if kind == "integer":
        return pd.arrays.IntegerArray(values.astype(np.int64), mask.copy())
    if kind == "boolean":
        return pd.arrays.BooleanArray(values.astype(bool), mask.copy())
    if kind == "number":
        return np.where(mask, np.nan, values.astype(float))
    objects = values.astype(object)
    objects[mask] = None
    return pd.Series(objects, dtype=object)


def _frame(
    schema: tuple[Field, ...],
    values: Mapping[str, np.ndarray],
    missing: Mapping[str, np.ndarray],
) -> pd.DataFrame:
    """The fields of `schema`, in order, with `missing` masked (no entry = complete)."""
    return pd.DataFrame(
        {f.name: _column(f.kind, values[f.name], missing.get(f.name)) for f in schema}
    )


def simulate_cohort(n: int, seed: int, effects: Effects = DEFAULT_EFFECTS) -> pd.DataFrame:
    """A synthetic treated cohort: every schema field in order, `true_probability`, `ancestry`.

    Deterministic in `(n, seed, effects)`; see the module docstring for why the outcome is
    drawn from complete values and masked afterwards.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    feature_rng, outcome_rng, missing_rng = np.random.default_rng(seed).spawn(3)
    values, site, ancestry = _draw_fields(feature_rng, n)
    probability = expit(true_logit(_frame(PREDICTORS, values, {}), effects))
    values["response_6m"] = (outcome_rng.random(n) < probability).astype(np.int64)
    frame = _frame(FIELDS, values, _missing_masks(missing_rng, site))
    frame["true_probability"] = probability
    frame["ancestry"] = pd.Series(_levels(ANCESTRIES, ancestry), dtype=object)
    return frame


def write_cohort(frame: pd.DataFrame, path: Path) -> None:
    """Write CSV or Parquet, chosen by the extension; anything else is an error, not a guess."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        raise ValueError(
            f"cannot write a cohort to extension {suffix or '(none)'!r}; use .csv or .parquet"
        )
