//! Planning a grid job: its input split into partitions the nodes can read,
//! its output directory made ready.

use std::path::Path;

use wasmgrid_api::{JobRequest, PartitionSpec, SpanSpec};
use wasmgrid_data::store::{self, Place};
use wasmgrid_data::{self as data, Format, Span};

use crate::JobIoError;

/// The format named `name`.
pub(crate) fn format(name: &str) -> Result<Format, JobIoError> {
    name.parse::<Format>().map_err(|e| JobIoError::Invalid(e.to_string()))
}

/// The column types a job's `schema` fixes.
pub(crate) fn column_types(schema: Option<&str>) -> Result<data::ColumnTypes, JobIoError> {
    schema.unwrap_or_default().parse().map_err(|e| JobIoError::Invalid(format!("schema: {e}")))
}

/// Splits a job's input into partitions and prepares its output directory.
pub fn plan(request: &JobRequest, partition_size: u64) -> Result<Vec<PartitionSpec>, JobIoError> {
    let input_format = request.input_format.as_deref().map(format).transpose()?;
    let types = column_types(request.schema.as_deref())?;
    if let Some(f) = &request.format {
        format(f)?;
    }
    let output = Place::parse(&request.output)?;
    let input = Place::parse(&request.input)?;
    // (partition, the URI nodes read it from)
    let mut partitions = Vec::new();
    if input.is_remote() {
        for object in store::list_inputs(&input)? {
            let local = store::local_copy(&object)?;
            let at = local.path().display().to_string();
            // The tenant's URI in the message, never the copy's path here.
            let planned = data::plan(&at, input_format, partition_size, &types)
                .map_err(|e| JobIoError::Invalid(e.to_string().replace(&at, &object.uri())))?;
            partitions.extend(planned.into_iter().map(|p| (p, Some(object.uri()))));
        }
    } else {
        let planned = data::plan(&request.input, input_format, partition_size, &types)?;
        partitions.extend(planned.into_iter().map(|p| (p, None)));
    }
    prepare(&output, request)?;
    partitions
        .into_iter()
        .map(|(p, remote)| {
            let path = match remote {
                Some(uri) => uri,
                None => std::path::absolute(&p.path)
                    .map_err(|e| JobIoError::Invalid(format!("{}: {e}", p.path.display())))?
                    .display()
                    .to_string(),
            };
            let span = match p.span {
                Span::Bytes { start, end } => SpanSpec::Bytes { start, end },
                Span::RowGroups { first, count } => SpanSpec::RowGroups { first: first as u64, count: count as u64 },
            };
            Ok(PartitionSpec { path, format: p.format.name().into(), span, bytes: p.bytes })
        })
        .collect()
}

/// Makes the job's output ready: earlier results refused unless the
/// request says to overwrite them.
fn prepare(output: &Place, request: &JobRequest) -> Result<(), JobIoError> {
    match output {
        Place::Local(dir) => {
            if !dir.is_absolute() {
                return Err(JobIoError::Invalid(format!("the output `{}` must be an absolute path", request.output)));
            }
            prepare_output(dir, request.overwrite)
        }
        Place::S3 { .. } => {
            for name in store::names(output)? {
                if !(name.starts_with("part-") || name == "_SUCCESS") {
                    continue;
                }
                if !request.overwrite {
                    return Err(JobIoError::Invalid(format!(
                        "output {} already holds results ({name}); pass --overwrite to replace them",
                        output.uri()
                    )));
                }
                store::remove(&output.join(&name))?;
            }
            Ok(())
        }
        Place::Http(u) => Err(JobIoError::Invalid(format!("the output cannot be a URL ({u}); use a path or s3://"))),
    }
}

/// Makes sure `dir` exists and holds no earlier results (or clears them).
pub(crate) fn prepare_output(dir: &Path, overwrite: bool) -> Result<(), JobIoError> {
    std::fs::create_dir_all(dir).map_err(|e| JobIoError::io("creating output directory", dir, e))?;
    let entries = std::fs::read_dir(dir).map_err(|e| JobIoError::io("listing", dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with("part-") || name == "_SUCCESS";
        if !ours {
            continue;
        }
        if !overwrite {
            return Err(JobIoError::Invalid(format!(
                "output directory {} already holds results ({name}); pass --overwrite to replace them",
                dir.display()
            )));
        }
        std::fs::remove_file(entry.path()).map_err(|e| JobIoError::io("removing", entry.path(), e))?;
    }
    Ok(())
}

/// The name of the published file of partition `index`.
pub(crate) fn part_name(prefix: &str, index: usize, format: Format) -> String {
    format!("{prefix}-{index:05}.{}", format.extension())
}
