"""Parameter and FLOP counts (the paper's Table III), for the training and exported graphs.

How FLOPs are counted: every convolution, transposed convolution and dense layer
contributes its multiply-accumulates (MACs) at the layer's built input size, and each
Transformer layer adds its two attention matmuls (QK^T and AV, ``2 N^2 E``); normalisation,
activations, softmax, additions and padding are not counted (together well under 1%).
FLOPs = 2 x MACs. Counts are per sample (batch 1). The paper does not say how it counted
(its 132.11 "GFLOPs" for MISSU at 4 x 128^3 is below our 274 GMACs); compare MACs with
tools that report MACs and FLOPs with tools that report 2 x MACs.

>>> from missu_keras.models import MISSU
>>> m = MISSU.from_preset("tiny", image_size=32)
>>> report = complexity_report(m)
>>> report["exported"]["params"] < report["training"]["params"]
True
>>> report["exported"]["flops"] == 2 * report["exported"]["macs"]
True
"""

from __future__ import annotations

import math

from keras import layers

from missu_keras.compat import built_input_shape, flatten_layers
from missu_keras.layers import MultiScaleFusion, TransformerLayer

FLOPS_METHOD = (
    "FLOPs = 2 x MACs of all Conv3D, Conv3DTranspose and Dense layers plus the two "
    "attention matmuls per Transformer layer (2 N^2 E MACs); norms, activations, "
    "softmax and additions not counted; per sample (batch 1)."
)


def layer_macs(layer) -> int:
    """MACs of one leaf layer at its built input size (0 for uncounted layer types)."""
    if isinstance(layer, layers.Conv3DTranspose):
        in_shape = built_input_shape(layer)
        k = math.prod(layer.kernel_size)
        return math.prod(in_shape[1:-1]) * k * in_shape[-1] * layer.filters
    if isinstance(layer, layers.Conv3D):
        in_shape = built_input_shape(layer)
        out_shape = layer.compute_output_shape(in_shape)
        k = math.prod(layer.kernel_size)
        return math.prod(out_shape[1:-1]) * k * in_shape[-1] * layer.filters // layer.groups
    if isinstance(layer, layers.Dense):
        in_shape = built_input_shape(layer)
        return math.prod(in_shape[1:-1]) * in_shape[-1] * layer.units
    if isinstance(layer, TransformerLayer):
        return layer.attention_macs(built_input_shape(layer))
    return 0


def count_macs(model) -> int:
    """Total MACs per sample of every layer reachable from ``model`` (a convolution that
    an MSF block calls more than once, with ``msf_shared_weights``, counts per call)."""
    seen = set()
    total = 0
    # Keras lists a layer before the layers inside it.
    for layer in flatten_layers(model):
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, MultiScaleFusion):
            for conv, calls in layer.convolution_calls():
                total += calls * layer_macs(conv)
                seen.add(id(conv))
            continue
        total += layer_macs(layer)
    return total


def count_params(model) -> int:
    return int(sum(math.prod(w.shape) for w in model.weights if w.trainable))


def complexity_report(model) -> dict:
    """``{"training": {...}, "exported": {...}}`` with ``params``, ``macs``, ``flops``
    for a `MISSU` model (training graph = backbone with the MSF branch)."""
    report = {}
    for key, graph in (("training", model.backbone), ("exported", model.inference_model())):
        macs = count_macs(graph)
        report[key] = {"params": count_params(graph), "macs": macs, "flops": 2 * macs}
    report["input_shape"] = [1, *model.config.image_size, model.config.in_channels]
    report["method"] = FLOPS_METHOD
    return report


def format_report(report, title="") -> str:
    lines = []
    if title:
        lines.append(title)
    shape = "x".join(str(s) for s in report["input_shape"])
    lines.append(f"input {shape} (batch x H x W x D x C)")
    lines.append(f"{'graph':<10} {'params (M)':>11} {'GMACs':>10} {'GFLOPs':>10}")
    for key in ("training", "exported"):
        r = report[key]
        lines.append(f"{key:<10} {r['params'] / 1e6:>11.2f} {r['macs'] / 1e9:>10.2f} {r['flops'] / 1e9:>10.2f}")
    lines.append("How counted: " + report["method"])
    return "\n".join(lines)
