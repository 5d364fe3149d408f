//! From the `[dataset]` group to a [`Dataset`]: picks the reader for
//! `dataset.kind`, then filters and splits (raw logs) or reads the given
//! splits (the processed reference layouts). Lives here because this crate
//! knows the dataset kinds and depends on `distillrec-data`, not the other
//! way round.

use std::path::Path;

use distillrec_data::readers::reference::RefOptions;
use distillrec_data::readers::{amazon, generic, movielens, reference};
use distillrec_data::{prepare::prepare, synthetic, DataError, Dataset};

use crate::{Config, DatasetKind};

impl Config {
    /// Builds the dataset that `self.dataset` describes from its raw source
    /// (the `prepared` key is not consulted; callers load it themselves).
    pub fn build_dataset(&self) -> Result<Dataset, DataError> {
        let d = &self.dataset;
        let (opts, seed) = (&d.options, self.seed);
        let name = d.kind.name();
        let raw = || -> Result<&Path, DataError> {
            d.raw.as_deref().ok_or_else(|| {
                DataError::Invalid(format!(
                    "dataset '{name}' needs --raw <dir> (config key dataset.raw)"
                ))
            })
        };
        let ref_opts = RefOptions {
            min_history: d.effective_min_history(),
        };
        Ok(match d.kind {
            DatasetKind::Synthetic => {
                let log = synthetic::generate(&d.synthetic)?;
                let mut ds = prepare(name, &log, opts, seed)?;
                ds.provenance["generator"] = serde_json::to_value(&d.synthetic)
                    .map_err(|e| DataError::Invalid(format!("dataset.synthetic: {e}")))?;
                ds
            }
            DatasetKind::Ml100k => prepare(name, &movielens::read_ml_100k(raw()?)?, opts, seed)?,
            DatasetKind::Ml1m => prepare(name, &movielens::read_ml_1m(raw()?)?, opts, seed)?,
            DatasetKind::Amazon => prepare(name, &amazon::read_amazon(raw()?)?, opts, seed)?,
            DatasetKind::Csv => prepare(name, &generic::read_generic(raw()?)?, opts, seed)?,
            DatasetKind::Ilora => reference::read_ilora(raw()?, &ref_opts)?,
            DatasetKind::Dllm2rec => reference::read_dllm2rec(raw()?, &ref_opts)?,
        })
    }
}
