"""REST and gRPC request / response bodies round-trip to the same arrays."""

import json
import urllib.request

import numpy as np
import pytest

from missu_keras import serving


def arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "patch": rng.standard_normal((2, 4, 3, 2, 4)).astype("float32"),   # non-integer floats
        "scan": rng.integers(0, 3000, (5, 4, 3, 4)).astype("float32"),      # a raw integer scan
        "labels": rng.choice([0, 1, 2, 4], (2, 4, 3, 2)).astype("int32"),
    }


def test_rest_inputs_form_round_trips_exactly():
    a = arrays()
    body = serving.rest_request({"image": a["patch"]}, signature_name="serving_default")
    decoded = serving.decode_rest_request(body)
    assert decoded["image"].dtype == np.float32
    np.testing.assert_array_equal(decoded["image"], a["patch"])  # bit-exact float32
    assert json.loads(body)["signature_name"] == "serving_default"

    body = serving.rest_request({"volume": a["scan"]}, signature_name="segment_volume")
    assert ".0" not in body  # integer-valued scans travel as JSON integers
    np.testing.assert_array_equal(serving.decode_rest_request(body)["volume"], a["scan"])


def test_rest_instances_form_round_trips():
    a = arrays()
    body = serving.rest_request(a["patch"], form="instances")
    parsed = json.loads(body)
    assert "signature_name" not in parsed and len(parsed["instances"]) == 2
    assert set(parsed["instances"][0]) == {"image"}
    np.testing.assert_array_equal(serving.decode_rest_request(body)["image"], a["patch"])
    with pytest.raises(ValueError, match="batch axis"):
        serving.rest_request({"image": a["patch"], "volume": a["scan"]}, form="instances")
    with pytest.raises(ValueError, match="form must be one of"):
        serving.rest_request(a["patch"], form="rows")
    with pytest.raises(ValueError, match="NaN"):
        serving.rest_request(np.array([np.nan], "float32"))


def test_rest_responses_in_every_form():
    a = arrays()
    probs, labels = a["patch"], a["labels"]
    columnar = json.dumps({"outputs": {"probabilities": probs.tolist(), "labels": labels.tolist()}})
    out = serving.parse_rest_response(columnar)
    np.testing.assert_array_equal(out["probabilities"], probs)
    assert out["probabilities"].dtype == np.float32 and out["labels"].dtype == np.int32
    np.testing.assert_array_equal(out["labels"], labels)

    rows = json.dumps({"predictions": [{"probabilities": p.tolist(), "labels": l.tolist()}
                                       for p, l in zip(probs, labels)]})
    out = serving.parse_rest_response(rows)
    np.testing.assert_array_equal(out["probabilities"], probs)
    np.testing.assert_array_equal(out["labels"], labels)

    # One output (segment_volume): TF-Serving drops its name.
    single = json.dumps({"outputs": labels[0].tolist()}).encode()
    out = serving.parse_rest_response(single, serving.SIGNATURE_OUTPUTS["segment_volume"])
    assert list(out) == ["labels"] and out["labels"].dtype == np.int32
    np.testing.assert_array_equal(out["labels"], labels[0])
    out = serving.parse_rest_response({"predictions": labels.tolist()}, ["labels"])
    np.testing.assert_array_equal(out["labels"], labels)

    with pytest.raises(RuntimeError, match="must have 4 channels"):
        serving.parse_rest_response('{"error": "volume must have 4 channels"}')
    with pytest.raises(ValueError, match="'outputs', 'predictions' or 'error'"):
        serving.parse_rest_response("{}")


def test_predict_url():
    assert serving.predict_url("localhost:8501") == "http://localhost:8501/v1/models/missu:predict"
    assert (serving.predict_url("https://host/", "brats", 2)
            == "https://host/v1/models/brats/versions/2:predict")


def test_rest_predict_sends_and_parses(monkeypatch):
    a = arrays()
    seen = {}

    class Answer:
        def __init__(self, data):
            self.data = data

        def read(self):
            return self.data

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def fake_urlopen(request, timeout):
        seen["url"], seen["timeout"] = request.full_url, timeout
        seen["body"] = json.loads(request.data)
        return Answer(json.dumps({"outputs": a["labels"][0].tolist()}).encode())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    out = serving.rest_predict("h:1", a["scan"], signature_name="segment_volume", version=4,
                               timeout=9)
    assert seen["url"] == "http://h:1/v1/models/missu/versions/4:predict" and seen["timeout"] == 9
    assert seen["body"]["signature_name"] == "segment_volume"
    np.testing.assert_array_equal(np.asarray(seen["body"]["inputs"]["volume"], "float32"), a["scan"])
    np.testing.assert_array_equal(out["labels"], a["labels"][0])


def test_grpc_request_and_response_round_trip():
    pytest.importorskip("tensorflow_serving.apis.predict_pb2",
                        reason="tensorflow-serving-api is not installed (extra 'serving')")
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    a = arrays()
    request = serving.grpc_request({"image": a["patch"]}, model_name="missu", version=3)
    assert isinstance(request, predict_pb2.PredictRequest)
    assert request.model_spec.name == "missu" and request.model_spec.version.value == 3
    assert request.model_spec.signature_name == "serving_default"
    assert request.inputs["image"].tensor_content  # raw bytes, not a list of floats
    sent = serving.parse_grpc_response(request)
    np.testing.assert_array_equal(sent["image"], a["patch"])
    assert sent["image"].dtype == np.float32

    volume = serving.grpc_request(a["scan"].astype("int16"), signature_name="segment_volume")
    received = serving.parse_grpc_response(volume)
    assert list(received) == ["volume"] and received["volume"].dtype == np.float32
    np.testing.assert_array_equal(received["volume"], a["scan"])
    # Serialised and parsed again, as the server does.
    again = predict_pb2.PredictRequest.FromString(volume.SerializeToString())
    np.testing.assert_array_equal(serving.parse_grpc_response(again)["volume"], a["scan"])

    response = predict_pb2.PredictResponse()
    response.outputs["probabilities"].CopyFrom(tf.make_tensor_proto(a["patch"]))
    response.outputs["labels"].CopyFrom(tf.make_tensor_proto(a["labels"]))
    out = serving.parse_grpc_response(predict_pb2.PredictResponse.FromString(
        response.SerializeToString()))
    np.testing.assert_array_equal(out["probabilities"], a["patch"])
    np.testing.assert_array_equal(out["labels"], a["labels"])
    assert out["labels"].dtype == np.int32


def test_grpc_without_the_serving_api_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorflow_serving", None)
    monkeypatch.setitem(sys.modules, "tensorflow_serving.apis", None)
    with pytest.raises(ImportError, match=r"missu-keras\[serving\]"):
        serving.grpc_request(np.zeros((1, 2, 2, 2, 4), "float32"))
