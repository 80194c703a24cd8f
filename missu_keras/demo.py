"""``missu-keras demo``: the whole path on generated BraTS-style cases, through the same
commands a user runs on real data:

1. write synthetic BraTS 2021-layout NIfTI cases (``missu-keras synth``), some held out;
2. ``missu-keras train`` the ``tiny`` preset with self-distillation (cache, tf.data,
   checkpoints, CSV / TensorBoard logs, resumable);
3. ``missu-keras evaluate`` the held-out cases (``summary.json``, ``cases.csv``);
4. ``missu-keras predict`` one held-out case to NIfTI in its original grid;
5. ``missu-keras export`` the inference-only SavedModel (no MSF) for TF-Serving.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import keras

from missu_keras.data.brats import find_brats_cases
from missu_keras.data.synthetic import write_synthetic_brats
from missu_keras.evaluation import evaluate
from missu_keras.export import export_savedmodel
from missu_keras.prediction import predict
from missu_keras.training.run import train


def run_demo(out, train_cases=9, heldout_cases=3, shape=(48, 48, 40), patch=32, epochs=10,
             steps_per_epoch=12, batch_size=2, seed=0, log=print):
    """Runs the demo into ``out`` and returns a report dict (also ``out/demo.json``):
    held-out Dice per region, the final loss, the seconds taken and the files written."""
    out = Path(out)
    t0 = time.time()
    raw, heldout = out / "data" / "train", out / "data" / "heldout"
    log(f"[1/5] writing {train_cases + heldout_cases} synthetic BraTS cases {tuple(shape)} "
        f"to {out / 'data'}")
    if not (raw.exists() and heldout.exists()):
        shutil.rmtree(out / "data", ignore_errors=True)
        write_synthetic_brats(raw, num_cases=train_cases + heldout_cases, seed=seed, shape=shape)
        heldout.mkdir(parents=True)
        for case in find_brats_cases(raw)[train_cases:]:
            case.directory.rename(heldout / case.case_id)

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
    case = find_brats_cases(heldout)[0]
    pred_path = predict(case.directory, out / "predictions", out / "run", overwrite=True, log=log)[0]

    log("[5/5] exporting the inference-only SavedModel for TF-Serving (no MSF)")
    best = keras.saving.load_model(out / "run" / "checkpoints" / "best.keras")
    exported = export_savedmodel(best, out / "serving", name="missu", version=1, overwrite=True,
                                 preset="tiny", log=log).path
    report = {
        "wt_dice": summary["WT"]["dice"]["mean"],
        "tc_dice": summary["TC"]["dice"]["mean"],
        "et_dice": summary["ET"]["dice"]["mean"],
        "final_loss": history["loss"][-1] if history.get("loss") else None,
        "seconds": round(time.time() - t0, 1),
        "run": str(out / "run"),
        "prediction": str(pred_path),
        "savedmodel": str(exported),
    }
    (out / "demo.json").write_text(json.dumps(report, indent=2))
    log(json.dumps(report))
    return report
