//! Flights per carrier: how many, how many with a departure delay, the mean
//! delay, how many left 15 minutes late or more, the longest distance.
//! The grid reads the input, groups it and merges the groups of every task.

use wasmgrid_sdk::{Aggregation, Aggregator, col, export_aggregator};

struct Flights;

impl Aggregator for Flights {
    fn aggregation() -> Aggregation {
        Aggregation::by(["carrier"])
            .count("flights")
            .count_valid("with_delay", "dep_delay")
            .mean("mean_delay", "dep_delay")
            .count_if("delayed_15", col("dep_delay").ge(15))
            .max("longest", "distance")
    }
}

export_aggregator!(Flights);
