"""``missu-keras export`` (SavedModel for TF-Serving) and ``missu-keras serve-request``
(send a NIfTI case to a running server, write the labels as NIfTI)."""

from __future__ import annotations

import argparse
import json
import sys


def _parse_set(items):
    """``["embed_dim=32", "msf_mode=none"]`` -> ``{"embed_dim": 32, "msf_mode": "none"}``
    (values read as JSON when they parse, else kept as strings)."""
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects NAME=VALUE (a MISSUConfig name); received {item!r}")
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            overrides[key] = value
    return overrides


def _export(args) -> int:
    from missu_keras.export import export_savedmodel
    from missu_keras.pretrained import load_pretrained

    overrides = _parse_set(args.set)
    if args.image_size:
        overrides["image_size"] = args.image_size[0] if len(args.image_size) == 1 else args.image_size
    try:
        model = load_pretrained(args.preset, weights=args.weights, training_model=True, **overrides)
        export_savedmodel(model, args.out, name=args.name, version=args.version,
                          overwrite=args.overwrite, preset=args.preset, overlap=args.overlap,
                          sw_batch_size=args.sw_batch_size,
                          pad_to_multiple=args.pad_to_multiple)
    except (FileExistsError, ConnectionError, ImportError) as err:
        raise ValueError(str(err)) from err  # the CLI prints these as one-line errors
    return 0


def _serve_request(args) -> int:
    from missu_keras.serving import segment_case_rest

    modalities = args.modalities
    if args.metadata:
        from pathlib import Path

        from missu_keras.export import read_export_metadata

        path = Path(args.metadata)
        meta = json.loads(path.read_text()) if path.is_file() else read_export_metadata(path)
        modalities = modalities or meta["modalities"]
    try:
        segment_case_rest(args.case, args.server, args.out, model_name=args.name,
                          version=args.version, modalities=modalities, timeout=args.timeout)
    except (FileExistsError, ConnectionError, RuntimeError) as err:
        raise ValueError(str(err)) from err
    return 0


def _add_export_arguments(p):
    p.add_argument("--preset", required=True,
                   help="preset name (brats, chaos, tiny) or a saved preset folder")
    p.add_argument("--weights", default=None,
                   help="'published', a .weights.h5, .keras, preset folder, .npz or .pth/.pt "
                        "(default: random initialisation)")
    p.add_argument("--out", required=True, help="folder that receives <name>/<version>/")
    p.add_argument("--name", default="missu", help="model name (TF-Serving MODEL_NAME; default missu)")
    p.add_argument("--version", type=int, default=None,
                   help="integer version (default: the next free one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
    p.add_argument("--image-size", type=int, nargs="+", metavar="N",
                   help="patch size override: N or H W D (multiples of 8)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="any other MISSUConfig override, e.g. --set embed_dim=32 (repeatable)")
    p.add_argument("--overlap", type=float, default=0.5,
                   help="segment_volume sliding-window overlap (default 0.5)")
    p.add_argument("--sw-batch-size", type=int, default=1,
                   help="segment_volume windows per model call (default 1)")
    p.add_argument("--pad-to-multiple", action="store_true",
                   help="segment_volume: pad the cropped scan to the preprocessing's pad_multiple "
                        "before the sliding window, as whole-volume validation does (default: "
                        "off, as missu-keras predict)")
    p.set_defaults(func=_export)


def register(subparsers):
    p = subparsers.add_parser(
        "export", help="inference-only SavedModel for TF-Serving (OUT/NAME/VERSION)")
    _add_export_arguments(p)

    q = subparsers.add_parser(
        "serve-request", help="send a BraTS case to a TF-Serving model, write the labels as NIfTI")
    q.add_argument("case", help="a BraTS case folder")
    q.add_argument("--server", default="localhost:8501", help="REST host:port (default localhost:8501)")
    q.add_argument("--name", default="missu", help="model name (default missu)")
    q.add_argument("--version", type=int, default=None, help="model version (default: the latest)")
    q.add_argument("--out", required=True, help="output .nii.gz")
    q.add_argument("--modalities", nargs="+", default=None,
                   help="channel order of the exported model (default: flair t1ce t1 t2)")
    q.add_argument("--metadata", default=None,
                   help="an exported version folder or its missu_export.json, for the modality order")
    q.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    q.set_defaults(func=_serve_request)


def export_main(argv=None) -> int:
    """``python export/export_savedmodel.py ...``: the ``export`` command on its own."""
    parser = argparse.ArgumentParser(
        prog="export_savedmodel.py",
        description="Export an inference-only MISSU SavedModel for TF-Serving (OUT/NAME/VERSION).")
    _add_export_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return _export(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"export_savedmodel.py: error: {err}", file=sys.stderr)
        return 2
