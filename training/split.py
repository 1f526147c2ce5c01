"""Split by patient: no patient contributes to both the training and the held-out part."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedShuffleSplit

from features.schema import ID_FIELD, OUTCOME


def split_by_patient(
    frame: pd.DataFrame,
    test_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of the training and held-out parts, stratified on the outcome.

    Validation guarantees one row per `patient_id`, so a stratified split of rows is a split of
    patients; the assertion keeps that guarantee honest if the validation rules ever change.
    """
    if frame[ID_FIELD].duplicated().any():
        raise ValueError("a patient appears in more than one row; cannot split by patient")
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
    train_idx, test_idx = next(splitter.split(np.zeros(len(frame)), frame[OUTCOME].to_numpy()))
    return np.sort(train_idx), np.sort(test_idx)
