"""The served model: transformer + estimator + calibrator + explainer + reference statistics.

One directory holds everything prediction needs (DESIGN decision 2); the MLflow pyfunc, the
BentoML service and the batch CLI all load it through `Predictor.load`, so a patient scored
by any of them gets the same numbers.

Calibration (DESIGN decision 3): calibrated logit = a·margin + b. The explanation of the
margin (TreeSHAP or linear terms) is scaled by `a`, so in calibrated log-odds
`base_log_odds + Σ contributions == logit` exactly.

Uncertainty (`serving.uncertainty`, chosen by the study in benchmarks/INTERVALS.md): the
training run refits the chosen pipeline (estimator + its own recalibration on out-of-bag
patients) on bootstrap resamples; the spread of their logits for this patient is the
estimation uncertainty, to which the spread over plausible values of the patient's missing
optional inputs is added in variance. The interval is logit ± 1.96·SD mapped to probabilities,
so it always contains the served probability. Applicability (`serving.typicality`) says how
unusual the patient is compared with held-out development patients.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from features import transform as tf
from serving import typicality as typ
from serving import uncertainty as unc
from serving.scorers import LinearScorer, Scorer, load_scorer, stacked_linear_logits

MANIFEST = "manifest.json"
FORMAT_VERSION = 2


@dataclass(frozen=True)
class Calibrator:
    """Logistic recalibration of the margin: calibrated logit = slope·margin + intercept."""

    slope: float
    intercept: float

    def __call__(self, margin: np.ndarray) -> np.ndarray:
        return self.slope * margin + self.intercept


@dataclass(frozen=True)
class Member:
    """One bootstrap refit of the pipeline, with its own out-of-bag recalibration."""

    scorer: Scorer
    calibrator: Calibrator


@dataclass(frozen=True)
class Scores:
    """Vectorised prediction for a batch: everything but eligibility and warnings."""

    logit: np.ndarray
    probability: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    base_log_odds: np.ndarray
    contributions: np.ndarray  # (n, n_factors), calibrated log-odds, order tf.FACTOR_NAMES
    values: pd.DataFrame  # the value shown beside each factor


@dataclass
class Predictor:
    """The complete served model. `metadata` carries name, version, metrics and the card."""

    scorer: Scorer
    calibrator: Calibrator
    members: tuple[Member, ...]
    reference: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    documents: dict[str, str] = field(default_factory=dict)
    """Human-readable documents shipped with the model (model card, training report)."""
    uncertainty: dict[str, Any] = field(default_factory=dict)
    typicality: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- prediction
    def score(self, frame: pd.DataFrame) -> Scores:
        """Calibrated probability, interval and factor contributions for a canonical frame."""
        X = tf.transform_array(frame)
        phi, base = self.scorer.contributions(X)
        margin = phi.sum(axis=1) + base
        logit = self.calibrator(margin)
        a, b = self.calibrator.slope, self.calibrator.intercept
        contrib = tf.to_factors(a * phi)
        missing_sd = self._missing_sd(frame, X) if self.uncertainty else None
        lower, upper = unc.interval(
            logit, self._member_logits(X), missing_sd, z=self.uncertainty.get("z", unc.Z_95)
        )
        return Scores(
            logit=logit,
            probability=expit(logit),
            lower=lower,
            upper=upper,
            base_log_odds=a * base + b,
            contributions=contrib,
            values=tf.factor_values(frame),
        )

    def _missing_sd(self, frame: pd.DataFrame, X: np.ndarray) -> np.ndarray:
        """Spread over imputations of the missing inputs: closed form for a linear margin."""
        if isinstance(self.scorer, LinearScorer):
            weights, on_missing, _ = self.scorer.folded
            return unc.missing_input_sd_linear(
                frame, X, weights, on_missing, self.calibrator.slope, self.uncertainty
            )
        return unc.missing_input_sd(frame, self._logit_of, self.uncertainty)

    def _logit_of(self, X: np.ndarray) -> np.ndarray:
        return self.calibrator(self.scorer.margin(X))

    def _member_logits(self, X: np.ndarray) -> np.ndarray:
        if not self.members:
            return np.empty((0, X.shape[0]))
        scorers = [m.scorer for m in self.members]
        if all(isinstance(s, LinearScorer) for s in scorers):
            slopes = np.array([m.calibrator.slope for m in self.members])
            intercepts = np.array([m.calibrator.intercept for m in self.members])
            return stacked_linear_logits(scorers, slopes, intercepts, X)
        return np.vstack([m.calibrator(m.scorer.margin(X)) for m in self.members])

    def applicability(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        """Per patient: how typical, what is outside the training data, unseen missingness."""
        return typ.applicability(frame, self.reference, self.typicality)

    def applicability_columns(self, frame: pd.DataFrame) -> typ.Applicability:
        """`applicability` as columns, for batches that need its JSON rather than dicts."""
        return typ.applicability_columns(frame, self.reference, self.typicality)

    # ---------------------------------------------------------------- persistence
    def save(self, path: Path) -> None:
        """Write the artifact directory (plain text files only)."""
        path.mkdir(parents=True, exist_ok=True)
        (path / "estimator.txt").write_text(self.scorer.dumps())
        members = []
        for i, m in enumerate(self.members):
            name = f"bootstrap/{i:03d}.txt"
            (path / "bootstrap").mkdir(exist_ok=True)
            (path / name).write_text(m.scorer.dumps())
            members.append(
                {"file": name, "slope": m.calibrator.slope, "intercept": m.calibrator.intercept}
            )
        manifest = {
            "format_version": FORMAT_VERSION,
            "transform_version": tf.TRANSFORM_VERSION,
            "feature_names": list(tf.FEATURE_NAMES),
            "estimator": {"kind": self.scorer.kind, "file": "estimator.txt"},
            "calibrator": {"slope": self.calibrator.slope, "intercept": self.calibrator.intercept},
            "members": {"kind": self.scorer.kind, "files": members},
            "reference": self.reference,
            "uncertainty": self.uncertainty,
            "typicality": self.typicality,
            "metadata": self.metadata,
        }
        for name, text in self.documents.items():
            (path / "documents").mkdir(exist_ok=True)
            (path / "documents" / name).write_text(text)
        manifest["documents"] = sorted(self.documents)
        (path / MANIFEST).write_text(json.dumps(manifest, indent=1, default=_json_default))

    @classmethod
    def load(cls, path: Path) -> Predictor:
        """Load and check an artifact directory; any inconsistency is a corrupt model."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"no model manifest at {manifest_path}")
        m = json.loads(manifest_path.read_text())
        if m.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"model format {m.get('format_version')} is not {FORMAT_VERSION}")
        if m["transform_version"] != tf.TRANSFORM_VERSION or m["feature_names"] != list(
            tf.FEATURE_NAMES
        ):
            raise ValueError("model was trained with a different feature transformer")
        unc.check_state(m["uncertainty"])
        typ.check_state(m["typicality"])
        kind = m["estimator"]["kind"]
        scorer = load_scorer(kind, (path / m["estimator"]["file"]).read_text())
        members = tuple(
            Member(
                load_scorer(m["members"]["kind"], (path / e["file"]).read_text()),
                Calibrator(e["slope"], e["intercept"]),
            )
            for e in m["members"]["files"]
        )
        return cls(
            scorer=scorer,
            calibrator=Calibrator(**m["calibrator"]),
            members=members,
            reference=m["reference"],
            metadata=m["metadata"],
            uncertainty=m["uncertainty"],
            typicality=m["typicality"],
            documents={n: (path / "documents" / n).read_text() for n in m.get("documents", [])},
        )


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
