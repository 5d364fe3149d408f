//! Reading a run's small files with a bound, shared by the run views and
//! the history parser.

use std::path::Path;

use anyhow::Result;

use distillrec_data::fsutil::{read_text_limited, LimitedReadError, MAX_SMALL_FILE_BYTES};

/// The text of a run's small file (run.json, metrics.json, config.toml,
/// history.csv), refused above [`MAX_SMALL_FILE_BYTES`] before allocating.
pub(crate) fn read_small(path: &Path) -> Result<String> {
    read_text_limited(path, MAX_SMALL_FILE_BYTES).map_err(|e| match e {
        LimitedReadError::Io(e) => anyhow::anyhow!("{}: cannot read: {e}", path.display()),
        LimitedReadError::TooLarge(n) => anyhow::anyhow!(
            "{}: {n} bytes is more than the {MAX_SMALL_FILE_BYTES} a run file may hold",
            path.display()
        ),
    })
}
