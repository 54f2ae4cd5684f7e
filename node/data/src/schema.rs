//! Column types of CSV and JSON-lines input: the types a user fixes with
//! `--schema`, and the types a partition's values settle on.
//!
//! A text file's schema is inferred from its head ([`crate::INFER_ROWS`]
//! rows). The head can be wrong about the rest: a column of integers with a
//! `2.5` further down, a column empty for its first thousand rows. So a
//! partition is typed from every value it holds, widening, never
//! narrowing: integers to floats, anything but numbers to strings, an
//! empty head column to whatever the partition holds. A partition is first
//! decoded with the head's types, except that empty head columns (and, in
//! JSON lines, integer ones, which the JSON decoder would truncate a `2.5`
//! in) are read as text; if a value does not fit, every column is read as
//! text. Columns read as text are then typed ([`settled_types`],
//! [`settle`]). Columns the user fixed are decoded as given, and a value
//! that does not fit is an error naming file, line and column.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, NullArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

/// Column types given by the user: `name:type` pairs, `type` one of `int`,
/// `float`, `str` or `bool` (`i64`, `f64`, `string`, `boolean` too).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnTypes(Vec<(String, DataType)>);

impl ColumnTypes {
    /// Whether no column is fixed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The type fixed for column `name`.
    pub fn get(&self, name: &str) -> Option<&DataType> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// How `--schema` names column `name`'s fixed type.
    pub fn name_of(&self, name: &str) -> &'static str {
        self.get(name).map_or("", type_name)
    }

    /// `schema` with the fixed columns' types. A fixed column the file does
    /// not have is an error, which lists the columns it has.
    pub fn apply(&self, schema: &Schema) -> Result<Schema, String> {
        for (name, _) in &self.0 {
            if schema.field_with_name(name).is_err() {
                let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(format!(
                    "--schema names column `{name}`, which it does not have (columns: {})",
                    names.join(", ")
                ));
            }
        }
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| match self.get(f.name()) {
                Some(t) => Field::new(f.name(), t.clone(), true),
                None => f.as_ref().clone(),
            })
            .collect();
        Ok(Schema::new(fields))
    }
}

/// The name a type is given by in `--schema`.
fn type_name(t: &DataType) -> &'static str {
    match t {
        DataType::Int64 => "int",
        DataType::Float64 => "float",
        DataType::Boolean => "bool",
        _ => "str",
    }
}

impl fmt::Display for ColumnTypes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, t)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{name}:{}", type_name(t))?;
        }
        Ok(())
    }
}

impl FromStr for ColumnTypes {
    type Err = String;

    /// `name:type` pairs separated by commas or newlines (a schema file has
    /// one per line; blank lines and `#` comments are skipped).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut types = Vec::new();
        for item in s.split([',', '\n']).map(str::trim) {
            if item.is_empty() || item.starts_with('#') {
                continue;
            }
            let Some((name, t)) = item.rsplit_once(':') else {
                return Err(format!("`{item}` is not `column:type` (types: int, float, str, bool)"));
            };
            let (name, t) = (name.trim(), t.trim());
            let t = match t.to_ascii_lowercase().as_str() {
                "int" | "i64" | "int64" | "integer" => DataType::Int64,
                "float" | "f64" | "float64" | "double" => DataType::Float64,
                "str" | "string" | "utf8" | "text" => DataType::Utf8,
                "bool" | "boolean" => DataType::Boolean,
                other => return Err(format!("column `{name}`: unknown type `{other}` (types: int, float, str, bool)")),
            };
            if name.is_empty() {
                return Err(format!("`{item}` names no column"));
            }
            if types.iter().any(|(n, _)| n == name) {
                return Err(format!("column `{name}` is given twice"));
            }
            types.push((name.to_string(), t));
        }
        Ok(ColumnTypes(types))
    }
}

/// The schema a partition is decoded with: empty head columns as text, the
/// rest as `schema` says (with every column nullable). `all_text` reads every
/// column not fixed as text (after a decode with types failed).
/// `exact_ints` reads integer columns as text too, to be parsed strictly:
/// the JSON decoder would truncate a `2.5` to 2 where the CSV one fails.
pub(crate) fn decoding(schema: &Schema, fixed: &ColumnTypes, all_text: bool, exact_ints: bool) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let t = f.data_type();
            let text = match fixed.get(f.name()) {
                Some(fixed) => exact_ints && *fixed == DataType::Int64,
                None => match t {
                    DataType::Null => true,
                    DataType::Int64 => exact_ints || all_text,
                    DataType::Utf8 => false,
                    // A nested column stays as it is (text cannot hold an object).
                    t => all_text && !t.is_nested(),
                },
            };
            Field::new(f.name(), if text { DataType::Utf8 } else { t.clone() }, true)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Whether decoding with [`decoding`] left columns to [`settle`].
pub(crate) fn needs_settling(schema: &Schema, decoded: &Schema) -> bool {
    schema.fields().iter().zip(decoded.fields()).any(|(f, d)| f.data_type() != d.data_type())
}

/// What the values of a text column hold, every value considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Holds {
    /// Only nulls.
    Nothing,
    Bools,
    Ints,
    Floats,
    Text,
}

fn holds(column: &ArrayRef) -> Holds {
    let mut seen = Holds::Nothing;
    for v in column.as_string::<i32>().iter().flatten() {
        let this = if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false") {
            Holds::Bools
        } else if v.parse::<i64>().is_ok() {
            Holds::Ints
        } else if v.parse::<f64>().is_ok() {
            Holds::Floats
        } else {
            return Holds::Text;
        };
        seen = match (seen, this) {
            (Holds::Nothing, x) => x,
            (a, b) if a == b => a,
            (Holds::Ints, Holds::Floats) | (Holds::Floats, Holds::Ints) => Holds::Floats,
            _ => return Holds::Text,
        };
    }
    seen
}

/// The head's type `head` widened to what a partition's values hold.
fn widen(head: &DataType, seen: Holds) -> DataType {
    let head = match head {
        DataType::Int64 => Holds::Ints,
        DataType::Boolean => Holds::Bools,
        DataType::Float64 => Holds::Floats,
        DataType::Null => Holds::Nothing,
        _ => Holds::Text,
    };
    let settled = match (head, seen) {
        (a, Holds::Nothing) => a,
        (Holds::Nothing, b) => b,
        (a, b) if a == b => a,
        (Holds::Ints, Holds::Floats) | (Holds::Floats, Holds::Ints) => Holds::Floats,
        _ => Holds::Text,
    };
    match settled {
        Holds::Nothing => DataType::Null,
        Holds::Bools => DataType::Boolean,
        Holds::Ints => DataType::Int64,
        Holds::Floats => DataType::Float64,
        Holds::Text => DataType::Utf8,
    }
}

/// The type each column read as text settles on over the whole partition
/// (`batches[b][i]` is batch `b`'s column `i`), for the head's `schema` (in
/// which fixed columns have their fixed types).
pub(crate) fn settled_types(
    schema: &Schema,
    decoded: &Schema,
    batches: &[Vec<ArrayRef>],
    fixed: &ColumnTypes,
) -> Vec<DataType> {
    schema
        .fields()
        .iter()
        .zip(decoded.fields())
        .enumerate()
        .map(|(i, (head, got))| {
            if head.data_type() == got.data_type() || fixed.get(head.name()).is_some() {
                return head.data_type().clone();
            }
            let seen = batches.iter().map(|b| holds(&b[i])).max().unwrap_or(Holds::Nothing);
            widen(head.data_type(), seen)
        })
        .collect()
}

/// A column read as text converted to the type it settled on (or was
/// fixed to); `Err(row)` names the first value that does not fit.
pub(crate) fn settle(column: &ArrayRef, to: &DataType) -> Result<ArrayRef, usize> {
    fn parsed<T>(column: &ArrayRef, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<Option<T>>, usize> {
        column
            .as_string::<i32>()
            .iter()
            .enumerate()
            .map(|(row, v)| v.map(|s| parse(s).ok_or(row)).transpose())
            .collect()
    }
    if column.data_type() == to || column.as_string_opt::<i32>().is_none() {
        return Ok(column.clone());
    }
    let bool_of = |s: &str| match s.to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    };
    Ok(match to {
        DataType::Int64 => Arc::new(Int64Array::from(parsed(column, |s| s.parse().ok())?)),
        DataType::Float64 => Arc::new(Float64Array::from(parsed(column, |s| s.parse().ok())?)),
        DataType::Boolean => Arc::new(BooleanArray::from(parsed(column, bool_of)?)),
        DataType::Null => Arc::new(NullArray::new(column.len())),
        _ => column.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::StringArray;

    fn text(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(values.iter().copied().collect::<StringArray>())
    }

    #[test]
    fn schema_strings_parse_and_print() {
        let types: ColumnTypes =
            "dep_delay:float, carrier : str,\n# a comment\nflights:int,late:boolean".parse().expect("valid");
        assert_eq!(types.get("dep_delay"), Some(&DataType::Float64));
        assert_eq!(types.get("carrier"), Some(&DataType::Utf8));
        assert_eq!(types.get("late"), Some(&DataType::Boolean));
        assert_eq!(types.to_string(), "dep_delay:float,carrier:str,flights:int,late:bool");
        assert_eq!("a:b:int".parse::<ColumnTypes>().expect("valid").get("a:b"), Some(&DataType::Int64));
        for (bad, says) in [
            ("x", "`x` is not `column:type`"),
            ("x:decimal", "column `x`: unknown type `decimal`"),
            (":int", "names no column"),
            ("x:int,x:float", "column `x` is given twice"),
        ] {
            let err = bad.parse::<ColumnTypes>().expect_err("an error");
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn a_fixed_column_the_file_lacks_is_named_with_the_columns_it_has() {
        let schema = Schema::new(vec![Field::new("a", DataType::Int64, true), Field::new("b", DataType::Utf8, true)]);
        let err = "c:int".parse::<ColumnTypes>().expect("valid").apply(&schema).expect_err("an error");
        assert_eq!(err, "--schema names column `c`, which it does not have (columns: a, b)");
        let applied = "a:float".parse::<ColumnTypes>().expect("valid").apply(&schema).expect("valid");
        assert_eq!(applied.field(0).data_type(), &DataType::Float64);
    }

    #[test]
    fn columns_widen_and_never_narrow() {
        let ints = text(&[Some("1"), None, Some("-3")]);
        let floats = text(&[Some("1"), Some("2.5"), None]);
        let words = text(&[Some("1"), Some("x")]);
        let nulls = text(&[None, None]);
        let bools = text(&[Some("true"), Some("FALSE")]);
        assert_eq!(widen(&DataType::Int64, holds(&ints)), DataType::Int64);
        assert_eq!(widen(&DataType::Int64, holds(&floats)), DataType::Float64);
        assert_eq!(widen(&DataType::Float64, holds(&ints)), DataType::Float64);
        assert_eq!(widen(&DataType::Int64, holds(&words)), DataType::Utf8);
        assert_eq!(widen(&DataType::Null, holds(&floats)), DataType::Float64);
        assert_eq!(widen(&DataType::Null, holds(&nulls)), DataType::Null);
        assert_eq!(widen(&DataType::Int64, holds(&nulls)), DataType::Int64);
        assert_eq!(widen(&DataType::Null, holds(&bools)), DataType::Boolean);
        assert_eq!(widen(&DataType::Boolean, holds(&ints)), DataType::Utf8);
        let settled = settle(&floats, &DataType::Float64).expect("valid");
        let settled = settled.as_primitive::<arrow_array::types::Float64Type>();
        assert_eq!((settled.value(0), settled.value(1), settled.is_null(2)), (1.0, 2.5, true));
        assert_eq!(settle(&nulls, &DataType::Null).expect("valid").logical_null_count(), 2);
        assert_eq!(settle(&floats, &DataType::Int64).err(), Some(1));
        assert_eq!(settle(&words, &DataType::Boolean).err(), Some(0));
    }
}
