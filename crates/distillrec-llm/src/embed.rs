//! Item-title embeddings: the last-layer hidden state of each title's last
//! token (SPEC 6, the teacher cache's LLM item table), computed in batches
//! sorted by length so little compute goes to padding.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use distillrec_data::Dataset;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// Name of the table inside the safetensors file.
pub const TABLE_NAME: &str = "item_embeddings";

/// How titles are cut and named when embedded.
#[derive(Clone, Copy, Debug)]
pub struct TitleCut<'a> {
    /// Tokens kept of each title (its first ones), as the teacher's prompts
    /// keep them (`teacher.max_title_tokens`), so that a title of any length
    /// embeds within the model's context.
    pub max_tokens: usize,
    /// What the i-th text is in errors: `item` names `item {i + 1}`.
    pub what: &'a str,
}

/// The first characters of `text`, for an error line.
fn preview(text: &str) -> String {
    const SHOWN: usize = 40;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Token ids of `titles`, each cut to `cut.max_tokens`; a title without
/// tokens, or one still longer than the model's context, is refused naming it.
fn encode_titles(
    model: &Model,
    tok: &Tokenizer,
    titles: &[&str],
    cut: TitleCut,
) -> Result<Vec<Vec<u32>>> {
    let ctx = model.config().max_position_embeddings;
    titles
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut ids = tok.encode(t, true)?;
            let name = || format!("{} {} (`{}`)", cut.what, i + 1, preview(t));
            if ids.is_empty() {
                return Err(Error::Input(format!("{} has no tokens", name())));
            }
            ids.truncate(cut.max_tokens.max(1));
            if ids.len() > ctx {
                return Err(Error::Input(format!(
                    "{} keeps {} tokens, more than the model's context of {ctx}; lower the title cut",
                    name(),
                    ids.len()
                )));
            }
            Ok(ids)
        })
        .collect()
}

/// Embeddings `(n, hidden)` (f32) of `titles`, one row per title, in order,
/// each cut as `cut` says.
pub fn title_embeddings(
    model: &Model,
    tok: &Tokenizer,
    titles: &[&str],
    batch_size: usize,
    cut: TitleCut,
) -> Result<Tensor> {
    let batch_size = batch_size.max(1);
    let encoded = encode_titles(model, tok, titles, cut)?;
    let mut order: Vec<usize> = (0..titles.len()).collect();
    order.sort_by_key(|&i| (encoded[i].len(), i));
    let h = model.last_hidden_size();
    let mut out = vec![0f32; titles.len() * h];
    for chunk in order.chunks(batch_size) {
        let t = chunk.iter().map(|&i| encoded[i].len()).max().unwrap_or(1);
        let mut ids = Vec::with_capacity(chunk.len() * t);
        let mut mask = Vec::with_capacity(chunk.len() * t);
        for &i in chunk {
            let e = &encoded[i];
            ids.extend(
                e.iter()
                    .copied()
                    .chain(std::iter::repeat_n(tok.pad_id(), t - e.len())),
            );
            mask.extend((0..t).map(|j| (j < e.len()) as u8));
        }
        let ids = Tensor::from_vec(ids, (chunk.len(), t), model.device())?;
        let mask = Tensor::from_vec(mask, (chunk.len(), t), model.device())?;
        let hidden = model.forward_hidden(&model.embed(&ids)?, Some(&mask), None)?;
        let last: Vec<usize> = chunk.iter().map(|&i| encoded[i].len() - 1).collect();
        let rows = gather_rows(&hidden, &last)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        for (&i, row) in chunk.iter().zip(rows) {
            if row.iter().any(|x| !x.is_finite()) {
                return Err(Error::Input(format!(
                    "non-finite embedding for {} {} (`{}`)",
                    cut.what,
                    i + 1,
                    preview(titles[i])
                )));
            }
            out[i * h..(i + 1) * h].copy_from_slice(&row);
        }
    }
    Ok(Tensor::from_vec(
        out,
        (titles.len(), h),
        &candle_core::Device::Cpu,
    )?)
}

/// The item table `(N + 1, hidden)` of a dataset: row `i` embeds the title of
/// item `i`, row 0 (padding) is zeros.
pub fn item_table(
    model: &Model,
    tok: &Tokenizer,
    ds: &Dataset,
    batch_size: usize,
    max_title_tokens: usize,
) -> Result<Tensor> {
    let titles: Vec<&str> = ds.items.iter().map(|it| it.title.as_str()).collect();
    let cut = TitleCut {
        max_tokens: max_title_tokens,
        what: "item",
    };
    let e = title_embeddings(model, tok, &titles, batch_size, cut)?;
    let zero = Tensor::zeros((1, model.last_hidden_size()), DType::F32, e.device())?;
    Ok(Tensor::cat(&[&zero, &e], 0)?)
}

/// Writes `table` (f32, 2-D) as tensor [`TABLE_NAME`] of a safetensors file,
/// atomically, with string `metadata` (dataset fingerprint, model, ...).
pub fn save_table(path: &Path, table: &Tensor, metadata: HashMap<String, String>) -> Result<()> {
    let (n, h) = table.dims2()?;
    let data: Vec<f32> = table.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n, h], &bytes)
        .map_err(|e| Error::file(path, e))?;
    let buf = safetensors::serialize([(TABLE_NAME, view)], Some(metadata))
        .map_err(|e| Error::file(path, e))?;
    distillrec_data::fsutil::atomic_write(path, &buf)?;
    Ok(())
}

/// Reads a table written by [`save_table`]: the tensor and the metadata.
pub fn load_table(path: &Path) -> Result<(Tensor, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::file(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::file(path, e))?;
    let view = st
        .tensor(TABLE_NAME)
        .map_err(|e| Error::tensor(path, TABLE_NAME, e))?;
    if view.dtype() != safetensors::Dtype::F32 || view.shape().len() != 2 {
        return Err(Error::tensor(path, TABLE_NAME, "expected a 2-D f32 tensor"));
    }
    let data: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let t = Tensor::from_vec(
        data,
        (view.shape()[0], view.shape()[1]),
        &candle_core::Device::Cpu,
    )?;
    Ok((t, meta.metadata().clone().unwrap_or_default()))
}

/// Picks `hidden[r, idx[r], :]` for each row: `(batch, hidden)`.
pub fn gather_rows(hidden: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let (b, t, h) = hidden.dims3()?;
    if idx.len() != b || idx.iter().any(|&i| i >= t) {
        return Err(Error::Input(format!(
            "gather indices {idx:?} for a batch of {b}×{t}"
        )));
    }
    let flat: Vec<u32> = idx
        .iter()
        .enumerate()
        .map(|(r, &i)| (r * t + i) as u32)
        .collect();
    let flat = Tensor::from_vec(flat, b, hidden.device())?;
    Ok(hidden.reshape((b * t, h))?.index_select(&flat, 0)?)
}
