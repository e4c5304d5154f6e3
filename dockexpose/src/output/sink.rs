//! Where the JSON audit log goes: a file (appended, flushed per record so a crash
//! loses nothing already seen) or stdout.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

pub enum JsonSink {
    Stdout(io::Stdout),
    File(File),
    /// No audit log asked for.
    Off,
}

impl JsonSink {
    /// `-` means stdout. The file is opened now so that a bad path fails at start.
    pub fn open(path: Option<&Path>) -> Result<Self> {
        match path {
            None => Ok(JsonSink::Off),
            Some(p) if p == Path::new("-") => Ok(JsonSink::Stdout(io::stdout())),
            Some(p) => OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map(JsonSink::File)
                .map_err(|source| Error::JsonOutput { path: PathBuf::from(p), source }),
        }
    }

    pub fn write_line(&mut self, line: &str) -> Result<()> {
        let res = match self {
            JsonSink::Off => Ok(()),
            JsonSink::Stdout(out) => {
                let mut lock = out.lock();
                lock.write_all(line.as_bytes()).and_then(|()| lock.flush())
            }
            JsonSink::File(f) => f.write_all(line.as_bytes()),
        };
        res.map_err(Error::JsonWrite)
    }
}
