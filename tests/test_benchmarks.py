"""benchmarks/bench_model.py: the --compare-unetr side-by-side (MONAI UNETR in PyTorch).

Where torch / monai / einops are installed the UNETR row is a real measurement; elsewhere (CI
installs only ``.[dev]``) it must be a "skipped" row, and the benchmark still prints its
table and JSON.
"""

import importlib.util
import json
import os

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def bench_model():
    spec = importlib.util.spec_from_file_location("bench_model", REPO / "benchmarks" / "bench_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_unetr_tiny(bench_model, capsys):
    rc = bench_model.main(["--preset", "tiny", "--image-size", "32", "--skip-train", "--skip-bf16",
                           "--repeats", "1", "--matmul-size", "256", "--compare-unetr"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])
    table = "\n".join(lines[:-1])
    assert "forward_float32_unetr" in table
    unetr, missu = out["unetr"], out["results"]["forward_float32"]
    assert missu["median_s"] > 0
    if "median_s" in unetr:
        assert unetr["median_s"] > 0 and unetr["min_s"] > 0 and unetr["peak_gb"] > 0
        assert unetr["params"] > 1e6
        assert unetr["input_shape"] == [1, 4, 32, 32, 32]  # channels-first, same input as MISSU
        assert unetr["threads"] == out["machine"]["threads"]
        assert out["ratio_missu_over_unetr"] == pytest.approx(missu["median_s"] / unetr["median_s"])
        assert "MISSU / UNETR forward time ratio:" in table
    else:
        assert unetr["skipped"].startswith("pip install monai torch"), unetr
        assert out["ratio_missu_over_unetr"] is None
        assert "skipped: pip install monai torch" in table


@pytest.mark.parametrize("hidden", [("monai",), ("torch",), ("torch", "monai")])
def test_unetr_skipped_when_torch_or_monai_missing(bench_model, tmp_path, monkeypatch, hidden):
    """Correct whatever this machine has installed: the hidden modules are made to fail to
    import in the child; the reason names a module that is hidden or really absent."""
    for name in hidden:
        (tmp_path / f"{name}.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}' (hidden by the test)\", name='{name}')\n")
    # the child finds these first
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    result = bench_model.measure_unetr((32, 32, 32), 4, 4, repeats=1, threads=1)
    assert result["skipped"] == "pip install monai torch einops", result
    assert result["reason"].startswith("ModuleNotFoundError: No module named '"), result
    absent = set(hidden) | {m for m in ("torch", "monai", "einops") if importlib.util.find_spec(m) is None}
    assert any(f"No module named '{m}'" in result["reason"] for m in absent), (absent, result)


def test_compare_unetr_off_by_default(bench_model, capsys, monkeypatch):
    """Also: the same run's float32 matmul rate (bfloat16 only where the CPU has bf16 units,
    faked absent here) and the forward as a fraction of it, in the table and the JSON line."""
    from missu_keras import compat

    monkeypatch.setattr(compat, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))  # no bf16 units
    rc = bench_model.main(["--preset", "tiny", "--image-size", "32", "--skip-train", "--skip-bf16",
                           "--repeats", "1", "--matmul-size", "256"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    out, table = json.loads(lines[-1]), "\n".join(lines[:-1])
    assert out["unetr"] is None and out["ratio_missu_over_unetr"] is None
    assert "CPU flags: avx2 yes, avx512f yes, avx512_bf16 no, amx_bf16 no" in table
    f32 = out["matmul"]["float32"]
    assert f32["size"] == 256 and f32["flops_per_s"] == pytest.approx(2 * 256 ** 3 / f32["best_s"])
    assert out["matmul"]["bfloat16"]["skipped"].startswith("no bf16 units")
    assert "matmul rate float32:" in table and "matmul rate bfloat16: no bf16 units" in table
    r = out["results"]["forward_float32"]
    assert r["flops"] == 2 * out["macs"]["exported"]
    assert r["fraction_of_matmul"] == pytest.approx(r["flops"] / r["median_s"] / f32["flops_per_s"])
    assert f"{100 * r['fraction_of_matmul']:.0f}% f32" in table


def test_fractions_of_the_matmul_rate(bench_model):
    """A training step counts 3 x the training graph's forward FLOPs (given by the caller);
    mixed_bfloat16 rows are set against the bfloat16 matmul where it was measured, else the
    float32 one; rows that failed get nothing."""
    rates = {"float32": {"dtype": "float32", "flops_per_s": 100.0},
             "bfloat16": {"dtype": "bfloat16", "flops_per_s": 400.0}}
    results = {"forward_float32": {"median_s": 2.0}, "forward_mixed_bfloat16": {"median_s": 1.0},
               "train_step_float32": {"median_s": 10.0}, "train_step_mixed_bfloat16": {"error": "x"}}
    bench_model.add_fractions(results, {"forward": 100.0, "train_step": 600.0}, rates)
    assert results["forward_float32"]["fraction_of_matmul"] == pytest.approx(0.5)
    assert results["forward_mixed_bfloat16"]["fraction_of_matmul"] == pytest.approx(0.25)
    assert results["forward_mixed_bfloat16"]["matmul_dtype"] == "bfloat16"
    assert results["train_step_float32"]["fraction_of_matmul"] == pytest.approx(0.6)
    assert results["train_step_mixed_bfloat16"] == {"error": "x"}
    rates["bfloat16"] = {"skipped": "no bf16 units"}
    bench_model.add_fractions(results, {"forward": 100.0, "train_step": 600.0}, rates)
    assert results["forward_mixed_bfloat16"]["fraction_of_matmul"] == pytest.approx(1.0)
    assert results["forward_mixed_bfloat16"]["matmul_dtype"] == "float32"


def test_profile_step_tiny_forward(capsys):
    """benchmarks/profile_step.py: op-time and live-memory tables from a real tf.profiler
    trace (tiny preset, exported graph forward)."""
    spec = importlib.util.spec_from_file_location("profile_step", REPO / "benchmarks" / "profile_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--preset", "tiny", "--image-size", "32", "--mode", "forward", "--top", "5"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["mode"] == "forward" and out["input_shape"] == [1, 32, 32, 32, 4]
    assert out["op_seconds"] and all(v >= 0 for v in out["op_seconds"].values())
    assert any("Conv3D" in name for name in out["op_seconds"])  # the convolutions were traced
    assert out["live_at_peak_bytes"] and out["allocator_peak_bytes"] > 0


def test_bench_data_small(capsys):
    """benchmarks/bench_data.py: synthetic writing, cache building and crop rates, as a
    table and a JSON line (small shapes; the timings themselves are not tested)."""
    spec = importlib.util.spec_from_file_location("bench_data", REPO / "benchmarks" / "bench_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--cases", "1", "--crops", "2", "--patch", "16", "--batch", "1",
                        "--shape", "24", "24", "16"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])
    assert out["shape"] == [24, 24, 16] and out["num_crops"] == 2
    assert all(out[k] > 0 for k in ("synthetic_cases_per_second", "cases_per_second", "crops_per_second"))
    assert "write synthetic BraTS cases" in "\n".join(lines[:-1])


@pytest.fixture(scope="module")
def gpu_check():
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))  # gpu_check imports bench_model beside it
    try:
        spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


def test_gpu_peaks_by_device_name(gpu_check):
    assert gpu_check.gpu_peak("NVIDIA H200") == ("H200", 989.0)
    assert gpu_check.gpu_peak("NVIDIA H100 PCIe") == ("H100 PCIe", 756.0)
    assert gpu_check.gpu_peak("NVIDIA H100 80GB HBM3") == ("H100", 989.0)
    assert gpu_check.gpu_peak("NVIDIA A100-SXM4-40GB") == ("A100", 312.0)
    assert gpu_check.gpu_peak("Some Future GPU") is None


def test_gpu_check_runs_on_cpu(gpu_check, capsys):
    """On a machine without a GPU (CI): the tiny preset, one float32 training step, the
    mixed_float16 and jit_compile rows skipped with a reason, the whole case through the
    Segmenter and the SavedModel with the same labels, and the CPU note in table and JSON."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this test checks the CPU path of gpu_check.py")
    assert gpu_check.main(["--image-size", "16", "--shape", "32", "32", "24"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    out, table = json.loads(lines[-1]), "\n".join(lines[:-1])
    assert out["note"] == gpu_check.CPU_NOTE and gpu_check.CPU_NOTE in table
    assert out["settings"]["preset"] == "tiny" and out["input_shape"] == [1, 16, 16, 16, 4]
    train = out["training"]
    assert set(train) == {"train_mixed_float16", "train_mixed_float16_jit", "train_float32", "train_float32_jit"}
    f32 = train["train_float32"]
    assert f32["step_s"] > 0 and f32["loss_finite"]
    assert f32["images_per_s"] == pytest.approx(2 / f32["step_s"])
    assert f32["tflops_per_s"] == pytest.approx(out["training_flops_per_image"] * 2 / f32["step_s"] / 1e12)
    assert f32["fraction_of_peak"] is None and "unknown peak" in table
    assert train["train_float32_jit"]["skipped"].startswith("CPU: XLA")
    assert train["train_mixed_float16"]["skipped"].startswith("CPU: float16")
    case = out["whole_case"]
    assert case["case_shape"] == [32, 32, 24] and case["python_s"] > 0 and case["savedmodel_s"] > 0
    assert case["labels_identical"] and case["agree"] and "OK" in table


@pytest.fixture(scope="module")
def bench_inference():
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))  # it imports bench_model beside it
    try:
        spec = importlib.util.spec_from_file_location("bench_inference", REPO / "benchmarks" / "bench_inference.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


def test_compare_monai_skipped_when_torch_missing(bench_inference, tmp_path, monkeypatch):
    """--compare-monai's child says "skipped" (and why) where torch / monai cannot be imported
    (torch hidden: it is imported first, so the child stops at once)."""
    (tmp_path / "torch.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch' (hidden by the test)\", name='torch')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    args = bench_inference._parse(["--preset", "tiny", "--image-size", "32", "--compare-monai"])
    result = bench_inference.compare_monai(args, str(tmp_path / "volume.npy"))
    assert result["skipped"] == "pip install monai torch einops", result
    assert "No module named 'torch'" in result["reason"]


def test_compare_monai_report(bench_inference, capsys):
    """The MONAI row, its settings and the ratio MISSU float32 / MONAI in table and JSON;
    a skipped MONAI leaves the ratio out."""
    args = bench_inference._parse(["--shape", "48", "48", "40", "--compare-monai"])
    machine = {"cpu": "test CPU", "threads": 2, "tensorflow": "x", "gpus": 0}
    results = {"float32": {"seconds": 3.0, "peak_gb": 1.0, "model_calls": 4, "windows": 4, "crop": [30, 37, 40]}}
    monai = {"seconds": 6.0, "peak_gb": 2.0, "windows": 8, "model_calls": 8, "input_shape": [1, 4, 48, 48, 40],
             "roi": [32, 32, 32], "params": 102_000_000, "threads": 2, "torch": "t", "monai": "m"}
    bench_inference._report(args, machine, results, monai)
    lines = capsys.readouterr().out.strip().splitlines()
    out, table = json.loads(lines[-1]), "\n".join(lines[:-1])
    assert out["ratio_missu_over_monai"] == pytest.approx(0.5) and out["monai"] == monai
    assert "MISSU float32 / MONAI UNETR whole-case time ratio: 0.50" in table
    assert "monai_unetr_float32" in table and "ROI (32, 32, 32), Gaussian" in table
    bench_inference._report(args, machine, results, {"skipped": "pip install monai torch einops", "reason": "r"})
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1])["ratio_missu_over_monai"] is None
    assert "monai_unetr_float32      skipped: pip install monai torch einops (r)" in lines


def test_bench_precision_tiny(capsys):
    """benchmarks/bench_precision.py: float32 and mixed_bfloat16 forwards alternated in one
    process, with the same rounds' matmul rates (tiny preset, two rounds)."""
    spec = importlib.util.spec_from_file_location("bench_precision", REPO / "benchmarks" / "bench_precision.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import keras

    before = keras.mixed_precision.global_policy().name
    assert module.main(["--preset", "tiny", "--image-size", "32", "--repeats", "2", "--matmul-size", "256"]) == 0
    assert keras.mixed_precision.global_policy().name == before  # the global policy is restored
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["input_shape"] == [1, 32, 32, 32, 4] and out["repeats"] == 2
    for precision in ("float32", "mixed_bfloat16"):
        row = out["results"][precision]
        assert len(row["times_s"]) == 2 and row["median_s"] > 0 and row["fraction_of_matmul"] > 0
    assert out["ratio_bf16_over_float32"] == pytest.approx(
        out["results"]["mixed_bfloat16"]["median_s"] / out["results"]["float32"]["median_s"])
