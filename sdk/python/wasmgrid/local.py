"""Run wasmgrid functions in plain Python: in a pytest test or a notebook,
without building a component.

``score(fn, data, config)`` runs a ``@wasmgrid.scorer`` over ``data`` as the
grid runs it over a batch: ``@wasmgrid.init`` first (once per config, as
once per version on the grid), the rows as :class:`wasmgrid.Rows` (a null,
or NaN in a pandas float column, is ``None``), the returned columns checked
as the grid checks them (one value per row, one type per column), and the
answer is the input with the scorer's columns added (a column of the same
name replaced), in the kind of ``data`` given: a pandas ``DataFrame``, a
list of row dicts, or a dict of columns.

``map(fn, data, config, partition)`` runs a ``@wasmgrid.mapper`` over
``data`` (rows as for ``score``, or ``bytes`` / ``str`` for a text
partition) and returns what it emitted: ``Mapped.records`` (each
``emit``-ted record and ``emit_batch``-ed row, as dicts) and
``Mapped.pairs`` (``emit_pairs``, as ``(bytes, bytes)``).

``aggregate(fn, data, config)`` computes a ``@wasmgrid.aggregator``'s
group-by over ``data`` (rows as for ``score``) as the grid does, under SQL
null semantics (a measure skips nulls; null keys are a group), running its
``@wasmgrid.prepare`` function first if it has one; the answer has one row
per group, in the order groups first appear, in the kind of ``data``.

What a function logged is in :func:`logs`.
"""

import json
import math
from dataclasses import dataclass, field

import wasmgrid as _w

__all__ = ["score", "map", "aggregate", "Mapped", "logs"]


def score(fn, data, config=None, artifacts=None):
    """Runs scorer ``fn`` over ``data``; returns ``data`` with its columns.
    ``artifacts`` names the files ``wasmgrid.artifact(name)`` reads, as
    ``--artifact name=PATH`` does on the grid."""
    n, columns, shape = _columns(data)
    _configure(fn, config, artifacts)
    out = _call(fn, _w.Rows(n, {k: list(v) for k, v in columns.items()}))
    merged = dict(columns)
    merged.update(_call(lambda out: _checked(n, out), out))
    return _shaped(n, merged, shape, data)


@dataclass
class Mapped:
    """What a mapper emitted."""

    records: list = field(default_factory=list)
    pairs: list = field(default_factory=list)


def map(fn, data, config=None, partition=0, artifacts=None):  # noqa: A001 - wasmgrid's word for it
    """Runs mapper ``fn`` as partition ``partition`` over ``data``."""
    _configure(fn, config, artifacts)
    out = _Output()
    previous = _w._wit_input, _w._wit_output
    _w._wit_input, _w._wit_output = _Input(data), out
    try:
        _call(fn, partition)
    finally:
        _w._wit_input, _w._wit_output = previous
    return out.mapped


def aggregate(fn, data, config=None):
    """Computes aggregator ``fn``'s group-by over ``data``."""
    n, columns, shape = _columns(data)
    _configure(fn, config)
    spec = _call(lambda _: _w._aggregation(), None)
    prepared = _w._functions.get("prepare")
    if prepared is not None:
        names, prepare_fn = prepared
        missing = [c for c in names if c not in columns]
        if missing:
            raise _w.Err(f"`prepare` asks for column `{missing[0]}`, which the input lacks (columns: {', '.join(columns)})")
        added = _call(prepare_fn, _w.Rows(n, {c: list(columns[c]) for c in names}))
        columns = dict(columns)
        columns.update(_call(lambda out: _checked(n, out), added))
    for name in [*spec.keys, *(m.column for m in spec.measures.values() if m.column), *(
        c.column for m in spec.measures.values() for c in m.where
    )]:
        if name not in columns:
            raise _w.Err(f"aggregating: no column `{name}` to aggregate (columns: {', '.join(columns)})")
    groups = {}
    for i in range(n):
        key = tuple(_group_key(columns[k][i]) for k in spec.keys)
        states = groups.get(key)
        if states is None:
            states = groups[key] = ([columns[k][i] for k in spec.keys], [_State(m.op) for m in spec.measures.values()])
        for state, m in zip(states[1], spec.measures.values()):
            if all(c.holds(columns[c.column][i]) for c in m.where):
                state.add(None if m.column is None else columns[m.column][i], m.column is None)
    out = {k: [] for k in spec.keys}
    out.update({name: [] for name in spec.measures})
    for values, states in groups.values():
        for k, v in zip(spec.keys, values):
            out[k].append(v)
        for name, state in zip(spec.measures, states):
            out[name].append(state.result())
    return _shaped(len(groups), out, shape, data)


def _group_key(v):
    """A key value as the grid groups it: -0.0 is 0.0, every NaN one key."""
    if isinstance(v, float):
        return ("nan",) if v != v else v + 0.0
    return v


class _State:
    """One measure's state for one group."""

    def __init__(self, op):
        self.op, self.n, self.value = op, 0, None

    def add(self, v, row):
        if row:
            self.n += 1
            return
        if v is None:
            return
        if self.op == "count-valid":
            self.n += 1
        elif self.op == "count-true":
            self.n += v is True
        elif self.op in ("sum", "mean"):
            self.n += 1
            self.value = v if self.value is None else self.value + v
        elif self.op == "min":
            self.value = v if self.value is None or v < self.value else self.value
        elif self.op == "max":
            self.value = v if self.value is None or v > self.value else self.value

    def result(self):
        if self.op in ("count", "count-valid", "count-true"):
            return self.n
        if self.op == "mean":
            return None if self.n == 0 else self.value / self.n
        return self.value


def logs():
    """``(level, message)`` of everything logged since the last run."""
    return list(_w._local_logs)


_ran = [None]


def _configure(fn, config, artifacts=None):
    """Sets the config and artifacts a run of ``fn`` sees; runs its module's
    ``@wasmgrid.init`` when the module, the config or the artifacts changed
    (the grid runs it once per version)."""
    config = {str(k): str(v) for k, v in (config or {}).items()}
    artifacts = {str(k): str(v) for k, v in (artifacts or {}).items()}
    _w._local_logs.clear()
    key = (getattr(fn, "__module__", None), sorted(config.items()), sorted(artifacts.items()))
    if _ran[0] == key:
        return
    _w._local_config.clear()
    _w._local_config.update(config)
    _w._local_artifacts.clear()
    _w._local_artifacts.update(artifacts)
    init = _w._functions.get("init")
    if init is not None and init.__module__ == key[0]:
        _call(lambda _: init(), None)
    _w._initialized = True
    _ran[0] = key


def _checked(n, out):
    """A scorer's answer as the grid takes it, or the grid's error."""
    if not isinstance(out, dict):
        raise TypeError(f"a scorer returns a dict of columns, not {type(out).__name__}")
    return _w._to_wit(n, out)


def _call(fn, arg):
    try:
        return fn(arg)
    except _w.Err:
        raise
    except Exception as e:
        raise _w._fail(e) from e


def _columns(data):
    """``(rows, columns, shape)`` of a DataFrame, a list of rows or a dict of columns."""
    if hasattr(data, "to_dict") and hasattr(data, "columns"):
        columns = {str(c): [_value(v) for v in data[c].tolist()] for c in data.columns}
        return len(data), columns, "frame"
    if isinstance(data, dict):
        columns = {k: [_value(v) for v in vs] for k, vs in data.items()}
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise ValueError("the columns given differ in length")
        return (lengths.pop() if lengths else 0), columns, "columns"
    rows = list(data)
    columns = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, [])
    for key, values in columns.items():
        values.extend(_value(row.get(key)) for row in rows)
    return len(rows), columns, "rows"


def _value(v):
    """A value as a function sees it: NaN and pandas' missing values are null."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if type(v).__module__ == "numpy":
        return v.item()
    if type(v).__name__ in ("NAType", "NaTType"):
        return None
    return v


def _shaped(n, columns, shape, data):
    if shape == "frame":
        return type(data)(columns)
    if shape == "columns":
        return columns
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]


class _Input:
    """A mapper's partition: rows, or text cut into chunks at line ends."""

    def __init__(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.text = data if isinstance(data, (bytes, bytearray)) else None
        if self.text is None:
            self.n, self.columns, _ = _columns(data)
        self.at = 0

    def next_bytes(self, max_bytes):
        if self.text is None:
            lines = [json.dumps({k: v[i] for k, v in self.columns.items()}) for i in range(self.n)]
            self.text, self.columns = ("\n".join(lines) + "\n").encode() if lines else b"", None
        if self.at >= len(self.text):
            return None
        end = min(self.at + max(1, max_bytes), len(self.text))
        cut = self.text.rfind(b"\n", self.at, end)
        end = len(self.text) if end == len(self.text) else (cut + 1 if cut >= self.at else end)
        chunk, self.at = bytes(self.text[self.at : end]), end
        return chunk

    def next_batch(self, max_rows):
        if self.text is not None:
            raise ValueError("a text partition has no rows: read it with wasmgrid.chunks()")
        if self.at >= self.n:
            return None
        end = min(self.at + max(1, max_rows), self.n)
        batch = _w.Rows(end - self.at, {k: v[self.at : end] for k, v in self.columns.items()})
        self.at = end
        return batch


class _Output:
    def __init__(self):
        self.mapped = Mapped()

    def emit(self, record):
        try:
            self.mapped.records.append(json.loads(record))
        except ValueError:
            self.mapped.records.append(record.decode(errors="replace"))

    def emit_batch(self, columns):
        n = len(next(iter(columns.values()))) if columns else 0
        self.mapped.records.extend({k: v[i] for k, v in columns.items()} for i in range(n))

    def emit_pairs(self, keys, key_ends, values, value_ends):
        k = v = 0
        for key_end, value_end in zip(key_ends, value_ends):
            self.mapped.pairs.append((keys[k:key_end], values[v:value_end]))
            k, v = key_end, value_end
