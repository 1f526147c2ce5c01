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


def test_factor_matrix_maps_each_column_to_one_factor() -> None:
    m = tf.factor_matrix()
    assert m.shape == (len(tf.FEATURE_NAMES), len(tf.FACTOR_NAMES))
    assert np.all(m.sum(axis=1) == 1)
    psy = tf.FACTOR_NAMES.index("psychotherapy")
    assert m[:, psy].sum() == 4  # four non-"none" levels fold into one factor
