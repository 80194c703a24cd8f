"""Clients for an exported MISSU served by TF-Serving (`missu_keras.export`).

REST (``POST http://HOST:8501/v1/models/NAME[/versions/N]:predict``), standard library
only:

- `rest_request`: the JSON body, in TF-Serving's two forms: ``"inputs"`` (columnar:
  ``{"inputs": {"image": [...]}}``) or ``"instances"`` (row: one object per batch
  element, ``{"instances": [{"image": [...]}, ...]}``). ``segment_volume`` takes one
  volume without a batch axis, so it goes in the ``"inputs"`` form.
- `parse_rest_response`: ``{"outputs": ...}`` / ``{"predictions": ...}`` (or
  ``{"error": ...}``) back to ``{name: numpy array}``, with the exported dtypes.
- `rest_predict`: both, through ``urllib``.

gRPC (port 8500; ``pip install "missu-keras[serving]"`` for ``tensorflow-serving-api``,
imported only when used): `grpc_request` builds a ``PredictRequest``,
`parse_grpc_response` reads a ``PredictResponse``, `grpc_predict` sends one. gRPC
carries float32 tensors as raw bytes, so it is the better route for whole volumes
(a BraTS scan is about 36 M numbers: roughly 0.1 GB of JSON).

>>> import json, numpy as np
>>> image = np.zeros((1, 2, 2, 2, 4), "float32")
>>> body = rest_request({"image": image}, signature_name="serving_default")
>>> sorted(json.loads(body))
['inputs', 'signature_name']
>>> decoded = decode_rest_request(body)
>>> decoded["image"].shape, decoded["image"].dtype
((1, 2, 2, 2, 4), dtype('float32'))
>>> parse_rest_response('{"outputs": [[0, 4], [2, 1]]}', output_names=["labels"])["labels"]
array([[0, 4],
       [2, 1]], dtype=int32)
"""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np

from missu_keras.data.brats import BRATS_MODALITIES, find_brats_cases
from missu_keras.data.geometry import reorient, undo_orientation, voxel_spacing
from missu_keras.data.io import read_nifti_header, write_nifti
from missu_keras.labels import get_label_convention

# dtypes of the exported signatures' inputs and outputs (`missu_keras.export`).
TENSOR_DTYPES = {"image": "float32", "volume": "float32", "spacing": "float32",
                 "probabilities": "float32", "labels": "int32"}
SIGNATURE_OUTPUTS = {"serving_default": ("labels", "probabilities"),
                     "segment_volume": ("labels",), "segment_scan": ("labels",)}
VOLUME_SIGNATURES = ("segment_volume", "segment_scan")
FORMS = ("inputs", "instances")

Arrays = Mapping[str, np.ndarray]


def _json_values(array: np.ndarray):
    """Nested lists for JSON; integer-valued float arrays (most raw scans) are written
    as integers, which TF-Serving accepts for float tensors, to keep the body short."""
    array = np.asarray(array)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise ValueError("input holds NaN or infinite values; TF-Serving's JSON cannot "
                             "carry them portably")
        if array.size and np.all(array == np.round(array)) and np.abs(array).max() < 2 ** 53:
            return array.astype(np.int64).tolist()
        # float32 -> Python float is exact, and json writes the shortest repr that
        # reads back to the same double, hence to the same float32.
        return array.tolist()
    return array.tolist()


def rest_request(inputs: Union[Arrays, np.ndarray], signature_name: Optional[str] = None,
                 form: str = "inputs", input_name: str = "image") -> str:
    """The JSON body of a REST ``:predict`` call.

    Args:
        inputs: ``{input_name: array}``, or one array (named ``input_name``).
        signature_name: e.g. ``"serving_default"`` or ``"segment_volume"``; omitted
            from the body when ``None`` (the server then uses ``serving_default``).
        form: ``"inputs"`` (columnar, any shapes) or ``"instances"`` (row format: the
            first axis of every input is the batch and is split into instances).
        input_name: the name of a single unnamed array.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}; received {form!r}")
    if not isinstance(inputs, Mapping):
        inputs = {input_name: inputs}
    arrays = {str(k): np.asarray(v) for k, v in inputs.items()}
    if not arrays:
        raise ValueError("inputs must hold at least one array")
    body = {}
    if signature_name:
        body["signature_name"] = signature_name
    if form == "inputs":
        body["inputs"] = {k: _json_values(v) for k, v in arrays.items()}
    else:
        sizes = {k: (v.shape[0] if v.ndim else None) for k, v in arrays.items()}
        if None in sizes.values() or len(set(sizes.values())) != 1:
            raise ValueError(
                "the 'instances' form needs a batch axis of the same size first on every "
                f"input; received shapes { {k: v.shape for k, v in arrays.items()} }. Use "
                "form='inputs' for one volume (segment_volume)"
            )
        batch = next(iter(sizes.values()))
        body["instances"] = [{k: _json_values(v[i]) for k, v in arrays.items()}
                             for i in range(batch)]
    return json.dumps(body, separators=(",", ":"))


def _as_array(value, name: str) -> np.ndarray:
    dtype = TENSOR_DTYPES.get(name)
    return np.asarray(value, dtype=dtype) if dtype else np.asarray(value)


def decode_rest_request(body: Union[str, bytes, dict]) -> Dict[str, np.ndarray]:
    """Inverse of `rest_request` (what a server reads): ``{input name: array}``."""
    if isinstance(body, (str, bytes)):
        body = json.loads(body)
    if "inputs" in body:
        inputs = body["inputs"]
        if not isinstance(inputs, dict):
            inputs = {"image": inputs}
        return {k: _as_array(v, k) for k, v in inputs.items()}
    if "instances" in body:
        rows = body["instances"]
        if rows and isinstance(rows[0], dict):
            return {k: _as_array([row[k] for row in rows], k) for k in rows[0]}
        return {"image": _as_array(rows, "image")}
    raise ValueError(f"a :predict body holds 'inputs' or 'instances'; found keys {sorted(body)}")


def _json_reply(body: Union[str, bytes], source: str) -> dict:
    """A reply's JSON object; ``ValueError`` naming ``source`` for anything else."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        text = body.decode(errors="replace") if isinstance(body, bytes) else body
        raise ValueError(
            f"{source}: expected TF-Serving's JSON reply ({{\"outputs\": ...}}), found "
            f"{len(text)} characters that are not JSON: {text[:80]!r} ({err})"
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{source}: expected a JSON object ({{\"outputs\": ...}}), "
                         f"found a {type(value).__name__}")
    return value


class ServingError(RuntimeError):
    """TF-Serving refused a request; the message is the server's (e.g. a wrong channel
    count, or NaN input: the exported graph's checks)."""


def parse_rest_response(body: Union[str, bytes, dict],
                        output_names: Optional[Sequence[str]] = None,
                        source: str = "the server's reply") -> Dict[str, np.ndarray]:
    """``{output name: array}`` from a REST ``:predict`` response.

    TF-Serving drops the name when a signature has one output (``segment_volume``), so
    ``output_names`` (e.g. ``["labels"]``, see `SIGNATURE_OUTPUTS`) names it; arrays get
    the exported dtypes (``labels`` int32, ``probabilities`` float32).

    Raises `ServingError` with the server's message for ``{"error": ...}`` and
    ``ValueError`` naming ``source`` (e.g. the URL) for a reply that is not JSON.
    """
    if isinstance(body, (str, bytes)):
        body = _json_reply(body, source)
    if "error" in body:
        raise ServingError(f"TF-Serving answered with an error: {body['error']}")
    single = output_names[0] if output_names and len(output_names) == 1 else "output"
    if "outputs" in body:
        outputs = body["outputs"]
        if isinstance(outputs, dict):
            return {k: _as_array(v, k) for k, v in outputs.items()}
        return {single: _as_array(outputs, single)}
    if "predictions" in body:
        rows = body["predictions"]
        if rows and isinstance(rows[0], dict):
            return {k: _as_array([row[k] for row in rows], k) for k in rows[0]}
        return {single: _as_array(rows, single)}
    raise ValueError(
        f"{source}: a :predict response holds 'outputs', 'predictions' or 'error'; found "
        f"keys {sorted(body)}"
    )


def predict_url(server: str, model_name: str = "missu", version: Optional[int] = None) -> str:
    """``http://host:8501/v1/models/missu[/versions/N]:predict``.

    >>> predict_url("localhost:8501", "missu", 3)
    'http://localhost:8501/v1/models/missu/versions/3:predict'
    """
    base = server if "://" in server else "http://" + server
    path = f"/v1/models/{model_name}" + (f"/versions/{int(version)}" if version is not None else "")
    return base.rstrip("/") + path + ":predict"


def rest_predict(server: str, inputs: Union[Arrays, np.ndarray], model_name: str = "missu",
                 signature_name: str = "serving_default", version: Optional[int] = None,
                 form: str = "inputs", timeout: float = 600.0) -> Dict[str, np.ndarray]:
    """Sends one REST ``:predict`` request and returns the outputs (see
    `rest_request` and `parse_rest_response`).

    Raises ``ConnectionError`` when the server cannot be reached, `ServingError` with
    the server's message when it refuses the request.
    """
    if not isinstance(inputs, Mapping):
        inputs = {"volume" if signature_name in VOLUME_SIGNATURES else "image": inputs}
    body = rest_request(inputs, signature_name=signature_name, form=form).encode()
    url = predict_url(server, model_name, version)
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = response.read()
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")
        try:
            reply = json.loads(detail)
        except ValueError:
            reply = None
        if isinstance(reply, dict) and "error" in reply:
            detail = reply["error"]
        raise ServingError(f"{url} answered HTTP {err.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as err:
        raise ConnectionError(f"cannot reach TF-Serving at {url}: {err}") from None
    return parse_rest_response(answer, SIGNATURE_OUTPUTS.get(signature_name), source=f"reply of {url}")


# ------------------------------------------------------------------------ gRPC --------

def _serving_apis():
    try:
        from tensorflow_serving.apis import predict_pb2  # the optional "serving" extra
    except ImportError as err:
        raise ImportError(
            "gRPC requests need tensorflow-serving-api: pip install \"missu-keras[serving]\" "
            f"({err})"
        ) from err
    return predict_pb2


def grpc_request(inputs: Union[Arrays, np.ndarray], model_name: str = "missu",
                 signature_name: str = "serving_default", version: Optional[int] = None):
    """A ``tensorflow_serving.apis.predict_pb2.PredictRequest`` (tensors as raw bytes).

    Arrays are cast to the exported dtypes (``image`` / ``volume`` float32).
    """
    import tensorflow as tf  # gRPC only: the REST client needs no TensorFlow

    predict_pb2 = _serving_apis()
    if not isinstance(inputs, Mapping):
        inputs = {"volume" if signature_name in VOLUME_SIGNATURES else "image": inputs}
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(_as_array(value, name)))
    return request


def parse_grpc_response(response) -> Dict[str, np.ndarray]:
    """``{output name: array}`` from a ``PredictResponse`` (or a ``PredictRequest``'s
    inputs, for checking what is sent)."""
    import tensorflow as tf  # gRPC only: the REST client needs no TensorFlow

    tensors = response.outputs if hasattr(response, "outputs") else response.inputs
    return {name: tf.make_ndarray(proto) for name, proto in tensors.items()}


def grpc_predict(target: str, request, timeout: float = 600.0) -> Dict[str, np.ndarray]:
    """Sends a `grpc_request` to ``target`` (``"host:8500"``) and parses the answer.
    Message size limits are lifted (whole volumes are far above gRPC's 4 MB default)."""
    import grpc  # the optional "serving" extra

    _serving_apis()
    from tensorflow_serving.apis import prediction_service_pb2_grpc  # the optional "serving" extra

    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return parse_grpc_response(stub.Predict(request, timeout=timeout))


# ------------------------------------------------------------------- a whole case -----

def segment_case_rest(case_dir, server: str, out_path, model_name: str = "missu",
                      version: Optional[int] = None, modalities: Optional[Sequence[str]] = None,
                      timeout: float = 600.0, log=print,
                      label_values: Optional[Sequence[int]] = None,
                      metadata: Optional[Mapping] = None):
    """Sends one BraTS case folder to the export over REST and writes the labels as
    NIfTI (uint8) on the case's original grid, with its affine and header.

    Args:
        case_dir: a BraTS case folder (any layout `missu_keras.data.find_brats_cases`
            reads) or a folder holding one such case.
        server: ``host:port`` of the REST API (8501 by default in TF-Serving).
        out_path: the ``.nii.gz`` to write (not overwritten: an existing file is an error).
        modalities: channel order the model was exported with (its
            ``assets/missu_export.json``); default FLAIR, T1ce, T1, T2.
        label_values: the labels the model may return (the export's ``label_map``
            values); default the case layout's convention (0, 1, 2, 4; 3 for 2023).
        metadata: the export's metadata (`missu_keras.export.read_export_metadata`).
            When it lists the ``segment_scan`` signature, the case is reoriented to the
            contract's ``orientation`` here (exact, nibabel), sent with its voxel
            spacing (the graph resamples), and the labels are moved back to the case's
            orientation; otherwise (no metadata, or an export from before issue 15) the
            scan goes as it is to ``segment_volume``.

    The reply is checked before anything is written: labels of the case's shape, every
    value in ``label_values`` (else ``ValueError`` naming the server).

    Returns:
        The labels array ``(H, W, D)``.
    """
    out_path = Path(out_path)
    if out_path.exists():
        raise FileExistsError(f"{out_path} already exists; remove it or choose another --out")
    cases = find_brats_cases(case_dir, modalities=tuple(modalities or BRATS_MODALITIES))
    if len(cases) != 1:
        raise ValueError(
            f"{case_dir}: expected one BraTS case folder, found {len(cases)} cases "
            f"{[c.case_id for c in cases][:5]}"
        )
    case = dataclasses.replace(cases[0], seg_path=None)  # the ground truth is never sent
    loaded = case.load()
    url = predict_url(server, model_name, version)
    signature, inputs, moved = _scan_request(loaded, metadata)
    if log:
        log(f"sending {case.case_id} {tuple(loaded.image.shape)} to {url} ({signature})")
    outputs = rest_predict(server, inputs, model_name=model_name,
                           signature_name=signature, version=version, timeout=timeout)
    allowed = label_values if label_values is not None else \
        get_label_convention(case.label_convention).labels
    grid = moved.array.shape[:3] if moved is not None else loaded.image.shape[:3]
    labels = check_returned_labels(outputs, grid, allowed, url)
    if moved is not None:
        labels = undo_orientation(labels, moved)
    _, affine, reference = read_nifti_header(case.reference_path, channels=True)  # 4-D: Decathlon
    write_nifti(out_path, labels.astype(np.uint8), affine, reference.header)
    if log:
        log(f"wrote {out_path} (labels {sorted(np.unique(labels).tolist())})")
    return labels


def _scan_request(loaded, metadata: Optional[Mapping]):
    """``(signature, inputs, reorientation or None)`` for one loaded case: the
    ``segment_scan`` signature with the volume in the contract's orientation and its
    spacing when the export has it, else ``segment_volume`` with the scan as stored."""
    signatures = (metadata or {}).get("signatures") or {}
    if "segment_scan" not in signatures:
        return "segment_volume", {"volume": loaded.image}, None
    orientation = metadata.get("orientation") or (metadata.get("preprocessing") or {}).get("orientation")
    moved = reorient(loaded.image, loaded.affine, orientation) if orientation else None
    volume, affine = (moved.array, moved.affine) if moved is not None else (loaded.image, loaded.affine)
    spacing = np.asarray(voxel_spacing(affine), np.float32)
    return "segment_scan", {"volume": np.ascontiguousarray(volume), "spacing": spacing}, moved


def check_returned_labels(outputs: Mapping[str, np.ndarray], shape, allowed, source: str) -> np.ndarray:
    """The ``labels`` of a server's reply, checked: present, of the case's ``shape``,
    every value in ``allowed``; else ``ValueError`` naming ``source``."""
    if "labels" not in outputs:
        raise ValueError(f"reply of {source}: expected 'labels', found outputs {sorted(outputs)}")
    labels = np.asarray(outputs["labels"])
    if labels.shape != tuple(shape):
        raise ValueError(f"reply of {source}: expected labels of the case's shape {tuple(shape)}, "
                         f"found shape {labels.shape}")
    allowed = sorted(int(v) for v in allowed)
    found = np.unique(labels)
    bad = [v for v in found.tolist() if v not in allowed]
    if bad:
        raise ValueError(f"reply of {source}: expected labels in {allowed} (the label "
                         f"convention), found {bad[:5]}")
    return labels
