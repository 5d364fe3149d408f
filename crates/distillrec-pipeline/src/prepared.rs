//! A prepared dataset with its identity, and where a run's dataset comes
//! from.

use std::path::{Path, PathBuf};

use anyhow::Result;

use distillrec_config::Config;
use distillrec_data::{store, Dataset};
use distillrec_train::DatasetRef;

/// A loaded prepared dataset and how checkpoints refer to it.
pub struct Data {
    /// The dataset.
    pub ds: Dataset,
    /// Its fingerprint, name and directory.
    pub reference: DatasetRef,
}

/// `p` made absolute (as is, when it does not exist), for records that must
/// stay valid from another working directory.
pub fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Loads the prepared dataset in `dir` with its fingerprint.
pub fn load_prepared(dir: &Path) -> Result<Data> {
    let m = store::read_manifest(dir)?;
    let ds = store::load(dir)?;
    Ok(Data {
        reference: DatasetRef {
            fingerprint: m.fingerprint,
            name: ds.name.clone(),
            dir: Some(absolute(dir)),
        },
        ds,
    })
}

/// The dataset of a run: `data`, else `dataset.prepared`, else built from
/// the raw source and saved under `<out>/data` (so it has a fingerprint).
pub fn run_data(cfg: &Config, data: Option<&Path>, out: &Path) -> Result<Data> {
    if let Some(d) = data.or(cfg.dataset.prepared.as_deref()) {
        return load_prepared(d);
    }
    let ds = cfg.build_dataset()?;
    let dir = out.join("data");
    store::save(&ds, &dir)?;
    load_prepared(&dir)
}
