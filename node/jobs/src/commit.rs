//! Publishing a grid job's output: the control plane records one winning
//! attempt per task; [`commit`] renames exactly the winners to their final
//! names (`part-NNNNN`, `part-r-NNNNN`) and writes `_SUCCESS` last. Every
//! step can run again after an interruption: a rename whose source is gone
//! and whose destination exists was already done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmgrid_api::{JobCommit, TaskResult};
use wasmgrid_data::Format;
use wasmgrid_data::store::{self, Place};

use crate::JobIoError;
use crate::plan::{format, part_name};
use crate::segments;
use crate::task::read_output;

/// One published file in `_SUCCESS`.
#[derive(Debug, Serialize)]
struct ManifestFile {
    name: String,
    /// The first and last partition (map or reduce) whose output it holds.
    partition_range: [u32; 2],
    rows: u64,
    sha256: String,
}

/// `_SUCCESS` of a grid job.
#[derive(Debug, Serialize)]
struct Manifest<'a> {
    job: &'a str,
    function: &'a str,
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reduce: Option<&'a (String, u64)>,
    partitions: usize,
    reduce_partitions: u32,
    records_in: u64,
    rows_out: u64,
    files: Vec<ManifestFile>,
    /// The attempt that won each task, by stage and task.
    attempts: BTreeMap<String, String>,
}

fn sha256_of(place: &Place) -> Result<String, JobIoError> {
    if let Place::Local(path) = place {
        let mut file = std::fs::File::open(path).map_err(|e| JobIoError::io("reading", path, e))?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(|e| JobIoError::io("reading", path, e))?;
        return Ok(hex::encode(hasher.finalize()));
    }
    Ok(hex::encode(Sha256::digest(store::get(place)?)))
}

/// Largest file the commit makes by joining small map outputs.
const JOINED_FILE: usize = 64 << 20;

/// A published file being made of the small outputs (segment ranges) of
/// consecutive map tasks, in task order: JSON lines, or CSV under one header.
struct Joined {
    name: String,
    dest: PathBuf,
    tmp: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    hasher: Sha256,
    /// CSV: the header line every part shares.
    header: Option<Vec<u8>>,
    bytes: usize,
    rows: u64,
    partition_range: [u32; 2],
}

impl Joined {
    fn start(dir: &Path, name: String, task: u32) -> Result<Joined, JobIoError> {
        let (dest, tmp) = (dir.join(&name), dir.join(format!(".{name}.joining")));
        let file = std::fs::File::create(&tmp).map_err(|e| JobIoError::io("creating", &tmp, e))?;
        let file = std::io::BufWriter::new(file);
        let partition_range = [task, task];
        Ok(Joined { name, dest, tmp, file, hasher: Sha256::new(), header: None, bytes: 0, rows: 0, partition_range })
    }

    /// Whether `bytes` (an output with this `header`) can go at the end.
    fn takes(&self, header: Option<&[u8]>, bytes: &[u8]) -> bool {
        let same_header = match (header, &self.header) {
            (Some(h), Some(mine)) => h == mine.as_slice(),
            _ => true,
        };
        same_header && self.bytes + bytes.len() <= JOINED_FILE
    }

    fn add(&mut self, last: u32, header: Option<&[u8]>, bytes: &[u8], rows: u64) -> Result<(), JobIoError> {
        let body = match (header, &self.header) {
            (Some(h), Some(_)) => &bytes[h.len()..],
            (Some(h), None) => {
                self.header = Some(h.to_vec());
                bytes
            }
            (None, _) => bytes,
        };
        use std::io::Write;
        self.file.write_all(body).map_err(|e| JobIoError::io("writing", &self.tmp, e))?;
        self.hasher.update(body);
        self.bytes += body.len();
        self.rows += rows;
        self.partition_range[1] = last;
        Ok(())
    }

    fn close(self) -> Result<ManifestFile, JobIoError> {
        let file = self.file.into_inner().map_err(|e| JobIoError::io("writing", &self.tmp, e.into_error()))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| JobIoError::io("publishing", &self.dest, e))?;
        let sha256 = hex::encode(self.hasher.finalize());
        Ok(ManifestFile { name: self.name, partition_range: self.partition_range, rows: self.rows, sha256 })
    }
}

/// Publishes the winners' outputs under `prefix` (`part`, `part-r`):
/// whole files renamed, small map outputs joined into few files, other
/// segment ranges copied to their own.
struct Publisher<'a> {
    output: &'a Place,
    format: Format,
    files: Vec<ManifestFile>,
    joined: Option<Joined>,
}

impl Publisher<'_> {
    /// Publishes `file`, the output of tasks `first` to `last`.
    fn publish(&mut self, prefix: &str, [first, last]: [u32; 2], file: &str, rows: u64) -> Result<(), JobIoError> {
        let name = part_name(prefix, first as usize, self.format);
        let (_, range) = segments::range_of(file);
        let joinable = prefix == "part" && matches!(self.format, Format::Jsonl | Format::Text | Format::Csv);
        let (Some(_), Place::Local(dir)) = (range, self.output) else {
            self.close_joined()?;
            let dest = self.output.join(&name);
            store::publish(&self.output.join(file), &dest)?;
            self.files.push(ManifestFile { sha256: sha256_of(&dest)?, name, partition_range: [first, last], rows });
            return Ok(());
        };
        let bytes = read_output(self.output, file)?;
        if !joinable {
            self.close_joined()?;
            let dest = self.output.join(&name);
            let sha256 = hex::encode(Sha256::digest(&bytes));
            store::put(&dest, bytes)?;
            self.files.push(ManifestFile { sha256, name, partition_range: [first, last], rows });
            return Ok(());
        }
        let header = match self.format {
            Format::Csv => bytes.iter().position(|&b| b == b'\n').map(|end| &bytes[..=end]),
            _ => None,
        };
        if !self.joined.as_ref().is_some_and(|j| j.takes(header, &bytes)) {
            self.close_joined()?;
            self.joined = Some(Joined::start(dir, name, first)?);
        }
        match &mut self.joined {
            Some(j) => j.add(last, header, &bytes, rows),
            None => Ok(()),
        }
    }

    fn close_joined(&mut self) -> Result<(), JobIoError> {
        if let Some(j) = self.joined.take() {
            self.files.push(j.close()?);
        }
        Ok(())
    }
}

/// Publishes a job's winning attempts and writes `_SUCCESS` (idempotent:
/// the winners' files and segments stay until `_SUCCESS` is written).
pub fn commit(c: &JobCommit) -> Result<(), JobIoError> {
    let output = Place::parse(&c.output)?;
    let format = format(&c.format)?;
    let success = output.join("_SUCCESS");
    if store::exists(&success)? {
        return Ok(());
    }
    let reduce = c.reduce_partitions as usize;
    let mut attempts = BTreeMap::new();
    let mut publisher = Publisher { output: &output, format, files: Vec::new(), joined: None };
    for w in &c.map {
        attempts.insert(format!("map/{}", tasks_of(w)), format!("{:x}", w.attempt));
        // With a reducer, the first `reduce` files are pairs (not published).
        for (file, rows) in w.files.iter().zip(&w.rows).skip(if reduce > 0 { reduce } else { 0 }) {
            if !file.is_empty() {
                publisher.publish("part", partition_range(w), file, *rows)?;
            }
        }
    }
    publisher.close_joined()?;
    for w in &c.reduce_results {
        attempts.insert(format!("reduce/{}", tasks_of(w)), format!("{:x}", w.attempt));
        for (file, rows) in w.files.iter().zip(&w.rows) {
            // A reduce partition without keys publishes nothing.
            if *rows > 0 || w.records_in > 0 {
                publisher.publish("part-r", partition_range(w), file, *rows)?;
            }
        }
    }
    let files = publisher.files;
    let manifest = Manifest {
        job: &c.id,
        function: &c.function,
        version: c.version,
        reduce: c.reduce.as_ref(),
        partitions: c.map.iter().map(|w| w.count.max(1) as usize).sum(),
        reduce_partitions: c.reduce_partitions,
        records_in: c.map.iter().map(|w| w.records_in).sum(),
        rows_out: files.iter().map(|f| f.rows).sum(),
        files,
        attempts,
    };
    let bytes = serde_json::to_vec_pretty(&manifest)?;
    store::put(&success, bytes)?;
    abort(&c.output, &c.id);
    Ok(())
}

/// The first and last task a winner ran.
fn partition_range(w: &TaskResult) -> [u32; 2] {
    [w.task, w.task + w.count.max(1) - 1]
}

/// A winner's tasks as `_SUCCESS` names them: `7`, or `0-155` for a range.
fn tasks_of(w: &TaskResult) -> String {
    match partition_range(w) {
        [first, last] if first == last => first.to_string(),
        [first, last] => format!("{first}-{last}"),
    }
}

/// Removes a job's work directory (losing attempts and pair files).
pub fn abort(output: &str, job: &str) {
    let Ok(output) = Place::parse(output) else { return };
    store::remove_all(&output.join(&format!("_temporary/{job}")));
    if let Place::Local(dir) = &output {
        // Only if no other job is using it.
        let _ = std::fs::remove_dir(dir.join("_temporary"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segments::Segments;

    #[test]
    fn small_csv_outputs_are_joined_under_one_header_and_losers_never_appear() {
        let dir = tempfile::tempdir().expect("dir");
        let out = dir.path().join("out");
        let work = out.join("_temporary/job-7");
        std::fs::create_dir_all(&work).expect("work");
        let mut segments = Segments::default();
        let mut append = |attempt, bytes: &str| {
            format!("_temporary/job-7/{}", segments.append(&work, attempt, bytes.as_bytes()).expect("append"))
        };
        let a = append(1, "x,score\n1,0.5\n");
        let loser = append(2, "x,score\n9,9.9\n");
        let b = append(3, "x,score\n2,0.6\n3,0.7\n");
        let other_header = append(4, "y\n4\n");
        std::fs::write(work.join("m00004-5.csv"), "x,score\n5,0.8\n").expect("whole file");
        let won = |task, attempt, file: &str, rows| TaskResult {
            task,
            count: 1,
            attempt,
            files: vec![file.to_string()],
            rows: vec![rows],
            records_in: rows,
        };
        let commit = JobCommit {
            id: "job-7".into(),
            function: "score".into(),
            version: 1,
            reduce: None,
            output: out.display().to_string(),
            format: "csv".into(),
            reduce_partitions: 0,
            map: vec![
                won(0, 1, &a, 1),
                won(1, 3, &b, 2),
                won(2, 4, &other_header, 1),
                won(4, 5, "_temporary/job-7/m00004-5.csv", 1),
            ],
            reduce_results: Vec::new(),
        };
        commit_twice(&commit);
        assert!(!loser.is_empty());
        let read = |name: &str| std::fs::read_to_string(out.join(name)).expect(name);
        assert_eq!(read("part-00000.csv"), "x,score\n1,0.5\n2,0.6\n3,0.7\n", "tasks 0 and 1, one header");
        assert_eq!(read("part-00002.csv"), "y\n4\n", "another header starts another file");
        assert_eq!(read("part-00004.csv"), "x,score\n5,0.8\n", "a whole file is renamed");
        let manifest: serde_json::Value = serde_json::from_str(&read("_SUCCESS")).expect("manifest");
        let files = manifest["files"].as_array().expect("files");
        let ranges: Vec<_> =
            files.iter().map(|f| (f["name"].clone(), f["partition_range"].clone(), f["rows"].clone())).collect();
        assert_eq!(
            ranges,
            [
                (json("part-00000.csv"), serde_json::json!([0, 1]), serde_json::json!(3)),
                (json("part-00002.csv"), serde_json::json!([2, 2]), serde_json::json!(1)),
                (json("part-00004.csv"), serde_json::json!([4, 4]), serde_json::json!(1)),
            ]
        );
        let sha = hex::encode(Sha256::digest(read("part-00000.csv")));
        assert_eq!(files[0]["sha256"], sha.as_str());
        assert!(!out.join("_temporary").exists(), "segments are removed once published");
    }

    fn json(s: &str) -> serde_json::Value {
        serde_json::Value::String(s.into())
    }

    /// Commits, and commits again as a new leader would: the same output.
    fn commit_twice(c: &JobCommit) {
        commit(c).expect("commit");
        commit(c).expect("commit again");
    }
}
