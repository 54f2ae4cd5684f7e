//! Conversions between Arrow record batches and the WIT `batch` type.
//!
//! Arrow integers become `s64`, floats `f32`/`f64`, strings `str`, booleans
//! `boolean`; any other type (dates, timestamps, decimals, lists, structs)
//! is passed to guests as its string form. Nulls travel in `valid`.
//! JSON rows (the gateway's common case) go to the WIT type and back
//! directly, with the types Arrow's JSON inference would give them.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field as ArrowField, Schema};

use crate::bindings::{Batch, Column, Field};
use crate::{DataError, Error, Result};

/// One JSON row.
pub type JsonRow = serde_json::Map<String, serde_json::Value>;

/// Converts an Arrow batch into the guest's columnar form.
pub fn to_wit(batch: &RecordBatch) -> Result<Batch> {
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(batch.num_columns());
    for (i, col) in batch.columns().iter().enumerate() {
        let name = schema.field(i).name().clone();
        // Logical nulls: a column of only nulls (`DataType::Null`) has no
        // validity buffer, yet every value is null.
        let valid = col.logical_nulls().filter(|n| n.null_count() > 0).map(|n| n.iter().collect());
        let values = column_to_wit(col)?;
        fields.push(Field { name, values, valid });
    }
    let rows = u32::try_from(batch.num_rows()).map_err(|_| Error::Runtime("batch over 2^32 rows".into()))?;
    Ok(Batch { rows, fields })
}

fn column_to_wit(col: &ArrayRef) -> Result<Column> {
    fn ints<T: arrow_array::ArrowPrimitiveType>(col: &ArrayRef) -> Vec<i64>
    where
        T::Native: Into<i64>,
    {
        col.as_primitive::<T>().values().iter().map(|&v| v.into()).collect()
    }
    Ok(match col.data_type() {
        DataType::Float64 => Column::F64(col.as_primitive::<Float64Type>().values().to_vec()),
        DataType::Float32 => Column::F32(col.as_primitive::<Float32Type>().values().to_vec()),
        DataType::Int64 => Column::S64(col.as_primitive::<Int64Type>().values().to_vec()),
        DataType::Int32 => Column::S64(ints::<Int32Type>(col)),
        DataType::Int16 => Column::S64(ints::<Int16Type>(col)),
        DataType::Int8 => Column::S64(ints::<Int8Type>(col)),
        DataType::UInt32 => Column::S64(ints::<UInt32Type>(col)),
        DataType::UInt16 => Column::S64(ints::<UInt16Type>(col)),
        DataType::UInt8 => Column::S64(ints::<UInt8Type>(col)),
        DataType::UInt64 => {
            let values = col.as_primitive::<UInt64Type>().values();
            if values.iter().all(|&v| i64::try_from(v).is_ok()) {
                Column::S64(values.iter().map(|&v| v as i64).collect())
            } else {
                Column::F64(values.iter().map(|&v| v as f64).collect())
            }
        }
        DataType::Boolean => {
            let b = col.as_boolean();
            Column::Boolean((0..b.len()).map(|i| b.is_valid(i) && b.value(i)).collect())
        }
        DataType::Utf8 => Column::Str(strings(col.as_string::<i32>().iter())),
        DataType::LargeUtf8 => Column::Str(strings(col.as_string::<i64>().iter())),
        DataType::Utf8View => Column::Str(strings(col.as_string_view().iter())),
        DataType::Null => Column::Str(vec![String::new(); col.len()]),
        _ => {
            let as_str = arrow_cast::cast(col, &DataType::Utf8).map_err(|e| DataError::Decode {
                path: Default::default(),
                reason: format!("column of type {} cannot be passed to a guest: {e}", col.data_type()),
            })?;
            Column::Str(strings(as_str.as_string::<i32>().iter()))
        }
    })
}

fn strings<'a>(it: impl Iterator<Item = Option<&'a str>>) -> Vec<String> {
    it.map(|s| s.unwrap_or_default().to_string()).collect()
}

/// Converts a guest batch into an Arrow batch, checking that every column has
/// `rows` values.
pub fn from_wit(batch: Batch) -> Result<RecordBatch> {
    let rows = batch.rows as usize;
    let mut fields = Vec::with_capacity(batch.fields.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(batch.fields.len());
    for field in batch.fields {
        check_field(&field, rows)?;
        let nulls = field.valid.as_ref().map(|v| arrow_buffer::NullBuffer::from(v.clone()));
        let (dt, array): (DataType, ArrayRef) = match field.values {
            Column::F64(v) => (DataType::Float64, Arc::new(Float64Array::new(v.into(), nulls))),
            Column::F32(v) => (DataType::Float32, Arc::new(Float32Array::new(v.into(), nulls))),
            Column::S64(v) => (DataType::Int64, Arc::new(Int64Array::new(v.into(), nulls))),
            Column::Boolean(v) => (DataType::Boolean, Arc::new(BooleanArray::new(v.into(), nulls))),
            Column::Str(v) => {
                let array: StringArray = match &field.valid {
                    Some(valid) => v.iter().zip(valid).map(|(s, &ok)| ok.then_some(s.as_str())).collect(),
                    None => v.iter().map(|s| Some(s.as_str())).collect(),
                };
                (DataType::Utf8, Arc::new(array))
            }
        };
        fields.push(ArrowField::new(field.name, dt, true));
        arrays.push(array);
    }
    let options = arrow_array::RecordBatchOptions::new().with_row_count(Some(rows));
    RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &options)
        .map_err(|e| Error::bad_output(e.to_string()))
}

/// Checks that a guest column has a value (and a `valid` flag, if any) for
/// each of `rows` rows.
fn check_field(field: &Field, rows: usize) -> Result<()> {
    let bad = |reason: String| Error::bad_output(format!("column `{}`: {reason}", field.name));
    let len = column_len(&field.values);
    if len != rows {
        return Err(bad(format!("has {len} values but the batch has {rows} rows")));
    }
    match &field.valid {
        Some(v) if v.len() != rows => Err(bad(format!("`valid` has {} flags for {rows} rows", v.len()))),
        _ => Ok(()),
    }
}

fn scored_rows(scored: usize, input: usize) -> Error {
    Error::bad_output(format!("scorer returned {scored} rows for {input} input rows"))
}

fn column_len(c: &Column) -> usize {
    match c {
        Column::F64(v) => v.len(),
        Column::F32(v) => v.len(),
        Column::S64(v) => v.len(),
        Column::Str(v) => v.len(),
        Column::Boolean(v) => v.len(),
    }
}

/// Approximate size of a guest batch in bytes, for output limits.
pub fn wit_size(b: &Batch) -> u64 {
    b.fields
        .iter()
        .map(|f| {
            let values = match &f.values {
                Column::F64(v) => v.len() * 8,
                Column::F32(v) => v.len() * 4,
                Column::S64(v) => v.len() * 8,
                Column::Boolean(v) => v.len(),
                Column::Str(v) => v.iter().map(|s| s.len() + 4).sum(),
            };
            (values + f.name.len() + f.valid.as_ref().map_or(0, Vec::len)) as u64
        })
        .sum()
}

/// The input rows plus the scorer's columns: a scored column whose name
/// matches an input column replaces it; the others are appended.
pub fn merge_scores(input: &RecordBatch, scores: &RecordBatch) -> Result<RecordBatch> {
    if scores.num_rows() != input.num_rows() {
        return Err(scored_rows(scores.num_rows(), input.num_rows()));
    }
    let in_schema = input.schema();
    let score_schema = scores.schema();
    let mut fields: Vec<Arc<ArrowField>> = in_schema.fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = input.columns().to_vec();
    for (i, f) in score_schema.fields().iter().enumerate() {
        match fields.iter().position(|x| x.name() == f.name()) {
            Some(at) => {
                fields[at] = f.clone();
                columns[at] = scores.column(i).clone();
            }
            None => {
                fields.push(f.clone());
                columns.push(scores.column(i).clone());
            }
        }
    }
    let options = arrow_array::RecordBatchOptions::new().with_row_count(Some(input.num_rows()));
    RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options)
        .map_err(|e| Error::bad_output(e.to_string()))
}

/// JSON rows as a WIT batch, with the types Arrow's JSON inference would
/// give them (whole numbers `s64`, other numbers `f64`, strings, booleans;
/// absent or null values marked invalid), so a row scores the same as in
/// `wasmgrid run`. `None` for anything else (nested values, mixed types),
/// which takes the Arrow path.
pub fn json_to_wit(rows: &[JsonRow]) -> Option<Batch> {
    use serde_json::Value;
    // Usually every row has the first row's fields, in its order.
    let Some(first) = rows.first() else {
        return Some(Batch { rows: 0, fields: Vec::new() });
    };
    let mut names: Vec<&str> = first.keys().map(String::as_str).collect();
    if rows.iter().skip(1).any(|r| r.len() != first.len() || !r.keys().zip(&names).all(|(k, n)| k == n)) {
        let mut seen: std::collections::HashSet<&str> = names.iter().copied().collect();
        for key in rows.iter().flat_map(|r| r.keys()) {
            if seen.insert(key) {
                names.push(key);
            }
        }
    }
    let mut fields = Vec::with_capacity(names.len());
    for name in names {
        let values: Vec<Option<&Value>> = rows.iter().map(|r| r.get(name).filter(|v| !v.is_null())).collect();
        let present = || values.iter().flatten();
        let column = if present().all(|v| v.is_i64()) && present().next().is_some() {
            Column::S64(values.iter().map(|v| v.and_then(Value::as_i64).unwrap_or(0)).collect())
        } else if present().all(|v| v.is_i64() || v.is_f64()) && present().next().is_some() {
            Column::F64(values.iter().map(|v| v.and_then(Value::as_f64).unwrap_or(0.0)).collect())
        } else if present().all(|v| v.is_string()) && present().next().is_some() {
            Column::Str(values.iter().map(|v| v.and_then(Value::as_str).unwrap_or("").to_string()).collect())
        } else if present().all(|v| v.is_boolean()) && present().next().is_some() {
            Column::Boolean(values.iter().map(|v| v.and_then(Value::as_bool).unwrap_or(false)).collect())
        } else {
            return None;
        };
        let valid = values.iter().any(Option::is_none).then(|| values.iter().map(Option::is_some).collect());
        fields.push(Field { name: name.to_string(), values: column, valid });
    }
    Some(Batch { rows: u32::try_from(rows.len()).ok()?, fields })
}

/// The input rows plus the scorer's columns, for JSON rows: the same rule
/// as [`merge_scores`] (a scored column whose name matches an input field
/// replaces it; the others are added) and the same checks as [`from_wit`],
/// without Arrow on the way; null values are left out, as Arrow's JSON
/// writer does.
pub fn merge_json_scores(mut rows: Vec<JsonRow>, scores: Batch) -> Result<Vec<JsonRow>> {
    use serde_json::Value;
    if scores.rows as usize != rows.len() {
        return Err(scored_rows(scores.rows as usize, rows.len()));
    }
    for field in scores.fields {
        check_field(&field, rows.len())?;
        let valid = |i: usize| field.valid.as_ref().is_none_or(|v| v[i]);
        for (i, row) in rows.iter_mut().enumerate() {
            let value = match &field.values {
                Column::F32(v) => serde_json::Number::from_f64(f64::from(v[i])).map(Value::Number),
                Column::F64(v) => serde_json::Number::from_f64(v[i]).map(Value::Number),
                Column::S64(v) => Some(Value::from(v[i])),
                Column::Str(v) => Some(Value::String(v[i].clone())),
                Column::Boolean(v) => Some(Value::Bool(v[i])),
            };
            match value.filter(|_| valid(i)) {
                Some(value) => {
                    row.insert(field.name.clone(), value);
                }
                None => {
                    row.shift_remove(&field.name);
                }
            }
        }
    }
    Ok(rows)
}

/// An aggregator's spec in the host's terms.
pub fn aggregation(spec: crate::bindings::aggregator::wasmgrid::function::aggregate::Spec) -> crate::Aggregation {
    use crate::bindings::aggregator::wasmgrid::function::aggregate as wit;
    use wasmgrid_data::aggregate::{Comparison, Condition, Literal, Measure, Op, Spec};
    let measure = |m: wit::Measure| Measure {
        name: m.name,
        op: match m.op {
            wit::Op::Count => Op::Count,
            wit::Op::CountValid => Op::CountValid,
            wit::Op::CountTrue => Op::CountTrue,
            wit::Op::Sum => Op::Sum,
            wit::Op::Mean => Op::Mean,
            wit::Op::Min => Op::Min,
            wit::Op::Max => Op::Max,
        },
        column: m.column,
        filter: m
            .filter
            .into_iter()
            .map(|c| Condition {
                column: c.column,
                comparison: match c.comparison {
                    wit::Comparison::Eq => Comparison::Eq,
                    wit::Comparison::Ne => Comparison::Ne,
                    wit::Comparison::Lt => Comparison::Lt,
                    wit::Comparison::Le => Comparison::Le,
                    wit::Comparison::Gt => Comparison::Gt,
                    wit::Comparison::Ge => Comparison::Ge,
                },
                value: match c.value {
                    wit::Literal::F64(v) => Literal::Float(v),
                    wit::Literal::S64(v) => Literal::Int(v),
                    wit::Literal::Str(v) => Literal::Str(v),
                    wit::Literal::Boolean(v) => Literal::Bool(v),
                },
            })
            .collect(),
    };
    crate::Aggregation {
        spec: Spec { keys: spec.keys, measures: spec.measures.into_iter().map(measure).collect() },
        prepare: spec.prepare,
    }
}

/// `batch` with only `columns`, in that order; a column it lacks is an
/// error naming the ones it has.
pub fn project(batch: &RecordBatch, columns: &[String]) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut picked = Vec::with_capacity(columns.len());
    for name in columns {
        let Ok(i) = schema.index_of(name) else {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(Error::Guest {
                message: format!(
                    "`prepare` asks for column `{name}`, which the input lacks (columns: {})",
                    names.join(", ")
                ),
            });
        };
        picked.push(i);
    }
    batch.project(&picked).map_err(|e| Error::bad_output(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_types_and_nulls() -> Result<()> {
        let schema = Arc::new(Schema::new(vec![
            ArrowField::new("f", DataType::Float64, true),
            ArrowField::new("i", DataType::Int32, false),
            ArrowField::new("s", DataType::Utf8, true),
            ArrowField::new("b", DataType::Boolean, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Float64Array::from(vec![Some(1.5), None, Some(-2.0)])),
                Arc::new(arrow_array::Int32Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![Some("a"), Some("b"), None])),
                Arc::new(BooleanArray::from(vec![true, false, true])),
            ],
        )
        .map_err(|e| Error::Runtime(e.to_string()))?;
        let wit = to_wit(&batch)?;
        assert_eq!(wit.rows, 3);
        assert!(matches!(&wit.fields[1].values, Column::S64(v) if v == &[1, 2, 3]));
        assert_eq!(wit.fields[0].valid, Some(vec![true, false, true]));
        let back = from_wit(wit)?;
        assert_eq!(back.column(0).as_primitive::<Float64Type>().value(0), 1.5);
        assert!(back.column(0).is_null(1));
        assert!(back.column(2).is_null(2));
        assert_eq!(back.column(2).as_string::<i32>().value(1), "b");
        Ok(())
    }

    #[test]
    fn rejects_columns_of_the_wrong_length() {
        let bad = Batch {
            rows: 3,
            fields: vec![Field { name: "score".into(), values: Column::F64(vec![1.0]), valid: None }],
        };
        let err = from_wit(bad).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("has 1 values but the batch has 3 rows"), "{err}");
    }
}
