"""The page's server side: the form derives from the one schema, the example is a real patient."""

from __future__ import annotations

import datetime as dt
import json
import re
from html.parser import HTMLParser

from features.safety import assess_frame
from features.schema import INPUT_FIELDS, REQUIRED_INPUTS
from features.validation import validate_records
from serving import page
from serving.fhir_route import bundle_record

MODEL = {
    "name": "ketamine-aud-response",
    "version": "7",
    "trained_at": "2026-11-20T10:00:00+00:00",
    "synthetic_data": True,
    "notice": "Trained on synthetic data.",
    "interval_method": "how the range is made",
}


class _Controls(HTMLParser):
    """Labels, controls and the boot JSON of the rendered page."""

    def __init__(self) -> None:
        super().__init__()
        self.labels: set[str] = set()
        self.controls: dict[str, dict[str, str | None]] = {}
        self.boot = ""
        self._in_boot = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "label" and a.get("for"):
            self.labels.add(str(a["for"]))
        if tag in {"input", "select", "textarea"} and a.get("id"):
            self.controls[str(a["id"])] = a
        self._in_boot = tag == "script" and a.get("id") == "boot"

    def handle_data(self, data: str) -> None:
        if self._in_boot:
            self.boot += data

    def handle_endtag(self, tag: str) -> None:
        self._in_boot = False


def test_sections_hold_every_input_field_once_in_visit_order() -> None:
    names = [f.name for s in page.sections() for f in s.fields]
    assert sorted(names) == sorted(f.name for f in INPUT_FIELDS)
    assert len(names) == len(set(names))
    assert names[0] == "patient_id"
    assert [s.label for s in page.sections()] == [
        "Patient",
        "Drinking history",
        "Mental health",
        "Liver and alcohol markers",
        "Inflammatory markers and BDNF",
        "Genotypes",
        "Safety screen",
        "Planned treatment",
    ]


def test_field_spec_and_range_text_come_from_the_schema() -> None:
    hdd = page.field_spec(next(f for f in INPUT_FIELDS if f.name == "hdd_90d"))
    assert (hdd["minimum"], hdd["maximum"], hdd["unit"], hdd["required"]) == (0, 90, "days", True)
    assert page.range_text(next(f for f in INPUT_FIELDS if f.name == "dose_mg_per_kg")) == (
        "0.1–2 mg/kg"
    )
    assert page.range_text(next(f for f in INPUT_FIELDS if f.name == "sex")) == ""
    plan = {f.name for f in INPUT_FIELDS if page.field_spec(f)["plan"]}
    assert plan == {"infusions_planned", "dose_mg_per_kg", "psychotherapy", "concurrent_medication"}
    assert page.level_label("cbt") == "Cognitive behavioural therapy (CBT)"
    assert page.level_label("motivational_enhancement") == "Motivational enhancement"


def test_example_patient_is_valid_eligible_and_has_realistic_gaps() -> None:
    record = page.example_record()
    frame = validate_records([record]).frame
    assert assess_frame(frame)[0].status == "eligible"
    missing = [f.name for f in INPUT_FIELDS if f.name not in record]
    assert 1 <= len(missing) <= 6
    assert not set(missing) & set(REQUIRED_INPUTS)
    assert page.example_record() == record


def test_rendered_form_labels_every_control_and_marks_optional_fields() -> None:
    html = page.render(MODEL)
    parsed = _Controls()
    parsed.feed(html)
    for f in INPUT_FIELDS:
        control = parsed.controls[f"f-{f.name}"]
        assert f"f-{f.name}" in parsed.labels, f.name
        assert f"err-{f.name}" in str(control["aria-describedby"])
        assert ("required" in control) == f.required, f.name
    optional = len(re.findall(r'class="optional"', html))
    assert optional == sum(not f.required for f in INPUT_FIELDS)
    assert "Plausible range 0–90 days." in html
    boot = json.loads(parsed.boot)
    assert boot["example"] == page.example_record()
    assert boot["model"]["version"] == "7"
    assert [f["name"] for f in boot["fields"]] == [
        f.name for s in page.sections() for f in s.fields
    ]
    assert "Synthetic data." in html and 'version <span id="model-version">7</span>' in html


def test_boot_json_cannot_close_its_script_element() -> None:
    html = page.render({**MODEL, "notice": "</script><script>alert(1)</script>"})
    boot = html.split('<script type="application/json" id="boot">', 1)[1]
    assert boot.index("</script>") == boot.index("</script>\n</body>")
    assert "&lt;/script&gt;" in html  # the visible notice is escaped too


def test_bundle_record_fills_the_form_from_the_example_bundle() -> None:
    now = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)
    status, answer = bundle_record(page.example_bundle(now), now=now)
    assert status == 200
    expected = {k: v for k, v in page.example_record().items() if k != "site_id"}
    assert answer["record"] == expected
    assert answer["problems"] == [] and answer["ignored"] == []
    assert answer["used"] == len(expected) - 3  # patient_id, sex and age come from the Patient
    assert bundle_record({"resourceType": "Patient"}, now=now)[0] == 400
    assert bundle_record(None, now=now)[0] == 400
