//! Typed access to [`Batch`] columns and [`BatchBuilder`] for results.

use std::borrow::Cow;
use std::cell::Cell;

use crate::{Batch, Column, Field};

thread_local! {
    /// Where the last lookup by name ended: a model reads its features in
    /// the order its callers list them, so the next one is usually there.
    static NEXT_FIELD: Cell<usize> = const { Cell::new(0) };
}

impl Batch {
    /// The field named `name`, if present.
    pub fn field(&self, name: &str) -> Option<&Field> {
        let hint = NEXT_FIELD.get();
        let at = match self.fields.get(hint) {
            Some(f) if f.name == name => hint,
            _ => self.fields.iter().position(|f| f.name == name)?,
        };
        NEXT_FIELD.set(at + 1);
        self.fields.get(at)
    }

    /// Column `name` as `f64`, like [`Batch::f64s`], but borrowed when it
    /// already is an `f64` column without nulls (no copy).
    pub fn f64_values(&self, name: &str) -> Result<Cow<'_, [f64]>, String> {
        match self.require(name)? {
            Field { values: Column::F64(v), valid: None, .. } => Ok(Cow::Borrowed(v)),
            _ => self.f64s(name).map(Cow::Owned),
        }
    }

    /// Column `name` as `f64`, converting `f32`, `s64` and boolean columns.
    /// A null is an error naming the column and its row: read a column that
    /// may hold nulls with [`Batch::opt_f64s`].
    pub fn f64s(&self, name: &str) -> Result<Vec<f64>, String> {
        let field = self.require(name)?;
        let values = numbers(field)?;
        no_nulls(field, "opt_f64s")?;
        Ok(values)
    }

    /// Column `name` as `f64` (converted as [`Batch::f64s`] does), `None`
    /// where a value is null.
    pub fn opt_f64s(&self, name: &str) -> Result<Vec<Option<f64>>, String> {
        let field = self.require(name)?;
        Ok(with_nulls(field, numbers(field)?))
    }

    /// Column `name` as integers. A null is an error naming the column and
    /// its row: read a column that may hold nulls with [`Batch::opt_i64s`].
    pub fn i64s(&self, name: &str) -> Result<&[i64], String> {
        self.plain(name, "opt_i64s", integers)
    }

    /// Column `name` as integers, `None` where a value is null.
    pub fn opt_i64s(&self, name: &str) -> Result<Vec<Option<i64>>, String> {
        self.optional(name, integers, |v| *v)
    }

    /// Column `name` as strings. A null is an error naming the column and
    /// its row: read a column that may hold nulls with [`Batch::opt_strs`].
    pub fn strs(&self, name: &str) -> Result<&[String], String> {
        self.plain(name, "opt_strs", strings)
    }

    /// Column `name` as strings, `None` where a value is null.
    pub fn opt_strs(&self, name: &str) -> Result<Vec<Option<&str>>, String> {
        self.optional(name, strings, String::as_str)
    }

    /// Column `name` as booleans. A null is an error naming the column and
    /// its row: read a column that may hold nulls with [`Batch::opt_bools`].
    pub fn bools(&self, name: &str) -> Result<&[bool], String> {
        self.plain(name, "opt_bools", booleans)
    }

    /// Column `name` as booleans, `None` where a value is null.
    pub fn opt_bools(&self, name: &str) -> Result<Vec<Option<bool>>, String> {
        self.optional(name, booleans, |v| *v)
    }

    /// The values of column `name` of the kind `pick` takes, refused if one
    /// is null (`instead` names the optional accessor).
    fn plain<'a, T>(&'a self, name: &str, instead: &str, pick: Pick<'a, T>) -> Result<&'a [T], String> {
        let field = self.require(name)?;
        let values = pick(&field.values).map_err(|what| wrong_kind(field, what))?;
        no_nulls(field, instead)?;
        Ok(values)
    }

    /// The values of column `name` of the kind `pick` takes, as `map` gives
    /// them, `None` where one is null.
    fn optional<'a, T, U>(
        &'a self,
        name: &str,
        pick: Pick<'a, T>,
        map: impl Fn(&'a T) -> U,
    ) -> Result<Vec<Option<U>>, String> {
        let field = self.require(name)?;
        let values = pick(&field.values).map_err(|what| wrong_kind(field, what))?;
        Ok(with_nulls(field, values.iter().map(map).collect()))
    }

    /// How many values of column `name` are null.
    pub fn null_count(&self, name: &str) -> Result<usize, String> {
        let field = self.require(name)?;
        Ok(field.valid.as_ref().map_or(0, |valid| valid.iter().filter(|ok| !**ok).count()))
    }

    fn require(&self, name: &str) -> Result<&Field, String> {
        self.field(name).ok_or_else(|| format!("input has no column `{name}`"))
    }
}

/// Takes a column's values if they are of one kind; else names the kind.
type Pick<'a, T> = fn(&'a Column) -> Result<&'a [T], &'static str>;

fn integers(values: &Column) -> Result<&[i64], &'static str> {
    match values {
        Column::S64(v) => Ok(v),
        _ => Err("integers"),
    }
}

fn strings(values: &Column) -> Result<&[String], &'static str> {
    match values {
        Column::Str(v) => Ok(v),
        _ => Err("strings"),
    }
}

fn booleans(values: &Column) -> Result<&[bool], &'static str> {
    match values {
        Column::Boolean(v) => Ok(v),
        _ => Err("booleans"),
    }
}

/// The error for a column read as `wanted` that holds another kind.
fn wrong_kind(field: &Field, wanted: &str) -> String {
    format!("column `{}` holds {}, not {wanted}", field.name, kind(&field.values))
}

/// The name of what a column holds, for errors.
fn kind(values: &Column) -> &'static str {
    match values {
        Column::F32(_) | Column::F64(_) => "floats",
        Column::S64(_) => "integers",
        Column::Str(_) => "strings",
        Column::Boolean(_) => "booleans",
    }
}

/// A numeric column's values as `f64` (a null's placeholder included).
fn numbers(field: &Field) -> Result<Vec<f64>, String> {
    Ok(match &field.values {
        Column::F64(v) => v.clone(),
        Column::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        Column::S64(v) => v.iter().map(|&x| x as f64).collect(),
        Column::Boolean(v) => v.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect(),
        Column::Str(_) => return Err(format!("column `{}` holds strings, not numbers", field.name)),
    })
}

/// An error naming the first null of `field`, if it has one.
fn no_nulls(field: &Field, instead: &str) -> Result<(), String> {
    match field.valid.as_ref().and_then(|valid| valid.iter().position(|ok| !ok)) {
        Some(row) => Err(format!("column `{}` has a null at row {row}; read it with `{instead}`", field.name)),
        None => Ok(()),
    }
}

/// `values` with `None` where `field` has a null.
fn with_nulls<T>(field: &Field, values: Vec<T>) -> Vec<Option<T>> {
    match &field.valid {
        None => values.into_iter().map(Some).collect(),
        Some(valid) => values.into_iter().zip(valid).map(|(v, ok)| ok.then_some(v)).collect(),
    }
}

/// Builds a [`Batch`] of result columns.
#[derive(Debug)]
pub struct BatchBuilder {
    rows: u32,
    fields: Vec<Field>,
}

impl BatchBuilder {
    /// A builder for a batch of `rows` rows.
    pub fn new(rows: u32) -> Self {
        BatchBuilder { rows, fields: Vec::new() }
    }

    /// Adds an `f64` column.
    pub fn f64(self, name: &str, values: Vec<f64>) -> Self {
        self.column(name, Column::F64(values))
    }

    /// Adds an `f32` column.
    pub fn f32(self, name: &str, values: Vec<f32>) -> Self {
        self.column(name, Column::F32(values))
    }

    /// Adds an integer column.
    pub fn i64(self, name: &str, values: Vec<i64>) -> Self {
        self.column(name, Column::S64(values))
    }

    /// Adds a string column.
    pub fn str(self, name: &str, values: Vec<String>) -> Self {
        self.column(name, Column::Str(values))
    }

    /// Adds a boolean column.
    pub fn bool(self, name: &str, values: Vec<bool>) -> Self {
        self.column(name, Column::Boolean(values))
    }

    /// Adds an `f64` column with nulls where a value is `None`.
    pub fn opt_f64(self, name: &str, values: Vec<Option<f64>>) -> Self {
        let (values, valid) = split_nulls(values);
        self.column_with_nulls(name, Column::F64(values), valid)
    }

    /// Adds an integer column with nulls where a value is `None`.
    pub fn opt_i64(self, name: &str, values: Vec<Option<i64>>) -> Self {
        let (values, valid) = split_nulls(values);
        self.column_with_nulls(name, Column::S64(values), valid)
    }

    /// Adds a string column with nulls where a value is `None`.
    pub fn opt_str(self, name: &str, values: Vec<Option<String>>) -> Self {
        let (values, valid) = split_nulls(values);
        self.column_with_nulls(name, Column::Str(values), valid)
    }

    /// Adds a boolean column with nulls where a value is `None`.
    pub fn opt_bool(self, name: &str, values: Vec<Option<bool>>) -> Self {
        let (values, valid) = split_nulls(values);
        self.column_with_nulls(name, Column::Boolean(values), valid)
    }

    /// Adds a column of any type.
    pub fn column(self, name: &str, values: Column) -> Self {
        self.column_with_nulls(name, values, None)
    }

    /// Adds a column of any type with its validity: `valid[i]` is false
    /// where row `i` is null (`None`: no nulls).
    pub fn column_with_nulls(mut self, name: &str, values: Column, valid: Option<Vec<bool>>) -> Self {
        self.fields.push(Field { name: name.to_string(), values, valid });
        self
    }

    /// The finished batch.
    pub fn build(self) -> Batch {
        Batch { rows: self.rows, fields: self.fields }
    }
}

/// Values with a placeholder (`T::default()`) in each null's slot, and the
/// validity flags (`None` when nothing is null).
fn split_nulls<T: Default>(values: Vec<Option<T>>) -> (Vec<T>, Option<Vec<bool>>) {
    let valid: Vec<bool> = values.iter().map(Option::is_some).collect();
    let values = values.into_iter().map(Option::unwrap_or_default).collect();
    (values, valid.contains(&false).then_some(valid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        BatchBuilder::new(3)
            .opt_f64("delay", vec![Some(1.5), None, Some(-2.0)])
            .opt_i64("n", vec![None, Some(7), Some(8)])
            .opt_str("carrier", vec![Some("UA".into()), Some("".into()), None])
            .opt_bool("late", vec![Some(true), None, Some(false)])
            .i64("full", vec![1, 2, 3])
            .build()
    }

    #[test]
    fn optional_accessors_give_none_for_nulls_and_keep_empty_strings_and_zeros() {
        let rows = batch();
        assert_eq!(rows.opt_f64s("delay"), Ok(vec![Some(1.5), None, Some(-2.0)]));
        assert_eq!(rows.opt_i64s("n"), Ok(vec![None, Some(7), Some(8)]));
        assert_eq!(rows.opt_strs("carrier"), Ok(vec![Some("UA"), Some(""), None]));
        assert_eq!(rows.opt_bools("late"), Ok(vec![Some(true), None, Some(false)]));
        assert_eq!(rows.opt_f64s("n"), Ok(vec![None, Some(7.0), Some(8.0)]));
        assert_eq!(rows.opt_i64s("full"), Ok(vec![Some(1), Some(2), Some(3)]));
        assert_eq!(rows.null_count("carrier"), Ok(1));
        assert_eq!(rows.null_count("full"), Ok(0));
    }

    #[test]
    fn plain_accessors_refuse_a_null_naming_column_and_row() {
        let rows = batch();
        assert_eq!(rows.f64s("delay"), Err("column `delay` has a null at row 1; read it with `opt_f64s`".into()));
        assert_eq!(
            rows.i64s("n").map(<[i64]>::to_vec),
            Err("column `n` has a null at row 0; read it with `opt_i64s`".into())
        );
        assert_eq!(
            rows.strs("carrier").map(<[String]>::to_vec),
            Err("column `carrier` has a null at row 2; read it with `opt_strs`".into())
        );
        assert_eq!(
            rows.bools("late").map(<[bool]>::to_vec),
            Err("column `late` has a null at row 1; read it with `opt_bools`".into())
        );
        assert!(rows.f64_values("delay").is_err());
        assert_eq!(rows.i64s("full"), Ok(&[1, 2, 3][..]));
        assert_eq!(rows.f64s("full"), Ok(vec![1.0, 2.0, 3.0]));
    }

    #[test]
    fn a_column_of_another_kind_is_named() {
        let rows = batch();
        assert_eq!(
            rows.i64s("carrier").map(<[i64]>::to_vec),
            Err("column `carrier` holds strings, not integers".into())
        );
        assert_eq!(rows.opt_strs("delay"), Err("column `delay` holds floats, not strings".into()));
        assert_eq!(rows.f64s("carrier"), Err("column `carrier` holds strings, not numbers".into()));
        assert_eq!(rows.opt_f64s("missing"), Err("input has no column `missing`".into()));
    }

    #[test]
    fn a_column_built_without_nulls_has_no_validity_list() {
        let rows = BatchBuilder::new(2).opt_f64("x", vec![Some(1.0), Some(2.0)]).build();
        assert_eq!(rows.fields[0].valid, None);
        let rows = BatchBuilder::new(2).opt_str("s", vec![None, Some("a".into())]).build();
        assert_eq!(rows.fields[0].valid, Some(vec![false, true]));
        assert!(matches!(&rows.fields[0].values, Column::Str(v) if v[0].is_empty() && v[1] == "a"));
    }
}
