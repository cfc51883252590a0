"""Banking77 support: a routing stage picks the area, that area's specialist names the intent."""

from typing import Literal

import dspy

from stagewise.programs import Router, Stage


class PickArea(dspy.Signature):
    """Which team should handle this banking customer's message? "cards" handles card
    delivery and lost or stolen cards; "payments" handles exchange rates and failed top-ups."""

    message: str = dspy.InputField()
    area: Literal["cards", "payments"] = dspy.OutputField()


class CardIntent(dspy.Signature):
    """What does the customer need about their card: to know when a new card arrives, or to
    report a lost or stolen card?"""

    message: str = dspy.InputField()
    intent: Literal["card_arrival", "lost_or_stolen_card"] = dspy.OutputField()


class PaymentIntent(dspy.Signature):
    """What does the customer need about a payment: the exchange rate used, or a top-up that failed?"""

    message: str = dspy.InputField()
    intent: Literal["exchange_rate", "top_up_failed"] = dspy.OutputField()


def build():
    return Router("support", Stage("route", PickArea), {
        "cards": Stage("cards", CardIntent),
        "payments": Stage("payments", PaymentIntent),
    }, query="input.message", field="area")
