"""An ordinary DSPy program, as a DSPy user writes it: two predictors, a metric, a dataset.

Nothing here knows about stagewise. ``Support`` reads a banking customer's message, picks the
team (``area``, a ``dspy.Predict``) and then the intent (``intent``, a ``dspy.ChainOfThought``,
whose predictor DSPy names ``intent.predict``). ``intent_match`` is a plain DSPy metric, and
``load_examples`` reads the Banking77 sample the banking example uses (CC BY 4.0, see
``examples/banking/README.md``).
"""

from pathlib import Path
from typing import Literal

import dspy
import pandas as pd

DATA = Path(__file__).resolve().parent.parent / "banking" / "banking77_subset.csv"
Intent = Literal["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed"]


class PickArea(dspy.Signature):
    """Which team should handle this banking customer's message? "cards" handles card
    delivery and lost or stolen cards; "payments" handles exchange rates and failed top-ups."""

    message: str = dspy.InputField()
    area: Literal["cards", "payments"] = dspy.OutputField()


class PickIntent(dspy.Signature):
    """Name what the customer needs, within the team's area."""

    message: str = dspy.InputField()
    area: str = dspy.InputField(desc="the team that handles the message")
    intent: Intent = dspy.OutputField()


class Support(dspy.Module):
    def __init__(self):
        super().__init__()
        self.area = dspy.Predict(PickArea)
        self.intent = dspy.ChainOfThought(PickIntent)

    def forward(self, message: str) -> dspy.Prediction:
        area = self.area(message=message).area
        return self.intent(message=message, area=area)


def intent_match(example, prediction, trace=None) -> bool:
    """A DSPy metric: the predicted intent is the labeled one."""
    return prediction.intent == example.intent


def load_examples(limit: int | None = None) -> list[dspy.Example]:
    """The Banking77 sample as DSPy examples: input ``message``, labels ``area`` and ``intent``."""
    rows = pd.read_csv(DATA)
    examples = [dspy.Example(message=r.text, area=r.area, intent=r.intent).with_inputs("message")
                for r in rows.itertuples()]
    return examples[:limit] if limit else examples
