"""``missu-keras serve-request``: send a BraTS case to a running TF-Serving model (REST,
``segment_volume``) and write the labels it returns as NIfTI
(`missu_keras.serving.segment_case_rest`)."""

from __future__ import annotations

import json
from pathlib import Path


def register(subparsers):
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
    q.set_defaults(func=run)


def run(args) -> int:
    # NumPy / nibabel / the export metadata reader: imported when the command runs.
    from missu_keras.export import read_export_metadata
    from missu_keras.serving import segment_case_rest

    modalities = args.modalities
    if args.metadata and not modalities:
        path = Path(args.metadata)
        meta = json.loads(path.read_text()) if path.is_file() else read_export_metadata(path)
        modalities = meta["modalities"]
    segment_case_rest(args.case, args.server, args.out, model_name=args.name,
                      version=args.version, modalities=modalities, timeout=args.timeout)
    return 0
