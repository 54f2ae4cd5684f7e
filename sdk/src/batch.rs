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

    /// Column `name` as `f64`, converting `f32` and `s64` columns (nulls become NaN).
    pub fn f64s(&self, name: &str) -> Result<Vec<f64>, String> {
        let field = self.require(name)?;
        let mut values: Vec<f64> = match &field.values {
            Column::F64(v) => v.clone(),
            Column::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Column::S64(v) => v.iter().map(|&x| x as f64).collect(),
            Column::Boolean(v) => v.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect(),
            Column::Str(_) => return Err(format!("column `{name}` holds strings, not numbers")),
        };
        if let Some(valid) = &field.valid {
            for (v, ok) in values.iter_mut().zip(valid) {
                if !ok {
                    *v = f64::NAN;
                }
            }
        }
        Ok(values)
    }

    /// Column `name` as strings.
    pub fn strs(&self, name: &str) -> Result<&[String], String> {
        match &self.require(name)?.values {
            Column::Str(v) => Ok(v),
            _ => Err(format!("column `{name}` does not hold strings")),
        }
    }

    /// Column `name` as integers.
    pub fn i64s(&self, name: &str) -> Result<&[i64], String> {
        match &self.require(name)?.values {
            Column::S64(v) => Ok(v),
            _ => Err(format!("column `{name}` does not hold integers")),
        }
    }

    fn require(&self, name: &str) -> Result<&Field, String> {
        self.field(name).ok_or_else(|| format!("input has no column `{name}`"))
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

    /// Adds a column of any type.
    pub fn column(mut self, name: &str, values: Column) -> Self {
        self.fields.push(Field { name: name.to_string(), values, valid: None });
        self
    }

    /// The finished batch.
    pub fn build(self) -> Batch {
        Batch { rows: self.rows, fields: self.fields }
    }
}
