"""The example Python functions unit-tested in plain CPython with
`wasmgrid.local`, no component built: run by tests/python.rs with pytest."""

import importlib.util
import json
import math
import os

import pandas as pd
import pytest

import wasmgrid
from wasmgrid import local

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = json.dumps({"features": ["x1", "x2"], "weights": [0.8, -1.25], "bias": 0.3})


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


logreg = load("logreg_app", "guest-examples/python-logreg/app.py")
wordcount = load("wordcount_map", "guest-examples/python-wordcount/map.py")


def test_a_scorer_scores_a_dataframe_and_keeps_its_columns():
    df = pd.DataFrame({"id": [1, 2, 3], "x1": [0.5, -1.0, 2.0], "x2": [1.0, 0.0, -0.5]})
    out = local.score(logreg.score, df, {"model": MODEL})
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["id", "x1", "x2", "score"]
    for row in out.itertuples():
        z = 0.3 + 0.8 * row.x1 - 1.25 * row.x2
        assert row.score == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-15)


def test_a_model_read_from_an_artifact_scores_as_from_config(tmp_path):
    df = pd.DataFrame({"id": [1, 2], "x1": [0.5, -1.0], "x2": [1.0, 0.0]})
    path = tmp_path / "model.json"
    path.write_text(MODEL)
    assert wasmgrid.artifact_size("model") is None
    out = local.score(logreg.score, df, artifacts={"model": str(path)})
    assert wasmgrid.artifact_size("model") == len(MODEL)
    assert wasmgrid.artifact("model") == MODEL.encode()
    assert list(out["score"]) == list(local.score(logreg.score, df, {"model": MODEL})["score"])
    with pytest.raises(ValueError, match="artifact `other` is not set"):
        wasmgrid.artifact("other")


def test_rows_in_rows_out():
    out = local.score(logreg.score, [{"x1": 0.0, "x2": 0.0}], {"model": MODEL})
    assert out == [{"x1": 0.0, "x2": 0.0, "score": pytest.approx(1 / (1 + math.exp(-0.3)))}]


def test_a_missing_value_is_null_and_fails_as_on_the_grid():
    df = pd.DataFrame({"x1": [0.5, None], "x2": [1.0, 2.0]})
    with pytest.raises(wasmgrid.Err, match="column `x1` has a null at row 1"):
        local.score(logreg.score, df, {"model": MODEL})


def test_a_missing_column_is_named_in_the_error_without_quotes():
    model = json.dumps({"features": ["x9"], "weights": [1], "bias": 0})
    with pytest.raises(wasmgrid.Err) as error:
        local.score(logreg.score, pd.DataFrame({"x1": [1.0], "x2": [2.0]}), {"model": model})
    assert str(error.value) == "no column `x9` (columns: x1, x2)"


def test_a_bad_model_fails_in_init_with_its_message():
    with pytest.raises(wasmgrid.Err, match="model has 2 features but 1 weights"):
        bad = json.dumps({"features": ["x1", "x2"], "weights": [1], "bias": 0})
        local.score(logreg.score, pd.DataFrame({"x1": [1.0], "x2": [1.0]}), {"model": bad})


def test_returned_columns_are_checked_as_the_grid_checks_them():
    def short(rows):
        return {"y": [1.0]}

    def mixed(rows):
        return {"y": [1, "one"]}

    with pytest.raises(wasmgrid.Err, match="column `y` has 1 values for 2 rows"):
        local.score(short, [{"x": 1}, {"x": 2}])
    with pytest.raises(wasmgrid.Err, match="column `y` mixes types"):
        local.score(mixed, [{"x": 1}, {"x": 2}])


def test_a_mapper_emits_its_pairs():
    mapped = local.map(wordcount.run, "the cat\nthe dog\n")
    counts = {k.decode(): int.from_bytes(v, "little") for k, v in mapped.pairs}
    assert counts == {"the": 2, "cat": 1, "dog": 1}


def test_plain_accessors_refuse_a_null_naming_its_row_and_rows_gives_none():
    rows = wasmgrid.Rows(3, {"x": [1.5, None, 2.0], "n": [1, 2, None], "s": ["a", "", None], "b": [True, None, False]})
    assert rows["x"] == [1.5, None, 2.0]
    assert rows["s"] == ["a", "", None]
    assert rows.null_count("x") == 1
    for read, column, row in [(rows.floats, "x", 1), (rows.ints, "n", 2), (rows.strs, "s", 2), (rows.bools, "b", 1)]:
        with pytest.raises(ValueError, match=f"column `{column}` has a null at row {row}; read it with rows\\[\"{column}\"\\]"):
            read(column)


def test_plain_accessors_give_columns_without_nulls_and_name_a_wrong_kind():
    rows = wasmgrid.Rows(2, {"n": [1, 2], "x": [0.5, 1.0], "s": ["a", "b"], "b": [True, False]})
    assert rows.ints("n") == [1, 2]
    assert rows.floats("n") == [1.0, 2.0]
    assert rows.strs("s") == ["a", "b"]
    assert rows.bools("b") == [True, False]
    with pytest.raises(ValueError, match="column `x` holds floats, not integers"):
        rows.ints("x")
    with pytest.raises(ValueError, match="column `b` holds booleans, not integers"):
        rows.ints("b")
    with pytest.raises(ValueError, match="column `s` holds strings, not numbers"):
        rows.floats("s")


flights = load("flights_app", "guest-examples/python-flights/flights.py")


def test_an_aggregator_gives_what_pandas_gives_with_nulls_in_keys_and_values():
    df = pd.DataFrame({
        "carrier": ["UA", None, "AA", "UA", None, "AA", "UA", "B6"],
        "dep_delay": [20.0, 3.0, None, 15.0, None, -4.0, None, None],
        "distance": [300, 50, 700, 120, 80, 900, 10, 400],
    })
    out = local.aggregate(flights.flights, df)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["carrier", "flights", "with_delay", "mean_delay", "delayed_15", "longest"]
    # pandas: null keys as a group (dropna=False), nulls skipped.
    g = df.assign(late=df["dep_delay"] >= 15).groupby("carrier", dropna=False, sort=False)
    want = g.agg(flights=("distance", "size"), with_delay=("dep_delay", "count"), mean_delay=("dep_delay", "mean"),
                 delayed_15=("late", "sum"), longest=("distance", "max")).reset_index()
    got = out.sort_values("carrier", na_position="last").reset_index(drop=True)
    want = want.sort_values("carrier", na_position="last").reset_index(drop=True)
    assert got["carrier"].tolist()[:3] == want["carrier"].tolist()[:3] and pd.isna(got["carrier"].iloc[3])
    for name in ["flights", "with_delay", "delayed_15", "longest"]:
        assert got[name].tolist() == want[name].astype(int).tolist(), name
    # B6 has no delay: a null mean, as pandas' NaN.
    assert got["mean_delay"].isna().tolist() == want["mean_delay"].isna().tolist()
    assert got["mean_delay"].fillna(0).tolist() == pytest.approx(want["mean_delay"].fillna(0).tolist(), abs=1e-12)


def test_an_aggregators_missing_column_is_the_grids_error():
    with pytest.raises(wasmgrid.Err, match="no column `carrier` to aggregate"):
        local.aggregate(flights.flights, [{"dep_delay": 1.0, "distance": 3}])
