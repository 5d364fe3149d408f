//! File helpers shared by every stage: atomic writes, line readers with a
//! length limit, encoding detection and io errors that say what is wrong.
//!
//! Atomic write = write a temporary file in the same directory, flush and
//! sync it, then rename it over the destination. A killed process leaves the
//! old file or the new one, never half of one (SPEC 10).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

pub use crate::error::{io_reason, LineTooLong};
use crate::error::{DataError, Result};

/// `sha256:<hex>`: how manifests, fingerprints and caches write a SHA-256
/// digest.
pub fn sha256_tag(digest: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(7 + 2 * digest.len());
    s.push_str("sha256:");
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_of(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha256_tag(&sha2::Sha256::digest(bytes))
}

/// `sha256:<hex>` of the file at `path`, read in blocks of 1 MiB (model
/// files are too large to read whole).
pub fn sha256_of_file(path: &Path) -> Result<String> {
    use sha2::Digest as _;
    let mut f = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(sha256_tag(&h.finalize()))
}

/// Writes `path` atomically with the bytes produced by `fill`.
pub fn atomic_write_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
    let name = path
        .file_name()
        .ok_or_else(|| DataError::file(path, "not a file path"))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(DataError::io(path, e));
    }
    kill_point();
    Ok(())
}

/// The environment variable of the kill-window test hook: with
/// `DISTILLREC_KILL_AFTER_WRITES=N` the process ends with exit code 137 (as
/// after a SIGKILL, no clean-up) right after its N-th atomic write. Tests
/// use it to stop a command at every point of its save sequence and check
/// that the re-run ends exactly as an uninterrupted run.
pub const KILL_AFTER_WRITES_VAR: &str = "DISTILLREC_KILL_AFTER_WRITES";

/// Counts atomic writes and ends the process at the one that
/// [`KILL_AFTER_WRITES_VAR`] names (a no-op when it is unset).
fn kill_point() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let limit = LIMIT.get_or_init(|| {
        std::env::var(KILL_AFTER_WRITES_VAR)
            .ok()
            .and_then(|v| v.trim().parse().ok())
    });
    if let Some(n) = *limit {
        if WRITES.fetch_add(1, Ordering::SeqCst) + 1 == n {
            let _ = std::io::stderr().write_all(b"killed by DISTILLREC_KILL_AFTER_WRITES\n");
            std::process::exit(137);
        }
    }
}

/// Writes `bytes` to `path` atomically.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(path, |w| w.write_all(bytes))
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn atomic_write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| DataError::file(path, format!("cannot serialise JSON: {e}")))?;
    bytes.push(b'\n');
    atomic_write(path, &bytes)
}

/// The longest line (bytes, without its terminator) any line reader accepts.
/// Every text format read here has short records; a longer line means a
/// wrong or hostile file, and refusing it bounds the memory a line can take.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// The largest small JSON/TOML file (manifests, `data_statis.json`,
/// `config.json`, configs) read whole into memory.
pub const MAX_SMALL_FILE_BYTES: u64 = 64 << 20;

/// Checks that `dir` exists and is a directory.
pub fn require_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(DataError::file(dir, "is not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(DataError::file(dir, "directory does not exist"))
        }
        Err(e) => Err(DataError::file(dir, io_reason(&e))),
    }
}

/// Returns `dir/name` if it exists as a file, else an error naming it and
/// saying why (missing, a directory, a symlink loop, ...).
pub fn require_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    match std::fs::metadata(&p) {
        Ok(m) if m.is_file() => Ok(p),
        Ok(m) if m.is_dir() => Err(DataError::file(&p, "is a directory, not a file")),
        Ok(_) => Err(DataError::file(&p, "is not a regular file")),
        Err(e) => Err(DataError::file(&p, io_reason(&e))),
    }
}

/// Reads a small text file whole (JSON manifests, `data_statis.json`),
/// refusing files larger than [`MAX_SMALL_FILE_BYTES`] before reading them.
pub fn read_small_text(path: &Path) -> Result<String> {
    read_text_limited(path, MAX_SMALL_FILE_BYTES).map_err(|e| match e {
        LimitedReadError::Io(e) => DataError::io(path, e),
        LimitedReadError::TooLarge(n) => DataError::file(
            path,
            format!(
                "{n} bytes is larger than the limit of {MAX_SMALL_FILE_BYTES} bytes for this file"
            ),
        ),
    })
}

/// Why [`read_text_limited`] failed.
#[derive(Debug)]
pub enum LimitedReadError {
    /// The file could not be opened or read, or is not UTF-8.
    Io(std::io::Error),
    /// The file holds this many bytes, more than the limit.
    TooLarge(u64),
}

/// Reads `path` as UTF-8 text if it holds at most `max` bytes; the size is
/// checked before anything is allocated, and reading stops at `max + 1`
/// bytes even if the file grows meanwhile.
pub fn read_text_limited(path: &Path, max: u64) -> std::result::Result<String, LimitedReadError> {
    let file = File::open(path).map_err(LimitedReadError::Io)?;
    let len = file.metadata().map_err(LimitedReadError::Io)?.len();
    if len > max {
        return Err(LimitedReadError::TooLarge(len));
    }
    let mut text = String::new();
    let n = file
        .take(max + 1)
        .read_to_string(&mut text)
        .map_err(LimitedReadError::Io)?;
    if n as u64 > max {
        return Err(LimitedReadError::TooLarge(n as u64));
    }
    Ok(text)
}

/// A reader that fails with [`LineTooLong`] as soon as one line exceeds
/// `max` bytes, so that line-based parsers (ours and the `csv` crate's)
/// never buffer an unbounded line.
pub struct LineLimited<R> {
    inner: R,
    max: usize,
    /// Bytes since the last `\n`.
    current: usize,
    /// 1-based number of the current line.
    line: usize,
}

impl<R: Read> LineLimited<R> {
    /// Wraps `inner` with a per-line limit of `max` bytes.
    pub fn new(inner: R, max: usize) -> Self {
        LineLimited {
            inner,
            max,
            current: 0,
            line: 1,
        }
    }
}

impl<R: Read> Read for LineLimited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut rest = &buf[..n];
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            if self.current + i > self.max {
                break;
            }
            self.current = 0;
            self.line += 1;
            rest = &rest[i + 1..];
        }
        if rest.contains(&b'\n') || self.current + rest.len() > self.max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                LineTooLong {
                    line: self.line,
                    max: self.max,
                },
            ));
        }
        self.current += rest.len();
        Ok(n)
    }
}

/// Opens `path` (transparently decompressing `.gz`) behind a [`LineLimited`]
/// reader with the limit [`MAX_LINE_BYTES`]; for readers that hand the
/// stream to a record parser such as `csv`.
pub fn open_lines(path: &Path) -> Result<LineLimited<Box<dyn Read>>> {
    Ok(LineLimited::new(open_maybe_gz(path)?, MAX_LINE_BYTES))
}

/// Whether the whole file (decompressed if `.gz`) is valid UTF-8: files
/// whose encoding varies in the wild (MovieLens titles) are decoded as
/// UTF-8 when they are, else as Latin-1 (where every byte is a character).
pub fn detect_encoding(path: &Path) -> Result<Encoding> {
    let mut reader = open_maybe_gz(path)?;
    let mut buf = vec![0u8; 1 << 16];
    // Bytes of a character cut at the end of the previous chunk (at most 3).
    let mut carry = 0usize;
    loop {
        let n = reader
            .read(&mut buf[carry..])
            .map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            return Ok(if carry == 0 {
                Encoding::Utf8
            } else {
                Encoding::Latin1
            });
        }
        let end = carry + n;
        match std::str::from_utf8(&buf[..end]) {
            Ok(_) => carry = 0,
            Err(e) if e.error_len().is_none() => {
                let valid = e.valid_up_to();
                buf.copy_within(valid..end, 0);
                carry = end - valid;
            }
            Err(_) => return Ok(Encoding::Latin1),
        }
    }
}

/// How the bytes of a text file are turned into characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// UTF-8; invalid bytes are an error naming the line.
    Utf8,
    /// ISO-8859-1 (MovieLens titles): every byte is one character.
    Latin1,
}

/// Opens a file for reading, transparently decompressing `.gz`, with a
/// progress bar on the compressed bytes for large files.
pub fn open_maybe_gz(path: &Path) -> Result<Box<dyn Read>> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let reader: Box<dyn Read> = if len > 4 << 20 {
        let bar = indicatif::ProgressBar::new(len).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(format!(
            "reading {}",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        Box::new(bar.wrap_read(file))
    } else {
        Box::new(file)
    };
    if path.extension().is_some_and(|e| e == "gz") {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(reader)))
    } else {
        Ok(reader)
    }
}

/// Reads a text file line by line with 1-based line numbers.
///
/// Line endings `\n` and `\r\n` are accepted; the callback gets the line
/// without its terminator. Empty files are an error, because every format
/// this crate reads needs at least one record. A line longer than
/// [`MAX_LINE_BYTES`] is an error naming it, found before it is buffered whole.
pub fn for_each_line(
    path: &Path,
    encoding: Encoding,
    mut f: impl FnMut(usize, &str) -> Result<()>,
) -> Result<usize> {
    let mut reader = BufReader::with_capacity(1 << 16, open_lines(path)?);
    let mut buf = Vec::with_capacity(256);
    let mut line_no = 0usize;
    let mut text = String::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        text.clear();
        match encoding {
            Encoding::Utf8 => match std::str::from_utf8(&buf) {
                Ok(s) => text.push_str(s),
                Err(e) => {
                    return Err(DataError::parse(
                        path,
                        line_no,
                        format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                    ))
                }
            },
            Encoding::Latin1 => text.extend(buf.iter().map(|&b| b as char)),
        }
        f(line_no, &text)?;
    }
    if line_no == 0 {
        return Err(DataError::file(path, "file is empty"));
    }
    Ok(line_no)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        atomic_write(&p, b"old").unwrap();
        atomic_write(&p, b"new contents").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new contents");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary file left behind");
    }

    #[test]
    fn failed_fill_keeps_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        atomic_write(&p, b"old").unwrap();
        let err = atomic_write_with(&p, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("killed"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn lines_latin1_and_crlf_and_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.dat");
        std::fs::write(&p, b"caf\xe9\r\nb\n").unwrap();
        let mut got = vec![];
        for_each_line(&p, Encoding::Latin1, |n, l| {
            got.push((n, l.to_string()));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vec![(1, "café".to_string()), (2, "b".to_string())]);
        let err = for_each_line(&p, Encoding::Utf8, |_, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains("x.dat:1: invalid UTF-8"), "{err}");
        std::fs::write(&p, b"").unwrap();
        let err = for_each_line(&p, Encoding::Utf8, |_, _| Ok(())).unwrap_err();
        assert!(err.to_string().ends_with("x.dat: file is empty"), "{err}");
    }

    #[test]
    fn overlong_line_in_gzip_is_refused_after_the_limit() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.jsonl.gz");
        let mut gz =
            flate2::write::GzEncoder::new(File::create(&p).unwrap(), flate2::Compression::fast());
        gz.write_all(b"short line\n").unwrap();
        let chunk = vec![b'x'; 1 << 20];
        // 64 MiB without a newline: refused after about 1 MiB is buffered.
        for _ in 0..64 {
            gz.write_all(&chunk).unwrap();
        }
        gz.finish().unwrap();
        let mut seen = 0;
        let err = for_each_line(&p, Encoding::Utf8, |_, _| {
            seen += 1;
            Ok(())
        })
        .unwrap_err();
        assert_eq!(seen, 1);
        assert!(
            err.to_string()
                .contains("big.jsonl.gz:2: line longer than 1048576 bytes"),
            "{err}"
        );
        // A line of exactly the limit is accepted.
        let q = dir.path().join("ok.txt");
        let mut line = vec![b'y'; MAX_LINE_BYTES];
        line.push(b'\n');
        line.extend_from_slice(b"z\n");
        std::fs::write(&q, &line).unwrap();
        assert_eq!(for_each_line(&q, Encoding::Utf8, |_, _| Ok(())).unwrap(), 2);
    }

    #[test]
    fn encoding_detection_reads_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.dat");
        // A two-byte character split across the 64 KiB chunk boundary.
        let mut bytes = vec![b'a'; (1 << 16) - 1];
        bytes.extend_from_slice("é\n".as_bytes());
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(detect_encoding(&p).unwrap(), Encoding::Utf8);
        bytes.extend_from_slice(b"caf\xe9\n");
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(detect_encoding(&p).unwrap(), Encoding::Latin1);
    }

    #[test]
    fn path_errors_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let e = require_file(dir.path(), "sub").unwrap_err().to_string();
        assert!(e.ends_with("sub: is a directory, not a file"), "{e}");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("loop", dir.path().join("loop")).unwrap();
            let e = require_file(dir.path(), "loop").unwrap_err().to_string();
            assert!(e.ends_with("loop: symbolic link loop"), "{e}");
        }
        let e = require_file(dir.path(), "none").unwrap_err().to_string();
        assert!(e.ends_with("none: file not found"), "{e}");
    }
}
