//! The crate's error type: every variant names the file, tensor or key at fault.

use std::path::PathBuf;

/// Errors of the LLM backbone.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or is malformed (missing, truncated, bad JSON, ...).
    #[error("{path}: {msg}")]
    File {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A tensor is missing, has the wrong shape or cannot be decoded.
    #[error("{path}: tensor `{name}`: {msg}")]
    Tensor {
        /// The weight file (or model directory) that should hold the tensor.
        path: PathBuf,
        /// The tensor's name in that file.
        name: String,
        /// What is wrong with it.
        msg: String,
    },
    /// The model uses something this backbone does not implement.
    #[error("{path}: unsupported model: {msg}")]
    Unsupported {
        /// The config or model file.
        path: PathBuf,
        /// What is not supported.
        msg: String,
    },
    /// A caller passed inconsistent inputs (shapes, masks, ids out of range).
    #[error("invalid input: {0}")]
    Input(String),
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A dataset could not be read.
    #[error(transparent)]
    Data(#[from] distillrec_data::error::DataError),
    /// A tensor operation failed.
    #[error("tensor op: {}", first_line(.0))]
    Candle(#[from] candle_core::Error),
}

/// The first line of a message: candle appends a backtrace to its errors
/// when `RUST_BACKTRACE` is set, and our errors stay one line.
fn first_line(m: impl std::fmt::Display) -> String {
    m.to_string().lines().next().unwrap_or("").to_string()
}

/// The largest JSON file read whole (`config.json`, `tokenizer.json`,
/// `tokenizer_config.json`, the safetensors index): checked before reading.
pub const MAX_JSON_BYTES: u64 = 256 << 20;

/// Reads a JSON/text file of a model whole, refusing files larger than
/// [`MAX_JSON_BYTES`] before anything is allocated.
pub fn read_small_file(path: &std::path::Path) -> Result<String> {
    use distillrec_data::fsutil::{io_reason, read_text_limited, LimitedReadError};
    read_text_limited(path, MAX_JSON_BYTES).map_err(|e| match e {
        LimitedReadError::Io(e) => Error::file(path, io_reason(&e)),
        LimitedReadError::TooLarge(n) => Error::file(
            path,
            format!("{n} bytes is larger than the limit of {MAX_JSON_BYTES} bytes"),
        ),
    })
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A [`Error::File`] for `path`.
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            msg: first_line(msg),
        }
    }

    /// A [`Error::Tensor`] for tensor `name` of `path`.
    pub fn tensor(
        path: impl Into<PathBuf>,
        name: impl Into<String>,
        msg: impl std::fmt::Display,
    ) -> Self {
        Error::Tensor {
            path: path.into(),
            name: name.into(),
            msg: first_line(msg),
        }
    }

    /// A [`Error::Unsupported`] for `path`.
    pub fn unsupported(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::Unsupported {
            path: path.into(),
            msg: first_line(msg),
        }
    }
}
