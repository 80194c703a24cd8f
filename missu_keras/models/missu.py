"""`MISSU`: the trainable model (``L = L_seg + lambda * L_sd``) and its inference graph."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from missu_keras.compat import (MultiWorkerBuild, compiled_loss, compiled_metrics, is_multi_worker,
                                 loss_tracker)
from missu_keras.config import MISSUConfig
from missu_keras.data.preprocessing import PreprocessingConfig
from missu_keras.layers import SelfDistillationLoss
from missu_keras.layers.base import register
from missu_keras.losses import get_segmentation_loss
from missu_keras.models.backbone import MISSUBackbone
from missu_keras.weights import preset_io


def _as_preprocessing(value, config: MISSUConfig):
    """``value`` (``None``, a `PreprocessingConfig` or its dict) as a `PreprocessingConfig`,
    checked against the network's channels and classes."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = PreprocessingConfig.from_dict(dict(value))
    if not isinstance(value, PreprocessingConfig):
        raise ValueError(
            "preprocessing must be a missu_keras.data.PreprocessingConfig, its dict or None; "
            f"received {type(value).__name__}"
        )
    if value.num_channels != config.in_channels or value.num_classes != config.num_classes:
        raise ValueError(
            f"preprocessing lists {value.num_channels} modalities {list(value.modalities)} and "
            f"label convention {value.label_convention!r} ({value.num_classes} classes), but "
            f"the network has in_channels={config.in_channels}, num_classes={config.num_classes}"
        )
    return value


@register
class MISSU(MultiWorkerBuild, keras.Model):
    """MISSU for ``model.fit``: a `MISSUBackbone` plus the training loss of Eq. 6.

    ``call`` returns only the class probabilities ``(B, H, W, D, num_classes)``; the
    custom ``train_step`` / ``test_step`` also read the encoder features A1..A3 and the
    MSF pyramid B1..B3 to add ``distill_weight * L_sd`` (Eq. 5) and report ``loss``,
    ``seg_loss`` and ``sd_loss``. Per-sample losses are summed and divided by the
    global batch (per-replica batch x replicas), so the gradient is exact under
    ``tf.distribute.MirroredStrategy``. Targets are integer training classes
    ``(B, H, W, D)`` (BraTS label 4 is class 3, see `missu_keras.labels`).

    The segmentation loss is part of the configuration (``seg_loss``: ``"ce"`` as in
    the paper, ``"dice"`` as in the released code, or ``"dice_ce"``); compile with an
    optimizer (e.g. `missu_keras.paper_optimizer`) and optional metrics, no ``loss``.

    Example:

    >>> import numpy as np, missu_keras
    >>> model = MISSU.from_preset("tiny", image_size=32, embed_dim=32, num_layers=1)
    >>> model.compile(optimizer=missu_keras.paper_optimizer(total_steps=2))
    >>> x = np.random.rand(2, 32, 32, 32, 4).astype("float32")
    >>> y = np.random.randint(0, 4, (2, 32, 32, 32))
    >>> history = model.fit(x, y, batch_size=1, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['loss', 'sd_loss', 'seg_loss']
    >>> model.inference_model().predict(x[:1], verbose=0).shape
    (1, 32, 32, 32, 4)
    """

    def __init__(self, **config):
        name = config.pop("name", "missu")
        trainable = config.pop("trainable", True)
        config.pop("dtype", None)
        preprocessing = config.pop("preprocessing", None)
        self.config = MISSUConfig.from_dict(config)
        super().__init__(name=name, trainable=trainable)
        self.preprocessing = preprocessing
        self.backbone = MISSUBackbone(**self.config.to_dict(), name="backbone")
        self.sd_loss_fn = SelfDistillationLoss(
            teacher_stop_gradient=self.config.teacher_stop_gradient,
            attention_power=self.config.attention_map_power, name="self_distillation"
        )
        self._seg_loss_fn = get_segmentation_loss(self.config.seg_loss)
        self.seg_loss_tracker = keras.metrics.Mean(name="seg_loss")
        self.sd_loss_tracker = keras.metrics.Mean(name="sd_loss")
        self.built = True

    # --- presets -------------------------------------------------------------------
    @classmethod
    def from_preset(cls, preset, **overrides):
        """A `MISSU` from a preset name, a saved preset folder, a ``.keras`` file or a
        ``missu-keras train`` output folder, with any configuration names overridden
        (e.g. ``image_size=64``, or ``preprocessing=``).

        - a name (`missu_keras.list_presets`): the preset's configuration and
          preprocessing contract, randomly initialised (published weights:
          `missu_keras.load_pretrained`);
        - a folder written by `save_to_preset`: its configuration, weights and
          preprocessing, exactly;
        - a ``.keras`` file of a `MISSU`, or a train output folder (its
          ``checkpoints/best.keras``, else ``last.keras``).

        Raises ``ValueError`` for an unknown name or configuration name (listing the
        accepted ones) and ``FileNotFoundError`` for a path that does not exist.
        """
        return preset_io.from_preset(cls, preset, overrides)

    def save_to_preset(self, preset_dir, postprocessing=None):
        """Writes this model as a preset folder (``config.json``, ``model.weights.h5``,
        ``preprocessing.json``, ``metadata.json``; each file atomically) that
        `from_preset` reads back exactly; returns the folder as a ``Path``. With
        ``postprocessing`` (a `missu_keras.inference.PostprocessingConfig`) also its
        ``postprocessing.json``, which ``predict`` / ``evaluate`` then apply."""
        return preset_io.save_to_preset(self, preset_dir, postprocessing)

    # The data preprocessing contract (modalities, normalisation, label map, patch size)
    # travels with the model so inference can never disagree with training (nnU-Net's
    # habit); `get_config` stores it as its dict.
    @property
    def preprocessing(self):
        """The `missu_keras.data.PreprocessingConfig` this model was trained with, or
        ``None``. Assign a `PreprocessingConfig`, its dict or ``None``."""
        return self._preprocessing

    @preprocessing.setter
    def preprocessing(self, value):
        self._preprocessing = _as_preprocessing(value, self.config)

    # --- inference -----------------------------------------------------------------
    def call(self, inputs, training=None):
        return self.backbone(inputs, training=training)["probabilities"]

    def inference_model(self):
        """A plain functional ``keras.Model`` ``image -> probabilities`` that shares this
        model's weights. In ``msf_mode="local"`` (the MISSU default) and ``"none"`` it
        holds no MSF layer or weight; in ``"ms_output"`` the decoder reads B_s, so the
        MSF stays (the paper's MS-output variant)."""
        return keras.Model(
            inputs=self.backbone.input,
            outputs=self.backbone.output["probabilities"],
            name="missu_inference",
        )

    # --- training ------------------------------------------------------------------
    @property
    def uses_distillation(self):
        return self.config.self_distill and self.config.msf_mode != "none"

    def compute_losses(self, x, y, training):
        """Per-sample ``(seg, sd)`` losses, float32 vectors ``(B,)``, and the outputs."""
        outputs = self.backbone(x, training=training)
        seg = self._seg_loss_fn(y, outputs["logits"])
        if self.uses_distillation:
            sd = self.sd_loss_fn(
                [outputs[f"A{s}"] for s in (1, 2, 3)],
                [outputs[f"B{s}"] for s in (1, 2, 3)],
            )
        else:
            sd = ops.zeros_like(seg)
        return seg, sd, outputs

    def _check_compiled_loss(self):
        if compiled_loss(self) is not None:
            raise ValueError(
                "MISSU computes its own loss (seg_loss + distill_weight * L_sd); compile "
                "without `loss=` and choose the segmentation loss with the `seg_loss` "
                f"configuration ({self.config.seg_loss!r} now)."
            )

    def _step(self, data, training):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        seg, sd, outputs = self.compute_losses(x, y, training=training)
        total = seg + float(self.config.distill_weight) * sd
        if sample_weight is not None:
            w = ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
            seg, sd, total = seg * w, sd * w, total * w
        local_batch = ops.cast(ops.shape(total)[0], "float32")
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        # Sum over this replica's samples / global batch: the all-reduce SUM of the
        # replicas' gradients is then the gradient of the global-batch mean.
        loss = ops.sum(total) / (local_batch * replicas)
        return loss, seg, sd, total, outputs["probabilities"], local_batch, y, sample_weight

    def _update_metrics(self, seg, sd, total, probs, local_batch, y, sample_weight):
        loss_tracker(self).update_state(ops.mean(total), sample_weight=local_batch)
        self.seg_loss_tracker.update_state(ops.mean(seg), sample_weight=local_batch)
        self.sd_loss_tracker.update_state(ops.mean(sd), sample_weight=local_batch)
        if compiled_metrics(self) is not None:
            compiled_metrics(self).update_state(y, probs, sample_weight)
        logs = self.get_metrics_result()
        if is_multi_worker(tf.distribute.get_strategy()):
            # Keras reduces the step logs across workers with `reduce(MEAN, axis=0)`,
            # which fails on scalars (known-pitfalls 4): hand it one-element vectors.
            logs = {k: ops.reshape(v, (1,)) for k, v in logs.items()}
        return logs

    def train_step(self, data):
        self._check_compiled_loss()
        with tf.GradientTape() as tape:
            loss, seg, sd, total, probs, local_batch, y, sw = self._step(data, training=True)
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        return self._update_metrics(seg, sd, total, probs, local_batch, y, sw)

    def make_train_function(self, force=False):
        """Keras' train function, with the optimizer's variables created first.

        Without a distribution strategy Keras leaves the optimizer unbuilt until the
        train function is traced; its variables are then created inside that first trace,
        so ``tf.function`` traces the whole training step twice (once to lift the new
        variables out, once more without them). Building the optimizer here, eagerly,
        as Keras itself does under a strategy, traces the step once: the first
        ``fit`` of the tiny preset started in 23 s instead of 49 s (benchmarks/NOTES.md).
        """
        if self.optimizer is not None and not self.optimizer.built and self.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)
        return super().make_train_function(force)

    def test_step(self, data):
        self._check_compiled_loss()
        _, seg, sd, total, probs, local_batch, y, sw = self._step(data, training=False)
        return self._update_metrics(seg, sd, total, probs, local_batch, y, sw)

    # --- config --------------------------------------------------------------------
    def get_config(self):
        prep = self.preprocessing
        return {"name": self.name, "trainable": self.trainable, **self.config.to_dict(),
                "preprocessing": None if prep is None else prep.to_dict()}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
