"""The one declaration of every input field (`../shared/data-dictionary.csv`, 49 fields).

Validation, the API's request model, the FHIR mapping, the clinician form and the generated
data-dictionary page all derive from `FIELDS`; nothing else in the code base may restate a
range, a unit or a LOINC code. A test compares this declaration with the shared CSV so the two
cannot drift apart silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["string", "integer", "number", "boolean", "category"]

#: Groups whose fields the model may use as predictors. Identity fields never are; the safety
#: screen feeds the eligibility rules only (a contraindication is a reason not to treat, not a
#: predictor of response, and contraindicated patients are absent from treated cohorts); the
#: outcome is the label.
PREDICTOR_GROUPS: tuple[str, ...] = (
    "demographic",
    "alcohol_use",
    "psychiatric",
    "alcohol_biomarker",
    "inflammatory_biomarker",
    "genetic",
    "treatment_plan",
)

#: Human-readable names of the UCUM units, for labels on the page and in explanations.
UNIT_LABELS: dict[str, str] = {
    "a": "years",
    "d": "days",
    "%": "%",
    "kg/m2": "kg/m²",
    "{score}": "points",
    "{drink}": "drinks",
    "{count}": "",
    "{allele}": "alleles",
    "{z}": "SD",
    "U/L": "U/L",
    "ng/mL": "ng/mL",
    "mg/L": "mg/L",
    "pg/mL": "pg/mL",
    "fL": "fL",
    "mm[Hg]": "mmHg",
    "mg/kg": "mg/kg",
}


@dataclass(frozen=True, slots=True)
class Field:
    """One column of the input contract.

    `minimum`/`maximum` are the plausible range: values outside it are errors, never clipped.
    `levels` lists the allowed values of a category field. `training_only` marks the outcome,
    which training requires and prediction must not receive.
    """

    name: str
    group: str
    kind: Kind
    label: str
    description: str
    unit: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    required: bool = False
    loinc: str | None = None
    levels: tuple[str, ...] = ()
    training_only: bool = False

    @property
    def unit_label(self) -> str:
        """The unit as a clinician reads it ("mmHg", not "mm[Hg]")."""
        return UNIT_LABELS.get(self.unit or "", self.unit or "")

    @property
    def is_predictor(self) -> bool:
        return self.group in PREDICTOR_GROUPS


def _f(name: str, group: str, kind: Kind, label: str, description: str, **kw: object) -> Field:
    return Field(name=name, group=group, kind=kind, label=label, description=description, **kw)


PSYCHOTHERAPY_LEVELS = (
    "none",
    "motivational_enhancement",
    "relapse_prevention",
    "cbt",
    "mindfulness",
)
MEDICATION_LEVELS = ("none", "naltrexone", "acamprosate", "disulfiram", "other")

FIELDS: tuple[Field, ...] = (
    # identity
    _f(
        "patient_id",
        "identity",
        "string",
        "Patient ID",
        "Pseudonymous identifier issued by the clinic; never a name or medical record number. "
        "1-64 characters of letters, digits, '-' and '_'.",
        required=True,
    ),
    _f(
        "site_id",
        "identity",
        "string",
        "Site",
        "Clinic or trial site that recorded the baseline visit.",
    ),
    # demographic
    _f(
        "age_years",
        "demographic",
        "integer",
        "Age",
        "Age at the baseline visit.",
        unit="a",
        minimum=18,
        maximum=90,
        required=True,
        loinc="30525-0",
    ),
    _f(
        "sex",
        "demographic",
        "category",
        "Sex",
        "Sex assigned at birth; sets the heavy-drinking-day threshold (>=4 drinks female, "
        ">=5 male).",
        required=True,
        loinc="46098-0",
        levels=("female", "male"),
    ),
    _f(
        "bmi_kg_m2",
        "demographic",
        "number",
        "BMI",
        "Body mass index.",
        unit="kg/m2",
        minimum=12,
        maximum=70,
        loinc="39156-5",
    ),
    # alcohol use
    _f(
        "audit_total",
        "alcohol_use",
        "integer",
        "AUDIT total",
        "AUDIT total score (>=8 hazardous; >=20 likely dependence).",
        unit="{score}",
        minimum=0,
        maximum=40,
        required=True,
        loinc="75624-7",
    ),
    _f(
        "hdd_90d",
        "alcohol_use",
        "integer",
        "Heavy drinking days (last 90 days)",
        "Heavy drinking days in the 90 days before baseline, by Timeline Followback.",
        unit="d",
        minimum=0,
        maximum=90,
        required=True,
    ),
    _f(
        "drinks_per_drinking_day",
        "alcohol_use",
        "number",
        "Drinks per drinking day",
        "Mean US standard drinks (14 g ethanol) per drinking day over the same 90 days.",
        unit="{drink}",
        minimum=0,
        maximum=60,
        required=True,
    ),
    _f(
        "percent_days_abstinent_90d",
        "alcohol_use",
        "number",
        "Days abstinent (last 90 days)",
        "Percent of the 90 days before baseline with no alcohol.",
        unit="%",
        minimum=0,
        maximum=100,
    ),
    _f(
        "aud_onset_age_years",
        "alcohol_use",
        "integer",
        "Age at AUD onset",
        "Age when alcohol use disorder began; must not exceed age_years.",
        unit="a",
        minimum=8,
        maximum=90,
    ),
    _f(
        "prior_detox_count",
        "alcohol_use",
        "integer",
        "Prior detoxifications",
        "Number of earlier medically supervised withdrawals.",
        unit="{count}",
        minimum=0,
        maximum=50,
    ),
    _f(
        "prior_aud_medications_failed",
        "alcohol_use",
        "integer",
        "AUD medications failed",
        "Number of AUD medications tried without lasting benefit (naltrexone, acamprosate, "
        "disulfiram, topiramate, baclofen).",
        unit="{count}",
        minimum=0,
        maximum=5,
    ),
    _f(
        "craving_pacs",
        "alcohol_use",
        "integer",
        "Craving (PACS)",
        "Penn Alcohol Craving Scale total.",
        unit="{score}",
        minimum=0,
        maximum=30,
    ),
    _f(
        "ciwa_ar",
        "alcohol_use",
        "integer",
        "Withdrawal severity (CIWA-Ar)",
        "CIWA-Ar withdrawal score at the last withdrawal episode.",
        unit="{score}",
        minimum=0,
        maximum=67,
    ),
    _f(
        "family_history_aud",
        "alcohol_use",
        "boolean",
        "Family history of AUD",
        "Alcohol use disorder in a first-degree relative.",
    ),
    # psychiatric
    _f(
        "phq9_total",
        "psychiatric",
        "integer",
        "PHQ-9 depression score",
        "PHQ-9 depression total score.",
        unit="{score}",
        minimum=0,
        maximum=27,
        loinc="44261-6",
    ),
    _f(
        "gad7_total",
        "psychiatric",
        "integer",
        "GAD-7 anxiety score",
        "GAD-7 anxiety total score.",
        unit="{score}",
        minimum=0,
        maximum=21,
        loinc="70274-6",
    ),
    _f(
        "current_mdd",
        "psychiatric",
        "boolean",
        "Current major depression",
        "Current major depressive episode (diagnosed).",
    ),
    _f("ptsd", "psychiatric", "boolean", "PTSD", "Current post-traumatic stress disorder."),
    _f("tobacco_use", "psychiatric", "boolean", "Tobacco use", "Current tobacco or nicotine use."),
    # alcohol biomarkers
    _f(
        "ggt_u_l",
        "alcohol_biomarker",
        "number",
        "GGT",
        "Gamma-glutamyl transferase.",
        unit="U/L",
        minimum=1,
        maximum=3000,
        loinc="2324-2",
    ),
    _f(
        "ast_u_l",
        "alcohol_biomarker",
        "number",
        "AST",
        "Aspartate aminotransferase.",
        unit="U/L",
        minimum=1,
        maximum=3000,
        loinc="1920-8",
    ),
    _f(
        "alt_u_l",
        "alcohol_biomarker",
        "number",
        "ALT",
        "Alanine aminotransferase.",
        unit="U/L",
        minimum=1,
        maximum=3000,
        loinc="1742-6",
    ),
    _f(
        "peth_ng_ml",
        "alcohol_biomarker",
        "number",
        "PEth",
        "Phosphatidylethanol 16:0/18:1 in whole blood (<20 light or no use; >200 heavy use).",
        unit="ng/mL",
        minimum=0,
        maximum=5000,
        loinc="97607-6",
    ),
    _f(
        "cdt_percent",
        "alcohol_biomarker",
        "number",
        "%CDT",
        "Carbohydrate-deficient transferrin as percent of total transferrin.",
        unit="%",
        minimum=0,
        maximum=30,
        loinc="48495-6",
    ),
    _f(
        "mcv_fl",
        "alcohol_biomarker",
        "number",
        "MCV",
        "Mean corpuscular volume.",
        unit="fL",
        minimum=50,
        maximum=130,
        loinc="787-2",
    ),
    # inflammatory markers and BDNF
    _f(
        "hscrp_mg_l",
        "inflammatory_biomarker",
        "number",
        "hs-CRP",
        "High-sensitivity C-reactive protein.",
        unit="mg/L",
        minimum=0,
        maximum=300,
        loinc="30522-7",
    ),
    _f(
        "il6_pg_ml",
        "inflammatory_biomarker",
        "number",
        "IL-6",
        "Interleukin-6, serum.",
        unit="pg/mL",
        minimum=0,
        maximum=1000,
        loinc="26881-3",
    ),
    _f(
        "tnfa_pg_ml",
        "inflammatory_biomarker",
        "number",
        "TNF-α",
        "Tumour necrosis factor alpha, serum.",
        unit="pg/mL",
        minimum=0,
        maximum=500,
        loinc="3074-2",
    ),
    _f(
        "il1b_pg_ml",
        "inflammatory_biomarker",
        "number",
        "IL-1β",
        "Interleukin-1 beta, serum.",
        unit="pg/mL",
        minimum=0,
        maximum=500,
        loinc="13629-1",
    ),
    _f(
        "bdnf_serum_ng_ml",
        "inflammatory_biomarker",
        "number",
        "BDNF (serum)",
        "Brain-derived neurotrophic factor, serum (serum and plasma values must not be mixed).",
        unit="ng/mL",
        minimum=0,
        maximum=100,
    ),
    # genetic variants
    _f(
        "bdnf_rs6265_met",
        "genetic",
        "integer",
        "BDNF Val66Met (Met alleles)",
        "Count of Met (A) alleles at BDNF Val66Met rs6265.",
        unit="{allele}",
        minimum=0,
        maximum=2,
    ),
    _f(
        "oprm1_rs1799971_g",
        "genetic",
        "integer",
        "OPRM1 A118G (G alleles)",
        "Count of G alleles at OPRM1 A118G rs1799971.",
        unit="{allele}",
        minimum=0,
        maximum=2,
    ),
    _f(
        "grin2b_rs1805502_g",
        "genetic",
        "integer",
        "GRIN2B rs1805502 (G alleles)",
        "Count of G alleles at GRIN2B rs1805502.",
        unit="{allele}",
        minimum=0,
        maximum=2,
    ),
    _f(
        "adh1b_rs1229984_his",
        "genetic",
        "integer",
        "ADH1B*2 (His48 alleles)",
        "Count of ADH1B*2 (His48) alleles at rs1229984.",
        unit="{allele}",
        minimum=0,
        maximum=2,
    ),
    _f(
        "aud_prs_z",
        "genetic",
        "number",
        "AUD polygenic risk score",
        "Alcohol use disorder polygenic risk score, standardised against the reference population.",
        unit="{z}",
        minimum=-6,
        maximum=6,
    ),
    # safety screen
    _f(
        "systolic_bp_mmhg",
        "safety",
        "number",
        "Systolic blood pressure",
        "Seated systolic blood pressure at screening.",
        unit="mm[Hg]",
        minimum=60,
        maximum=260,
        loinc="8480-6",
    ),
    _f(
        "diastolic_bp_mmhg",
        "safety",
        "number",
        "Diastolic blood pressure",
        "Seated diastolic blood pressure at screening.",
        unit="mm[Hg]",
        minimum=30,
        maximum=160,
        loinc="8462-4",
    ),
    _f(
        "psychosis_history",
        "safety",
        "boolean",
        "Psychosis history (self or relative)",
        "Psychotic disorder in the patient or a first-degree relative.",
    ),
    _f(
        "ketamine_misuse_history",
        "safety",
        "boolean",
        "Past ketamine misuse",
        "Any past non-medical ketamine use or ketamine use disorder.",
    ),
    _f(
        "other_sud",
        "safety",
        "boolean",
        "Other substance use disorder",
        "Current use disorder of another substance (tobacco excepted).",
    ),
    _f(
        "pregnant_or_breastfeeding",
        "safety",
        "boolean",
        "Pregnant or breastfeeding",
        "Currently pregnant or breastfeeding.",
    ),
    _f(
        "seizure_history",
        "safety",
        "boolean",
        "Seizure history",
        "History of seizures other than alcohol-withdrawal seizures.",
    ),
    _f(
        "cystitis_or_urinary_symptoms",
        "safety",
        "boolean",
        "Cystitis or urinary symptoms",
        "Interstitial cystitis or current lower urinary tract symptoms.",
    ),
    # planned treatment
    _f(
        "infusions_planned",
        "treatment_plan",
        "integer",
        "Infusions planned",
        "Number of ketamine infusions in the planned course.",
        unit="{count}",
        minimum=1,
        maximum=12,
        required=True,
    ),
    _f(
        "dose_mg_per_kg",
        "treatment_plan",
        "number",
        "Dose per infusion",
        "Planned dose per infusion (0.5-0.8 mg/kg over 40-52 min in published trials).",
        unit="mg/kg",
        minimum=0.1,
        maximum=2,
        required=True,
    ),
    _f(
        "psychotherapy",
        "treatment_plan",
        "category",
        "Psychotherapy",
        "Psychological therapy delivered alongside the infusions.",
        levels=PSYCHOTHERAPY_LEVELS,
    ),
    _f(
        "concurrent_medication",
        "treatment_plan",
        "category",
        "Concurrent AUD medication",
        "AUD medication taken during the infusion course.",
        levels=MEDICATION_LEVELS,
    ),
    # outcome
    _f(
        "response_6m",
        "outcome",
        "integer",
        "Response at 6 months",
        "1 if the patient had no heavy drinking days (>=4 drinks female, >=5 male, by Timeline "
        "Followback) in days 91-180 after the first infusion; 0 otherwise, including loss to "
        "follow-up. Required in training data, ignored at prediction.",
        minimum=0,
        maximum=1,
        training_only=True,
    ),
)

BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
OUTCOME = "response_6m"
ID_FIELD = "patient_id"
#: Fields a prediction request may carry (everything but the outcome).
INPUT_FIELDS: tuple[Field, ...] = tuple(f for f in FIELDS if not f.training_only)
PREDICTORS: tuple[Field, ...] = tuple(f for f in FIELDS if f.is_predictor)
REQUIRED_INPUTS: tuple[str, ...] = tuple(f.name for f in INPUT_FIELDS if f.required)
GROUP_LABELS: dict[str, str] = {
    "identity": "Patient",
    "demographic": "Patient",
    "alcohol_use": "Drinking history",
    "psychiatric": "Mental health",
    "alcohol_biomarker": "Liver and alcohol markers",
    "inflammatory_biomarker": "Inflammatory markers and BDNF",
    "genetic": "Genotypes",
    "safety": "Safety screen",
    "treatment_plan": "Planned treatment",
    "outcome": "Outcome",
}


def fields_in_group(group: str) -> tuple[Field, ...]:
    """Fields of one data-dictionary group, in dictionary order."""
    return tuple(f for f in FIELDS if f.group == group)
