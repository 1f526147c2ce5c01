"""Pseudonyms, content hashes and the output summary that the audit log may hold.

The audit log must let an auditor answer "was this patient scored, when, by whom, on which
input, with which answer?" without holding anything that identifies the patient (DESIGN.md
decision 8). So the patient id is replaced by a *keyed* hash: patient ids are short and
guessable, and a plain SHA-256 of one can be reversed by hashing every candidate id. With an
HMAC, only someone holding the key can link a row to a patient.

Key rotation: every row stores `key_id`, a fingerprint of the key that produced its
`patient_key`. After a rotation, new rows get the new fingerprint and old rows keep theirs;
to find one patient's events across keys, compute `patient_hash(id, k)` for each key still
held and query all of them (`AuditStore.rows(..., patient_keys=...)`). Destroying an old
key makes its rows permanently unlinkable, which is the way to honour retention limits.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from features.schema import ID_FIELD, INPUT_FIELDS

KEY_ENV = "KETAPREDICT_AUDIT_KEY"
#: 32 bytes = the HMAC-SHA256 block's security level; shorter secrets are guessable.
MIN_KEY_BYTES = 32
_KEY_ID_LABEL = b"ketapredict-audit-key-id"


def check_key(key: bytes) -> bytes:
    """Refuse missing or short keys: a weak key turns the pseudonym back into a plain hash."""
    if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the audit key must be at least {MIN_KEY_BYTES} bytes")
    return key


def key_from_env(environ: Mapping[str, str] | None = None) -> bytes:
    """The audit key from `KETAPREDICT_AUDIT_KEY` (UTF-8 text, at least 32 bytes).

    Generate one with `python -c "import secrets; print(secrets.token_hex(32))"` and keep it in
    the deployment's secret store, not in the repository.
    """
    env = os.environ if environ is None else environ
    value = env.get(KEY_ENV, "")
    if not value:
        raise ValueError(f"{KEY_ENV} is not set; the audit log needs a secret key")
    return check_key(value.encode("utf-8"))


def key_id(key: bytes) -> str:
    """A public fingerprint of the key (16 hex), so rows say which key made their pseudonym."""
    return hmac.new(check_key(key), _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


def patient_hash(patient_id: str, key: bytes) -> str:
    """HMAC-SHA256 of the patient id, hex: stable per key, unlinkable without it."""
    if not isinstance(patient_id, str) or not patient_id:
        raise ValueError("a patient id must be a non-empty string")
    return hmac.new(check_key(key), patient_id.encode("utf-8"), hashlib.sha256).hexdigest()


def patient_hashes(patient_ids: Sequence[str], key: bytes) -> list[str]:
    """`patient_hash` of many ids: the keyed state is set up once and copied per id."""
    base = hmac.new(check_key(key), digestmod=hashlib.sha256)
    out = []
    for i, patient_id in enumerate(patient_ids):
        if not isinstance(patient_id, str) or not patient_id:
            raise ValueError(f"patient {i}: a patient id must be a non-empty string")
        h = base.copy()
        h.update(patient_id.encode("utf-8"))
        out.append(h.hexdigest())
    return out


def _json_default(value: object) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"cannot hash a value of type {type(value).__name__}")


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8, NaN refused: one text per value, whoever serialises."""
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_json_default,
    )


def input_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of one input record, *without* its patient id.

    The id is left out because it is already covered by the keyed `patient_key`; an unkeyed
    hash over it would let anyone holding a record confirm that this patient was scored
    without knowing the key. Pass the validated record (`model_dump(mode="json")`) so that
    1 and 1.0, or a date and its text, hash the same on every route.
    """
    content = {k: v for k, v in record.items() if k != ID_FIELD}
    return hashlib.sha256(canonical_json(content).encode("utf-8")).hexdigest()


#: The hashed fields in canonical (sorted) key order, the id left out as in `input_hash`.
_HASHED = sorted((f for f in INPUT_FIELDS if f.name != ID_FIELD), key=lambda f: f.name)


def _json_texts(kind: str, name: str, values: np.ndarray) -> np.ndarray:
    """The JSON text of each (present) value, as `canonical_json` writes it after
    `features.records.to_records` has typed it."""
    if kind == "integer":
        return np.array([str(v) for v in values.astype(np.int64).tolist()], dtype=object)
    if kind == "boolean":
        return np.where(values.astype(bool), "true", "false").astype(object)
    if kind == "number":
        numbers = values.astype(float)
        if not np.isfinite(numbers).all():  # canonical_json refuses NaN and infinities
            raise ValueError(f"{name}: a number is not finite")
        return np.array(list(map(float.__repr__, numbers.tolist())), dtype=object)
    texts: dict[Any, str] = {}
    for v in values.tolist():
        if v not in texts:
            texts[v] = json.dumps(str(v), ensure_ascii=False)
    return np.array([texts[v] for v in values.tolist()], dtype=object)


def input_hashes(frame: pd.DataFrame) -> list[str]:
    """`input_hash` of every row's record (`features.records.to_records`) of a validated frame.

    Built a column at a time (each field's JSON text, then the rows' texts joined), so a batch
    of a million patients does not build a million dicts; a test holds it equal to the
    per-record path, which the API's audit uses.
    """
    columns = []
    for f in _HASHED:
        if f.name not in frame:
            continue
        values = frame[f.name].to_numpy()
        present = ~pd.isna(values)
        if present.any():
            texts = np.full(len(frame), "", dtype=object)
            key = f",{json.dumps(f.name)}:"
            texts[present] = key + _json_texts(f.kind, f.name, values[present])
            columns.append(texts.tolist())
    rows = zip(*columns, strict=True) if columns else [()] * len(frame)
    # each row's fragments start with a comma: drop the first one
    return [
        hashlib.sha256(("{" + "".join(parts)[1:] + "}").encode("utf-8")).hexdigest()
        for parts in rows
    ]


def caller_label(token: str) -> str:
    """A loggable caller label for a bearer token: a short digest, never the token itself."""
    return "token:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


def _finite_probability(value: object, what: str) -> float:
    p = float(value)  # type: ignore[arg-type]
    if not math.isfinite(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{what} must be a probability in [0, 1]")
    return p


def output_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The part of one prediction that the audit log keeps, by whitelist.

    Accepts a `serving.results.explain` item (or an earlier summary). Only numbers, the band,
    the eligibility status with its rule names, and warning codes with their field *names*
    survive: warning and eligibility messages quote input values, and the item carries the
    patient id, so neither is copied.
    """
    interval = result["probability_interval"]
    eligibility = result.get("eligibility", "unknown")
    if isinstance(eligibility, Mapping):
        rules = [str(r["rule"]) for r in eligibility.get("reasons", [])]
        status = str(eligibility["status"])
    else:
        rules = [str(r) for r in result.get("eligibility_rules", [])]
        status = str(eligibility)
    return {
        "probability": _finite_probability(result["probability"], "probability"),
        "probability_interval": [
            _finite_probability(interval[0], "interval"),
            _finite_probability(interval[1], "interval"),
        ],
        "risk_band": str(result["risk_band"]),
        "eligibility": status,
        "eligibility_rules": rules,
        "warnings": [
            {"code": str(w["code"]), "fields": [str(f) for f in w.get("fields", [])]}
            for w in result.get("warnings", [])
        ],
    }


def output_summary_texts(
    probability: np.ndarray,
    interval: tuple[np.ndarray, np.ndarray],
    bands: Sequence[str],
    eligibility: Sequence[Mapping[str, Any]],
    warnings: Sequence[Sequence[Mapping[str, Any]]],
    alike: Sequence[Hashable],
) -> list[str]:
    """`output_summary` of many patients as JSON text, for a bulk audit write.

    `alike[i]` is a key that patients with equal eligibility and warnings share: their
    non-numeric part goes through `output_summary` (the one whitelist) once per key.
    """
    lower, upper = interval
    for what, values in (("probability", probability), ("interval", lower), ("interval", upper)):
        bad = ~(np.isfinite(values) & (values >= 0.0) & (values <= 1.0))
        if bad.any():
            raise ValueError(
                f"patient {int(np.argmax(bad))}: {what} must be a probability in [0, 1]"
            )
    tails: dict[Hashable, str] = {}
    band_json = {band: json.dumps(str(band)) for band in set(bands)}
    out = []
    rows = zip(probability.tolist(), lower.tolist(), upper.tolist(), strict=True)
    for i, (p, lo, hi) in enumerate(rows):
        tail = tails.get(alike[i])
        if tail is None:
            summary = output_summary(
                {
                    "probability": 0.0,
                    "probability_interval": [0.0, 0.0],
                    "risk_band": "",
                    "eligibility": eligibility[i],
                    "warnings": warnings[i],
                }
            )
            del summary["probability"], summary["probability_interval"], summary["risk_band"]
            tail = tails[alike[i]] = json.dumps(summary)[1:]
        out.append(
            f'{{"probability": {p!r}, "probability_interval": [{lo!r}, {hi!r}], '
            f'"risk_band": {band_json[bands[i]]}, {tail}'
        )
    return out
