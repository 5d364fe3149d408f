//! File helpers shared by every stage: atomic writes and line readers.
//!
//! Atomic write = write a temporary file in the same directory, flush and
//! sync it, then rename it over the destination. A killed process leaves the
//! old file or the new one, never half of one (SPEC 10).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

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
    Ok(())
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

/// Checks that `dir` exists and is a directory.
pub fn require_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(DataError::file(dir, "is not a directory")),
        Err(_) => Err(DataError::file(dir, "directory does not exist")),
    }
}

/// Returns `dir/name` if it exists as a file, else an error naming it.
pub fn require_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(DataError::file(&p, "file not found"))
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
/// this crate reads needs at least one record.
pub fn for_each_line(
    path: &Path,
    encoding: Encoding,
    mut f: impl FnMut(usize, &str) -> Result<()>,
) -> Result<usize> {
    let mut reader = BufReader::with_capacity(1 << 16, open_maybe_gz(path)?);
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
}
