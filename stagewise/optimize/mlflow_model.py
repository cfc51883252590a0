"""The exported program as an MLflow model, logged from code (no pickle).

MLflow's DSPy flavor saves programs with cloudpickle. Instead, this file is logged as a
"model from code": MLflow stores this source file and the exported program directory
(`program.json` + `manifest.json`) as artifacts, and rebuilds the model by running this
file, which loads the program with [`stagewise.load`][stagewise.load]. `mlflow models serve` (with
`--env-manager local`) and `mlflow.pyfunc.load_model` both work.

Input: a DataFrame whose columns are the program's input fields; output: a DataFrame with
one row of output fields per input row.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class StagewiseProgram(PythonModel):
    """The MLflow pyfunc model of an exported program (the `program` artifact)."""
    def load_context(self, context) -> None:
        """Load the exported program (trusting its code: MLflow runs this file) and a JSON adapter."""
        import dspy

        import stagewise

        # Loading an MLflow model "from code" runs this file: whoever loads it trusts its code already,
        # and the export's code/ travels in the same model.
        self.program = stagewise.load(context.artifacts["program"], trust_code=True)
        self.adapter = dspy.JSONAdapter()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Run the program on each row (columns: input fields); one row of output fields per input row."""
        import dspy

        rows = []
        with dspy.context(adapter=self.adapter):
            for record in model_input.to_dict(orient="records"):
                prediction = self.program(**record)
                rows.append({key: prediction[key] for key in prediction.keys()})
        return pd.DataFrame(rows)


mlflow.models.set_model(StagewiseProgram())
