"""The paper's optimiser: Adam(0.9, 0.999, eps 1e-5), lr 4e-4, poly decay 0.9 per step to 0.

>>> opt = paper_optimizer(total_steps=100)
>>> round(float(opt.learning_rate), 6)
0.0004
>>> schedule = poly_schedule(100)
>>> round(float(schedule(50)), 8) == round(4e-4 * 0.5 ** 0.9, 8)
True
"""

from __future__ import annotations

import keras

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


def paper_optimizer(total_steps, learning_rate=PAPER_LEARNING_RATE, power=0.9):
    """Adam as in the paper (Sec. IV-A) with the poly learning-rate schedule.

    ``total_steps`` is epochs x steps per epoch (the schedule reaches 0 there).
    """
    return keras.optimizers.Adam(
        learning_rate=poly_schedule(total_steps, learning_rate, power),
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-5,
    )
