"""The paper's optimiser: Adam(0.9, 0.999, eps 1e-5), lr 4e-4, poly decay 0.9 per step to 0.

>>> opt = paper_optimizer(total_steps=100)
>>> round(float(opt.learning_rate), 6)
0.0004
>>> schedule = poly_schedule(100)
>>> round(float(schedule(50)), 8) == round(4e-4 * 0.5 ** 0.9, 8)
True

Fine-tuning gives a new classification head its own rate (`HeadRateAdam`): the head's
rate is the body's times ``head_learning_rate / learning_rate``, on the same schedule.

>>> opt = paper_optimizer(100, learning_rate=1e-4, head_learning_rate=1e-3, head_layers=["endconv"])
>>> type(opt).__name__, round(opt.head_scale, 6), opt.head_layers
('HeadRateAdam', 10.0, ['endconv'])
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras

from missu_keras.layers.base import register

PAPER_LEARNING_RATE = 4e-4


def poly_schedule(total_steps, learning_rate=PAPER_LEARNING_RATE, power=0.9, end_learning_rate=0.0):
    """``lr * (1 - step / total_steps) ** power``, evaluated per optimiser step."""
    if int(total_steps) < 1:
        raise ValueError(f"total_steps must be >= 1. Received: total_steps={total_steps!r}")
    return keras.optimizers.schedules.PolynomialDecay(
        initial_learning_rate=learning_rate,
        decay_steps=int(total_steps),
        end_learning_rate=end_learning_rate,
        power=power,
    )


def paper_optimizer(total_steps, learning_rate=PAPER_LEARNING_RATE, power=0.9,
                    head_learning_rate: Optional[float] = None, head_layers: Sequence[str] = ()):
    """Adam as in the paper (Sec. IV-A) with the poly learning-rate schedule.

    ``total_steps`` is epochs x steps per epoch (the schedule reaches 0 there). With
    ``head_learning_rate``, the variables of the layers named ``head_layers`` peak at
    that rate instead (a `HeadRateAdam`; fine-tuning, `missu_keras.training.finetune`).
    """
    adam = dict(learning_rate=poly_schedule(total_steps, learning_rate, power),
                beta_1=0.9, beta_2=0.999, epsilon=1e-5)
    if head_learning_rate is None:
        return keras.optimizers.Adam(**adam)
    if not head_layers:
        raise ValueError("head_learning_rate needs head_layers: the names of the layers it applies to")
    if not float(head_learning_rate) >= 0:
        raise ValueError(f"head_learning_rate must be >= 0. Received: {head_learning_rate!r}")
    return HeadRateAdam(head_scale=float(head_learning_rate) / float(learning_rate),
                        head_layers=list(head_layers), **adam)


@register
class HeadRateAdam(keras.optimizers.Adam):
    """Adam whose updates of the head's variables use ``head_scale`` times the
    (scheduled) learning rate: two rates over disjoint variable sets in one optimizer.

    Keras 3 has no MultiOptimizer; one optimizer keeps a single state (moments and the
    step count that drives the schedule), saved and restored with the model's weights
    like any Adam, so a resumed run continues exactly. A variable belongs to the head
    when a component of its path (``"endconv/kernel"``) is one of ``head_layers``.
    ``head_scale=0`` leaves the head exactly as it is (Adam's step is proportional to
    the rate).

    Args:
        head_scale: head rate / body rate (>= 0).
        head_layers: names of the head's layers.
        **kwargs: `keras.optimizers.Adam` arguments.
    """

    def __init__(self, head_scale=1.0, head_layers=(), **kwargs):
        super().__init__(**kwargs)
        if not float(head_scale) >= 0:
            raise ValueError(f"head_scale must be >= 0. Received: head_scale={head_scale!r}")
        self.head_scale = float(head_scale)
        self.head_layers = list(head_layers)
        self._head_keys = frozenset()

    def build(self, variables):
        super().build(variables)
        names = set(self.head_layers)
        self._head_keys = frozenset(self._var_key(v) for v in variables
                                    if names.intersection(v.path.split("/")))

    def update_step(self, gradient, variable, learning_rate):
        if self._var_key(variable) in self._head_keys:
            learning_rate = learning_rate * self.head_scale
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "head_scale": self.head_scale,
                "head_layers": list(self.head_layers)}
