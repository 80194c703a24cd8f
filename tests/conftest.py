import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as missu_keras/__init__.py does

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
PARITY_FIXTURE = FIXTURES / "transbts_parity_small.npz"

# A network small enough for many builds per test on 2 CPU cores.
TINY = dict(image_size=32, base_width=8, embed_dim=32, num_heads=4, num_layers=1, mlp_dim=64)
NO_DROPOUT = dict(dropout_rate=0.0, attn_dropout_rate=0.0, stem_dropout_rate=0.0)


@pytest.fixture
def parity_fixture():
    if not PARITY_FIXTURE.exists():
        pytest.skip(f"parity fixture not found at {PARITY_FIXTURE}")
    return PARITY_FIXTURE
