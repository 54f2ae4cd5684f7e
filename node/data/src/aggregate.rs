//! Aggregations the host computes: rows grouped by key columns, measures
//! folded into a partial state per group, partial states of many tasks
//! merged, and the final rows.
//!
//! SQL null semantics: a measure skips null values (a group without one
//! has a null sum, mean, min and max, and a zero count), and null keys form
//! a group of their own. Partial states are typed Arrow columns
//! ([`Groups::partial`]), so they travel between tasks as any batch does
//! and merge column by column ([`Groups::merge`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_buffer::{BooleanBuffer, NullBuffer};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

/// What a measure computes over a group's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Rows (no column).
    Count,
    /// Rows whose value is not null.
    CountValid,
    /// Rows whose boolean value is true.
    CountTrue,
    /// Sum of the values: integers as integers, floats as floats.
    Sum,
    /// Mean of the values, as a float.
    Mean,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
}

/// One output column: `op` over `column` (none for [`Op::Count`]), over
/// the rows that pass `filter`.
#[derive(Debug, Clone, PartialEq)]
pub struct Measure {
    /// The output column's name.
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// The input column.
    pub column: Option<String>,
    /// Only rows for which every condition holds count (SQL's `FILTER
    /// (WHERE ...)`); none: every row.
    pub filter: Vec<Condition>,
}

impl Measure {
    /// `op` over `column`, every row.
    pub fn new(name: &str, op: Op, column: Option<&str>) -> Measure {
        Measure { name: name.into(), op, column: column.map(Into::into), filter: Vec::new() }
    }

    /// The same over the rows for which `condition` (and any earlier one) holds.
    pub fn filter(mut self, condition: Condition) -> Measure {
        self.filter.push(condition);
        self
    }
}

/// How a condition compares a column's value with its literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Comparison {
    fn holds(self, order: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Comparison::Eq => order == Equal,
            Comparison::Ne => order != Equal,
            Comparison::Lt => order == Less,
            Comparison::Le => order != Greater,
            Comparison::Gt => order == Greater,
            Comparison::Ge => order != Less,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Comparison::Eq => "==",
            Comparison::Ne => "!=",
            Comparison::Lt => "<",
            Comparison::Le => "<=",
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
        }
    }
}

/// A value a condition compares a column with.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Float(f64),
    Int(i64),
    Str(String),
    Bool(bool),
}

/// `column comparison value`: false where the column is null (or, for
/// floats, NaN), as in SQL.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub column: String,
    pub comparison: Comparison,
    pub value: Literal,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ", self.column, self.comparison.symbol())?;
        match &self.value {
            Literal::Float(v) => write!(f, "{v:?}"),
            Literal::Int(v) => write!(f, "{v}"),
            Literal::Str(v) => write!(f, "{v:?}"),
            Literal::Bool(v) => write!(f, "{v}"),
        }
    }
}

impl Condition {
    /// The rows of `batch` for which this holds, as a validity mask.
    fn rows(&self, batch: &RecordBatch, measure: &str) -> Result<NullBuffer> {
        let column = named(batch, &self.column)?;
        let n = batch.num_rows();
        let t = key_type(column.data_type());
        let misfit = |what: &str| {
            AggregateError(format!(
                "`{measure}`: filter `{self}` compares a column of {} with {what}",
                column.data_type()
            ))
        };
        let cmp = self.comparison;
        let bits = match &self.value {
            Literal::Int(v) if t == DataType::Int64 => {
                let c = cast(&column, &DataType::Int64, &self.column)?;
                let c = c.as_primitive::<Int64Type>().values();
                BooleanBuffer::collect_bool(n, |i| cmp.holds(c[i].cmp(v)))
            }
            Literal::Int(_) | Literal::Float(_) => {
                if !matches!(t, DataType::Int64 | DataType::Float64) && *column.data_type() != DataType::Null {
                    return Err(misfit("a number"));
                }
                let v = match self.value {
                    Literal::Int(i) => i as f64,
                    Literal::Float(f) => f,
                    _ => unreachable!("a number"),
                };
                let c = cast(&column, &DataType::Float64, &self.column)?;
                let c = c.as_primitive::<Float64Type>().values();
                BooleanBuffer::collect_bool(n, |i| c[i].partial_cmp(&v).is_some_and(|o| cmp.holds(o)))
            }
            Literal::Str(v) => {
                if t != DataType::Utf8 && *column.data_type() != DataType::Null {
                    return Err(misfit("a string"));
                }
                let c = cast(&column, &DataType::Utf8, &self.column)?;
                let c = c.as_string::<i32>();
                BooleanBuffer::collect_bool(n, |i| cmp.holds(c.value(i).cmp(v.as_str())))
            }
            Literal::Bool(v) => {
                if t != DataType::Boolean && *column.data_type() != DataType::Null {
                    return Err(misfit("a boolean"));
                }
                let c = cast(&column, &DataType::Boolean, &self.column)?;
                let c = c.as_boolean();
                BooleanBuffer::collect_bool(n, |i| cmp.holds(c.value(i).cmp(v)))
            }
        };
        let bits = match column.logical_nulls() {
            Some(nulls) => &bits & nulls.inner(),
            None => bits,
        };
        Ok(NullBuffer::new(bits))
    }
}

/// An aggregation: group by `keys`, compute `measures`.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Key columns, in output order.
    pub keys: Vec<String>,
    /// Output columns after the keys.
    pub measures: Vec<Measure>,
}

impl Spec {
    /// The columns it reads: keys, measures' columns and their filters'.
    pub fn columns(&self) -> Vec<String> {
        let mut names = self.keys.clone();
        for m in &self.measures {
            names.extend(m.column.iter().cloned());
            names.extend(m.filter.iter().map(|c| c.column.clone()));
        }
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        names
    }
}

/// Why rows cannot be aggregated as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateError(pub String);

impl fmt::Display for AggregateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AggregateError {}

type Result<T> = std::result::Result<T, AggregateError>;

fn err<T>(message: String) -> Result<T> {
    Err(AggregateError(message))
}

/// A key column's values, one per group, in the type keys of that column
/// take (every key column is one of these four).
#[derive(Debug)]
enum Keys {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Str(Vec<Option<String>>),
    Bool(Vec<Option<bool>>),
}

/// A measure's state, one slot per group.
#[derive(Debug)]
enum Acc {
    Count(Vec<i64>),
    SumInt(Vec<Option<i64>>),
    SumFloat(Vec<Option<f64>>),
    Mean { sum: Vec<f64>, count: Vec<i64> },
    MinInt(Vec<Option<i64>>),
    MaxInt(Vec<Option<i64>>),
    MinFloat(Vec<Option<f64>>),
    MaxFloat(Vec<Option<f64>>),
}

/// The groups of one task (or of a merge of tasks).
#[derive(Debug)]
pub struct Groups {
    spec: Spec,
    /// Group number by encoded key.
    index: HashMap<Vec<u8>, u32>,
    keys: Vec<Keys>,
    accs: Vec<Acc>,
    groups: usize,
    buf: Vec<u8>,
}

/// The type a key column of `t` is held in.
fn key_type(t: &DataType) -> DataType {
    match t {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => DataType::Int64,
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => DataType::Int64,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => DataType::Float64,
        DataType::Boolean => DataType::Boolean,
        _ => DataType::Utf8,
    }
}

/// The type a measure column of `t` is read as (`None`: the measure does
/// not apply to it).
fn measure_type(op: Op, t: &DataType) -> Option<DataType> {
    let numeric = key_type(t);
    match op {
        Op::Count | Op::CountValid => Some(t.clone()),
        Op::CountTrue => matches!(t, DataType::Boolean | DataType::Null).then_some(DataType::Boolean),
        Op::Sum | Op::Min | Op::Max => {
            matches!(numeric, DataType::Int64 | DataType::Float64).then_some(numeric).or_else(|| null_as_float(t))
        }
        Op::Mean => matches!(numeric, DataType::Int64 | DataType::Float64)
            .then_some(DataType::Float64)
            .or_else(|| null_as_float(t)),
    }
}

/// A column of only nulls (no type of its own) is read as floats.
fn null_as_float(t: &DataType) -> Option<DataType> {
    (*t == DataType::Null).then_some(DataType::Float64)
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Count => "count",
        Op::CountValid => "count",
        Op::CountTrue => "count_true",
        Op::Sum => "sum",
        Op::Mean => "mean",
        Op::Min => "min",
        Op::Max => "max",
    }
}

impl Groups {
    /// Groups for `spec` over rows of `schema`; an error names a column the
    /// rows lack or a measure that does not apply to its column's type.
    pub fn new(spec: Spec, schema: &Schema) -> Result<Groups> {
        let column = |name: &str| {
            schema.field_with_name(name).map(|f| f.data_type().clone()).or_else(|_| {
                let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                err(format!("no column `{name}` to aggregate (columns: {})", names.join(", ")))
            })
        };
        if spec.keys.is_empty() && spec.measures.is_empty() {
            return err("an aggregation needs key columns or measures".into());
        }
        let mut keys = Vec::with_capacity(spec.keys.len());
        for name in &spec.keys {
            keys.push(match key_type(&column(name)?) {
                DataType::Int64 => Keys::Int(Vec::new()),
                DataType::Float64 => Keys::Float(Vec::new()),
                DataType::Boolean => Keys::Bool(Vec::new()),
                _ => Keys::Str(Vec::new()),
            });
        }
        let mut accs = Vec::with_capacity(spec.measures.len());
        for m in &spec.measures {
            let t = match (&m.column, m.op) {
                (None, Op::Count) => DataType::Null,
                (None, op) => return err(format!("`{}`: {} needs a column", m.name, op_name(op))),
                (Some(c), op) => {
                    let t = column(c)?;
                    measure_type(op, &t).ok_or_else(|| {
                        AggregateError(format!("`{}`: {} of `{c}`, a column of {t}", m.name, op_name(op)))
                    })?
                }
            };
            accs.push(match (m.op, &t) {
                (Op::Count | Op::CountValid | Op::CountTrue, _) => Acc::Count(Vec::new()),
                (Op::Sum, DataType::Int64) => Acc::SumInt(Vec::new()),
                (Op::Sum, _) => Acc::SumFloat(Vec::new()),
                (Op::Mean, _) => Acc::Mean { sum: Vec::new(), count: Vec::new() },
                (Op::Min, DataType::Int64) => Acc::MinInt(Vec::new()),
                (Op::Max, DataType::Int64) => Acc::MaxInt(Vec::new()),
                (Op::Min, _) => Acc::MinFloat(Vec::new()),
                (Op::Max, _) => Acc::MaxFloat(Vec::new()),
            });
        }
        // A filter's column and literal, checked on no rows.
        let none = RecordBatch::new_empty(Arc::new(schema.clone()));
        for m in &spec.measures {
            for condition in &m.filter {
                condition.rows(&none, &m.name)?;
            }
        }
        Ok(Groups { spec, index: HashMap::new(), keys, accs, groups: 0, buf: Vec::new() })
    }

    /// Groups to merge partial states of `spec` into, whose schema
    /// ([`Groups::partial`]'s) is `schema`: a merge of tasks' partials.
    pub fn for_partials(mut spec: Spec, schema: &Schema) -> Result<Groups> {
        // Partial states are filtered already.
        for m in &mut spec.measures {
            m.filter.clear();
        }
        // The inputs' types, as the partial states tell them.
        let mut fields = Vec::new();
        for name in &spec.keys {
            let f = schema
                .field_with_name(name)
                .map_err(|_| AggregateError(format!("no key column `{name}` in the partial states")))?;
            fields.push(f.clone());
        }
        for m in &spec.measures {
            let Some(column) = &m.column else { continue };
            let state = match m.op {
                Op::Mean => format!("{}.sum", m.name),
                _ => m.name.clone(),
            };
            let t = schema
                .field_with_name(&state)
                .map_err(|_| AggregateError(format!("no state `{state}` in the partial states")))?
                .data_type();
            let t = match m.op {
                Op::Count | Op::CountValid => DataType::Null,
                Op::CountTrue => DataType::Boolean,
                _ => t.clone(),
            };
            if fields.iter().all(|f: &Field| f.name() != column) {
                fields.push(Field::new(column, t, true));
            }
        }
        Groups::new(spec, &Schema::new(fields))
    }

    /// How many groups there are.
    pub fn len(&self) -> usize {
        self.groups
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.groups == 0
    }

    /// The group number of each row of `batch`, by its key columns; new
    /// groups are added.
    fn group_ids(&mut self, key_columns: &[ArrayRef], rows: usize) -> Vec<u32> {
        let mut ids = Vec::with_capacity(rows);
        for row in 0..rows {
            self.buf.clear();
            for column in key_columns {
                encode_key(column, row, &mut self.buf);
            }
            let id = match self.index.get(self.buf.as_slice()) {
                Some(&id) => id,
                None => {
                    let id = self.groups as u32;
                    self.index.insert(self.buf.clone(), id);
                    for (keys, column) in self.keys.iter_mut().zip(key_columns) {
                        keys.push(column, row);
                    }
                    for acc in &mut self.accs {
                        acc.grow();
                    }
                    self.groups += 1;
                    id
                }
            };
            ids.push(id);
        }
        ids
    }

    /// The key columns of `batch`, each in the type its keys are held in.
    fn key_columns(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        self.spec
            .keys
            .iter()
            .zip(&self.keys)
            .map(|(name, keys)| key_cast(&named(batch, name)?, &keys.data_type(), name))
            .collect()
    }

    /// Folds the rows of `batch` into their groups.
    pub fn fold(&mut self, batch: &RecordBatch) -> Result<()> {
        let key_columns = self.key_columns(batch)?;
        let ids = self.group_ids(&key_columns, batch.num_rows());
        for (m, acc) in self.spec.measures.iter().zip(&mut self.accs) {
            let column = match &m.column {
                Some(c) => Some(named(batch, c)?),
                None => None,
            };
            let mut filter: Option<NullBuffer> = None;
            for condition in &m.filter {
                let rows = condition.rows(batch, &m.name)?;
                filter = NullBuffer::union(filter.as_ref(), Some(&rows));
            }
            acc.fold(m, &ids, column.as_ref(), filter.as_ref())?;
        }
        Ok(())
    }

    /// The groups' partial states: the key columns, then per measure its
    /// state (a count, a sum, a min or max under the measure's name; a
    /// mean's sum and count as `NAME.sum` and `NAME.count`).
    pub fn partial(&self) -> Result<RecordBatch> {
        let mut fields = Vec::new();
        let mut columns = Vec::new();
        self.push_keys(&mut fields, &mut columns);
        for (m, acc) in self.spec.measures.iter().zip(&self.accs) {
            match acc {
                Acc::Mean { sum, count } => {
                    fields.push(Field::new(format!("{}.sum", m.name), DataType::Float64, false));
                    columns.push(Arc::new(Float64Array::from(sum.clone())) as ArrayRef);
                    fields.push(Field::new(format!("{}.count", m.name), DataType::Int64, false));
                    columns.push(Arc::new(Int64Array::from(count.clone())) as ArrayRef);
                }
                other => {
                    let column = other.values();
                    fields.push(Field::new(&m.name, column.data_type().clone(), true));
                    columns.push(column);
                }
            }
        }
        batch(fields, columns)
    }

    /// [`Groups::partial`] divided among `n` reduce partitions by key
    /// hash: a group's partition is the same in every task.
    pub fn partials(&self, n: usize) -> Result<Vec<RecordBatch>> {
        let all = self.partial()?;
        if n <= 1 {
            return Ok(vec![all]);
        }
        let mut part = vec![0; self.groups];
        for (key, &id) in &self.index {
            part[id as usize] = crate::pairs::partition_of(key, n);
        }
        (0..n)
            .map(|p| {
                let mask: BooleanArray = part.iter().map(|&q| Some(q == p)).collect();
                arrow_select::filter::filter_record_batch(&all, &mask).map_err(|e| AggregateError(e.to_string()))
            })
            .collect()
    }

    /// Merges another task's [`Groups::partial`] of the same spec.
    pub fn merge(&mut self, partial: &RecordBatch) -> Result<()> {
        let key_columns = self.key_columns(partial)?;
        let ids = self.group_ids(&key_columns, partial.num_rows());
        for (m, acc) in self.spec.measures.iter().zip(&mut self.accs) {
            acc.merge(m, &ids, partial)?;
        }
        Ok(())
    }

    /// The final rows: the key columns, then each measure, one row per
    /// group, groups in the order their keys first came.
    pub fn finish(&self) -> Result<RecordBatch> {
        let mut fields = Vec::new();
        let mut columns = Vec::new();
        self.push_keys(&mut fields, &mut columns);
        for (m, acc) in self.spec.measures.iter().zip(&self.accs) {
            let column: ArrayRef = match acc {
                Acc::Mean { sum, count } => Arc::new(
                    sum.iter().zip(count).map(|(s, &n)| (n > 0).then(|| s / n as f64)).collect::<Float64Array>(),
                ),
                other => other.values(),
            };
            fields.push(Field::new(&m.name, column.data_type().clone(), true));
            columns.push(column);
        }
        batch(fields, columns)
    }

    fn push_keys(&self, fields: &mut Vec<Field>, columns: &mut Vec<ArrayRef>) {
        for (name, keys) in self.spec.keys.iter().zip(&self.keys) {
            let column = keys.values();
            fields.push(Field::new(name, column.data_type().clone(), true));
            columns.push(column);
        }
    }
}

/// Partial states as bytes to store between tasks: an Arrow IPC stream.
pub fn encode(partial: &RecordBatch) -> Result<Vec<u8>> {
    let failed = |e: arrow_schema::ArrowError| AggregateError(format!("encoding partial states: {e}"));
    let mut out = Vec::new();
    let mut writer = arrow_ipc::writer::StreamWriter::try_new(&mut out, &partial.schema()).map_err(failed)?;
    writer.write(partial).map_err(failed)?;
    writer.finish().map_err(failed)?;
    drop(writer);
    Ok(out)
}

/// Partial states from [`encode`]'s bytes.
pub fn decode(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    let failed = |e: arrow_schema::ArrowError| AggregateError(format!("partial states: {e}"));
    let reader = arrow_ipc::reader::StreamReader::try_new(bytes, None).map_err(failed)?;
    reader.map(|b| b.map_err(failed)).collect()
}

fn batch(fields: Vec<Field>, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    RecordBatch::try_new(schema, columns).map_err(|e| AggregateError(e.to_string()))
}

fn named(batch: &RecordBatch, name: &str) -> Result<ArrayRef> {
    batch.column_by_name(name).cloned().ok_or_else(|| AggregateError(format!("no column `{name}` to aggregate")))
}

/// Key column `name` as its keys are held (`to`): a widening cast (integers
/// to floats, anything to text, nulls to anything) or none. Floats into
/// integer keys, or text into numbers, would merge keys that differ: an
/// error naming the `--schema` that fixes the column's type.
fn key_cast(column: &ArrayRef, to: &DataType, name: &str) -> Result<ArrayRef> {
    let from = key_type(column.data_type());
    let widens = from == *to
        || *column.data_type() == DataType::Null
        || *to == DataType::Utf8
        || (from == DataType::Int64 && *to == DataType::Float64);
    if !widens {
        let fix = if from == DataType::Float64 && *to == DataType::Int64 { "float" } else { "str" };
        return err(format!(
            "key `{name}` held {to} and now holds {}; fix its type (--schema {name}:{fix})",
            column.data_type()
        ));
    }
    cast(column, to, name)
}

/// Measure `m`'s state column `name` of a partial, as `to`: integer states
/// merge into float ones; a float state into an integer one is an error
/// naming the `--schema` that fixes the measure's column, never truncated.
fn state(partial: &RecordBatch, name: &str, to: &DataType, m: &Measure) -> Result<ArrayRef> {
    let column = named(partial, name)?;
    let from = column.data_type();
    if from == to || (*from == DataType::Int64 && *to == DataType::Float64) || *from == DataType::Null {
        return cast(&column, to, name);
    }
    let c = m.column.as_deref().unwrap_or_default();
    err(format!(
        "`{}`: column `{c}` held {to} in one task and {from} in another; fix its type (--schema {c}:float)",
        m.name
    ))
}

fn cast(column: &ArrayRef, to: &DataType, name: &str) -> Result<ArrayRef> {
    if column.data_type() == to {
        return Ok(column.clone());
    }
    arrow_cast::cast(column, to).map_err(|e| AggregateError(format!("column `{name}` as {to}: {e}")))
}

/// Appends row `row` of a key column to a group key: a null is a 0 byte, a
/// value a 1 byte and its bytes (strings with their length first), so no
/// two different keys share an encoding.
fn encode_key(column: &ArrayRef, row: usize, out: &mut Vec<u8>) {
    if column.is_null(row) {
        out.push(0);
        return;
    }
    out.push(1);
    match column.data_type() {
        DataType::Int64 => out.extend_from_slice(&column.as_primitive::<Int64Type>().value(row).to_le_bytes()),
        // -0.0 and 0.0 are one key; NaNs are one key.
        DataType::Float64 => {
            let v = column.as_primitive::<Float64Type>().value(row);
            let v = if v == 0.0 {
                0.0
            } else if v.is_nan() {
                f64::NAN
            } else {
                v
            };
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        DataType::Boolean => out.push(u8::from(column.as_boolean().value(row))),
        _ => {
            let s = column.as_string::<i32>().value(row);
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

impl Keys {
    fn data_type(&self) -> DataType {
        match self {
            Keys::Int(_) => DataType::Int64,
            Keys::Float(_) => DataType::Float64,
            Keys::Str(_) => DataType::Utf8,
            Keys::Bool(_) => DataType::Boolean,
        }
    }

    /// Adds row `row` of `column` (of this key's type) as a new group's key.
    fn push(&mut self, column: &ArrayRef, row: usize) {
        let valid = column.is_valid(row);
        match self {
            Keys::Int(v) => v.push(valid.then(|| column.as_primitive::<Int64Type>().value(row))),
            Keys::Float(v) => v.push(valid.then(|| column.as_primitive::<Float64Type>().value(row))),
            Keys::Bool(v) => v.push(valid.then(|| column.as_boolean().value(row))),
            Keys::Str(v) => v.push(valid.then(|| column.as_string::<i32>().value(row).to_string())),
        }
    }

    fn values(&self) -> ArrayRef {
        match self {
            Keys::Int(v) => Arc::new(Int64Array::from(v.clone())),
            Keys::Float(v) => Arc::new(Float64Array::from(v.clone())),
            Keys::Bool(v) => Arc::new(BooleanArray::from(v.clone())),
            Keys::Str(v) => Arc::new(v.iter().map(Option::as_deref).collect::<StringArray>()),
        }
    }
}

/// Folds `values` into `slots` by group: `f(slot, value)` for each
/// non-null value.
fn fold_each<T: Copy, S>(
    slots: &mut [S],
    ids: &[u32],
    values: &[T],
    valid: Option<&NullBuffer>,
    f: impl Fn(&mut S, T),
) {
    match valid {
        None => {
            for (&id, &v) in ids.iter().zip(values) {
                f(&mut slots[id as usize], v);
            }
        }
        Some(valid) => {
            for (row, (&id, &v)) in ids.iter().zip(values).enumerate() {
                if valid.is_valid(row) {
                    f(&mut slots[id as usize], v);
                }
            }
        }
    }
}

/// Measure `m`'s column as integers, for a measure whose state is
/// integers: a column of floats (its type widened in a later partition)
/// is an error, never truncated.
fn integers(column: &ArrayRef, m: &Measure) -> Result<ArrayRef> {
    if !matches!(key_type(column.data_type()), DataType::Int64) && *column.data_type() != DataType::Null {
        let c = m.column.as_deref().unwrap_or_default();
        return err(format!(
            "`{}`: column `{c}` held integers and now holds {}; fix its type (--schema {c}:float)",
            m.name,
            column.data_type()
        ));
    }
    cast(column, &DataType::Int64, &m.name)
}

fn add_int(slot: &mut Option<i64>, v: i64, name: &str) -> Result<()> {
    *slot = Some(match *slot {
        None => v,
        Some(s) => {
            s.checked_add(v).ok_or_else(|| AggregateError(format!("`{name}`: the sum overflows 64-bit integers")))?
        }
    });
    Ok(())
}

fn keep<T: PartialOrd + Copy>(slot: &mut Option<T>, v: T, smaller: bool) {
    let better = match *slot {
        None => true,
        Some(s) => (smaller && v < s) || (!smaller && v > s),
    };
    if better {
        *slot = Some(v);
    }
}

impl Acc {
    fn grow(&mut self) {
        match self {
            Acc::Count(v) => v.push(0),
            Acc::SumInt(v) | Acc::MinInt(v) | Acc::MaxInt(v) => v.push(None),
            Acc::SumFloat(v) | Acc::MinFloat(v) | Acc::MaxFloat(v) => v.push(None),
            Acc::Mean { sum, count } => {
                sum.push(0.0);
                count.push(0);
            }
        }
    }

    fn values(&self) -> ArrayRef {
        match self {
            Acc::Count(v) => Arc::new(Int64Array::from(v.clone())),
            Acc::SumInt(v) | Acc::MinInt(v) | Acc::MaxInt(v) => Arc::new(Int64Array::from(v.clone())),
            Acc::SumFloat(v) | Acc::MinFloat(v) | Acc::MaxFloat(v) => Arc::new(Float64Array::from(v.clone())),
            Acc::Mean { sum, .. } => Arc::new(Float64Array::from(sum.clone())),
        }
    }

    /// Folds the rows (`ids[i]` is row `i`'s group) of measure `m`'s column.
    /// Rows that `filter` marks invalid are skipped.
    fn fold(&mut self, m: &Measure, ids: &[u32], column: Option<&ArrayRef>, filter: Option<&NullBuffer>) -> Result<()> {
        let Some(column) = column else {
            // Count: every row (that passes the filter).
            if let Acc::Count(n) = self {
                match filter {
                    None => ids.iter().for_each(|&id| n[id as usize] += 1),
                    Some(f) => {
                        for (row, &id) in ids.iter().enumerate() {
                            if f.is_valid(row) {
                                n[id as usize] += 1;
                            }
                        }
                    }
                }
            }
            return Ok(());
        };
        let nulls = NullBuffer::union(column.logical_nulls().as_ref(), filter);
        let valid = nulls.as_ref();
        match (self, m.op) {
            (Acc::Count(n), Op::CountValid) => {
                for (row, &id) in ids.iter().enumerate() {
                    if valid.is_none_or(|v| v.is_valid(row)) {
                        n[id as usize] += 1;
                    }
                }
            }
            (Acc::Count(n), Op::CountTrue) => {
                let b = cast(column, &DataType::Boolean, &m.name)?;
                let (b, nulls) = (b.as_boolean(), NullBuffer::union(b.logical_nulls().as_ref(), filter));
                for (row, &id) in ids.iter().enumerate() {
                    if nulls.as_ref().is_none_or(|v| v.is_valid(row)) && b.value(row) {
                        n[id as usize] += 1;
                    }
                }
            }
            (Acc::Count(n), _) => {
                for &id in ids {
                    n[id as usize] += 1;
                }
            }
            (Acc::SumInt(s), _) => {
                let values = integers(column, m)?;
                for (row, (&id, &v)) in ids.iter().zip(values.as_primitive::<Int64Type>().values()).enumerate() {
                    if valid.is_none_or(|n| n.is_valid(row)) {
                        add_int(&mut s[id as usize], v, &m.name)?;
                    }
                }
            }
            (Acc::MinInt(s), _) | (Acc::MaxInt(s), _) => {
                let smaller = m.op == Op::Min;
                let values = integers(column, m)?;
                fold_each(s, ids, values.as_primitive::<Int64Type>().values(), valid, |slot, v| keep(slot, v, smaller));
            }
            (acc, _) => {
                let values = cast(column, &DataType::Float64, &m.name)?;
                let values = values.as_primitive::<Float64Type>().values();
                match acc {
                    Acc::SumFloat(s) => {
                        fold_each(s, ids, values, valid, |slot, v| *slot = Some(slot.unwrap_or(0.0) + v))
                    }
                    Acc::MinFloat(s) => fold_each(s, ids, values, valid, |slot, v| keep(slot, v, true)),
                    Acc::MaxFloat(s) => fold_each(s, ids, values, valid, |slot, v| keep(slot, v, false)),
                    Acc::Mean { sum, count } => {
                        for (row, (&id, &v)) in ids.iter().zip(values).enumerate() {
                            if valid.is_none_or(|n| n.is_valid(row)) {
                                sum[id as usize] += v;
                                count[id as usize] += 1;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Merges measure `m`'s partial state from `partial` (`ids[i]` is its
    /// row `i`'s group).
    fn merge(&mut self, m: &Measure, ids: &[u32], partial: &RecordBatch) -> Result<()> {
        if let Acc::Mean { sum, count } = self {
            let sums = state(partial, &format!("{}.sum", m.name), &DataType::Float64, m)?;
            let counts = state(partial, &format!("{}.count", m.name), &DataType::Int64, m)?;
            let (sums, counts) = (sums.as_primitive::<Float64Type>(), counts.as_primitive::<Int64Type>());
            for (row, &id) in ids.iter().enumerate() {
                sum[id as usize] += sums.value(row);
                count[id as usize] += counts.value(row);
            }
            return Ok(());
        }
        let held = match self {
            Acc::SumFloat(_) | Acc::MinFloat(_) | Acc::MaxFloat(_) => DataType::Float64,
            _ => DataType::Int64,
        };
        let column = state(partial, &m.name, &held, m)?;
        let nulls = column.logical_nulls();
        let valid = nulls.as_ref();
        match self {
            Acc::Count(n) => {
                fold_each(n, ids, column.as_primitive::<Int64Type>().values(), valid, |slot, v| *slot += v)
            }
            Acc::SumInt(s) => {
                for (row, (&id, &v)) in ids.iter().zip(column.as_primitive::<Int64Type>().values()).enumerate() {
                    if valid.is_none_or(|n| n.is_valid(row)) {
                        add_int(&mut s[id as usize], v, &m.name)?;
                    }
                }
            }
            Acc::MinInt(s) | Acc::MaxInt(s) => {
                let smaller = matches!(m.op, Op::Min);
                fold_each(s, ids, column.as_primitive::<Int64Type>().values(), valid, |slot, v| keep(slot, v, smaller))
            }
            Acc::SumFloat(s) => fold_each(s, ids, column.as_primitive::<Float64Type>().values(), valid, |slot, v| {
                *slot = Some(slot.unwrap_or(0.0) + v)
            }),
            Acc::MinFloat(s) | Acc::MaxFloat(s) => {
                let smaller = matches!(m.op, Op::Min);
                fold_each(s, ids, column.as_primitive::<Float64Type>().values(), valid, |slot, v| {
                    keep(slot, v, smaller)
                })
            }
            Acc::Mean { .. } => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Rows of (carrier, origin, delay, distance, late): keys with nulls,
    /// values with nulls.
    fn flights(n: usize, seed: u64) -> RecordBatch {
        let mut x = seed;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let carriers = ["UA", "AA", "B6", "DL"];
        let mut carrier = Vec::new();
        let mut origin = Vec::new();
        let mut delay = Vec::new();
        let mut distance = Vec::new();
        let mut late = Vec::new();
        for _ in 0..n {
            let r = next();
            carrier.push((r % 11 != 0).then(|| carriers[(r % 4) as usize]));
            origin.push((r % 13 != 0).then_some((r >> 8) % 3));
            delay.push((r % 7 != 0).then(|| ((r >> 16) % 400) as f64 / 4.0 - 20.0));
            distance.push((r % 5 != 0).then_some(((r >> 24) % 3000) as i64));
            late.push((r % 9 != 0).then_some((r >> 32) % 3 == 0));
        }
        let schema = Schema::new(vec![
            Field::new("carrier", DataType::Utf8, true),
            Field::new("origin", DataType::Int64, true),
            Field::new("delay", DataType::Float64, true),
            Field::new("distance", DataType::Int64, true),
            Field::new("late", DataType::Boolean, true),
        ]);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(carrier.into_iter().collect::<StringArray>()),
            Arc::new(origin.into_iter().map(|o| o.map(|o| o as i64)).collect::<Int64Array>()),
            Arc::new(Float64Array::from(delay)),
            Arc::new(Int64Array::from(distance)),
            Arc::new(BooleanArray::from(late)),
        ];
        RecordBatch::try_new(Arc::new(schema), columns).expect("batch")
    }

    fn spec() -> Spec {
        let m = Measure::new;
        Spec {
            keys: vec!["carrier".into(), "origin".into()],
            measures: vec![
                m("flights", Op::Count, None),
                m("with_delay", Op::CountValid, Some("delay")),
                m("late", Op::CountTrue, Some("late")),
                m("delay_sum", Op::Sum, Some("delay")),
                m("distance_sum", Op::Sum, Some("distance")),
                m("mean_delay", Op::Mean, Some("delay")),
                m("min_distance", Op::Min, Some("distance")),
                m("max_delay", Op::Max, Some("delay")),
            ],
        }
    }

    /// The answer by rows, one group at a time: what SQL says.
    type Row =
        (Option<String>, Option<i64>, i64, i64, i64, Option<f64>, Option<i64>, Option<f64>, Option<i64>, Option<f64>);

    fn reference(batch: &RecordBatch) -> HashMap<(Option<String>, Option<i64>), Row> {
        let carrier = batch["carrier"].as_string::<i32>();
        let origin = batch["origin"].as_primitive::<Int64Type>();
        let delay = batch["delay"].as_primitive::<Float64Type>();
        let distance = batch["distance"].as_primitive::<Int64Type>();
        let late = batch["late"].as_boolean();
        let mut rows: HashMap<(Option<String>, Option<i64>), Vec<usize>> = HashMap::new();
        for i in 0..batch.num_rows() {
            let key = (
                carrier.is_valid(i).then(|| carrier.value(i).to_string()),
                origin.is_valid(i).then(|| origin.value(i)),
            );
            rows.entry(key).or_default().push(i);
        }
        rows.into_iter()
            .map(|(key, rows)| {
                let delays: Vec<f64> = rows.iter().filter(|&&i| delay.is_valid(i)).map(|&i| delay.value(i)).collect();
                let distances: Vec<i64> =
                    rows.iter().filter(|&&i| distance.is_valid(i)).map(|&i| distance.value(i)).collect();
                let late = rows.iter().filter(|&&i| late.is_valid(i) && late.value(i)).count() as i64;
                let sum = (!delays.is_empty()).then(|| delays.iter().sum::<f64>());
                let row = (
                    key.0.clone(),
                    key.1,
                    rows.len() as i64,
                    delays.len() as i64,
                    late,
                    sum,
                    (!distances.is_empty()).then(|| distances.iter().sum()),
                    sum.map(|s| s / delays.len() as f64),
                    distances.iter().copied().min(),
                    delays.iter().copied().fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v)))),
                );
                (key, row)
            })
            .collect()
    }

    fn rows_of(out: &RecordBatch) -> HashMap<(Option<String>, Option<i64>), Row> {
        let s = |name: &str| out[name].as_string::<i32>().clone();
        let i = |name: &str| out[name].as_primitive::<Int64Type>().clone();
        let f = |name: &str| out[name].as_primitive::<Float64Type>().clone();
        let get_i = |a: &Int64Array, r: usize| a.is_valid(r).then(|| a.value(r));
        let get_f = |a: &Float64Array, r: usize| a.is_valid(r).then(|| a.value(r));
        let (carrier, origin) = (s("carrier"), i("origin"));
        (0..out.num_rows())
            .map(|r| {
                let key = (carrier.is_valid(r).then(|| carrier.value(r).to_string()), get_i(&origin, r));
                let row = (
                    key.0.clone(),
                    key.1,
                    i("flights").value(r),
                    i("with_delay").value(r),
                    i("late").value(r),
                    get_f(&f("delay_sum"), r),
                    get_i(&i("distance_sum"), r),
                    get_f(&f("mean_delay"), r),
                    get_i(&i("min_distance"), r),
                    get_f(&f("max_delay"), r),
                );
                (key, row)
            })
            .collect()
    }

    fn close(a: Option<f64>, b: Option<f64>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
            (a, b) => a == b,
        }
    }

    fn assert_same(
        got: &HashMap<(Option<String>, Option<i64>), Row>,
        want: &HashMap<(Option<String>, Option<i64>), Row>,
    ) {
        assert_eq!(got.len(), want.len());
        for (key, w) in want {
            let g = got.get(key).unwrap_or_else(|| panic!("group {key:?}"));
            assert_eq!((g.2, g.3, g.4, g.6, g.8), (w.2, w.3, w.4, w.6, w.8), "{key:?}");
            assert!(close(g.5, w.5) && close(g.7, w.7) && close(g.9, w.9), "{key:?}: {g:?} vs {w:?}");
        }
    }

    #[test]
    fn one_pass_gives_what_sql_says_with_null_keys_as_groups() {
        let batch = flights(5000, 7);
        let mut groups = Groups::new(spec(), &batch.schema()).expect("spec fits");
        groups.fold(&batch.slice(0, 2500)).expect("fold");
        groups.fold(&batch.slice(2500, 2500)).expect("fold");
        let want = reference(&batch);
        assert!(want.keys().any(|k| k.0.is_none()) && want.keys().any(|k| k.1.is_none()), "null keys present");
        assert_same(&rows_of(&groups.finish().expect("finish")), &want);
    }

    #[test]
    fn partial_states_of_many_tasks_merge_to_the_same_answer() {
        let batch = flights(6000, 11);
        let mut merged: Option<Groups> = None;
        for task in 0..6 {
            let mut groups = Groups::new(spec(), &batch.schema()).expect("spec fits");
            groups.fold(&batch.slice(task * 1000, 1000)).expect("fold");
            let partial = groups.partial().expect("partial");
            merged
                .get_or_insert_with(|| Groups::for_partials(spec(), &partial.schema()).expect("partials"))
                .merge(&partial)
                .expect("merge");
        }
        let merged = merged.expect("tasks");
        assert_same(&rows_of(&merged.finish().expect("finish")), &reference(&batch));
    }

    #[test]
    fn a_group_with_only_nulls_has_null_sums_and_zero_counts() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("a"), Some("a"), None])),
                Arc::new(Float64Array::from(vec![None, None, Some(2.0)])),
            ],
        )
        .expect("batch");
        let m = |name: &str, op| Measure::new(name, op, Some("v"));
        let spec = Spec {
            keys: vec!["k".into()],
            measures: vec![m("n", Op::CountValid), m("s", Op::Sum), m("mean", Op::Mean), m("min", Op::Min)],
        };
        let mut groups = Groups::new(spec, &schema).expect("spec");
        groups.fold(&batch).expect("fold");
        let out = groups.finish().expect("finish");
        assert_eq!(out.num_rows(), 2);
        assert_eq!(out["k"].as_string::<i32>().value(0), "a");
        assert!(out["k"].is_null(1), "the null key is a group");
        assert_eq!(out["n"].as_primitive::<Int64Type>().values().to_vec(), vec![0, 1]);
        for name in ["s", "mean", "min"] {
            assert!(out[name].is_null(0) && out[name].as_primitive::<Float64Type>().value(1) == 2.0, "{name}");
        }
    }

    #[test]
    fn a_spec_that_does_not_fit_the_rows_is_named() {
        let batch = flights(10, 3);
        let m = |op, column: &str| Measure::new("x", op, Some(column));
        let cases = [
            (
                Spec { keys: vec!["nope".into()], measures: vec![] },
                "no column `nope` to aggregate (columns: carrier, origin",
            ),
            (Spec { keys: vec![], measures: vec![m(Op::Sum, "carrier")] }, "`x`: sum of `carrier`, a column of Utf8"),
            (
                Spec { keys: vec![], measures: vec![m(Op::CountTrue, "delay")] },
                "`x`: count_true of `delay`, a column of Float64",
            ),
            (Spec { keys: vec![], measures: vec![Measure::new("x", Op::Sum, None)] }, "`x`: sum needs a column"),
            (Spec { keys: vec![], measures: vec![] }, "needs key columns or measures"),
        ];
        for (spec, says) in cases {
            let e = Groups::new(spec, &batch.schema()).expect_err("refused").to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn an_integer_column_that_turns_to_floats_is_an_error_not_truncated() {
        let ints = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let floats = Arc::new(Schema::new(vec![Field::new("v", DataType::Float64, true)]));
        let spec = Spec { keys: vec![], measures: vec![Measure::new("s", Op::Sum, Some("v"))] };
        let mut groups = Groups::new(spec, &ints).expect("spec");
        groups
            .fold(&RecordBatch::try_new(ints, vec![Arc::new(Int64Array::from(vec![1, 2]))]).expect("batch"))
            .expect("fold");
        let later = RecordBatch::try_new(floats, vec![Arc::new(Float64Array::from(vec![2.5]))]).expect("batch");
        let e = groups.fold(&later).expect_err("floats").to_string();
        assert!(e.contains("column `v` held integers and now holds Float64; fix its type (--schema v:float)"), "{e}");
    }

    #[test]
    fn count_true_reads_a_text_column_of_booleans() {
        let schema = Arc::new(Schema::new(vec![Field::new("b", DataType::Utf8, true)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec![Some("true"), None, Some("false"), Some("true")]))],
        )
        .expect("batch");
        let spec = Spec { keys: vec![], measures: vec![Measure::new("n", Op::CountTrue, Some("b"))] };
        // Built for a boolean column; a later partition held it as text.
        let mut groups = Groups::new(spec, &Schema::new(vec![Field::new("b", DataType::Boolean, true)])).expect("spec");
        groups.fold(&batch).expect("fold");
        assert_eq!(groups.finish().expect("finish")["n"].as_primitive::<Int64Type>().value(0), 2);
    }

    #[test]
    fn an_integer_sum_that_overflows_is_an_error() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![i64::MAX, 1]))]).expect("batch");
        let spec = Spec { keys: vec![], measures: vec![Measure::new("s", Op::Sum, Some("v"))] };
        let mut groups = Groups::new(spec, &schema).expect("spec");
        let e = groups.fold(&batch).expect_err("overflow").to_string();
        assert!(e.contains("the sum overflows 64-bit integers"), "{e}");
    }

    fn cond(column: &str, comparison: Comparison, value: Literal) -> Condition {
        Condition { column: column.into(), comparison, value }
    }

    #[test]
    fn filters_count_only_the_rows_they_pass_and_nulls_never() {
        let batch = flights(4000, 3);
        let spec = Spec {
            keys: vec!["carrier".into()],
            measures: vec![
                Measure::new("late15", Op::Count, None).filter(cond("delay", Comparison::Ge, Literal::Int(15))),
                Measure::new("late_sum", Op::Sum, Some("distance"))
                    .filter(cond("delay", Comparison::Gt, Literal::Float(15.5)))
                    .filter(cond("late", Comparison::Eq, Literal::Bool(true))),
                Measure::new("from_1", Op::CountValid, Some("delay")).filter(cond(
                    "origin",
                    Comparison::Eq,
                    Literal::Int(1),
                )),
                Measure::new("not_ua", Op::Count, None).filter(cond(
                    "carrier",
                    Comparison::Ne,
                    Literal::Str("UA".into()),
                )),
            ],
        };
        let mut groups = Groups::new(spec.clone(), &batch.schema()).expect("spec fits");
        groups.fold(&batch).expect("fold");
        let out = groups.finish().expect("finish");

        let carrier = batch["carrier"].as_string::<i32>();
        let origin = batch["origin"].as_primitive::<Int64Type>();
        let delay = batch["delay"].as_primitive::<Float64Type>();
        let distance = batch["distance"].as_primitive::<Int64Type>();
        let late = batch["late"].as_boolean();
        let mut want: HashMap<Option<String>, (i64, Option<i64>, i64, i64)> = HashMap::new();
        for i in 0..batch.num_rows() {
            let key = carrier.is_valid(i).then(|| carrier.value(i).to_string());
            let w = want.entry(key.clone()).or_insert((0, None, 0, 0));
            let d = delay.is_valid(i).then(|| delay.value(i));
            if d.is_some_and(|d| d >= 15.0) {
                w.0 += 1;
            }
            if d.is_some_and(|d| d > 15.5) && late.is_valid(i) && late.value(i) && distance.is_valid(i) {
                w.1 = Some(w.1.unwrap_or(0) + distance.value(i));
            }
            if origin.is_valid(i) && origin.value(i) == 1 && d.is_some() {
                w.2 += 1;
            }
            // A null carrier is not "not UA": the comparison is unknown.
            if key.as_deref().is_some_and(|c| c != "UA") {
                w.3 += 1;
            }
        }
        let keys = out["carrier"].as_string::<i32>();
        let col = |name: &str| out[name].as_primitive::<Int64Type>().clone();
        let (a, b, c, d) = (col("late15"), col("late_sum"), col("from_1"), col("not_ua"));
        assert_eq!(out.num_rows(), want.len());
        for r in 0..out.num_rows() {
            let key = keys.is_valid(r).then(|| keys.value(r).to_string());
            let got = (a.value(r), b.is_valid(r).then(|| b.value(r)), c.value(r), d.value(r));
            assert_eq!(got, want[&key], "{key:?}");
        }

        // Filtered partial states merge without the filters' columns.
        let partial = groups.partial().expect("partial");
        let mut merged = Groups::for_partials(spec, &partial.schema()).expect("partials");
        merged.merge(&partial).expect("merge");
        assert_eq!(merged.finish().expect("finish"), out);
    }

    #[test]
    fn a_filter_that_does_not_fit_its_column_is_named() {
        let batch = flights(10, 3);
        let spec = |c| Spec { keys: vec![], measures: vec![Measure::new("n", Op::Count, None).filter(c)] };
        let e = Groups::new(spec(cond("delay", Comparison::Eq, Literal::Str("x".into()))), &batch.schema())
            .expect_err("a string against floats")
            .to_string();
        assert_eq!(e, "`n`: filter `delay == \"x\"` compares a column of Float64 with a string");
        let e = Groups::new(spec(cond("carrier", Comparison::Lt, Literal::Float(2.5))), &batch.schema())
            .expect_err("a number against strings")
            .to_string();
        assert!(e.contains("filter `carrier < 2.5` compares a column of Utf8 with a number"), "{e}");
        let e = Groups::new(spec(cond("nope", Comparison::Lt, Literal::Int(1))), &batch.schema())
            .expect_err("no such column")
            .to_string();
        assert!(e.contains("no column `nope`"), "{e}");
    }

    #[test]
    fn partials_split_by_key_travel_as_ipc_and_merge_to_the_whole() {
        let batch = flights(6000, 5);
        let mut reduce: Vec<Option<Groups>> = (0..3).map(|_| None).collect();
        let mut seen = vec![HashSet::new(); 3];
        for task in 0..4 {
            let mut groups = Groups::new(spec(), &batch.schema()).expect("spec fits");
            groups.fold(&batch.slice(task * 1500, 1500)).expect("fold");
            for (r, part) in groups.partials(3).expect("split").into_iter().enumerate() {
                let back = decode(&encode(&part).expect("encode")).expect("decode");
                assert_eq!(back, vec![part.clone()]);
                let (carrier, origin) =
                    (part["carrier"].as_string::<i32>(), part["origin"].as_primitive::<Int64Type>());
                for i in 0..part.num_rows() {
                    let carrier = carrier.is_valid(i).then(|| carrier.value(i).to_string());
                    seen[r].insert((carrier, origin.is_valid(i).then(|| origin.value(i))));
                }
                let merged = reduce[r].get_or_insert_with(|| Groups::for_partials(spec(), &part.schema()).expect("p"));
                merged.merge(&part).expect("merge");
            }
        }
        // No group went to two partitions; together they are the answer.
        for a in 0..3 {
            for b in a + 1..3 {
                assert!(seen[a].is_disjoint(&seen[b]), "{seen:?}");
            }
        }
        assert!(seen.iter().all(|s| !s.is_empty()), "every partition got groups");
        let mut got = HashMap::new();
        for merged in reduce.into_iter().flatten() {
            got.extend(rows_of(&merged.finish().expect("finish")));
        }
        assert_same(&got, &reference(&batch));
    }

    #[test]
    fn tasks_whose_column_types_differ_merge_by_widening_or_say_which_schema_fixes_them() {
        let one = |t: DataType, values: ArrayRef| {
            let schema = Arc::new(Schema::new(vec![Field::new("k", t.clone(), true), Field::new("v", t, true)]));
            RecordBatch::try_new(schema, vec![values.clone(), values]).expect("batch")
        };
        let ints = one(DataType::Int64, Arc::new(Int64Array::from(vec![1, 2, 2])));
        let floats = one(DataType::Float64, Arc::new(Float64Array::from(vec![1.5, 2.0])));
        let spec = |op| Spec { keys: vec!["k".into()], measures: vec![Measure::new("m", op, Some("v"))] };
        let partial = |op, batch: &RecordBatch| {
            let mut g = Groups::new(spec(op), &batch.schema()).expect("spec");
            g.fold(batch).expect("fold");
            g.partial().expect("partial")
        };
        // Floats first: integer keys and states widen into them.
        let (f, i) = (partial(Op::Max, &floats), partial(Op::Max, &ints));
        let mut merged = Groups::for_partials(spec(Op::Max), &f.schema()).expect("partials");
        merged.merge(&f).expect("floats");
        merged.merge(&i).expect("integers widen");
        let out = merged.finish().expect("finish");
        let keys: Vec<f64> = out["k"].as_primitive::<Float64Type>().values().to_vec();
        assert_eq!(keys, [1.5, 2.0, 1.0], "2 and 2.0 are one key");
        // Integers first: a float key or state is never truncated into them.
        let mut merged = Groups::for_partials(spec(Op::Max), &i.schema()).expect("partials");
        merged.merge(&i).expect("integers");
        let e = merged.merge(&f).expect_err("floats into integer keys").to_string();
        assert_eq!(e, "key `k` held Int64 and now holds Float64; fix its type (--schema k:float)");
        let spec_v = Spec { keys: vec![], measures: vec![Measure::new("m", Op::Sum, Some("v"))] };
        let sums = |b: &RecordBatch| {
            let mut g = Groups::new(spec_v.clone(), &b.schema()).expect("spec");
            g.fold(b).expect("fold");
            g.partial().expect("partial")
        };
        let mut merged = Groups::for_partials(spec_v.clone(), &sums(&ints).schema()).expect("partials");
        merged.merge(&sums(&ints)).expect("integers");
        let e = merged.merge(&sums(&floats)).expect_err("a float sum into an integer one").to_string();
        assert!(
            e.contains(
                "`m`: column `v` held Int64 in one task and Float64 in another; fix its type (--schema v:float)"
            ),
            "{e}"
        );
        // Within one task (a range of partitions), the same for keys.
        let mut g = Groups::new(spec(Op::Max), &ints.schema()).expect("spec");
        g.fold(&ints).expect("integers");
        assert!(g.fold(&floats).expect_err("floats into integer keys").to_string().contains("--schema k:float"));
    }
}
