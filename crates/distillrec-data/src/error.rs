//! One error type for everything that reads or writes dataset files.
//!
//! Every variant renders on one line and names the file (and the line when
//! there is one), so a user can open the file at the place that is wrong.

use std::path::{Path, PathBuf};

/// An error while reading, validating or writing dataset files.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A malformed record at a known line of a file (1-based line numbers).
    #[error("{}:{line}: {msg}", path.display())]
    Parse {
        /// The file that holds the bad record.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        msg: String,
    },
    /// A problem with a whole file (missing, empty, inconsistent).
    #[error("{}: {msg}", path.display())]
    File {
        /// The file or directory concerned.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// An operating-system error on a file (said in words by
    /// [`io_reason`]).
    #[error("{}: {}", path.display(), io_reason(err))]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        err: std::io::Error,
    },
    /// An invalid option or an inconsistency not tied to a file.
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    /// A malformed record at `line` of `path`.
    pub fn parse(path: &Path, line: usize, msg: impl Into<String>) -> Self {
        DataError::Parse {
            path: path.to_path_buf(),
            line,
            msg: msg.into(),
        }
    }

    /// A problem with the file or directory `path` as a whole.
    pub fn file(path: &Path, msg: impl Into<String>) -> Self {
        DataError::File {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    /// An I/O error on `path`; a [`LineTooLong`] error
    /// becomes a parse error naming the line.
    pub fn io(path: &Path, err: std::io::Error) -> Self {
        if let Some(long) = err.get_ref().and_then(|e| e.downcast_ref::<LineTooLong>()) {
            return DataError::parse(path, long.line, long.to_string());
        }
        DataError::Io {
            path: path.to_path_buf(),
            err,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Why a path could not be opened, in words: "file not found", "is a
/// directory, not a file", "permission denied", "symbolic link loop", or the
/// operating system's message. One helper, so every command says the same.
pub fn io_reason(err: &std::io::Error) -> String {
    use std::io::ErrorKind;
    // ELOOP: Linux 40, macOS/BSD 62.
    let eloop = if cfg!(target_os = "linux") { 40 } else { 62 };
    match err.kind() {
        ErrorKind::NotFound => "file not found".into(),
        ErrorKind::IsADirectory => "is a directory, not a file".into(),
        ErrorKind::NotADirectory => "a component of the path is not a directory".into(),
        ErrorKind::PermissionDenied => "permission denied (not readable)".into(),
        _ if err.raw_os_error() == Some(eloop) => "symbolic link loop".into(),
        _ => err.to_string(),
    }
}

/// The io error the line-limited reader of `fsutil` returns for a line longer than its limit;
/// [`DataError::io`] turns it into a parse error naming the line.
#[derive(Debug)]
pub struct LineTooLong {
    /// 1-based line number.
    pub line: usize,
    /// The limit in bytes.
    pub max: usize,
}

impl std::fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line longer than {} bytes (the limit for one line is {} MiB)",
            self.max,
            self.max >> 20
        )
    }
}

impl std::error::Error for LineTooLong {}
