"""Flights per carrier: how many, how many with a departure delay, the mean
delay, how many left 15 minutes late or more, the longest distance. The
grid reads the input, groups it and merges the groups of every task."""

import wasmgrid
from wasmgrid import col, count, mean


@wasmgrid.aggregator
def flights():
    return wasmgrid.group_by(
        "carrier", flights=count(), with_delay=count("dep_delay"), mean_delay=mean("dep_delay"),
        delayed_15=count(where=col("dep_delay") >= 15), longest=wasmgrid.max("distance"),
    )
