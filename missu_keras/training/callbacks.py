"""The callbacks of a training run: whole-case validation and TensorBoard images, the
learning rate in the logs, the CSV log, the best and last checkpoints (every file
written atomically), NaN placeholders dropped; and the test hook that pauses a run at
a named point (`pause_for_test`)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from missu_keras.files import atomic_path, write_json_atomic, write_text_atomic
from missu_keras.inference import SlidingWindowInferer
from missu_keras.labels import get_label_convention
from missu_keras.metrics import dice_score


def case_dice(pred_classes: np.ndarray, gt_classes: np.ndarray, region_classes: Dict[str, Sequence[int]]):
    """Dice per region of one case from training classes (`missu_keras.metrics.dice_score`,
    with the BraTS empty rule: both empty -> 1, one empty -> 0).

    >>> gt = np.zeros((4, 4, 4), int); gt[:2] = 1
    >>> case_dice(gt, gt, {"fg": (1,)}), case_dice(np.zeros_like(gt), np.zeros_like(gt), {"fg": (1,)})
    ({'fg': 1.0}, {'fg': 1.0})
    """
    return {region: dice_score(np.isin(pred_classes, classes), np.isin(gt_classes, classes))
            for region, classes in region_classes.items()}


def region_classes(label_convention) -> Dict[str, tuple]:
    """Regions as training-class indices (BraTS: WT = (1, 2, 3), ET = (3,))."""
    conv = get_label_convention(label_convention)
    return {r: tuple(conv.labels.index(v) for v in labels) for r, labels in conv.regions.items()}


_OVERLAY_COLOURS = np.array([[0, 0, 0], [255, 64, 64], [64, 200, 64], [255, 220, 0],
                             [64, 128, 255]], np.float32) / 255.0


def overlay_slice(image: np.ndarray, classes: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB ``(W, H, 3)`` float in [0, 1]: a grey image slice ``(H, W)`` with the class
    slice ``(H, W)`` coloured on top (class 0 transparent), rotated so the first axis
    runs left to right (radiological display of an axial slice)."""
    img = np.asarray(image, np.float32)
    lo, hi = np.percentile(img, [0.5, 99.5]) if img.size else (0.0, 1.0)
    grey = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    classes = np.asarray(classes).astype(int)
    colours = _OVERLAY_COLOURS[np.clip(classes, 0, len(_OVERLAY_COLOURS) - 1)]
    mask = (classes > 0)[..., None]
    rgb = np.where(mask, (1 - alpha) * rgb + alpha * colours, rgb)
    return np.rot90(rgb)


class SlidingWindowValidation(keras.callbacks.Callback):
    """Whole-case validation Dice during ``fit``, the best checkpoint, and images.

    Every ``every`` epochs (and after the last) it segments each validation case of the
    cache with the sliding window (inference model, no MSF) and adds ``val_dice_<region>``
    and ``val_dice_mean`` (mean over regions of the mean over cases) to the epoch logs,
    so the CSV log, TensorBoard and History see them; on other epochs the values are
    NaN (and dropped before TensorBoard). When ``val_dice_mean`` improves, the model is
    saved to ``best_path`` and ``best_path`` + ``.json`` records the epoch and score;
    the record is read back on resumption. Every ``image_every`` epochs the middle
    axial slice of the first validation case, ground truth | prediction, goes to
    TensorBoard under ``validation/overlay``.
    """

    def __init__(self, cache, case_ids: Sequence[str], roi_size, label_convention,
                 every: int = 1, overlap: float = 0.5, image_every: int = 0,
                 log_dir: Optional[str] = None, best_path: Optional[str] = None,
                 sw_batch_size: int = 1):
        super().__init__()
        self.cache = cache
        self.case_ids = list(case_ids)
        self.every = int(every)
        self.image_every = int(image_every)
        self.log_dir = log_dir
        self.best_path = best_path
        self.regions = region_classes(label_convention)
        self.inferer = SlidingWindowInferer(roi_size=roi_size, overlap=overlap,
                                            sw_batch_size=sw_batch_size, divisible_by=8)
        self.best = -math.inf
        self._writer = None
        self._inference = None
        self.keys = [f"val_dice_{r}" for r in self.regions] + ["val_dice_mean"]

    def on_train_begin(self, logs=None):
        record = self._best_record()
        if record is not None:
            self.best = float(record["val_dice_mean"])

    def _best_record(self):
        if self.best_path and os.path.isfile(self.best_path + ".json"):
            with open(self.best_path + ".json") as f:
                return json.load(f)
        return None

    def _due(self, epoch: int, every: int) -> bool:
        last = self.params.get("epochs") if self.params else None
        return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == last)

    def _inference_model(self):
        if self._inference is None:
            self._inference = self.model.inference_model()
        return self._inference

    def validate(self):
        """Returns ``({region: mean Dice}, {case_id: predicted classes})``."""
        model = self._inference_model()
        per_case, predictions = [], {}
        for case_id in self.case_ids:
            probs = self.inferer(model, self.cache.load_image(case_id))
            pred = np.argmax(probs, axis=-1).astype(np.uint8)
            per_case.append(case_dice(pred, self.cache.load_label(case_id), self.regions))
            predictions[case_id] = pred
        scores = {r: float(np.mean([c[r] for c in per_case])) for r in self.regions}
        return scores, predictions

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if not self._due(epoch, self.every):
            logs.update({k: float("nan") for k in self.keys})
            return
        pause_for_test("validation", epoch)
        scores, predictions = self.validate()
        for r, v in scores.items():
            logs[f"val_dice_{r}"] = v
        mean = float(np.mean(list(scores.values())))
        logs["val_dice_mean"] = mean
        if self.best_path and mean > self.best:
            self.best = mean
            save_best(self.model, self.best_path, epoch, mean, scores)
        if self.log_dir and self._due(epoch, self.image_every):
            self._write_image(epoch, predictions)

    def _write_image(self, epoch, predictions):
        case_id = self.case_ids[0]
        image = self.cache.load_image(case_id)
        gt = self.cache.load_label(case_id)
        z = image.shape[2] // 2
        panel = np.concatenate([overlay_slice(image[:, :, z, 0], gt[:, :, z]),
                                overlay_slice(image[:, :, z, 0], predictions[case_id][:, :, z])],
                               axis=1)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "validation"))
        with self._writer.as_default():
            tf.summary.image("overlay", panel[None], step=epoch,
                             description=f"{case_id}, middle axial slice: ground truth | prediction")
        self._writer.flush()


class LogLearningRate(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate to the epoch logs (CSV log)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class DropNaN(keras.callbacks.Callback):
    """Removes NaN placeholders (epochs without validation) before TensorBoard."""

    def on_epoch_end(self, epoch, logs=None):
        if logs:
            for k in [k for k, v in logs.items() if isinstance(v, float) and math.isnan(v)]:
                del logs[k]


# ------------------------------------------------------------ atomic checkpoints --

PAUSE_ENV = "MISSU_KERAS_TEST_PAUSE_AT"
PAUSE_FILE_ENV = "MISSU_KERAS_TEST_PAUSE_FILE"
PAUSE_POINTS = ("backup", "validation", "between_epochs")


def pause_for_test(point: str, epoch: int) -> None:
    """Test hook: with ``MISSU_KERAS_TEST_PAUSE_AT=<point>@<epoch>`` (epochs counted from
    0, as Keras does) the run writes the file named by ``MISSU_KERAS_TEST_PAUSE_FILE``
    when it reaches that point and then sleeps, so a test can kill it exactly there.

    Points: ``backup`` (the weights of the epoch's backup written under their temporary
    name, not yet renamed), ``validation`` (before the epoch's validation),
    ``between_epochs`` (at the start of an epoch, after the previous one's backup).
    Without the variable this does nothing.
    """
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted or wanted != f"{point}@{int(epoch)}":
        return
    marker = os.environ.get(PAUSE_FILE_ENV)
    if marker:
        write_text_atomic(marker, f"{point}@{int(epoch)} pid {os.getpid()}\n")
    while True:  # until killed
        time.sleep(60)


def save_model_atomic(model, target) -> Path:
    """``model.save`` to a ``.keras`` file through a temporary name in the same folder: a
    kill or a full disk leaves the previous file, never half of one (and a write error
    names ``target``)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, suffix=".keras") as tmp:
        model.save(tmp)
    return target


def save_best(model, path, epoch: int, mean: float, scores: Dict[str, float]) -> dict:
    """Saves the best model to ``path`` and its record to ``path`` + ``.json`` (both
    atomically, the model first); returns the record."""
    save_model_atomic(model, path)
    record = {"epoch": int(epoch) + 1, "val_dice_mean": float(mean), **scores}
    write_json_atomic(str(path) + ".json", record)
    return record


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the model to ``path`` when ``val_dice_mean`` of the epoch logs improves (a
    NaN, on an epoch without validation, never does); ``path`` + ``.json`` records the
    epoch and the scores.

    Args:
        path: the ``.keras`` file.
        initial: the record of the best so far (from the run's backup), or None.
    """

    def __init__(self, path, initial: Optional[dict] = None):
        super().__init__()
        self.path = Path(path)
        self.record = dict(initial) if initial else None

    @property
    def best(self) -> float:
        return float(self.record["val_dice_mean"]) if self.record else -math.inf

    def on_epoch_end(self, epoch, logs=None):
        mean = float((logs or {}).get("val_dice_mean", math.nan))
        if math.isnan(mean) or not mean > self.best:
            return
        scores = {k[len("val_dice_"):]: float(v) for k, v in logs.items()
                  if k.startswith("val_dice_") and k != "val_dice_mean"}
        self.record = save_best(self.model, self.path, epoch, mean, scores)


class LastCheckpoint(keras.callbacks.Callback):
    """Saves the model to ``path`` (a ``.keras`` file) after every epoch, atomically."""

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch, logs=None):
        save_model_atomic(self.model, self.path)


def _csv_value(value) -> str:
    if isinstance(value, str):
        return value
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value)


def read_log_rows(path, epochs: int, warn: Callable[[str], None] = print):
    """``(header, rows)`` of a CSV log, keeping the rows of the first ``epochs`` epochs
    (a resumed run drops the rows of epochs its backup does not cover)."""
    path = Path(path)
    if not path.is_file():
        if epochs:
            warn(f"warning: {path} is missing; the rows of epochs 0-{epochs - 1} are lost")
        return None, []
    table = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    if not table:
        return None, []
    header, rows = table[0], []
    for row in table[1:]:
        if len(row) == len(header) and row[0].isdigit() and int(row[0]) < epochs:
            rows.append(row)
    if len(rows) < epochs:
        warn(f"warning: {path} holds {len(rows)} rows for the {epochs} epochs done; "
             "the missing rows are lost")
    return header, rows


class CSVLog(keras.callbacks.Callback):
    """One row per epoch (``epoch`` then the log names, sorted), the whole file rewritten
    atomically after every epoch. On a resumed run (``initial_epoch`` > 0) the rows of
    epochs after ``initial_epoch`` (written before a kill, not covered by the backup) are
    dropped, so the log equals an uninterrupted run's."""

    def __init__(self, path, initial_epoch: int = 0, warn: Callable[[str], None] = print):
        super().__init__()
        self.path = Path(path)
        self.initial_epoch = int(initial_epoch)
        self.warn = warn
        self.header: Optional[List[str]] = None
        self.rows: List[List[str]] = []

    def on_train_begin(self, logs=None):
        self.header, self.rows = read_log_rows(self.path, self.initial_epoch, self.warn)
        if self.path.is_file():
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.header is None:
            self.header = ["epoch"] + sorted(logs)
        self.rows.append([str(epoch)] + [_csv_value(logs.get(k, "NA")) for k in self.header[1:]])
        self._write()

    def _write(self):
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        if self.header is not None:
            writer.writerow(self.header)
        writer.writerows(self.rows)
        write_text_atomic(self.path, text.getvalue())  # a write error names self.path
