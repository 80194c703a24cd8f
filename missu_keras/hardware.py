"""What this machine computes fast, and the one place ``precision="auto"`` is resolved.

``auto`` becomes (`choose_precision`):

- a visible GPU -> ``mixed_float16`` for training (tensor cores; Keras scales the loss),
  ``float32`` for inference (`missu_keras.inference.Segmenter` runs float32 or
  ``mixed_bfloat16`` only, and bf16 on a GPU is not what its kernels are tuned for);
- a CPU with bfloat16 units (AVX512-BF16 or AMX-BF16) -> ``mixed_bfloat16``;
- anything else -> ``float32``: on AVX2-only CPUs oneDNN emulates bfloat16, about 15x
  slower than float32 (benchmarks/NOTES.md), and a CPU's flags that cannot be read
  (``/proc/cpuinfo`` exists on Linux only) count as no bf16 units.

`resolve_precision` reads the machine (the CPU flags through `missu_keras.compat.cpu_flags`,
the GPUs through TensorFlow) and logs the choice and its reason, e.g.
``precision auto -> mixed_bfloat16 (CPU has amx_bf16, avx512_bf16)``.
"""

from __future__ import annotations

import logging
import platform
from typing import Callable, Iterable, Optional, Sequence, Tuple

from missu_keras.compat import cpu_flags

logger = logging.getLogger("missu_keras.hardware")

PURPOSES = ("training", "inference")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # bfloat16 dot products in hardware
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def choose_precision(purpose: str, cpu_flags: Optional[Iterable[str]],
                     gpus: Sequence[str] = ()) -> Tuple[str, str]:
    """``(precision, reason)`` that ``auto`` means for ``purpose`` (``"training"`` or
    ``"inference"``) on a machine with these CPU flags (None: unknown) and GPU names.

    >>> choose_precision("training", {"avx2", "avx512f", "avx512_bf16"})
    ('mixed_bfloat16', 'CPU has avx512_bf16')
    >>> choose_precision("inference", {"avx2"})[0]
    'float32'
    >>> choose_precision("training", {"avx2"}, gpus=["/physical_device:GPU:0"])
    ('mixed_float16', 'GPU visible: /physical_device:GPU:0')
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}. Received: purpose={purpose!r}")
    if gpus:
        names = ", ".join(gpus)
        if purpose == "training":
            return "mixed_float16", f"GPU visible: {names}"
        return "float32", (f"GPU visible: {names}; inference runs float32 on a GPU "
                           "(the Segmenter has no float16 path)")
    if cpu_flags is None:
        return "float32", (f"CPU flags unknown on {platform.system() or 'this system'} "
                           "(read from /proc/cpuinfo on Linux only): no bf16 assumed")
    units = sorted(set(BF16_FLAGS) & set(cpu_flags))
    if units:
        return "mixed_bfloat16", f"CPU has {', '.join(units)}"
    return "float32", "CPU has no bf16 units (avx512_bf16 / amx_bf16): bfloat16 would be emulated"


def read_cpu_flags() -> Optional[frozenset]:
    """This CPU's feature flags, or None where they cannot be read (not Linux, or
    ``/proc/cpuinfo`` without a flags line)."""
    return cpu_flags() or None


def visible_gpus() -> list:
    """Names of the GPUs TensorFlow sees (physical devices)."""
    # Imported here: this layer-0 module stays free of TensorFlow for the CLI's --help;
    # its callers (train, Segmenter) have loaded TensorFlow anyway.
    import tensorflow as tf
    return [d.name for d in tf.config.list_physical_devices("GPU")]


def resolve_precision(precision: str, purpose: str = "training", log: Optional[Callable] = None) -> str:
    """``precision`` itself, or for ``"auto"`` `choose_precision` on this machine; the
    choice and its reason go to ``log`` (a callable taking one line; default: this
    module's logger at INFO).

    >>> resolve_precision("float32")
    'float32'
    """
    if precision != "auto":
        return precision
    choice, reason = choose_precision(purpose, read_cpu_flags(), visible_gpus())
    (log or logger.info)(f"precision auto -> {choice} ({reason})")
    return choice
