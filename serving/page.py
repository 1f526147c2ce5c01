"""The clinician's page: the form, generated from the one schema, and the data it starts with.

Everything the browser needs to draw the form, check nothing itself and explain the server's
answers is derived here from `features.schema`: groups in the order of a clinic visit, each field
with its label, unit, plausible range and whether it is optional. The page never restates a
range; the server stays the only judge of validity, and the page maps its 400 answer back to the
fields. The example patient comes from the simulator with a fixed seed, so it is realistic by
construction (clinical.md) and the same on every machine.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from features.fhir_bundle import record_to_bundle
from features.records import to_records
from features.safety import assess_frame
from features.schema import GROUP_LABELS, INPUT_FIELDS, Field, fields_in_group
from features.simulate import simulate_cohort
from features.validation import validate_table

WEB_DIR = Path(__file__).with_name("web")
STATIC_DIR = WEB_DIR / "static"
#: The plan fields a clinician can change to compare predictions under another plan.
PLAN_GROUP = "treatment_plan"
EXAMPLE_SEED = 20261127
#: Content-Security-Policy of the page: every script, style and request stays on this origin,
#: so the page works on a closed clinic network and nothing is fetched from a CDN.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
#: Words for category levels where the code alone would be cryptic or an abbreviation.
LEVEL_WORDS: dict[str, str] = {
    "cbt": "Cognitive behavioural therapy (CBT)",
    "none": "None",
    "other": "Other",
}


@dataclass(frozen=True)
class Section:
    """One fieldset of the form: a heading and its fields."""

    key: str
    label: str
    fields: tuple[Field, ...]


def sections() -> tuple[Section, ...]:
    """The form's fieldsets, in the order of a clinic visit (identity and demographics merged)."""
    order = [g for g in GROUP_LABELS if g not in {"outcome", "demographic"}]
    out = []
    for group in order:
        fields = fields_in_group(group)
        if group == "identity":
            fields = fields + fields_in_group("demographic")
        inputs = tuple(f for f in fields if f in INPUT_FIELDS)
        out.append(Section(group, GROUP_LABELS[group], inputs))
    return tuple(out)


def level_label(level: str) -> str:
    return LEVEL_WORDS.get(level, level.replace("_", " ").capitalize())


def _number_text(x: float) -> str:
    return f"{x:g}"


def range_text(f: Field) -> str:
    """The plausible range as a hint ("18–90 years"), or "" when the field has none."""
    if f.minimum is None or f.maximum is None:
        return ""
    unit = f" {f.unit_label}" if f.unit_label else ""
    return f"{_number_text(f.minimum)}–{_number_text(f.maximum)}{unit}"


def field_spec(f: Field) -> dict[str, Any]:
    """What the browser needs about one field to send it and to explain errors about it."""
    return {
        "name": f.name,
        "label": f.label,
        "kind": f.kind,
        "unit": f.unit_label,
        "minimum": f.minimum,
        "maximum": f.maximum,
        "required": f.required,
        "levels": [{"value": v, "label": level_label(v)} for v in f.levels],
        "plan": f.group == PLAN_GROUP,
    }


@cache
def example_record() -> dict[str, Any]:
    """A realistic, eligible patient from the simulator, with the gaps a real record has.

    The first simulated patient who is eligible, has a few optional inputs missing and is not at
    either extreme of predicted response, so the example shows the common case, not a curiosity.
    """
    cohort = simulate_cohort(n=200, seed=EXAMPLE_SEED)
    truth = cohort["true_probability"].to_numpy()
    inputs = cohort[[f.name for f in INPUT_FIELDS]]
    frame = validate_table(inputs).frame
    status = [e.status for e in assess_frame(frame)]
    records = to_records(frame)
    for i, record in enumerate(records):
        missing = sum(f.name not in record for f in INPUT_FIELDS)
        if status[i] == "eligible" and 1 <= missing <= 6 and 0.3 <= truth[i] <= 0.6:
            return {**record, "patient_id": "EXAMPLE-001"}
    raise RuntimeError("the simulator gave no typical eligible example patient")


def example_bundle(at: dt.datetime | None = None) -> dict[str, Any]:
    """The example patient as a FHIR R4 Bundle, for the paste-a-Bundle panel."""
    now = at or dt.datetime.now(dt.UTC)
    return record_to_bundle(example_record(), at=now)


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(WEB_DIR),
        autoescape=jinja2.select_autoescape(("html",)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(model: dict[str, Any]) -> str:
    """The page's HTML: the form drawn from the schema, and the model it will ask.

    `model` carries only what the open page may show before sign-in: name, version, training
    date and the synthetic-data notice (no metrics, no patient data).
    """
    boot = {
        "fields": [field_spec(f) for s in sections() for f in s.fields],
        "example": example_record(),
        "example_bundle": example_bundle(),
        "model": model,
    }
    template = _environment().get_template("index.html")
    return template.render(
        sections=sections(),
        range_text=range_text,
        level_label=level_label,
        model=model,
        boot_json=json.dumps(boot, separators=(",", ":")).replace("</", "<\\/"),
    )
