import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as missu_keras/__init__.py does

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
PARITY_FIXTURE = FIXTURES / "transbts_parity_small.npz"
FULL_PARITY_FIXTURE = FIXTURES / "transbts_parity_full.npz"

# A network small enough for many builds per test on 2 CPU cores.
TINY = dict(image_size=32, base_width=8, embed_dim=32, num_heads=4, num_layers=1, mlp_dim=64)
NO_DROPOUT = dict(dropout_rate=0.0, attn_dropout_rate=0.0, stem_dropout_rate=0.0)


@pytest.fixture
def parity_fixture():
    if not PARITY_FIXTURE.exists():
        pytest.skip(f"parity fixture not found at {PARITY_FIXTURE}")
    return PARITY_FIXTURE


def rebuild_full_parity_state_dict(data):
    """The released-code state dict of transbts_parity_full.npz, rebuilt from its stored
    recipe (the fixture's README): tensor i is ``scale[i] * n + offset[i]`` with
    ``n = default_rng([seed, i]).standard_normal(shape)`` (``abs(n)`` where ``abs_keys[i]``)."""
    import json

    import numpy as np

    shapes = json.loads(str(data["shapes"]))
    seed = int(data["seed"])
    state = {}
    for i, key in enumerate(data["keys"]):
        n = np.random.default_rng([seed, i]).standard_normal(shapes[i], dtype=np.float32)
        if data["abs_keys"][i]:
            n = np.abs(n)
        state[str(key)] = (data["scale"][i] * n + data["offset"][i]).astype(np.float32)
    return state


@pytest.fixture(scope="session")
def full_parity_fixture():
    if not FULL_PARITY_FIXTURE.exists():
        pytest.skip(f"full-size parity fixture not found at {FULL_PARITY_FIXTURE}")
    return FULL_PARITY_FIXTURE
