"""``missu-keras demo``: the whole path on generated BraTS-style cases, through the same
commands a user runs on real data:

1. write synthetic BraTS NIfTI cases (``missu-keras synth``), some held out, in the BraTS
   2021 layout or, with ``layout="msd"`` / ``"nnunet"``, as a Decathlon Task01 or an nnU-Net
   raw dataset (`write_demo_data`; the same readers as real data);
2. ``missu-keras train`` the ``tiny`` preset with self-distillation (cache, tf.data,
   checkpoints, CSV / TensorBoard logs, resumable);
3. ``missu-keras evaluate`` the held-out cases (``summary.json``, ``cases.csv``);
4. ``missu-keras predict`` one held-out case to NIfTI in its original grid;
5. ``missu-keras export`` the inference-only SavedModel (no MSF) for TF-Serving.

>>> import tempfile
>>> train_dir, heldout_dir, to_predict = write_demo_data(
...     tempfile.mkdtemp(), "nnunet", train_cases=2, heldout_cases=1, shape=(24, 24, 16))
>>> train_dir.name, [p.name for p in to_predict]
('Dataset001_SynthBraTS', ['BRATS_SYNTH_000_0000.nii.gz', 'BRATS_SYNTH_000_0001.nii.gz', 'BRATS_SYNTH_000_0002.nii.gz', 'BRATS_SYNTH_000_0003.nii.gz'])
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from pathlib import Path

import keras

from missu_keras.data.brats import find_brats_cases
from missu_keras.data.datasets import find_cases
from missu_keras.data.synthetic import write_synthetic_brats, write_synthetic_msd, write_synthetic_nnunet
from missu_keras.evaluation import evaluate
from missu_keras.export import export_savedmodel
from missu_keras.prediction import predict
from missu_keras.training.run import train


DEMO_LAYOUTS = ("brats", "msd", "nnunet")
# The dataset folder of each layout (nnU-Net names the label convention after it).
_DATASET_FOLDERS = {"msd": "Task01_BrainTumour", "nnunet": "Dataset001_SynthBraTS"}


def write_demo_data(root, layout: str = "brats", train_cases=9, heldout_cases=3,
                    shape=(48, 48, 40), seed=0):
    """Writes the demo's synthetic cases under ``root`` (``train/`` and ``heldout/``;
    kept when both are there already) and returns ``(training folder, held-out folder,
    input of the case to predict)``.

    ``layout``: ``"brats"`` (2021 layout; the held-out cases are the last ones of one
    draw; the input to predict is a case folder), ``"msd"`` (Decathlon Task01; a 4-D
    file) or ``"nnunet"`` (nnU-Net raw; a case's ``_XXXX`` files), where the held-out
    cases are a second dataset of the same name drawn with ``seed + 1``.
    """
    if layout not in DEMO_LAYOUTS:
        raise ValueError(f"layout must be one of {DEMO_LAYOUTS}. Received: layout={layout!r}")
    root = Path(root)
    train_dir, heldout_dir = root / "train", root / "heldout"
    if layout != "brats":
        train_dir, heldout_dir = train_dir / _DATASET_FOLDERS[layout], heldout_dir / _DATASET_FOLDERS[layout]
    if not (train_dir.exists() and heldout_dir.exists()):
        shutil.rmtree(root, ignore_errors=True)
        if layout == "brats":
            write_synthetic_brats(train_dir, num_cases=train_cases + heldout_cases, seed=seed, shape=shape)
            heldout_dir.mkdir(parents=True)
            for case in find_brats_cases(train_dir)[train_cases:]:
                case.directory.rename(heldout_dir / case.case_id)
        else:
            # nnU-Net: region-based labels, so the scores are whole tumour, tumour core and
            # enhancing tumour as for the other layouts.
            write = write_synthetic_msd if layout == "msd" else functools.partial(write_synthetic_nnunet,
                                                                                  regions=True)
            write(train_dir, num_cases=train_cases, seed=seed, shape=shape)
            write(heldout_dir, num_cases=heldout_cases, seed=seed + 1, shape=shape)
    case = find_cases(heldout_dir, layout="2021" if layout == "brats" else layout)[0]
    if layout == "brats":
        return train_dir, heldout_dir, [case.directory]
    return train_dir, heldout_dir, [case.image_path] if layout == "msd" else list(case.image_paths.values())


def run_demo(out, train_cases=9, heldout_cases=3, shape=(48, 48, 40), patch=32, epochs=10,
             steps_per_epoch=12, batch_size=2, seed=0, layout: str = "brats", log=print):
    """Runs the demo into ``out`` and returns a report dict (also ``out/demo.json``):
    held-out Dice per region (``wt_dice`` ... for the BraTS regions; ``dice`` by the
    dataset's region names), the final loss, the seconds taken and the files written.
    ``layout``: the layout the synthetic data is written in (`write_demo_data`)."""
    out = Path(out)
    t0 = time.time()
    log(f"[1/5] writing {train_cases + heldout_cases} synthetic BraTS cases {tuple(shape)} "
        f"({layout} layout) to {out / 'data'}")
    raw, heldout, to_predict = write_demo_data(out / "data" if layout == "brats" else out / "data" / layout,
                                               layout, train_cases, heldout_cases, shape, seed)

    log(f"[2/5] training the tiny preset with self-distillation ({epochs} x {steps_per_epoch} "
        f"steps, batch {batch_size}, patch {patch})")
    result = train(data=str(raw), out=str(out / "run"), preset="tiny", patch_size=patch,
                   loss="dice_ce", learning_rate=3e-3, epochs=epochs,
                   steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                   val_fraction=1.0 / train_cases, validation_every=max(1, epochs // 2),
                   image_every=max(1, epochs // 2), foreground_oversample=0.5, seed=seed,
                   verbose=2, log=log)
    history = result.history.history

    log(f"[3/5] evaluating {heldout_cases} held-out cases (sliding window, Gaussian, overlap 0.5)")
    _, summary = evaluate(out / "run", heldout, out / "evaluation", overwrite=True, log=log)

    log("[4/5] predicting one held-out case to NIfTI in its original grid")
    modalities = ["FLAIR", "T1w", "t1gd", "T2w"] if layout == "msd" else None  # 4-D file: its channels
    pred_path = predict(to_predict, out / "predictions", out / "run", overwrite=True,
                        modalities=modalities, log=log)[0]

    log("[5/5] exporting the inference-only SavedModel for TF-Serving (no MSF)")
    best = keras.saving.load_model(out / "run" / "checkpoints" / "best.keras")
    exported = export_savedmodel(best, out / "serving", name="missu", version=1, overwrite=True,
                                 preset="tiny", log=log).path
    dice = {region: scores["dice"]["mean"] for region, scores in summary.items()
            if isinstance(scores, dict) and "dice" in scores}
    report = {
        "layout": layout,
        **{f"{region.lower()}_dice": dice[region] for region in ("WT", "TC", "ET") if region in dice},
        "dice": dice,
        "final_loss": history["loss"][-1] if history.get("loss") else None,
        "seconds": round(time.time() - t0, 1),
        "run": str(out / "run"),
        "prediction": str(pred_path),
        "savedmodel": str(exported),
    }
    (out / "demo.json").write_text(json.dumps(report, indent=2))
    log(json.dumps(report))
    return report

