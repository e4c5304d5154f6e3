//! Where the JSON audit log goes: a file (appended) or stdout. Records are buffered
//! and flushed after each batch the daemon loop handles, before it waits again: a
//! burst costs a few writes, not one per record, and nothing seen stays unwritten
//! while the daemon is idle.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

pub enum JsonSink {
    Stdout(BufWriter<io::Stdout>),
    File(BufWriter<File>),
    /// No audit log asked for.
    Off,
}

impl JsonSink {
    /// `-` means stdout. The file is opened now so that a bad path fails at start.
    pub fn open(path: Option<&Path>) -> Result<Self> {
        match path {
            None => Ok(JsonSink::Off),
            Some(p) if p == Path::new("-") => Ok(JsonSink::Stdout(BufWriter::new(io::stdout()))),
            Some(p) => OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map(|f| JsonSink::File(BufWriter::with_capacity(1 << 16, f)))
                .map_err(|source| Error::JsonOutput { path: PathBuf::from(p), source }),
        }
    }

    /// Appends one record as a JSON line, encoded straight into the buffer.
    pub fn write_record<T: serde::Serialize>(&mut self, record: &T) -> Result<()> {
        fn line<W: Write>(out: &mut W, record: &impl serde::Serialize) -> io::Result<()> {
            serde_json::to_writer(&mut *out, record)?;
            out.write_all(b"\n")
        }
        let res = match self {
            JsonSink::Off => Ok(()),
            JsonSink::Stdout(out) => line(out, record),
            JsonSink::File(f) => line(f, record),
        };
        res.map_err(Error::JsonWrite)
    }

    pub fn write_line(&mut self, line: &str) -> Result<()> {
        let res = match self {
            JsonSink::Off => Ok(()),
            JsonSink::Stdout(out) => out.write_all(line.as_bytes()),
            JsonSink::File(f) => f.write_all(line.as_bytes()),
        };
        res.map_err(Error::JsonWrite)
    }

    /// Pushes buffered records to the file or stdout.
    pub fn flush(&mut self) -> Result<()> {
        let res = match self {
            JsonSink::Off => Ok(()),
            JsonSink::Stdout(out) => out.flush(),
            JsonSink::File(f) => f.flush(),
        };
        res.map_err(Error::JsonWrite)
    }
}
