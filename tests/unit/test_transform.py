"""The feature transformer: schema-driven columns, NaN kept, row-wise and pure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import transform as tf
from features.schema import INPUT_FIELDS


def _frame(**overrides: object) -> pd.DataFrame:
    row: dict[str, object] = {f.name: np.nan for f in INPUT_FIELDS}
    row.update(
        patient_id="T-1",
        site_id=None,
        sex="female",
        psychotherapy=None,
        concurrent_medication=None,
        age_years=50.0,
        aud_onset_age_years=20.0,
        ast_u_l=80.0,
        alt_u_l=40.0,
        ggt_u_l=np.e - 1,
    )
    row.update(overrides)
    frame = pd.DataFrame([row])
    for f in INPUT_FIELDS:
        if f.kind in ("string", "category"):
            frame[f.name] = frame[f.name].astype(object)
    return frame


def test_columns_are_the_declared_feature_names() -> None:
    X = tf.transform(_frame())
    assert tuple(X.columns) == tf.FEATURE_NAMES
    assert all(X.dtypes == np.float64)


def test_derived_values_and_log_transform() -> None:
    X = tf.transform(_frame())
    assert X.loc[0, "ast_alt_ratio"] == pytest.approx(2.0)
    assert X.loc[0, "aud_duration_years"] == pytest.approx(30.0)
    assert X.loc[0, "log1p_ggt_u_l"] == pytest.approx(1.0)
    assert X.loc[0, "female"] == 1.0


def test_missing_stays_missing_including_categories() -> None:
    X = tf.transform(_frame())
    assert np.isnan(X.loc[0, "hdd_90d"])
    assert np.isnan(X.loc[0, "psychotherapy=cbt"])
    X = tf.transform(_frame(psychotherapy="cbt", concurrent_medication="none"))
    assert X.loc[0, "psychotherapy=cbt"] == 1.0
    assert X.loc[0, "psychotherapy=mindfulness"] == 0.0
    assert X.loc[0, "concurrent_medication=naltrexone"] == 0.0


def test_batch_equals_row_by_row_and_input_unchanged() -> None:
    rows = [_frame(hdd_90d=float(h), psychotherapy=p) for h, p in [(3, "cbt"), (60, None)]]
    batch = pd.concat(rows, ignore_index=True)
    before = batch.copy()
    X = tf.transform(batch)
    pd.testing.assert_frame_equal(batch, before)
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(X.iloc[[i]].to_numpy(), tf.transform(row).to_numpy())


def test_each_column_folds_into_exactly_one_factor() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=(5, len(tf.FEATURE_NAMES)))
    folded = tf.to_factors(values)
    assert folded.shape == (5, len(tf.FACTOR_NAMES))
    np.testing.assert_allclose(folded.sum(axis=1), values.sum(axis=1), rtol=1e-12)
    psy = tf.FACTOR_NAMES.index("psychotherapy")
    levels = [j for j, n in enumerate(tf.FEATURE_NAMES) if n.startswith("psychotherapy=")]
    assert len(levels) == 4  # four non-"none" levels fold into one factor
    np.testing.assert_allclose(folded[:, psy], values[:, levels].sum(axis=1), rtol=1e-12)
    # a patient's factors do not depend on the other rows, to the last bit
    assert np.array_equal(tf.to_factors(values[2:3]), folded[2:3])
