"""``missu-keras serve-request``: send a BraTS case to a running TF-Serving model (REST,
``segment_volume``) and write the labels it returns as NIfTI
(`missu_keras.serving.segment_case_rest`)."""

from __future__ import annotations


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
                   help="an exported version folder or its missu_export.json: the modality order, "
                        "orientation and spacing (without it the scan goes as stored to "
                        "segment_volume)")
    q.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    q.set_defaults(func=run)


def run(args) -> int:
    # NumPy / nibabel / the export metadata reader: imported when the command runs.
    from missu_keras.export import read_export_metadata
    from missu_keras.serving import ServingError, segment_case_rest

    modalities, label_values, meta = args.modalities, None, None
    if args.metadata:
        meta = read_export_metadata(args.metadata)  # errors name the file
        modalities = modalities or meta["modalities"]
        label_values = [int(v) for v in meta["label_map"].values()]
    try:
        segment_case_rest(args.case, args.server, args.out, model_name=args.name,
                          version=args.version, modalities=modalities, timeout=args.timeout,
                          label_values=label_values, metadata=meta)
    except ServingError as err:  # the server refused what was sent: the user's to fix
        raise ValueError(str(err)) from err
    return 0
