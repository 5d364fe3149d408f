//! The epoch commit shared by every training loop (students, distillation,
//! the LLM teacher): how the `last` checkpoint and the loop state become
//! one atomic step.
//!
//! A loop ends each epoch by writing its `last` checkpoint under a name of
//! its own, `last-e<epoch>` (weights, then manifest), and then its state
//! file, which names that checkpoint and the SHA-256 of its weights
//! ([`LastRef`]). Writing the state is the commit: a kill before it leaves
//! the previous state and the previous `last` (still on disk under its own
//! name), a kill after it leaves the new pair. Only then are the older
//! `last-*` files removed. A resume loads exactly the checkpoint its state
//! names and refuses one whose weights or epoch differ, so it never trains
//! an epoch again on weights that already went through it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The `last` checkpoint a saved loop state belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRef {
    /// Weights file name inside the checkpoint directory.
    pub file: String,
    /// `sha256:<hex>` of the weights, as its manifest records it.
    pub sha256: String,
}

/// Stem of the `last` checkpoint written after `epoch` (`last-e0003`).
pub fn last_stem(epoch: usize) -> String {
    format!("last-e{epoch:04}")
}

/// The weights file a state resumes from: the one it names, or for a state
/// written before [`LastRef`] existed, the single `last.safetensors`.
pub fn last_file(last: Option<&LastRef>) -> &str {
    last.map_or("last.safetensors", |r| r.file.as_str())
}

/// Refuses a `last` checkpoint (its manifest's epoch and weights SHA-256)
/// that is not the one the state (`state_epoch`, `last`) was committed
/// with. A state from before [`LastRef`] is checked by epoch alone.
pub fn check_last(
    path: &Path,
    manifest_epoch: usize,
    manifest_sha256: &str,
    state_epoch: usize,
    last: Option<&LastRef>,
) -> Result<()> {
    let sha_ok = last.is_none_or(|r| r.sha256 == manifest_sha256);
    if manifest_epoch != state_epoch || !sha_ok {
        bail!(
            "{}: this checkpoint (epoch {manifest_epoch}) is not the one the training state was saved with (epoch {state_epoch}); an exact resume is impossible, so re-run with another --out",
            path.display()
        );
    }
    Ok(())
}

/// Removes every `last*` checkpoint in `dir` (weights and manifests) but
/// the one named `keep_stem`: called after the state naming `keep_stem`
/// was written, so the files removed belong to no state.
pub fn remove_stale_last(dir: &Path, keep_stem: &str) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        let (Some(stem), Some(ext)) = (path.file_stem(), path.extension()) else {
            continue;
        };
        let stem = stem.to_string_lossy();
        let is_last = stem == "last" || stem.starts_with("last-e");
        if is_last && stem != keep_stem && (ext == "safetensors" || ext == "json") {
            std::fs::remove_file(&path)
                .with_context(|| format!("{}: cannot remove", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_committed_checkpoint_is_kept() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "last.safetensors",
            "last.json",
            "last-e0001.safetensors",
            "last-e0001.json",
            "last-e0002.safetensors",
            "last-e0002.json",
            "best.safetensors",
            "best.json",
            "lastly.txt",
        ] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        remove_stale_last(d.path(), &last_stem(2)).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "best.json",
                "best.safetensors",
                "last-e0002.json",
                "last-e0002.safetensors",
                "lastly.txt"
            ]
        );
    }

    #[test]
    fn a_checkpoint_ahead_of_its_state_is_refused() {
        let r = LastRef {
            file: "last-e0002.safetensors".into(),
            sha256: "sha256:aa".into(),
        };
        let p = Path::new("c/last-e0002.safetensors");
        assert!(check_last(p, 2, "sha256:aa", 2, Some(&r)).is_ok());
        let err = check_last(p, 3, "sha256:bb", 2, Some(&r)).unwrap_err();
        assert!(err.to_string().contains("epoch 3"), "{err}");
        assert!(check_last(p, 2, "sha256:bb", 2, Some(&r)).is_err());
        // a state from before LastRef: the epoch decides
        assert!(check_last(p, 2, "sha256:bb", 2, None).is_ok());
        assert!(check_last(p, 3, "sha256:bb", 2, None).is_err());
        assert_eq!(last_file(None), "last.safetensors");
        assert_eq!(last_file(Some(&r)), "last-e0002.safetensors");
    }
}
