"""The one schema agrees with the shared data dictionary, field by field."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from features.schema import BY_NAME, FIELDS, PREDICTORS, UNIT_LABELS

DICTIONARY = Path(__file__).resolve().parents[3] / "shared" / "data-dictionary.csv"


@pytest.mark.skipif(not DICTIONARY.exists(), reason="../shared/data-dictionary.csv not present")
def test_schema_matches_the_data_dictionary() -> None:
    rows = list(csv.DictReader(DICTIONARY.open()))
    assert [r["name"] for r in rows] == [f.name for f in FIELDS]
    for row in rows:
        f = BY_NAME[row["name"]]
        kind, _, levels = row["type"].partition(":")
        assert (f.kind, f.group) == (kind, row["group"])
        assert f.levels == (tuple(levels.split("|")) if levels else ())
        assert f.unit == (row["unit_ucum"] or None)
        assert f.minimum == (float(row["min"]) if row["min"] else None)
        assert f.maximum == (float(row["max"]) if row["max"] else None)
        assert f.required == (row["required"] == "yes")
        assert f.training_only == (row["required"] == "training only")
        assert f.loinc == (row["loinc"] or None)
        assert f.description == row["description"]


def test_every_field_has_a_label_and_known_unit() -> None:
    assert len(FIELDS) == 49
    for f in FIELDS:
        assert f.label
        assert f.unit is None or f.unit in UNIT_LABELS


def test_predictors_exclude_identity_safety_and_outcome() -> None:
    groups = {f.group for f in PREDICTORS}
    assert not groups & {"identity", "safety", "outcome"}
    assert "hdd_90d" in {f.name for f in PREDICTORS}
