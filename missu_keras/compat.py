"""Every private TensorFlow / Keras internal missu_keras relies on, in one place, each with
the reason and (where one exists) the upstream issue; `tests/test_compat.py` fails when an
upgrade removes or changes one. Also what we need to know about the CPU.
"""

from __future__ import annotations

import functools
import platform

__all__ = ["MultiWorkerBuild", "archive_root", "built_input_shape", "compiled_loss",
           "compiled_metrics", "cpu_flags", "cpu_has_bf16_units", "flatten_layers",
           "is_multi_worker", "loss_tracker", "onednn_enabled", "stored_value"]


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN CPU kernels in this process.

    Read from ``tensorflow.python.util._pywrap_util_port.IsMklEnabled`` (private: the
    public API has no way to ask; ``TF_ENABLE_ONEDNN_OPTS`` alone does not say what the
    build decided). False if a future TensorFlow moves it.
    """
    try:
        from tensorflow.python.util import _pywrap_util_port  # private, see docstring
    except ImportError:  # pragma: no cover - moved in some future TensorFlow
        return False
    return bool(_pywrap_util_port.IsMklEnabled())


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU feature flags of this machine (``/proc/cpuinfo``; empty where unreadable).

    >>> isinstance(cpu_flags(), frozenset)
    True
    """
    if platform.system() != "Linux":
        return frozenset()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16_units() -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX-BF16).

    Elsewhere (e.g. AVX2-only CPUs) oneDNN emulates bfloat16 and ``mixed_bfloat16`` is
    much slower than float32 (benchmarks/NOTES.md).
    """
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


# ------------------------------------------------------------------- Keras trainer --
# A custom train_step that reports "loss" has to update the trainer's own loss tracker:
# Keras 3 lists `Model._loss_tracker` first in `model.metrics` and resets it every epoch,
# and has no public accessor for it (nor for the compiled loss / metrics containers).

def loss_tracker(model):
    """The ``keras.metrics.Mean`` behind the ``loss`` log (``Model._loss_tracker``)."""
    return model._loss_tracker


def compiled_loss(model):
    """What ``compile(loss=...)`` set (``Model._compile_loss``), or None."""
    return model._compile_loss


def compiled_metrics(model):
    """What ``compile(metrics=...)`` set (``Model._compile_metrics``), or None."""
    return model._compile_metrics


# ------------------------------------------------------- MultiWorkerMirroredStrategy --
# Keras 3's `fit` under MultiWorkerMirroredStrategy fails twice out of the box
# (tensorflow/tensorflow#72388, closed without a fix; shared/docs/known-pitfalls.md #4).

def is_multi_worker(strategy) -> bool:
    """Whether ``strategy`` is a MultiWorkerMirroredStrategy spanning several workers
    (``extended._in_multi_worker_mode``, private: no public way to ask)."""
    import tensorflow as tf  # only where a strategy exists, TensorFlow is loaded already

    extended = getattr(strategy, "extended", None)
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and bool(
        getattr(extended, "_in_multi_worker_mode", lambda: False)())


class MultiWorkerBuild:
    """Mixin for a ``keras.Model``: under MultiWorkerMirroredStrategy, build the model from
    this worker's own first replica batch.

    Keras' private ``Model._maybe_symbolic_build`` reduces the first distributed batch
    across workers in eager mode and raises ``Attempt to convert a value (PerReplica...)``
    (tensorflow/tensorflow#72388). The model must also return its step logs as
    one-element vectors under multi-worker (see ``MISSU._update_metrics``).
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        import tensorflow as tf  # a Keras model exists, so TensorFlow is loaded already

        strategy = self._distribute_strategy  # private: the strategy fit runs under
        if iterator is not None and strategy is not None and is_multi_worker(strategy):
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, batch)
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


# ----------------------------------------------------------------- layer structure --

def flatten_layers(model):
    """Every layer reachable from ``model``, a layer before the layers inside it
    (``Layer._flatten_layers``; Keras 3 has no public recursive walk)."""
    return model._flatten_layers(include_self=False, recursive=True)


def stored_value(variable):
    """``variable`` as stored, in its own dtype (the backend's variable, which ops take as
    a tensor), also inside a mixed-precision layer's call, where reading a float32 kernel
    gives it already rounded to the compute dtype (Keras' autocast scope;
    ``keras.src.backend.AutocastScope(None)`` turns it off, and Keras 3 has no public way
    to)."""
    from keras.src.backend import AutocastScope  # private, see docstring

    with AutocastScope(None):
        return variable.value


def built_input_shape(layer):
    """The input shape ``layer`` was built with (``Layer._build_shapes_dict``)."""
    shapes = getattr(layer, "_build_shapes_dict", None)
    if not shapes:
        raise ValueError(f"Layer {layer.name!r} is not built; build the model first")
    return tuple(next(iter(shapes.values())))


# ------------------------------------------------------------------------- export --

def archive_root(archive):
    """The object ``keras.export.ExportArchive.write_out`` saves (Keras 3 keeps it in the
    private ``_tf_trackable``); assets and variable lists are attached to it so the
    SavedModel stores each variable once and carries our metadata file."""
    root = getattr(archive, "_tf_trackable", None)
    if root is None:
        import keras  # an archive exists, so Keras is loaded already

        raise RuntimeError(
            f"keras.export.ExportArchive of Keras {keras.__version__} has no _tf_trackable; "
            "missu_keras.export needs Keras 3.x's SavedModel archive"
        )
    return root
