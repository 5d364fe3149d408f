//! Exclusive locks on output directories (SPEC 10): a run directory, a
//! prepared dataset or a teacher cache being written belongs to one process.
//!
//! The lock is an advisory `flock` on `<dir>/.distillrec.lock`, which also
//! holds the owner's process id for the error a second process gets. The
//! operating system drops the lock when its process ends, even by `kill -9`,
//! so a stale lock file never blocks anybody.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// The lock file's name inside a locked directory.
pub const LOCK_FILE: &str = ".distillrec.lock";

/// An exclusive lock on a directory, held until dropped.
#[derive(Debug)]
pub struct DirLock {
    file: File,
    path: PathBuf,
}

impl DirLock {
    /// Creates `dir` if needed and locks it, or fails at once (no waiting)
    /// with an error naming the process that holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| DataError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("process {holder}")
                };
                return Err(DataError::file(
                    dir,
                    format!("is in use by {who} (lock {LOCK_FILE}); wait for it to finish or use another output directory"),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(DataError::io(&path, e)),
        }
        let stamp = (|| -> std::io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "{}", std::process::id())?;
            file.flush()
        })();
        stamp.map_err(|e| DataError::io(&path, e))?;
        Ok(DirLock { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether some live process holds the lock of `dir` (false when `dir`
    /// or its lock file does not exist).
    pub fn is_held(dir: &Path) -> bool {
        let Ok(file) = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(LOCK_FILE))
        else {
            return false;
        };
        match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                false
            }
            Err(_) => true,
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// Removes the temporary files that an atomic write killed half-way left in
/// `dir` (`.<name>.tmp<pid>`, see [`crate::fsutil::atomic_write`]). Call it
/// only while holding the directory's [`DirLock`]: every writer of a locked
/// directory holds its lock, so any such file is stale. Returns how many
/// were removed.
pub fn remove_stale_temps(dir: &Path) -> Result<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if is_temp_name(&name) && entry.file_type().is_ok_and(|t| t.is_file()) {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| DataError::io(&p, e))?;
            tracing::info!(file = %p.display(), "removed a stale temporary file");
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether `name` is the temporary name of an atomic write: `.<name>.tmp<digits>`.
pub fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    match rest.rfind(".tmp") {
        Some(i) if i > 0 => {
            let pid = &rest[i + 4..];
            !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_freed_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let first = DirLock::acquire(&dir).unwrap();
        assert!(DirLock::is_held(&dir));
        let e = DirLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            e.contains("is in use by process") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
        drop(first);
        assert!(!DirLock::is_held(&dir));
        let again = DirLock::acquire(&dir).unwrap();
        assert_eq!(again.path(), dir.join(LOCK_FILE));
    }

    #[test]
    fn stale_temporary_files_are_removed_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for name in [
            ".items.csv.tmp123",
            ".dataset.json.tmp9",
            "items.csv",
            ".tmp5",
            ".x.tmp",
            ".x.tmpab",
        ] {
            std::fs::write(d.join(name), b"x").unwrap();
        }
        assert_eq!(remove_stale_temps(d).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".tmp5", ".x.tmp", ".x.tmpab", "items.csv"]);
    }
}
