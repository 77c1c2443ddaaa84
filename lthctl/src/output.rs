//! Standard output that notices when its reader has gone away.
//!
//! `lthctl results 3 --format csv | head -5` closes the pipe after five lines; the next write
//! fails with EPIPE (Rust ignores SIGPIPE, so the process is not killed as a C tool would be).
//! That is the reader's choice, not an error: the binary checks [`Stdout::reader_left`] and exits
//! quietly with status 0, as ripgrep does. Only failures of stdout itself count, so a broken
//! connection to the coordinator still reports.

use std::io::{self, Write};

pub struct Stdout<W: Write> {
    inner: W,
    reader_left: bool,
}

impl<W: Write> Stdout<W> {
    pub fn new(inner: W) -> Self {
        Stdout { inner, reader_left: false }
    }

    /// True once a write or flush failed because the reading end of the pipe was closed.
    pub fn reader_left(&self) -> bool {
        self.reader_left
    }

    fn note<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r {
            if e.kind() == io::ErrorKind::BrokenPipe {
                self.reader_left = true;
            }
        }
        r
    }
}

impl<W: Write> Write for Stdout<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.inner.write(buf);
        self.note(r)
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.inner.flush();
        self.note(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct ClosedPipe;
    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_is_noticed_and_other_writes_are_not() {
        let mut out = Stdout::new(ClosedPipe);
        assert!(writeln!(out, "row").is_err());
        assert!(out.reader_left());
        let mut ok = Stdout::new(Vec::new());
        writeln!(ok, "row").unwrap();
        assert!(!ok.reader_left());
        assert_eq!(ok.inner, b"row\n");
    }
}
