"""MirroredStrategy over two logical CPU devices gives the one-device losses.

Logical devices must be configured before TensorFlow initialises, so the check runs
in a fresh Python process.
"""

import json
import subprocess
import sys
import textwrap

from tests.conftest import REPO

SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from missu_keras import MISSU
    cfg = dict(image_size=32, base_width=8, embed_dim=32, num_heads=4, num_layers=1,
               mlp_dim=64, dropout_rate=0.0, attn_dropout_rate=0.0, stem_dropout_rate=0.0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 32, 32, 32, 4)).astype("float32")
    y = ((x[..., 0] > 0.3).astype("int32") + (x[..., 1] > 1.0)).astype("int32")
    keras.utils.set_random_seed(0)
    init = MISSU(**cfg).get_weights()

    def run(strategy):
        with strategy.scope():
            model = MISSU(**cfg)
            model.set_weights(init)
            model.compile(optimizer=keras.optimizers.SGD(0.05))
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)  # global batch 4
        h = model.fit(ds.repeat(), epochs=3, steps_per_epoch=1, verbose=0).history
        return h, [w.numpy() for w in model.weights]

    one, w1 = run(tf.distribute.get_strategy())
    two, w2 = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    diff = max(float(np.abs(a - b).max()) for a, b in zip(w1, w2))
    print(json.dumps({"one": one, "two": two, "max_weight_diff": diff}))
    """
)


def test_mirrored_strategy_matches_one_device():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    one, two = result["one"], result["two"]
    for key in ("loss", "seg_loss", "sd_loss"):
        assert len(one[key]) == len(two[key]) == 3
        for a, b in zip(one[key], two[key]):
            assert abs(a - b) < 1e-4, (key, one[key], two[key])
    assert one["loss"][-1] < one["loss"][0]  # it trains
    # gradients (incl. the self-distillation term) were summed correctly across replicas
    assert result["max_weight_diff"] < 1e-4
