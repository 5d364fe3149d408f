//! Output guards (issue 27 §2): a command never overwrites one of its own
//! inputs, nor a directory it did not make.
//!
//! - An output path that is an input file, or lies inside an input
//!   directory (a dataset, a backbone, a cache), is refused. Paths are
//!   compared after resolving links; a path that does not exist yet is
//!   resolved through its nearest existing ancestor.
//! - An output directory that exists and holds anything (the lock file
//!   aside) is replaced only when it holds [`MARKER_FILE`] written by a
//!   command of the same [`OutputKind`] for the same inputs; otherwise it is
//!   refused, naming the marker it expected.
//! - Commands check before any work and write nothing until the check
//!   passed; [`DirOutput::claim`] checks again and writes the marker just
//!   before the first output file, so a killed command leaves a directory
//!   its own re-run may replace.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::fsutil::{atomic_write_json, read_small_text, sha256_of};
use crate::lock::LOCK_FILE;

/// The marker a guarded output directory holds: what wrote it, for which
/// inputs.
pub const MARKER_FILE: &str = ".distillrec-output.json";

crate::named_enum! {
    /// What a guarded output directory holds.
    pub enum OutputKind {
        /// A prepared dataset (`data prepare`).
        PreparedDataset = "prepared-dataset",
        /// A teacher cache (`teacher infer | from-student | from-files | merge`).
        TeacherCache = "teacher-cache",
    }
}

/// The content of [`MARKER_FILE`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputMarker {
    /// The kind of output.
    pub kind: OutputKind,
    /// `sha256:<hex>` of the resolved input paths and the settings.
    pub inputs: String,
}

/// `p` made absolute with links resolved; a path that does not exist yet is
/// its nearest existing ancestor resolved, with the rest appended.
pub fn resolve(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut rest = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = std::fs::canonicalize(cur) {
            return rest
                .iter()
                .rev()
                .fold(c, |acc: PathBuf, part| acc.join(part));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return lexical(&abs),
        }
    }
}

/// `p` with `.` and `..` removed lexically (only when nothing of it exists).
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Refuses `out` when it is one of `inputs` (a file) or lies inside one (a
/// directory). `flag` names the option in the error (`--out`).
pub fn check_not_input(out: &Path, inputs: &[&Path], flag: &str) -> Result<()> {
    let o = resolve(out);
    for input in inputs {
        let Ok(meta) = std::fs::metadata(input) else {
            continue; // the command reports a missing input itself
        };
        let i = resolve(input);
        let clash = if meta.is_dir() {
            o.starts_with(&i)
        } else {
            o == i
        };
        if clash {
            let how = if meta.is_dir() && o != i {
                "lies inside"
            } else {
                "is"
            };
            return Err(DataError::file(
                out,
                format!(
                    "{flag} {how} the input {}: writing there would destroy it; choose another {flag}",
                    input.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Checks an output file (and the files written beside it, e.g. a sidecar):
/// none is an input or inside one, and none is a directory.
pub fn check_file_output(outs: &[&Path], inputs: &[&Path], flag: &str) -> Result<()> {
    for out in outs {
        check_not_input(out, inputs, flag)?;
        if out.is_dir() {
            return Err(DataError::file(
                out,
                format!("{flag} is a directory; name a file"),
            ));
        }
    }
    Ok(())
}

/// A checked output directory: where it is and the marker it gets.
#[derive(Clone, Debug)]
pub struct DirOutput {
    out: PathBuf,
    marker: OutputMarker,
    inputs: Vec<PathBuf>,
    flag: &'static str,
}

/// Checks the output directory `out` of a command writing `kind` from
/// `inputs` (paths) and `settings` (anything else that decides the output),
/// before any work: `out` is not an input or inside one, and is missing,
/// empty, or holds the marker of the same kind and inputs.
pub fn check_dir_output(
    out: &Path,
    inputs: &[&Path],
    kind: OutputKind,
    settings: &str,
) -> Result<DirOutput> {
    let mut text = format!("{}\n", kind.name());
    for i in inputs {
        text.push_str(&resolve(i).to_string_lossy());
        text.push('\n');
    }
    text.push_str(settings);
    let d = DirOutput {
        out: out.to_path_buf(),
        marker: OutputMarker {
            kind,
            inputs: sha256_of(text.as_bytes()),
        },
        inputs: inputs.iter().map(|p| p.to_path_buf()).collect(),
        flag: "--out",
    };
    d.check()?;
    Ok(d)
}

impl DirOutput {
    /// The output directory.
    pub fn path(&self) -> &Path {
        &self.out
    }

    /// The marker this command writes.
    pub fn marker(&self) -> &OutputMarker {
        &self.marker
    }

    fn check(&self) -> Result<()> {
        let inputs: Vec<&Path> = self.inputs.iter().map(PathBuf::as_path).collect();
        check_not_input(&self.out, &inputs, self.flag)?;
        let entries = match std::fs::read_dir(&self.out) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) if self.out.exists() && !self.out.is_dir() => {
                return Err(DataError::file(
                    &self.out,
                    format!("{} is a file; name a directory", self.flag),
                ))
            }
            Err(e) => return Err(DataError::io(&self.out, e)),
        };
        let empty = entries.flatten().all(|e| {
            e.file_name() == LOCK_FILE
                || crate::lock::is_temp_name(&e.file_name().to_string_lossy())
        });
        if empty || self.read_marker().as_ref() == Some(&self.marker) {
            return Ok(());
        }
        let kind = self.marker.kind;
        let what = match self.read_marker() {
            Some(m) if m.kind != kind => format!("holds a {}, not a {kind}", m.kind),
            Some(_) => format!("holds a {kind} made from other inputs or settings"),
            None => format!("exists and holds no {kind} this command wrote"),
        };
        Err(DataError::file(
            &self.out,
            format!(
                "{what} (no matching marker {MARKER_FILE}); remove it or choose another {}",
                self.flag
            ),
        ))
    }

    fn read_marker(&self) -> Option<OutputMarker> {
        let text = read_small_text(&self.out.join(MARKER_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Checks again (the directory may have changed since), creates the
    /// directory and writes the marker: call it just before the first
    /// output file is written.
    pub fn claim(&self) -> Result<()> {
        self.check()?;
        std::fs::create_dir_all(&self.out).map_err(|e| DataError::io(&self.out, e))?;
        atomic_write_json(&self.out.join(MARKER_FILE), &self.marker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_and_foreign_directories_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("data");
        std::fs::create_dir(&input).unwrap();
        std::fs::write(input.join("train.csv"), "x").unwrap();
        let file = d.path().join("ckpt.safetensors");
        std::fs::write(&file, "w").unwrap();
        let ins = [input.as_path(), file.as_path()];
        let e = check_file_output(&[&input.join("train.csv")], &ins, "--out").unwrap_err();
        assert!(e.to_string().contains("--out lies inside the input"), "{e}");
        let e = check_file_output(&[&file], &ins, "--out").unwrap_err();
        assert!(e.to_string().contains("--out is the input"), "{e}");
        let e = check_file_output(&[&input], &[], "--out").unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        // through `..` and a not-yet-existing child
        let sneaky = input.join("new/../new/x.csv");
        assert!(check_file_output(&[&sneaky], &ins, "--out").is_err());
        check_file_output(&[&d.path().join("sel.csv")], &ins, "--out").unwrap();

        // a foreign non-empty directory is refused, naming the marker
        let kind = OutputKind::TeacherCache;
        let e = check_dir_output(&input, &[], kind, "").unwrap_err();
        assert!(e.to_string().contains(MARKER_FILE), "{e}");
        let e = check_dir_output(&file, &[], kind, "").unwrap_err();
        assert!(e.to_string().contains("is a file"), "{e}");
        // its own output (same kind and inputs) is replaced; others are not
        let out = d.path().join("cache");
        let g = check_dir_output(&out, &[&file], kind, "k=5").unwrap();
        assert!(!out.exists(), "nothing written by the check");
        g.claim().unwrap();
        std::fs::write(out.join("rows.bin"), "r").unwrap();
        check_dir_output(&out, &[&file], kind, "k=5").unwrap();
        let e = check_dir_output(&out, &[&file], kind, "k=6").unwrap_err();
        assert!(e.to_string().contains("from other inputs"), "{e}");
        let e = check_dir_output(&out, &[&file], OutputKind::PreparedDataset, "k=5").unwrap_err();
        assert!(
            e.to_string()
                .contains("holds a teacher-cache, not a prepared-dataset"),
            "{e}"
        );
    }
}
