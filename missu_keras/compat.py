"""What missu_keras needs to know about the TensorFlow build and the CPU it runs on.

Private TensorFlow internals are read here and nowhere else, each with the reason.
"""

from __future__ import annotations

import functools
import platform

__all__ = ["cpu_flags", "cpu_has_bf16_units", "onednn_enabled"]


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
