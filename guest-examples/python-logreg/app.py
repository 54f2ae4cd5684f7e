"""Logistic regression in Python: adds column `score` = sigmoid(w . x + b).

The model is the same JSON object as the Rust `logreg` example's:
{"features": ["col", ...], "weights": [..], "bias": b}, from the version's
artifact `model` (`--artifact model=model.json`: any size) or else config
key `model` (up to 64 KiB). It is parsed once per function version, in
`init`.
Build: wasmgrid build guest-examples/python-logreg/app.py -o python_logreg.wasm
"""

import json
import math

import wasmgrid


def load(text):
    try:
        model = json.loads(text)
        features, weights, bias = model["features"], model["weights"], float(model["bias"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"config `model` is not a valid model: {e}") from None
    if len(features) != len(weights):
        raise ValueError(f"model has {len(features)} features but {len(weights)} weights")
    return features, [float(w) for w in weights], bias


MODEL = None


@wasmgrid.init
def init():
    global MODEL
    if wasmgrid.artifact_size("model") is not None:
        MODEL = load(wasmgrid.artifact("model").decode())
    else:
        MODEL = load(wasmgrid.require("model"))


@wasmgrid.scorer
def score(rows):
    features, weights, bias = MODEL
    z = [bias] * len(rows)
    for name, w in zip(features, weights):
        z = [zi + w * x for zi, x in zip(z, rows.floats(name))]
    return {"score": [1.0 / (1.0 + math.exp(-v)) for v in z]}
