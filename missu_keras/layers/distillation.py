"""Attention maps (Eq. 4) and the self-distillation loss (Eq. 5)."""

from __future__ import annotations

from keras import layers, ops

from missu_keras.layers.base import register


@register
class AttentionMap(layers.Layer):
    """``phi(F) = sum_c |F_c|^p``: ``(B, H, W, D, C)`` -> ``(B, H, W, D)``, in float32.

    ``power`` p is 1 in the paper (Eq. 4); attention transfer (Zagoruyko & Komodakis,
    which the paper cites) uses p = 2, which weighs the strongest activations more.
    """

    def __init__(self, power=1.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if isinstance(power, bool) or not power >= 1:
            raise ValueError(f"power must be a number >= 1. Received: power={power!r}")
        self.power = power

    def call(self, features):
        magnitude = ops.abs(ops.cast(features, "float32"))
        if self.power == 1:
            return ops.sum(magnitude, axis=-1)
        if self.power == 2:
            return ops.sum(ops.square(magnitude), axis=-1)
        return ops.sum(ops.power(magnitude, float(self.power)), axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape[:-1]

    def get_config(self):
        return {**super().get_config(), "power": self.power}


@register
class SelfDistillationLoss(layers.Layer):
    """Eq. 5, per sample: ``sum_s || q_A/||q_A|| - q_B/||q_B|| ||_2`` with
    ``q = vec(phi(F))``.

    Call with ``(students, teachers)``: two equally long lists of feature maps,
    ``students[s]`` = A_s (the encoder) and ``teachers[s]`` = B_s (the MSF pyramid), of
    matching spatial shape. Returns a float32 vector ``(B,)``; the model averages it
    over the global batch. Identical maps give 0 per stage, maps with disjoint
    supports (orthogonal) give sqrt(2) per stage. ``teacher_stop_gradient=True`` blocks
    the gradient into B_s (the paper's Algorithm 1 does not). ``attention_power`` is the
    exponent p of the attention map (`AttentionMap`).
    """

    def __init__(self, epsilon=1e-12, teacher_stop_gradient=False, attention_power=1.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.teacher_stop_gradient = teacher_stop_gradient
        self.attention_power = attention_power
        self.attention_map = AttentionMap(attention_power, name="attention_map")

    def _normalized(self, features):
        q = self.attention_map(features)
        q = ops.reshape(q, (ops.shape(q)[0], -1))
        # Guard the norm: an all-zero map would otherwise divide by zero.
        norm = ops.sqrt(ops.sum(ops.square(q), axis=-1, keepdims=True) + self.epsilon)
        return q / norm

    def call(self, students, teachers):
        if len(students) != len(teachers):
            raise ValueError(
                f"SelfDistillationLoss needs as many teachers as students; "
                f"received {len(students)} students and {len(teachers)} teachers"
            )
        total = None
        for a, b in zip(students, teachers):
            if self.teacher_stop_gradient:
                b = ops.stop_gradient(b)
            diff = self._normalized(a) - self._normalized(b)
            stage = ops.sqrt(ops.sum(ops.square(diff), axis=-1) + self.epsilon)
            total = stage if total is None else total + stage
        return total

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon,
                "teacher_stop_gradient": self.teacher_stop_gradient,
                "attention_power": self.attention_power}
