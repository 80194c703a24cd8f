"""Segmentation losses, per sample, so the model can average them over the global batch
(``released_dice``, the released code's batch-level loss, repeats its batch value).

All take integer training classes ``y_true`` ``(B, H, W, D)`` and float32 logits
``(B, H, W, D, K)`` and return a float32 vector ``(B,)``.

>>> import numpy as np
>>> y = np.zeros((1, 2, 2, 2), "int32"); y[0, 0] = 1
>>> logits = np.where(np.eye(2)[y] > 0, 20.0, -20.0).astype("float32")
>>> float(per_sample_cross_entropy(y, logits)[0]) < 1e-6
True
>>> float(per_sample_soft_dice(y, logits)[0]) < 1e-6
True
"""

from __future__ import annotations

from keras import ops

DICE_SMOOTH = 1e-5


def _prepare(y_true, logits):
    logits = ops.cast(logits, "float32")
    y_true = ops.cast(y_true, "int32")
    if len(y_true.shape) == len(logits.shape):  # (B, H, W, D, 1)
        y_true = ops.squeeze(y_true, axis=-1)
    return y_true, logits


def per_sample_cross_entropy(y_true, logits):
    """Mean voxel-wise categorical cross-entropy per sample (the paper's L_seg)."""
    y_true, logits = _prepare(y_true, logits)
    ce = ops.sparse_categorical_crossentropy(y_true, logits, from_logits=True)
    return ops.mean(ops.reshape(ce, (ops.shape(ce)[0], -1)), axis=-1)


def per_sample_soft_dice(y_true, logits):
    """``1 - mean_k (2 |P_k G_k| + s) / (|P_k| + |G_k| + s)`` over the foreground classes
    k = 1..K-1, per sample (the released code's soft Dice over the tumour classes,
    computed per sample so that it is exact under data parallelism)."""
    y_true, logits = _prepare(y_true, logits)
    num_classes = logits.shape[-1]
    probs = ops.softmax(logits, axis=-1)
    onehot = ops.one_hot(y_true, num_classes, dtype="float32")
    batch = ops.shape(probs)[0]
    probs = ops.reshape(probs, (batch, -1, num_classes))[..., 1:]
    onehot = ops.reshape(onehot, (batch, -1, num_classes))[..., 1:]
    inter = ops.sum(probs * onehot, axis=1)
    denom = ops.sum(probs, axis=1) + ops.sum(onehot, axis=1)
    dice = (2.0 * inter + DICE_SMOOTH) / (denom + DICE_SMOOTH)
    return 1.0 - ops.mean(dice, axis=-1)


RELEASED_DICE_EPS = 1e-5


def released_dice(y_true, logits):
    """The released code's ``softmax_dice``: ``sum_k (1 - 2 |P_k G_k| / (|P_k| + |G_k| +
    1e-5))`` over the foreground classes k = 1..K-1 (three terms for BraTS: 0 to 3), each
    term over the whole batch rather than per sample.

    Returned as a ``(B,)`` vector holding the batch value in every entry, so the model's
    mean over the batch is the batch value. Under data parallelism the batch is each
    replica's (the released code gathers the whole batch on one device). Its scale is up
    to 3x that of ``"dice"`` (a per-sample mean of the terms), so ``distill_weight`` weighs
    L_sd correspondingly less beside it (README, "Differences from the released code").

    >>> import numpy as np
    >>> y = np.array([[[[0, 1], [2, 3]]]], "int32")                      # (1, 1, 2, 2)
    >>> logits = np.where(np.eye(4)[y] > 0, 30.0, -30.0).astype("float32")
    >>> round(float(released_dice(y, logits)[0]), 4)                  # perfect: 3 x 0
    0.0
    >>> round(float(released_dice(y, -logits)[0]), 4)                 # every term 1
    3.0
    """
    y_true, logits = _prepare(y_true, logits)
    num_classes = logits.shape[-1]
    probs = ops.reshape(ops.softmax(logits, axis=-1), (-1, num_classes))[:, 1:]
    onehot = ops.reshape(ops.one_hot(y_true, num_classes, dtype="float32"), (-1, num_classes))[:, 1:]
    inter = ops.sum(probs * onehot, axis=0)
    denom = ops.sum(probs, axis=0) + ops.sum(onehot, axis=0) + RELEASED_DICE_EPS
    loss = ops.sum(1.0 - 2.0 * inter / denom)
    return ops.broadcast_to(loss, (ops.shape(logits)[0],))


def per_sample_dice_ce(y_true, logits):
    """Soft Dice + cross-entropy, equally weighted."""
    return per_sample_soft_dice(y_true, logits) + per_sample_cross_entropy(y_true, logits)


SEGMENTATION_LOSSES = {
    "ce": per_sample_cross_entropy,
    "dice": per_sample_soft_dice,
    "dice_ce": per_sample_dice_ce,
    "released_dice": released_dice,
}


def get_segmentation_loss(name):
    if name not in SEGMENTATION_LOSSES:
        raise ValueError(
            f"Unknown segmentation loss {name!r}; expected one of {sorted(SEGMENTATION_LOSSES)}"
        )
    return SEGMENTATION_LOSSES[name]
