"""The MLflow pyfunc for ketapredict, logged as "models from code" (reference/mlops.md §1.6).

It wraps `serving.predictor.Predictor`, so `mlflow.pyfunc.load_model`, a Spark UDF and the
BentoML service all score with the same artifact. Input: a table in the data-dictionary schema.
Output: one row per patient with the probability, its interval, the logit, the base log-odds and
one `shap__<factor>` column per explained factor (calibrated log-odds).
"""

from __future__ import annotations

import mlflow
import pandas as pd

from features.validation import validate_table
from serving.predictor import Predictor
from serving.results import scores_frame


class KetaPredictModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.predictor = Predictor.load(context.artifacts["predictor"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        validated = validate_table(pd.DataFrame(model_input))
        return scores_frame(self.predictor, validated.frame)


mlflow.models.set_model(KetaPredictModel())
