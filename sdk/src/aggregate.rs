//! Group-by aggregations the host computes: an [`Aggregator`](crate::Aggregator)
//! says what to compute with an [`Aggregation`], and the grid reads the
//! input, folds each task's rows and merges the tasks' partial states,
//! natively. No reducer, no packing of partial results.
//!
//! Null semantics are SQL's: a measure skips null values (a group without
//! one has a null sum, mean, min and max, and zero counts), a condition is
//! false where its column is null, and null keys form a group of their own.
//!
//! ```ignore
//! use wasmgrid_sdk::{Aggregation, Aggregator, col};
//!
//! struct Flights;
//! impl Aggregator for Flights {
//!     fn aggregation() -> Aggregation {
//!         Aggregation::by(["carrier"])
//!             .count("flights")
//!             .mean("mean_delay", "dep_delay")
//!             .count_if("delayed_15", col("dep_delay").ge(15))
//!     }
//! }
//! wasmgrid_sdk::export_aggregator!(Flights);
//! ```

use crate::bindings::aggregator::wasmgrid::function::aggregate as wit;

pub use wit::{Comparison, Condition, Literal, Op};

/// What to group by and compute: key columns, then one output column per
/// measure, in the order they are added.
#[derive(Debug, Clone)]
pub struct Aggregation {
    keys: Vec<String>,
    measures: Vec<wit::Measure>,
    prepare: Option<Vec<String>>,
}

impl Aggregation {
    /// Groups rows by the values of `keys` (one group per distinct
    /// combination, nulls included).
    pub fn by<K: Into<String>>(keys: impl IntoIterator<Item = K>) -> Aggregation {
        Aggregation { keys: keys.into_iter().map(Into::into).collect(), measures: Vec::new(), prepare: None }
    }

    /// One group of every row: the measures over the whole input.
    pub fn all() -> Aggregation {
        Aggregation::by(Vec::<String>::new())
    }

    fn measure(mut self, name: &str, op: Op, column: Option<&str>) -> Aggregation {
        let (name, column) = (name.to_string(), column.map(str::to_string));
        self.measures.push(wit::Measure { name, op, column, filter: Vec::new() });
        self
    }

    /// `name`: the group's rows.
    pub fn count(self, name: &str) -> Aggregation {
        self.measure(name, Op::Count, None)
    }

    /// `name`: the group's rows where `column` is not null.
    pub fn count_valid(self, name: &str, column: &str) -> Aggregation {
        self.measure(name, Op::CountValid, Some(column))
    }

    /// `name`: the group's rows where the boolean `column` is true.
    pub fn count_true(self, name: &str, column: &str) -> Aggregation {
        self.measure(name, Op::CountTrue, Some(column))
    }

    /// `name`: the group's rows for which `condition` holds.
    pub fn count_if(self, name: &str, condition: Condition) -> Aggregation {
        self.count(name).filter(condition)
    }

    /// `name`: the sum of `column` (integers stay integers).
    pub fn sum(self, name: &str, column: &str) -> Aggregation {
        self.measure(name, Op::Sum, Some(column))
    }

    /// `name`: the mean of `column`, a float.
    pub fn mean(self, name: &str, column: &str) -> Aggregation {
        self.measure(name, Op::Mean, Some(column))
    }

    /// `name`: the smallest value of `column`.
    pub fn min(self, name: &str, column: &str) -> Aggregation {
        self.measure(name, Op::Min, Some(column))
    }

    /// `name`: the largest value of `column`.
    pub fn max(self, name: &str, column: &str) -> Aggregation {
        self.measure(name, Op::Max, Some(column))
    }

    /// Restricts the last measure added to the rows for which `condition`
    /// holds (and its earlier conditions): SQL's `FILTER (WHERE ...)`.
    /// `sum("late_miles", "distance").filter(col("dep_delay").ge(15))`.
    ///
    /// # Panics
    ///
    /// Before any measure is added.
    pub fn filter(mut self, condition: Condition) -> Aggregation {
        let last = self.measures.last_mut().expect("`filter` applies to the measure added before it");
        last.filter.push(condition);
        self
    }

    /// Sends each batch of input, with only `columns`, through the
    /// aggregator's [`prepare`](crate::Aggregator::prepare) before it is
    /// folded: the columns it returns (computed keys, flags, features) can
    /// be grouped by and measured like input columns.
    pub fn prepare<C: Into<String>>(mut self, columns: impl IntoIterator<Item = C>) -> Aggregation {
        self.prepare = Some(columns.into_iter().map(Into::into).collect());
        self
    }

    #[doc(hidden)]
    pub fn into_wit(self) -> wit::Spec {
        wit::Spec { keys: self.keys, measures: self.measures, prepare: self.prepare }
    }
}

/// A column to compare in a [`Condition`].
#[derive(Debug, Clone)]
pub struct Col(String);

/// The column `name`, to compare: `col("dep_delay").ge(15)`.
pub fn col(name: &str) -> Col {
    Col(name.to_string())
}

macro_rules! comparisons {
    ($($(#[$doc:meta])* $method:ident => $comparison:ident,)*) => {
        impl Col {
            $(
                $(#[$doc])*
                pub fn $method(self, value: impl Into<Value>) -> Condition {
                    Condition { column: self.0, comparison: Comparison::$comparison, value: value.into().0 }
                }
            )*
        }
    };
}

comparisons! {
    /// The column equals `value`.
    eq => Eq,
    /// The column differs from `value` (and is not null).
    ne => Ne,
    /// The column is less than `value`.
    lt => Lt,
    /// The column is at most `value`.
    le => Le,
    /// The column is more than `value`.
    gt => Gt,
    /// The column is at least `value`.
    ge => Ge,
}

/// A value a column is compared with: a number, a string or a boolean.
#[derive(Debug, Clone)]
pub struct Value(Literal);

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value(Literal::F64(v))
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value(Literal::S64(v))
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value(Literal::S64(v.into()))
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value(Literal::Str(v.to_string()))
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value(Literal::Str(v))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value(Literal::Boolean(v))
    }
}
