//! Small outputs of batch attempts, appended to a few shared files.
//!
//! Creating a file costs more than a tiny task's whole run: a new inode in
//! a directory that every attempt of the job writes to. So an attempt whose
//! output (or pair file) stays small appends it to its batch thread's
//! segment of the job instead: one file per thread and job in the job's
//! work directory, named after the attempt that started it (attempt ids are
//! unique across the grid). The attempt reports the byte range it wrote,
//! `NAME#START+LEN`; the commit copies the winners' ranges out, and a range
//! no attempt won is never read. Each append opens the segment, writes and
//! closes it, so a reader on another machine of a shared file system sees
//! the bytes once the attempt has reported (close-to-open consistency).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Outputs up to this size go to a segment.
pub const SMALL_OUTPUT: usize = 256 << 10;

/// Jobs whose segment a thread remembers; an older job's next attempt
/// starts a new segment.
const REMEMBERED: usize = 8;

/// One batch thread's segments, by work directory.
#[derive(Debug, Default)]
pub struct Segments {
    open: VecDeque<Segment>,
}

/// A work directory this thread made, and its segment there once started.
#[derive(Debug)]
struct Segment {
    work: PathBuf,
    /// Its name and length.
    file: Option<(String, u64)>,
}

impl Segments {
    /// Makes the work directory `work` unless this thread already did.
    pub fn make_dir(&mut self, work: &Path) -> std::io::Result<()> {
        if self.open.iter().any(|s| s.work == work) {
            return Ok(());
        }
        std::fs::create_dir_all(work)?;
        self.remember(Segment { work: work.to_path_buf(), file: None });
        Ok(())
    }

    fn remember(&mut self, segment: Segment) {
        if self.open.len() == REMEMBERED {
            self.open.pop_front();
        }
        self.open.push_back(segment);
    }

    /// Appends `bytes` to this thread's segment in `work` (started, named
    /// after `attempt`, if there is none); returns the range as reported,
    /// relative to `work`.
    pub fn append(&mut self, work: &Path, attempt: u64, bytes: &[u8]) -> std::io::Result<String> {
        let known = self.open.iter().position(|s| s.work == work);
        let (name, start) = match known.and_then(|i| self.open[i].file.clone()) {
            Some(file) => file,
            None => (format!("seg-{attempt:x}"), 0),
        };
        // Only this thread appends to it, so its length is known.
        let written = OpenOptions::new()
            .append(true)
            .create(true)
            .open(work.join(&name))
            .and_then(|mut file| file.write_all(bytes));
        let end = start + bytes.len() as u64;
        match (written, known) {
            (Ok(()), Some(i)) => self.open[i].file = Some((name.clone(), end)),
            (Ok(()), None) => self.remember(Segment { work: work.to_path_buf(), file: Some((name.clone(), end)) }),
            (Err(e), _) => {
                // Its end is unknown now: the next attempt starts another.
                if let Some(i) = known {
                    self.open[i].file = None;
                }
                return Err(e);
            }
        }
        Ok(format!("{name}#{start}+{}", bytes.len()))
    }
}

/// A reported output file: its name, and the byte range (start, length)
/// when it is part of a segment.
pub fn range_of(file: &str) -> (&str, Option<(u64, u64)>) {
    let Some((name, range)) = file.rsplit_once('#') else { return (file, None) };
    let Some((start, len)) = range.split_once('+') else { return (file, None) };
    match (start.parse(), len.parse()) {
        (Ok(start), Ok(len)) => (name, Some((start, len))),
        _ => (file, None),
    }
}

/// Reads `len` bytes at `start` of `path`; a range past the end of the
/// file is an error.
pub fn read(path: &Path, (start, len): (u64, u64)) -> std::io::Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    let mut bytes = vec![0; len];
    File::open(path)?.read_exact_at(&mut bytes, start)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_come_back_by_their_ranges() {
        let dir = tempfile::tempdir().expect("dir");
        let (a, b) = (dir.path().join("job-1"), dir.path().join("job-2"));
        std::fs::create_dir_all(&a).expect("a");
        std::fs::create_dir_all(&b).expect("b");
        let mut segments = Segments::default();
        let first = segments.append(&a, 0x10, b"{\"x\":1}\n").expect("first");
        let second = segments.append(&a, 0x11, b"{\"x\":2}\n{\"x\":3}\n").expect("second");
        let other = segments.append(&b, 0x12, b"other").expect("other job");
        assert_eq!(first, "seg-10#0+8");
        assert_eq!(second, "seg-10#8+16", "the same thread's segment of the job");
        assert_eq!(other, "seg-12#0+5", "another job's own segment");
        for (dir, reported, expected) in
            [(&a, &first, &b"{\"x\":1}\n"[..]), (&a, &second, b"{\"x\":2}\n{\"x\":3}\n"), (&b, &other, b"other")]
        {
            let (name, range) = range_of(reported);
            assert_eq!(read(&dir.join(name), range.expect("a range")).expect("read"), expected);
        }
    }

    #[test]
    fn a_failed_append_starts_a_new_segment() {
        let dir = tempfile::tempdir().expect("dir");
        let mut segments = Segments::default();
        let gone = dir.path().join("gone");
        assert!(segments.append(&gone, 1, b"x").is_err(), "no such directory");
        std::fs::create_dir_all(&gone).expect("dir");
        assert_eq!(segments.append(&gone, 2, b"x").expect("append"), "seg-2#0+1");
    }

    #[test]
    fn names_without_a_range_are_whole_files() {
        assert_eq!(range_of("_temporary/job-1/m00001-5.jsonl"), ("_temporary/job-1/m00001-5.jsonl", None));
        assert_eq!(range_of("_temporary/job-1/seg-5#12+30"), ("_temporary/job-1/seg-5", Some((12, 30))));
        assert_eq!(range_of("a#b+c"), ("a#b+c", None));
        assert_eq!(range_of("a#12"), ("a#12", None));
    }

    #[test]
    fn a_range_past_the_end_is_an_error() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("seg");
        std::fs::write(&path, b"short").expect("write");
        assert!(read(&path, (2, 10)).is_err());
        assert_eq!(read(&path, (1, 3)).expect("inside"), b"hor");
    }
}
