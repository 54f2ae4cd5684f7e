//! The task executor `wasmgrid run` and the grid's workers share: one map
//! task (a scorer over every batch of a partition, a mapper run once, or an
//! aggregator's group-by folded over every batch) and one reduce task (the
//! reducer over each key of a partition's pairs, or the merge of an
//! aggregator's partial states).
//! Where the output goes, and what is kept of it, is the caller's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use wasmgrid_data::aggregate::Groups;
use wasmgrid_data::pairs::Pairs;
use wasmgrid_data::{OutputWriter, PartitionReader};
use wasmgrid_runtime::{Artifacts, Captured, Error, Function, Instance, Io, Kind, Limits, Result};

/// Rows per batch an aggregator folds when no `prepare` call is in the
/// way: the host's loop, not the guest's.
const AGGREGATE_ROWS: usize = 1 << 16;

/// Config values a function's calls see.
pub type Config = Arc<BTreeMap<String, String>>;

/// How a task's calls run.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// Limits of each call.
    pub limits: &'a Limits,
    /// The config values.
    pub config: &'a Config,
    /// The version's artifacts.
    pub artifacts: &'a Artifacts,
}

impl Call<'_> {
    /// What a call reads and writes besides its arguments: `input`,
    /// `output` and the version's artifacts.
    fn io(&self, input: Option<PartitionReader>, output: Option<OutputWriter>) -> Io {
        Io { input, output, artifacts: self.artifacts.clone() }
    }
}

/// What one map task made.
#[derive(Debug)]
pub struct Mapped {
    /// The output rows (a scorer's always; a mapper's when it wrote any or
    /// was given a writer), not yet finished.
    pub output: Option<OutputWriter>,
    /// Pairs a mapper emitted.
    pub pairs: Pairs,
    /// An aggregator's groups (none when it read no rows).
    pub groups: Option<Groups>,
    /// Input records read.
    pub records_in: u64,
    /// Time its `gpu` calls took.
    pub gpu_time: Duration,
}

/// Runs one map task over `reader`: a scorer scores it `batch_rows` rows at a
/// time into `writer`; a mapper runs once with both (`index` is its
/// partition). What the guest logged goes to `captured`, failed or not.
pub fn map(
    function: &Function,
    call: Call<'_>,
    index: u32,
    reader: PartitionReader,
    writer: OutputWriter,
    batch_rows: usize,
    captured: &mut Captured,
) -> Result<Mapped> {
    map_range(function, call, [Ok((index, reader))], writer, batch_rows, captured)
}

/// Runs a range of map tasks, `inputs` (each partition's index and reader)
/// in order, into one `writer`: a scorer is instantiated once and scores
/// every partition's batches; a mapper runs once per partition, as it would
/// alone, its pairs and rows following the previous ones'. `captured` keeps
/// what the last partition's guest logged.
pub fn map_range(
    function: &Function,
    call: Call<'_>,
    inputs: impl IntoIterator<Item = Result<(u32, PartitionReader)>>,
    writer: OutputWriter,
    batch_rows: usize,
    captured: &mut Captured,
) -> Result<Mapped> {
    match function.kind() {
        Kind::Scorer => {
            let mut writer = writer;
            let mut records_in = 0;
            let instance = function.instantiate(call.limits, call.config.clone(), call.io(None, None))?;
            let gpu_time = observed(instance, captured, |instance| {
                for input in inputs {
                    let (_, mut reader) = input?;
                    while let Some(batch) = reader.next_batch(batch_rows)? {
                        writer.write_batch(&instance.score_arrow(&batch)?)?;
                    }
                    records_in += reader.records();
                }
                Ok(())
            })?
            .1
            .gpu_time;
            Ok(Mapped { output: Some(writer), pairs: Pairs::default(), groups: None, records_in, gpu_time })
        }
        Kind::Aggregator => {
            let mut groups: Option<Groups> = None;
            let mut records_in = 0;
            let instance = function.instantiate(call.limits, call.config.clone(), call.io(None, None))?;
            observed(instance, captured, |instance| {
                let aggregation = instance.aggregation()?;
                let rows = if aggregation.prepare.is_some() { batch_rows } else { batch_rows.max(AGGREGATE_ROWS) };
                let columns = aggregation.spec.columns();
                for input in inputs {
                    let (_, mut reader) = input?;
                    select(&mut reader, &columns, aggregation.prepare.as_deref())?;
                    while let Some(batch) = reader.next_batch(rows)? {
                        let batch = match &aggregation.prepare {
                            Some(columns) => instance.prepare_arrow(&batch, columns)?,
                            None => batch,
                        };
                        let groups = match &mut groups {
                            Some(g) => g,
                            None => groups.insert(Groups::new(aggregation.spec.clone(), &batch.schema())?),
                        };
                        groups.fold(&batch)?;
                    }
                    records_in += reader.records();
                }
                Ok(())
            })?;
            let gpu_time = Duration::ZERO;
            Ok(Mapped { output: Some(writer), pairs: Pairs::default(), groups, records_in, gpu_time })
        }
        Kind::Mapper => {
            let mut mapped = Mapped {
                output: Some(writer),
                pairs: Pairs::default(),
                groups: None,
                records_in: 0,
                gpu_time: Duration::ZERO,
            };
            for input in inputs {
                let (index, reader) = input?;
                let io = call.io(Some(reader), mapped.output.take());
                let instance = function.instantiate(call.limits, call.config.clone(), io)?;
                let ((), finished) = observed(instance, captured, |instance| instance.run(index))?;
                mapped.output = finished.output;
                if mapped.pairs.is_empty() {
                    mapped.pairs = finished.pairs;
                } else {
                    mapped.pairs.append(&finished.pairs);
                }
                mapped.records_in += finished.records_read;
                mapped.gpu_time += finished.gpu_time;
            }
            Ok(mapped)
        }
        kind @ (Kind::Reducer | Kind::Http) => {
            Err(Error::WrongKind { expected: "scorer, mapper or aggregator", actual: kind.name() })
        }
    }
}

/// Runs one reduce task: groups `inputs` by key and writes the reducer's
/// record for each key, in sorted key order, to `writer`. Returns the
/// number of keys.
pub fn reduce(
    function: &Function,
    call: Call<'_>,
    inputs: &[Pairs],
    writer: &mut OutputWriter,
    captured: &mut Captured,
) -> Result<u64> {
    if function.kind() != Kind::Reducer {
        return Err(Error::WrongKind { expected: "reducer", actual: function.kind().name() });
    }
    let groups = wasmgrid_data::pairs::group(inputs);
    if groups.is_empty() {
        return Ok(0);
    }
    let instance = function.instantiate(call.limits, call.config.clone(), call.io(None, None))?;
    observed(instance, captured, |instance| {
        for (key, values) in &groups {
            writer.write_record(&instance.reduce(key, values)?)?;
        }
        Ok(())
    })?;
    Ok(groups.len() as u64)
}

/// Has `reader` read only what an aggregation needs: the `columns` it
/// groups and measures, and those its `prepare` reads (when it has one,
/// its other columns may be what `prepare` adds). A column the input lacks
/// is named with every column it has.
fn select(reader: &mut PartitionReader, columns: &[String], prepare: Option<&[String]>) -> Result<()> {
    let mut wanted = columns.to_vec();
    if let Some(schema) = &reader.partition().schema {
        let lacking = |name: &&String| schema.index_of(name).is_err();
        let missing = match prepare {
            Some(read) => read.iter().find(lacking),
            None => columns.iter().find(lacking),
        };
        if let Some(name) = missing {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            let what = if prepare.is_some_and(|p| p.contains(name)) { "for `prepare`" } else { "to aggregate" };
            return Err(Error::Aggregate(format!("no column `{name}` {what} (columns: {})", names.join(", "))));
        }
    }
    wanted.extend(prepare.unwrap_or_default().iter().cloned());
    reader.select(wanted);
    Ok(())
}

/// Runs one aggregator reduce task: merges the tasks' `partials` (of the
/// group-by `function` computes) and writes the final rows to `writer`.
/// Returns the number of groups.
pub fn merge(
    function: &Function,
    call: Call<'_>,
    partials: &[RecordBatch],
    writer: &mut OutputWriter,
    captured: &mut Captured,
) -> Result<u64> {
    if function.kind() != Kind::Aggregator {
        return Err(Error::WrongKind { expected: "aggregator", actual: function.kind().name() });
    }
    let Some(first) = partials.first() else { return Ok(0) };
    let instance = function.instantiate(call.limits, call.config.clone(), call.io(None, None))?;
    let (spec, _) = observed(instance, captured, |instance| Ok(instance.aggregation()?.spec))?;
    let mut groups = Groups::for_partials(spec, &first.schema())?;
    for partial in partials {
        groups.merge(partial)?;
    }
    let rows = groups.finish()?;
    writer.write_batch(&rows)?;
    Ok(rows.num_rows() as u64)
}

/// Runs `body` with `instance`, then keeps the guest's output in `captured`
/// whether or not `body` failed.
fn observed<T>(
    mut instance: Instance,
    captured: &mut Captured,
    body: impl FnOnce(&mut Instance) -> Result<T>,
) -> Result<(T, wasmgrid_runtime::Finished)> {
    let result = body(&mut instance);
    let mut finished = instance.finish();
    *captured = std::mem::take(&mut finished.captured);
    result.map(|t| (t, finished))
}
