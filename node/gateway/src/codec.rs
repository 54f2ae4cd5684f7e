//! The bodies of per-request calls: JSON rows (`{"rows": [...]}` or one
//! row object) or an Arrow IPC stream, in and out.

use std::sync::Arc;

use arrow_array::RecordBatch;
use wasmgrid_runtime::convert::json_to_wit;
#[cfg(test)]
use wasmgrid_runtime::convert::merge_json_scores;
use wasmgrid_runtime::{Error, Result};

/// The media type of Arrow IPC streams.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// A call's body that is not rows: what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadBody(String);

impl From<String> for BadBody {
    fn from(message: String) -> Self {
        BadBody(message)
    }
}

/// One JSON row.
pub(crate) type Row = serde_json::Map<String, serde_json::Value>;

/// Rows in and out, in the caller's format.
pub(crate) enum Rows {
    Json { rows: Vec<Row> },
    Arrow { batch: RecordBatch },
}

impl Rows {
    /// How many rows.
    pub(crate) fn len(&self) -> usize {
        match self {
            Rows::Json { rows } => rows.len(),
            Rows::Arrow { batch } => batch.num_rows(),
        }
    }
}

/// `{"rows": [...]}` or one row object.
pub(crate) fn read_json(body: &[u8]) -> std::result::Result<Rows, BadBody> {
    let hint = "expected {\"rows\": [{...}, ...]} or one row object";
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("malformed JSON body: {e}; {hint}"))?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(BadBody(format!("malformed JSON body: not an object; {hint}")));
    };
    let rows = match object.remove("rows") {
        Some(serde_json::Value::Array(rows)) if object.is_empty() => rows
            .into_iter()
            .map(|r| match r {
                serde_json::Value::Object(o) => Ok(o),
                other => Err(format!("malformed JSON body: a row is {other}, not an object; {hint}")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(rows) if object.is_empty() => {
            return Err(BadBody(format!("malformed JSON body: `rows` is {rows}, not a list")));
        }
        Some(rows) => {
            // A row that happens to have a `rows` field among others.
            object.insert("rows".into(), rows);
            vec![object]
        }
        None => vec![object],
    };
    Ok(Rows::Json { rows })
}

/// Decodes a call's body as the gateway does before a guest sees it (the
/// rows, then the columns a guest gets), without running anything; returns
/// the number of rows. For the fuzzer.
#[doc(hidden)]
pub fn decode_body(body: &[u8], arrow: bool) -> std::result::Result<usize, BadBody> {
    match if arrow { read_arrow(body)? } else { read_json(body)? } {
        Rows::Json { rows } => {
            if json_to_wit(&rows).is_none() {
                rows_to_batch(&rows).map_err(|e| e.to_string())?;
            }
            Ok(rows.len())
        }
        Rows::Arrow { batch } => Ok(batch.num_rows()),
    }
}

pub(crate) fn read_arrow(body: &[u8]) -> std::result::Result<Rows, BadBody> {
    let bad = |e: &dyn std::fmt::Display| format!("malformed Arrow IPC stream: {e}");
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None).map_err(|e| bad(&e))?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| bad(&e))?;
    let batch = arrow_select::concat::concat_batches(&schema, &batches).map_err(|e| bad(&e))?;
    Ok(Rows::Arrow { batch })
}

pub(crate) fn write_arrow(batch: &RecordBatch) -> Result<Vec<u8>> {
    let bad = |e: &dyn std::fmt::Display| Error::bad_output(format!("encoding Arrow: {e}"));
    let mut writer = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &batch.schema()).map_err(|e| bad(&e))?;
    writer.write(batch).map_err(|e| bad(&e))?;
    writer.into_inner().map_err(|e| bad(&e))
}

pub(crate) fn rows_to_batch(rows: &[Row]) -> Result<RecordBatch> {
    let bad = |e: &dyn std::fmt::Display| Error::bad_input_request(format!("rows: {e}"));
    let values: Vec<serde_json::Value> = rows.iter().cloned().map(serde_json::Value::Object).collect();
    let schema = arrow_json::reader::infer_json_schema_from_iterator(values.iter().map(Ok)).map_err(|e| bad(&e))?;
    let mut decoder = arrow_json::ReaderBuilder::new(Arc::new(schema))
        .with_batch_size(rows.len().max(1))
        .build_decoder()
        .map_err(|e| bad(&e))?;
    decoder.serialize(&values).map_err(|e| bad(&e))?;
    decoder.flush().map_err(|e| bad(&e))?.ok_or_else(|| bad(&"no rows"))
}

pub(crate) fn batch_to_rows(batch: &RecordBatch) -> Result<Vec<Row>> {
    let bad = |e: &dyn std::fmt::Display| Error::bad_output(format!("encoding rows: {e}"));
    let mut writer = arrow_json::ArrayWriter::new(Vec::new());
    writer.write(batch).map_err(|e| bad(&e))?;
    writer.finish().map_err(|e| bad(&e))?;
    serde_json::from_slice(&writer.into_inner()).map_err(|e| bad(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_rows(body: &str) -> Result<Vec<Row>, String> {
        match read_json(body.as_bytes()).map_err(|e| e.to_string())? {
            Rows::Json { rows } => Ok(rows),
            Rows::Arrow { .. } => Err("arrow".into()),
        }
    }

    #[test]
    fn json_bodies_are_rows_or_one_row() {
        assert_eq!(json_rows(r#"{"rows": [{"x": 1}, {"x": 2}]}"#).map(|r| r.len()), Ok(2));
        assert_eq!(json_rows(r#"{"x": 1, "y": "a"}"#).map(|r| r.len()), Ok(1));
        let odd = json_rows(r#"{"rows": 3, "x": 1}"#).expect("a row with a rows field");
        assert_eq!(odd[0]["rows"], 3);
        assert!(json_rows(r#"{"rows": 3}"#).is_err_and(|e| e.contains("not a list")));
        assert!(json_rows(r#"{"rows": [1]}"#).is_err_and(|e| e.contains("not an object")));
        assert!(json_rows("[1, 2]").is_err_and(|e| e.contains("not an object")));
        assert!(json_rows("{\"rows\": [").is_err_and(|e| e.contains("malformed JSON")));
    }

    #[test]
    fn json_rows_become_typed_columns_and_scores_merge_back() {
        use wasmgrid_runtime::bindings::{Batch, Column, Field};
        let rows = json_rows(r#"{"rows": [{"a": 1, "b": 1.5, "s": "x"}, {"a": 2, "b": 2, "t": true}]}"#).expect("rows");
        let batch = json_to_wit(&rows).expect("scalars convert");
        let names: Vec<&str> = batch.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "s", "t"]);
        assert!(matches!(&batch.fields[0].values, Column::S64(v) if v == &[1, 2]));
        assert!(matches!(&batch.fields[1].values, Column::F64(v) if v == &[1.5, 2.0]));
        assert_eq!(batch.fields[2].valid, Some(vec![true, false]));
        assert_eq!(batch.fields[0].valid, None);
        assert!(
            json_to_wit(&json_rows(r#"{"a": [1, 2]}"#).expect("row")).is_none(),
            "nested values take the Arrow path"
        );
        assert!(json_to_wit(&json_rows(r#"{"rows": [{"a": 1}, {"a": "x"}]}"#).expect("rows")).is_none());

        let scores = Batch {
            rows: 2,
            fields: vec![
                Field { name: "a".into(), values: Column::F64(vec![0.5, 0.25]), valid: None },
                Field { name: "z".into(), values: Column::S64(vec![7, 8]), valid: Some(vec![false, true]) },
            ],
        };
        let merged = merge_json_scores(rows.clone(), scores).expect("merge");
        assert_eq!(serde_json::to_string(&merged[0]).expect("json"), r#"{"a":0.5,"b":1.5,"s":"x"}"#);
        assert_eq!(serde_json::to_string(&merged[1]).expect("json"), r#"{"a":0.25,"b":2,"t":true,"z":8}"#);
        let short = Batch { rows: 1, fields: Vec::new() };
        assert!(merge_json_scores(rows, short).is_err());
    }

    #[test]
    fn arrow_streams_round_trip_and_garbage_is_refused() {
        let batch = RecordBatch::try_from_iter([(
            "x",
            Arc::new(arrow_array::Float64Array::from(vec![1.0, 2.5])) as arrow_array::ArrayRef,
        )])
        .expect("batch");
        let bytes = write_arrow(&batch).expect("write");
        let Ok(Rows::Arrow { batch: back }) = read_arrow(&bytes) else { panic!("not read back") };
        assert_eq!(back, batch);
        assert!(read_arrow(b"not arrow").is_err_and(|e| e.to_string().contains("malformed Arrow")));
    }
}
