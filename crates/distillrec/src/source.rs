//! From the `[dataset]` config group to a [`Dataset`]: picks the reader,
//! then filters and splits (raw logs) or reads the given splits.

use anyhow::{bail, Result};

use distillrec_config::{Config, DatasetKind};
use distillrec_data::readers::reference::RefOptions;
use distillrec_data::readers::{amazon, generic, movielens, reference};
use distillrec_data::{prepare::prepare, synthetic, Dataset};

/// Builds the dataset that `cfg.dataset` describes from its raw source.
pub fn build_dataset(cfg: &Config) -> Result<Dataset> {
    let d = &cfg.dataset;
    let opts = d.prepare_options(cfg.seed);
    let raw = || -> Result<&std::path::Path> {
        match &d.raw {
            Some(p) => Ok(p.as_path()),
            None => bail!(
                "dataset '{}' needs --raw <dir> (config key dataset.raw)",
                d.kind.name()
            ),
        }
    };
    let name = d.kind.name();
    let ds = match d.kind {
        DatasetKind::Synthetic => {
            let log = synthetic::generate(&d.synthetic)?;
            let mut ds = prepare(name, &log, &opts)?;
            ds.provenance["generator"] = serde_json::to_value(&d.synthetic)?;
            ds
        }
        DatasetKind::Ml100k => prepare(name, &movielens::read_ml_100k(raw()?)?, &opts)?,
        DatasetKind::Ml1m => prepare(name, &movielens::read_ml_1m(raw()?)?, &opts)?,
        DatasetKind::Amazon => prepare(name, &amazon::read_amazon(raw()?)?, &opts)?,
        DatasetKind::Csv => prepare(name, &generic::read_generic(raw()?)?, &opts)?,
        DatasetKind::Dllm2rec | DatasetKind::Ilora => {
            let ro = RefOptions {
                min_history: d.effective_min_history(),
            };
            if d.kind == DatasetKind::Ilora {
                reference::read_ilora(raw()?, &ro)?
            } else {
                reference::read_dllm2rec(raw()?, &ro)?
            }
        }
    };
    Ok(ds)
}
