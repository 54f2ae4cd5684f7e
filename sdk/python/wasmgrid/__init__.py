"""Write wasmgrid functions in Python.

A function is one decorated Python function in a module:

- ``@wasmgrid.scorer``: ``f(rows: Rows) -> dict[str, list]`` returns the
  columns to add to a batch of rows (per request, and per batch of every
  data partition in a job);
- ``@wasmgrid.mapper``: ``f(partition: int) -> None`` reads its partition
  with :func:`chunks` or :func:`batches` and writes with :func:`emit`,
  :func:`emit_batch` or :func:`emit_pairs`;
- ``@wasmgrid.reducer``: ``f(key: bytes, values: list[bytes]) -> dict``
  folds every value emitted for one key into an output record;
- ``@wasmgrid.aggregator``: ``f() -> GroupBy`` says what a job's group-by
  computes (:func:`group_by`); the grid reads the input, folds it and
  merges the tasks' groups itself, so the one function is the whole job.

An optional ``@wasmgrid.init`` function ``f() -> None`` runs once per
function version, before any call: parse the model there.

``wasmgrid build app.py`` turns the module into a component for the
matching world of the WIT package ``wasmgrid:function`` (with
componentize-py). An exception in the function becomes the call's error,
with its message, as a Rust guest's ``Err`` does.
"""

import builtins as _builtins
import os as _os
import json
import math
import re

# The generated bindings, imported now: componentize-py snapshots the
# interpreter after importing the app, and a component has no files to
# import more from later. `input` and `output` exist only in mappers,
# `types` not in reducers. In plain CPython (a test, a notebook) there are
# none: `wasmgrid.local` runs functions there, with the same checks.
try:
    from componentize_py_types import Err
    from wit_world.imports import config as _wit_config
    from wit_world.imports import log as _wit_log

    IN_COMPONENT = True
except ImportError:
    IN_COMPONENT = False
    _wit_config = _wit_log = None

    class Err(Exception):
        """A function's error, as a call on the grid returns it."""

        def __init__(self, value):
            super().__init__(value)
            self.value = value

try:
    from wit_world.imports import types as _types
except ImportError:
    _types = None
try:
    from wit_world.imports import input as _wit_input
    from wit_world.imports import output as _wit_output
except ImportError:
    _wit_input = _wit_output = None
try:
    from wit_world.imports import aggregate as _wit_aggregate
except ImportError:
    _wit_aggregate = None
try:
    from wit_world.imports import artifacts as _wit_artifacts
except ImportError:
    _wit_artifacts = None

# Outside a component: the config `wasmgrid.local` runs a function with,
# and what it logged.
_local_config = {}
_local_logs = []
# ... and the files it names as artifacts.
_local_artifacts = {}

__all__ = [
    "Rows", "scorer", "mapper", "reducer", "aggregator", "prepare", "init", "config", "require", "log",
    "artifact", "artifact_size",
    "chunks", "batches", "emit", "emit_batch", "emit_pairs", "words",
    "group_by", "GroupBy", "Measure", "Condition", "col", "count", "count_true", "mean",
]
# `sum`, `min` and `max` are measures too, used as `wasmgrid.sum(...)`: not
# exported by `import *`, where they would hide the builtins.

_functions = {}


def scorer(fn):
    """Registers ``fn(rows: Rows) -> dict[str, list]`` as the scorer."""
    _functions["scorer"] = fn
    return fn


def mapper(fn):
    """Registers ``fn(partition: int) -> None`` as the mapper."""
    _functions["mapper"] = fn
    return fn


def reducer(fn):
    """Registers ``fn(key: bytes, values: list[bytes]) -> dict | bytes`` as the reducer."""
    _functions["reducer"] = fn
    return fn


def aggregator(fn):
    """Registers ``fn() -> GroupBy`` (see :func:`group_by`) as the aggregator."""
    _functions["aggregator"] = fn
    return fn


def prepare(columns):
    """Registers ``fn(rows: Rows) -> dict[str, list]`` to run on every batch
    of an aggregator's input, given only ``columns``, before the batch is
    folded: the columns it returns (as a scorer's) can be grouped by and
    measured like input columns::

        @wasmgrid.prepare(["dep_time"])
        def hour(rows):
            return {"hour": [None if t is None else t // 100 for t in rows["dep_time"]]}
    """
    def register(fn):
        _functions["prepare"] = (list(columns), fn)
        return fn

    return register


def init(fn):
    """Registers ``fn() -> None`` to run once per function version, before
    any call, with the version's config: parse a model into a module-level
    variable there. The grid snapshots the interpreter's memory after it, so
    every call starts with its work done. An exception fails the deploy."""
    _functions["init"] = fn
    return fn


_initialized = False


def _run_init():
    """Runs the ``@wasmgrid.init`` function unless it already ran in this
    memory image (a grid that does not call ``init`` gets it run at the first
    call)."""
    global _initialized
    if _initialized:
        return
    fn = _functions.get("init")
    if fn is not None:
        try:
            fn()
        except Exception as e:
            raise _fail(e)
    _initialized = True


class Rows:
    """A batch of rows in columnar form: ``rows["x"]`` is column ``x`` as a
    list (``None`` where a value is null), ``len(rows)`` the row count.
    ``floats``, ``ints``, ``strs`` and ``bools`` give a column without
    nulls, and refuse one with a null, naming its row: a null is never
    read as 0, NaN or ""."""

    def __init__(self, n, columns):
        self.n = n
        self.columns = columns

    def __len__(self):
        return self.n

    def __getitem__(self, name):
        try:
            return self.columns[name]
        except KeyError:
            raise KeyError(f"no column `{name}` (columns: {', '.join(self.columns)})") from None

    def __contains__(self, name):
        return name in self.columns

    def floats(self, name):
        """Column ``name`` as floats (ints and bools converted). A null is an
        error naming the column and its row; ``rows[name]`` gives ``None``
        for a null where nulls may be."""
        values = self._present(name)
        if values and isinstance(values[0], str):
            raise ValueError(f"column `{name}` holds strings, not numbers")
        return [float(v) for v in values]

    def ints(self, name):
        """Column ``name`` as ints; a null is an error, as for :meth:`floats`."""
        return self._of_kind(name, int, "integers")

    def strs(self, name):
        """Column ``name`` as strings; a null is an error, as for :meth:`floats`."""
        return self._of_kind(name, str, "strings")

    def bools(self, name):
        """Column ``name`` as bools; a null is an error, as for :meth:`floats`."""
        return self._of_kind(name, bool, "booleans")

    def null_count(self, name):
        """How many values of column ``name`` are null."""
        # `sum` in this module is the measure.
        return _builtins.sum(v is None for v in self[name])

    def _present(self, name):
        values = self[name]
        for row, v in enumerate(values):
            if v is None:
                raise ValueError(f"column `{name}` has a null at row {row}; read it with rows[\"{name}\"]")
        return values

    def _of_kind(self, name, kind, what):
        values = self._present(name)
        for v in values:
            if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
                raise ValueError(f"column `{name}` holds {_kind_name(v)}, not {what}")
        return values


def _kind_name(value):
    if isinstance(value, bool):
        return "booleans"
    if isinstance(value, int):
        return "integers"
    if isinstance(value, float):
        return "floats"
    return "strings"


def _from_wit(batch):
    columns = {}
    for field in batch.fields:
        values = list(field.values.value)
        if field.valid is not None:
            values = [v if ok else None for v, ok in zip(values, field.valid)]
        columns[field.name] = values
    return Rows(batch.rows, columns)


def _column(name, values, n):
    """Column ``name`` checked as the grid takes it: its kind (``bool``,
    ``int``, ``float`` or ``str``), its values (ints in a float column as
    floats) and, when it has nulls, which values are present."""
    values = list(values)
    if len(values) != n:
        raise ValueError(f"column `{name}` has {len(values)} values for {n} rows")
    present = [v for v in values if v is not None]
    valid = None if len(present) == n else [v is not None for v in values]
    if all(isinstance(v, bool) for v in present):
        kind = "bool"
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        kind = "int"
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        kind = "float"
        values = [float(v) if v is not None else None for v in values]
    elif all(isinstance(v, str) for v in present):
        kind = "str"
    else:
        raise ValueError(f"column `{name}` mixes types: a column holds bools, ints, floats or strings")
    return kind, values, valid


def _to_wit(n, columns):
    """Columns as a WIT batch; outside a component, the checked columns."""
    checked = {name: _column(name, values, n) for name, values in columns.items()}
    if _types is None:
        return {name: values for name, (_, values, _) in checked.items()}
    types = _types
    kinds = {
        "bool": (types.Column_Boolean, False),
        "int": (types.Column_S64, 0),
        "float": (types.Column_F64, 0.0),
        "str": (types.Column_Str, ""),
    }
    fields = []
    for name, (kind, values, valid) in checked.items():
        column, fill = kinds[kind]
        if valid is not None:
            values = [fill if v is None else v for v in values]
        fields.append(types.Field(name=name, values=column(values), valid=valid))
    return types.Batch(rows=n, fields=fields)


def config(key, default=None):
    """The function's config value for ``key`` (``--config key=value``)."""
    value = _wit_config.get(key) if IN_COMPONENT else _local_config.get(key)
    return default if value is None else value


def artifact_size(name):
    """The size in bytes of the version's artifact ``name``
    (``--artifact name=PATH``), or ``None`` when it has none."""
    if not IN_COMPONENT:
        path = _local_artifacts.get(name)
        return None if path is None else _os.path.getsize(path)
    if _wit_artifacts is None:
        raise RuntimeError("this component's world has no artifacts (rebuild it with `wasmgrid build`)")
    return _wit_artifacts.size(name)


def artifact(name):
    """The bytes of the version's artifact ``name`` (a model, a lookup
    table): read in 16 MiB parts, best once, in ``@wasmgrid.init``."""
    size = artifact_size(name)
    if size is None:
        raise ValueError(f"artifact `{name}` is not set (deploy with --artifact {name}=PATH)")
    if not IN_COMPONENT:
        with open(_local_artifacts[name], "rb") as f:
            return f.read()
    parts, offset = [], 0
    while offset < size:
        part = _wit_artifacts.read(name, offset, _builtins.min(size - offset, 16 << 20))
        if not part:
            break
        parts.append(bytes(part))
        offset += len(part)
    return b"".join(parts)


def require(key):
    """The config value for ``key``, or an error naming it."""
    value = config(key)
    if value is None:
        raise ValueError(f"config `{key}` is not set")
    return value


class _Log:
    """``log.info("...")`` and friends: kept per invocation, shown to the owner."""

    def _log(self, level, message):
        if not IN_COMPONENT:
            _local_logs.append((level, str(message)))
            return
        _wit_log.log(getattr(_wit_log.Level, level), str(message))

    def debug(self, message):
        self._log("DEBUG", message)

    def info(self, message):
        self._log("INFO", message)

    def warn(self, message):
        self._log("WARN", message)

    def error(self, message):
        self._log("ERROR", message)


log = _Log()


def chunks(max_bytes=1 << 20):
    """The partition's raw records in chunks cut at line boundaries."""
    while True:
        chunk = _mapper_io(_wit_input).next_bytes(max_bytes)
        if chunk is None:
            return
        yield chunk


def batches(max_rows=4096):
    """The partition's rows as :class:`Rows`, ``max_rows`` at a time."""
    while True:
        batch = _mapper_io(_wit_input).next_batch(max_rows)
        if batch is None:
            return
        yield batch if isinstance(batch, Rows) else _from_wit(batch)


def emit(record):
    """Writes one output record (a dict, as a JSON object)."""
    _mapper_io(_wit_output).emit(_record(record))


def emit_batch(n, columns):
    """Writes ``n`` output rows given as columns (``{"name": [...]}``)."""
    _mapper_io(_wit_output).emit_batch(_to_wit(n, columns))


def emit_pairs(pairs):
    """Emits ``(key, value)`` byte pairs for the reducer, all in one host call."""
    out = _mapper_io(_wit_output)
    keys, values, key_ends, value_ends = bytearray(), bytearray(), [], []
    for key, value in pairs:
        keys += key
        values += value
        key_ends.append(len(keys))
        value_ends.append(len(values))
    if key_ends:
        out.emit_pairs(bytes(keys), key_ends, bytes(values), value_ends)


# Aggregations: what an @wasmgrid.aggregator returns.

_COMPARISONS = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


class Condition:
    """``column comparison value``, made by comparing :func:`col`: false
    where the column is null, as in SQL. Join with ``&``."""

    def __init__(self, column, comparison, value):
        if not isinstance(value, (bool, int, float, str)):
            raise TypeError(f"`{column}` is compared with {value!r}: compare with a number, a string or a bool")
        self.column, self.comparison, self.value = column, comparison, value

    def __and__(self, other):
        return _All(self) & other

    def __bool__(self):
        raise TypeError("a condition is evaluated by the grid; join conditions with `&`, not `and`")

    def __repr__(self):
        return f"col({self.column!r}) {_COMPARISONS[self.comparison]} {self.value!r}"

    def holds(self, value):
        """Whether the condition holds for a column value (``None`` never does)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        ops = {
            "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
            "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
        }
        return ops[self.comparison](value, self.value)


class _All(list):
    """Conditions that must all hold."""

    def __init__(self, *conditions):
        super().__init__(conditions)

    def __and__(self, other):
        return _All(*self, *(other if isinstance(other, list) else [other]))


class col:  # noqa: N801 - reads as the expression it builds
    """A column to compare: ``col("dep_delay") >= 15``."""

    def __init__(self, name):
        self.name = name

    def __eq__(self, v):
        return Condition(self.name, "eq", v)

    def __ne__(self, v):
        return Condition(self.name, "ne", v)

    def __lt__(self, v):
        return Condition(self.name, "lt", v)

    def __le__(self, v):
        return Condition(self.name, "le", v)

    def __gt__(self, v):
        return Condition(self.name, "gt", v)

    def __ge__(self, v):
        return Condition(self.name, "ge", v)

    __hash__ = None


class Measure:
    """One output column of a :func:`group_by`: ``op`` over ``column``, over
    the rows for which ``where`` holds."""

    def __init__(self, op, column=None, where=None):
        if op != "count" and column is None:
            raise ValueError(f"{op} needs a column")
        self.op, self.column = op, column
        self.where = [] if where is None else list(where) if isinstance(where, list) else [where]
        for c in self.where:
            if not isinstance(c, Condition):
                raise TypeError(f"`where` takes conditions such as col(\"x\") >= 1, not {c!r}")


def count(column=None, where=None):
    """The group's rows; with ``column``, those where it is not null; with
    ``where``, those for which the condition holds (a count-if)."""
    return Measure("count-valid" if column is not None else "count", column, where)


def count_true(column, where=None):
    """The group's rows where the boolean ``column`` is true."""
    return Measure("count-true", column, where)


def sum(column, where=None):  # noqa: A001 - the measure's name
    """The sum of ``column`` (integers stay integers)."""
    return Measure("sum", column, where)


def mean(column, where=None):
    """The mean of ``column``, a float."""
    return Measure("mean", column, where)


def min(column, where=None):  # noqa: A001 - the measure's name
    """The smallest value of ``column``."""
    return Measure("min", column, where)


def max(column, where=None):  # noqa: A001 - the measure's name
    """The largest value of ``column``."""
    return Measure("max", column, where)


class GroupBy:
    """Key columns and named measures, in order: what an aggregator computes."""

    def __init__(self, keys, measures):
        self.keys = list(keys)
        self.measures = dict(measures)
        for name, m in self.measures.items():
            if not isinstance(m, Measure):
                raise TypeError(f"measure `{name}` is {m!r}; use wasmgrid.count(), sum(), mean(), min() or max()")


def group_by(*keys, **measures):
    """Groups rows by the values of ``keys`` (none: one group of every row)
    and computes each named measure per group, under SQL null semantics::

        wasmgrid.group_by("carrier", flights=wasmgrid.count(), late=wasmgrid.count(where=wasmgrid.col("delay") >= 15))
    """
    return GroupBy(keys, measures)


def _spec_to_wit(spec, prepare_columns):
    a = _wit_aggregate

    def literal(v):
        if isinstance(v, bool):
            return a.Literal_Boolean(v)
        if isinstance(v, int):
            return a.Literal_S64(v)
        if isinstance(v, float):
            return a.Literal_F64(v)
        return a.Literal_Str(v)

    ops = {
        "count": a.Op.COUNT, "count-valid": a.Op.COUNT_VALID, "count-true": a.Op.COUNT_TRUE, "sum": a.Op.SUM,
        "mean": a.Op.MEAN, "min": a.Op.MIN, "max": a.Op.MAX,
    }
    measures = [
        a.Measure(
            name=name,
            op=ops[m.op],
            column=m.column,
            filter=[
                a.Condition(column=c.column, comparison=getattr(a.Comparison, c.comparison.upper()), value=literal(c.value))
                for c in m.where
            ],
        )
        for name, m in spec.measures.items()
    ]
    return a.Spec(keys=spec.keys, measures=measures, prepare=prepare_columns)


def _aggregation():
    """The registered aggregator's :class:`GroupBy`, checked."""
    spec = _functions["aggregator"]()
    if not isinstance(spec, GroupBy):
        raise TypeError(f"an aggregator returns wasmgrid.group_by(...), not {type(spec).__name__}")
    return spec


_SPACE = re.compile(rb"[ \t\n\r\x0c]+")


def words(chunk):
    """The words of ``chunk`` (bytes), split on ASCII whitespace as the Rust
    word count splits them (space, tab, newline, carriage return, form feed)."""
    return [w for w in _SPACE.split(chunk) if w]


def _record(record):
    if isinstance(record, (bytes, bytearray)):
        return bytes(record)
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


def _mapper_io(module):
    if module is None:
        raise RuntimeError("reading input and writing output is for mappers (@wasmgrid.mapper)")
    return module


def _fail(e):
    if isinstance(e, Err):
        return e
    # str() of a KeyError quotes its message (`'no column ...'`).
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        message = e.args[0]
    else:
        message = str(e) or type(e).__name__
    return Err(message)


def _world(kind):
    """The ``WitWorld`` class componentize-py exports for the registered function."""
    fn = _functions.get(kind)
    if fn is None:
        raise RuntimeError(f"no @wasmgrid.{kind} function was registered")
    import wit_world

    class Base(wit_world.WitWorld):
        def init(self):
            _run_init()

    if kind == "scorer":

        class WitWorld(Base):
            def score(self, rows):
                try:
                    _run_init()
                    out = fn(_from_wit(rows))
                    return _to_wit(rows.rows, out)
                except Exception as e:
                    raise _fail(e)

    elif kind == "mapper":

        class WitWorld(Base):
            def run(self, partition):
                try:
                    _run_init()
                    fn(partition)
                except Exception as e:
                    raise _fail(e)

    elif kind == "aggregator":
        prepared = _functions.get("prepare")

        class WitWorld(Base):
            def aggregation(self):
                try:
                    _run_init()
                    return _spec_to_wit(_aggregation(), prepared[0] if prepared else None)
                except Exception as e:
                    raise _fail(e)

            def prepare(self, rows):
                try:
                    _run_init()
                    if prepared is None:
                        return _to_wit(rows.rows, {})
                    return _to_wit(rows.rows, prepared[1](_from_wit(rows)))
                except Exception as e:
                    raise _fail(e)

    else:

        class WitWorld(Base):
            def reduce(self, key, values):
                try:
                    _run_init()
                    return _record(fn(key, values))
                except Exception as e:
                    raise _fail(e)

    return WitWorld
