"""Request and response models of the HTTP API, generated from the one schema.

The request model is built from `features.schema.INPUT_FIELDS`: types are strict (JSON
integers for counts, booleans for flags, no numbers in strings), ranges and category levels
come from the declaration, unknown fields are rejected (a typo must not silently drop a
value), and a patient's cross-field rule and duplicate identifiers in a batch are checked
here too, so BentoML answers every problem in one 400 response whose `detail[].loc` names
the patient index and the field.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    create_model,
    model_validator,
)

from features.schema import INPUT_FIELDS
from features.schema import Field as SchemaField
from serving.uncertainty import METHOD_DESCRIPTION

MAX_BATCH = 1000
PATIENT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


def _annotation(f: SchemaField) -> Any:
    desc = f"{f.label}. {f.description}" + (f" Unit: {f.unit}." if f.unit else "")
    extra: dict[str, Any] = {"description": desc}
    if f.loinc:
        extra["json_schema_extra"] = {"x-loinc": f.loinc}
    if f.kind == "string":
        base: Any = StrictStr
        if f.name == "patient_id":
            extra["pattern"] = PATIENT_ID_PATTERN
        else:
            extra.update(min_length=1, max_length=64)
    elif f.kind == "category":
        base = Literal[f.levels]  # type: ignore[valid-type]
    elif f.kind == "boolean":
        base = StrictBool
    else:
        # Bounds on each branch of the union, so the OpenAPI document shows them as JSON Schema
        # minimum/maximum (on the outer field pydantic would emit non-standard ge/le).
        lo, hi = math.ceil(f.minimum), math.floor(f.maximum)  # integer bounds of the range
        whole = Annotated[StrictInt, Field(ge=lo, le=hi)]
        real = Annotated[StrictFloat, Field(ge=f.minimum, le=f.maximum, allow_inf_nan=False)]
        base = whole if f.kind == "integer" else whole | real
    if f.required:
        return (Annotated[base, Field(**extra)], ...)
    return (Annotated[base | None, Field(**extra)], None)


class _RecordBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _onset_not_after_age(self) -> _RecordBase:
        onset, age = getattr(self, "aud_onset_age_years", None), self.age_years  # type: ignore[attr-defined]
        if onset is not None and onset > age:
            raise ValueError(f"aud_onset_age_years ({onset}) must not exceed age_years ({age})")
        return self


PatientRecord = create_model(  # type: ignore[call-overload]
    "PatientRecord",
    __base__=_RecordBase,
    __doc__="One patient's baseline data, as in the data dictionary (without response_6m).",
    **{f.name: _annotation(f) for f in INPUT_FIELDS},
)


def _unique_ids(patients: list[Any]) -> list[Any]:
    first: dict[str, int] = {}
    for i, p in enumerate(patients):
        j = first.setdefault(p.patient_id, i)
        if j != i:
            raise ValueError(f"patients[{i}].patient_id repeats patients[{j}].patient_id")
    return patients


PatientBatch = Annotated[
    list[PatientRecord],  # type: ignore[valid-type]
    Field(min_length=1, max_length=MAX_BATCH),
    AfterValidator(_unique_ids),
]


# ----------------------------------------------------------------------------- responses
class Contribution(BaseModel):
    feature: str
    label: str
    value: float | int | bool | str | None
    unit: str
    shap: float = Field(description="Contribution in calibrated log-odds.")


class Reason(BaseModel):
    rule: str
    severity: Literal["contraindicated", "caution", "unknown"]
    message: str
    source: str
    fields: list[str]


class Eligibility(BaseModel):
    status: Literal["eligible", "caution", "contraindicated", "unknown"]
    reasons: list[Reason]


class Warning(BaseModel):
    code: str
    fields: list[str]
    message: str


class UnusualFeature(BaseModel):
    feature: str
    label: str
    value: float | int | bool | str
    unit: str
    direction: Literal["high", "low"]
    share_of_distance: float = Field(description="Share of the squared typicality distance.")


class Applicability(BaseModel):
    typical: bool = Field(
        description="False beyond the 99th percentile of held-out development patients' "
        "unusualness."
    )
    typicality_percentile: float = Field(
        ge=0,
        le=100,
        description="Percent of held-out development patients at least as unusual.",
    )
    unusual_features: list[UnusualFeature]
    outside_training_support: list[str]
    unseen_missingness_pattern: bool
    missing_groups: list[str]


class ModelRef(BaseModel):
    name: str
    version: str


class PatientPrediction(BaseModel):
    patient_id: str
    probability: float = Field(ge=0, le=1, description="Calibrated probability of response.")
    probability_interval: tuple[float, float] = Field(description=METHOD_DESCRIPTION)
    risk_band: Literal["low", "moderate", "high"]
    logit: float
    base_log_odds: float
    contributions: list[Contribution]
    eligibility: Eligibility
    applicability: Applicability
    warnings: list[Warning]
    model: ModelRef


class PredictResponse(BaseModel):
    predictions: list[PatientPrediction]
    model: ModelRef
    synthetic_data: bool
    notice: str
