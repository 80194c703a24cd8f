"""``missu-keras demo``: synthetic BraTS-style data -> train (tiny, self-distillation)
-> evaluate held-out cases -> predict one case to NIfTI -> save the inference model.

Everything goes through the same readers, cache, tf.data pipeline, sliding-window
inference and metrics as real data.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np


def run_demo(out, train_cases=8, val_cases=3, shape=(48, 48, 40), patch=32, epochs=10,
             steps_per_epoch=12, batch_size=2, seed=0, log=print):
    import keras
    import nibabel as nib

    import missu_keras
    from missu_keras import data
    from missu_keras.inference import SlidingWindowInferer
    from missu_keras.metrics import CONVENTION, format_summary_table, score_case, summarize, write_scores

    out = Path(out)
    t0 = time.time()
    keras.utils.set_random_seed(seed)
    raw = out / "data"
    log(f"[1/5] writing {train_cases + val_cases} synthetic BraTS cases {tuple(shape)} to {raw}")
    if not raw.exists():
        data.write_synthetic_brats(raw, num_cases=train_cases + val_cases, seed=seed, shape=shape)
    cases = {case.case_id: case for case in data.find_brats_cases(raw)}
    config = dataclasses.replace(data.PreprocessingConfig.brats(), patch_size=(patch,) * 3)
    result = data.build_cache(list(cases.values()), out / "cache", config, workers=2, progress=False)
    cache = result.cache
    ids = cache.case_ids
    train_ids, val_ids = ids[:train_cases], ids[train_cases:]

    log(f"[2/5] training the tiny preset with self-distillation ({epochs} x {steps_per_epoch} steps)")
    model = missu_keras.MISSU.from_preset("tiny", image_size=patch, seg_loss="dice_ce",
                                         preprocessing=config.to_dict())
    model.compile(optimizer=missu_keras.paper_optimizer(epochs * steps_per_epoch, learning_rate=3e-3))
    train = data.make_training_dataset(cache, batch_size=batch_size, case_ids=train_ids, seed=seed,
                                       foreground_oversample=0.5)
    history = model.fit(train, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=2)
    model.save(out / "missu_tiny.keras")

    log(f"[3/5] evaluating {len(val_ids)} held-out cases (sliding window, Gaussian, overlap 0.5)")
    inference = model.inference_model()
    inferer = SlidingWindowInferer(roi_size=(patch,) * 3, overlap=0.5, divisible_by=8)
    rows, predictions = [], {}
    for case_id in val_ids:
        entry = cache.entry(case_id)
        probs = inferer(inference, cache.load_image(case_id))
        labels = data.restore_labels(np.argmax(probs, -1), entry.box, config.label_convention)
        gt_case = cases[case_id]
        gt = np.asarray(nib.load(gt_case.seg_path).dataobj)
        rows.append({"case": case_id, **score_case(labels, gt, entry.spacing, config.label_convention)})
        predictions[case_id] = (labels, gt_case)
    summary = summarize(rows)
    write_scores(out / "evaluation", rows, summary)
    log(format_summary_table(summary))
    log(CONVENTION)

    log("[4/5] predicting one case to NIfTI in its original grid")
    case_id = val_ids[0]
    labels, gt_case = predictions[case_id]
    ref = nib.load(gt_case.reference_path)
    pred_path = out / "predictions" / f"{case_id}.nii.gz"
    pred_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), ref.affine, ref.header), pred_path)

    log("[5/5] saving the inference-only model (no MSF weights)")
    inference.save(out / "missu_tiny_inference.keras")
    report = {
        "wt_dice": summary["WT"]["dice"]["mean"],
        "tc_dice": summary["TC"]["dice"]["mean"],
        "et_dice": summary["ET"]["dice"]["mean"],
        "final_loss": history.history["loss"][-1],
        "seconds": round(time.time() - t0, 1),
        "prediction": str(pred_path),
    }
    (out / "demo.json").write_text(json.dumps(report, indent=2))
    log(json.dumps(report))
    return report


def register(subparsers):
    p = subparsers.add_parser("demo", help="synthetic data -> train -> evaluate -> predict -> save")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_handle)


def _handle(args) -> int:
    run_demo(args.out, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, seed=args.seed)
    return 0
