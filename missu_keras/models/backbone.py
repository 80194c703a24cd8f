"""`MISSUBackbone`: the whole network as one functional Keras model with named outputs."""

from __future__ import annotations

import keras
from keras import layers

from missu_keras.config import MISSUConfig
from missu_keras.layers import (Bottleneck, DeBlock, DownSample, EncoderBlock, InitConv,
                                MultiScaleFusion, PositionEmbedding, PyramidFusion,
                                TransformerLayer, UpCat)
from missu_keras.layers.base import register

# Encoder blocks per stage (stage 1: 1, stage 2: 2, stage 3: 2, stage 4: 4).
ENCODER_DEPTHS = (1, 2, 2, 4)


@register
class MISSUBackbone(keras.Model):
    """Encoder + Transformer + decoder (+ the MSF branch unless ``msf_mode="none"``).

    A functional model whose output is a dict:

    - ``"probabilities"``: softmax ``(B, H, W, D, num_classes)`` in float32;
    - ``"logits"``: the same before softmax (float32), for the losses;
    - ``"A1".."A4"``: encoder features ``(B, H/2^(s-1), ..., b * 2^(s-1))``
      (keras-hub's ``pyramid_outputs`` habit);
    - ``"B1".."B3"``: the MSF pyramid (Eq. 3), same shapes as A1..A3, training-only
      unless ``msf_mode="ms_output"``; absent when ``msf_mode="none"``.

    Every spatial size must be divisible by 8 (three stride-2 downsamplings), e.g.
    128 -> 16 tokens per axis -> 4096 tokens; the learned position embedding fixes the
    token count, so the model takes ``image_size`` patches only.

    Args: the names of `missu_keras.config.MISSUConfig`.

    Example:

    >>> net = MISSUBackbone(image_size=32, base_width=8, embed_dim=32, num_heads=4,
    ...                     num_layers=1, mlp_dim=64)
    >>> sorted(net.output)
    ['A1', 'A2', 'A3', 'A4', 'B1', 'B2', 'B3', 'logits', 'probabilities']
    >>> tuple(net.output["A3"].shape)
    (None, 8, 8, 8, 32)
    """

    def __init__(self, image_size=128, in_channels=4, num_classes=4, base_width=16,
                 embed_dim=512, num_heads=8, num_layers=4, mlp_dim=1024, dropout_rate=0.1,
                 attn_dropout_rate=0.1, stem_dropout_rate=0.2, use_transformer=True,
                 msf_mode="local", self_distill=True, distill_weight=0.3,
                 num_skip_connections=3, teacher_stop_gradient=False, seg_loss="ce",
                 attention_map_power=1.0, msf_shared_weights=False, released_stem_dropout=False,
                 released_attention_dropout=False, **kwargs):
        cfg = MISSUConfig(
            image_size=image_size, in_channels=in_channels, num_classes=num_classes,
            base_width=base_width, embed_dim=embed_dim, num_heads=num_heads,
            num_layers=num_layers, mlp_dim=mlp_dim, dropout_rate=dropout_rate,
            attn_dropout_rate=attn_dropout_rate, stem_dropout_rate=stem_dropout_rate,
            use_transformer=use_transformer, msf_mode=msf_mode, self_distill=self_distill,
            distill_weight=distill_weight, num_skip_connections=num_skip_connections,
            teacher_stop_gradient=teacher_stop_gradient, seg_loss=seg_loss,
            attention_map_power=attention_map_power, msf_shared_weights=msf_shared_weights,
            released_stem_dropout=released_stem_dropout,
            released_attention_dropout=released_attention_dropout,
        )
        # === Functional graph === (the global dtype policy, e.g. mixed_bfloat16, applies)
        inputs = keras.Input(shape=(*cfg.image_size, cfg.in_channels), name="image")
        features = _encoder(inputs, cfg)
        z = _bottleneck(features["A4"], cfg)
        if cfg.msf_mode != "none":
            features.update(_msf_pyramid(features, cfg))
        logits = _decoder(z, features, cfg)
        logits = layers.Activation("linear", dtype="float32", name="logits")(logits)
        probs = layers.Softmax(axis=-1, dtype="float32", name="probabilities")(logits)

        outputs = {"probabilities": probs, "logits": logits, **features}
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.config = cfg

    def get_config(self):
        base = {"name": self.name, "trainable": self.trainable}
        return {**base, **self.config.to_dict()}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _widths(cfg: MISSUConfig):
    b = cfg.base_width
    return (b, 2 * b, 4 * b, 8 * b)


def _encoder(inputs, cfg: MISSUConfig) -> dict:
    """``{"A1": .., "A4": ..}``; layer names follow the released code (the importer maps them)."""
    x = InitConv(cfg.base_width, cfg.stem_dropout_rate, dropout_at_inference=cfg.released_stem_dropout,
                 name="init_conv")(inputs)
    features = {}
    for stage, (width, depth) in enumerate(zip(_widths(cfg), ENCODER_DEPTHS), start=1):
        if stage > 1:
            x = DownSample(width, name=f"endown{stage - 1}")(x)
        for j in range(1, depth + 1):
            x = EncoderBlock(name=f"enblock{stage}" if depth == 1 else f"enblock{stage}_{j}")(x)
        features[f"A{stage}"] = x
    return features


def _bottleneck(a4, cfg: MISSUConfig):
    """BN, ReLU, conv to E, then the Transformer over the tokens (unless switched off): Z4."""
    E = cfg.embed_dim
    z = Bottleneck(E, name="bottleneck")(a4)
    if not cfg.use_transformer:
        return z
    t = layers.Reshape((cfg.num_tokens, E), name="to_tokens")(z)
    t = PositionEmbedding(name="position_embedding")(t)
    t = layers.Dropout(cfg.dropout_rate, name="pe_dropout")(t)
    for i in range(cfg.num_layers):
        t = TransformerLayer(cfg.num_heads, cfg.mlp_dim, cfg.dropout_rate, cfg.attn_dropout_rate,
                             double_output_dropout=cfg.released_attention_dropout,
                             name=f"transformer_{i}")(t)
    return layers.Reshape((*cfg.token_grid, E), name="from_tokens")(t)


def _msf_pyramid(features: dict, cfg: MISSUConfig) -> dict:
    """The MSF branch (training-only unless ms_output): Abar_s, then the pyramid B_s (Eq. 3)."""
    pyramid, prev = {}, None
    for s in (1, 2, 3):
        abar = MultiScaleFusion(cfg.msf_shared_weights, name=f"msf{s}")(features[f"A{s}"])
        prev = abar if prev is None else PyramidFusion(name=f"msf_pyramid{s}")([abar, prev])
        pyramid[f"B{s}"] = prev
    return pyramid


def _decoder(z, features: dict, cfg: MISSUConfig):
    """Bottleneck1/2, then UpCat + DeBlock per scale with the skips (A_s, or B_s in
    ms_output), and the 1x1x1 classifier: the logits."""
    widths = _widths(cfg)
    skip_key = "B" if cfg.msf_mode == "ms_output" else "A"
    y = DeBlock(widths[3], residual=False, name="decoder_bottleneck1")(z)
    y = DeBlock(widths[3], residual=True, name="decoder_bottleneck2")(y)
    for s in (3, 2, 1):
        # Fig. 5: with n skip connections, the n deepest ones are kept.
        use_skip = (4 - s) <= cfg.num_skip_connections
        up = UpCat(widths[s - 1], name=f"deup{s + 1}")
        y = up([y, features[f"{skip_key}{s}"]]) if use_skip else up(y)
        y = DeBlock(widths[s - 1], residual=True, name=f"deblock{s + 1}")(y)
    return layers.Conv3D(cfg.num_classes, 1, name="endconv")(y)
