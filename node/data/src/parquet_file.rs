//! [`ParquetFile`]: a Parquet source that refuses to read past its end.
//!
//! The parquet crate reads page headers through [`Read`] and skips unknown
//! Thrift fields with `io::copy`, which stops quietly at the end of the file.
//! A header that declares a list of two billion strings then costs two
//! billion empty reads: the `data_decoders` fuzz target found a 1 KiB file
//! that never finishes. Here reaching the end of the file while a header is
//! being read is an error, and a byte range past the end is refused before a
//! buffer for it is allocated.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

use bytes::Bytes;
use parquet::errors::{ParquetError, Result};
use parquet::file::reader::{ChunkReader, Length};

/// An open Parquet file of a known length.
#[derive(Debug)]
pub(crate) struct ParquetFile {
    file: File,
    length: u64,
}

impl ParquetFile {
    pub(crate) fn new(file: File) -> io::Result<Self> {
        let length = file.metadata()?.len();
        Ok(Self { file, length })
    }

    pub(crate) fn length(&self) -> u64 {
        self.length
    }
}

impl Length for ParquetFile {
    fn len(&self) -> u64 {
        self.length
    }
}

impl ChunkReader for ParquetFile {
    type T = NoShortEnd;

    fn get_read(&self, start: u64) -> Result<NoShortEnd> {
        if start > self.length {
            return Err(ParquetError::EOF(format!(
                "a page starts at byte {start}, past the {}-byte file",
                self.length
            )));
        }
        let mut file = self.file.try_clone()?;
        file.seek(SeekFrom::Start(start))?;
        Ok(NoShortEnd { inner: BufReader::new(file) })
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes> {
        let end = start.checked_add(length as u64).filter(|end| *end <= self.length);
        if end.is_none() {
            return Err(ParquetError::EOF(format!(
                "bytes {start}..+{length} lie outside the {}-byte file",
                self.length
            )));
        }
        self.file.get_bytes(start, length)
    }
}

/// A reader for which the end of the file is an error: only page headers are
/// read through it, and a header never ends the file (the footer follows).
pub(crate) struct NoShortEnd {
    inner: BufReader<File>,
}

impl Read for NoShortEnd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        if read == 0 && !buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a page header runs past the end of the file"));
        }
        Ok(read)
    }
}
