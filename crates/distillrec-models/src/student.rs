//! The student: a registered [`StudentNet`] with its parameters. Build from
//! a spec, represent a batch of histories, score the catalogue; the spec's
//! kind lets checkpoints of another kind be refused.

use candle_core::{Device, Result, Tensor};

use distillrec_config::StudentKind;
use distillrec_data::ItemId;

use crate::batch::{ForwardCtx, SeqBatch};
use crate::caser::Caser;
use crate::gru4rec::Gru4Rec;
pub use crate::net::{Layout, StudentNet, StudentSpec, ITEM_TABLE};
use crate::params::{Init, Params};
use crate::sasrec::SasRec;

/// One entry of the model zoo: how to build a net, and what its checkpoint
/// holds.
struct Entry {
    build: fn(&StudentSpec, &mut Params, &mut Init) -> Result<Box<dyn StudentNet>>,
    layout: fn(&StudentSpec) -> Layout,
}

/// The zoo entry of the net type `N`.
fn entry<N: StudentNet + 'static>() -> Entry {
    Entry {
        build: |spec, params, init| Ok(Box::new(N::build(spec, params, init)?)),
        layout: N::layout,
    }
}

/// The model zoo: the one place that maps a config name to its net. A new
/// student is one file implementing [`StudentNet`] (`mod` line in `lib.rs`),
/// one line here, and its name in `StudentKind` (distillrec-config); see
/// ARCHITECTURE.md, "Adding a student".
fn zoo(kind: StudentKind) -> Entry {
    match kind {
        StudentKind::Sasrec => entry::<SasRec>(),
        StudentKind::Gru4rec => entry::<Gru4Rec>(),
        StudentKind::Caser => entry::<Caser>(),
    }
}

/// What a checkpoint of the student `spec` holds beyond its item table
/// (the loader checks a weights file against it before building the net).
pub fn checkpoint_layout(spec: &StudentSpec) -> Layout {
    (zoo(spec.kind).layout)(spec)
}

/// A student model with its parameters.
pub struct Student {
    /// How it was built.
    pub spec: StudentSpec,
    /// Its trainable parameters.
    pub params: Params,
    net: Box<dyn StudentNet>,
    device: Device,
}

impl Student {
    /// Builds a student with parameters initialised from `seed`.
    pub fn new(spec: &StudentSpec, seed: u64, device: &Device) -> Result<Self> {
        let mut params = Params::default();
        let mut init = Init::new(seed, device);
        let net = (zoo(spec.kind).build)(spec, &mut params, &mut init)?;
        Ok(Student {
            spec: spec.clone(),
            params,
            net,
            device: device.clone(),
        })
    }

    /// The network's name (the config's `student.model`), for messages.
    pub fn name(&self) -> &'static str {
        self.net.name()
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The model's own item table `E [N + 1, d]` (inputs and scoring).
    pub fn item_table(&self) -> &Tensor {
        self.net.item_table()
    }

    /// A copy of this student whose item table (inputs and scoring) is
    /// `table [N + 1, d]`; every other parameter is copied. Distillation
    /// exports its folded table this way, so the deployed model is a plain
    /// student.
    pub fn with_item_table(&self, table: &Tensor) -> Result<Student> {
        let out = Student::new(&self.spec, 0, &self.device)?;
        let mut tensors = self.params.tensors();
        let want = self.item_table().dims().to_vec();
        if table.dims() != want.as_slice() {
            candle_core::bail!(
                "item table has shape {:?}, the student expects {:?}",
                table.dims(),
                want
            );
        }
        tensors.insert(ITEM_TABLE.to_string(), table.detach());
        out.params
            .load_from(&tensors, std::path::Path::new("<exported student>"))?;
        Ok(out)
    }

    /// Whether the model produces an output at every position
    /// (needed by the `all_positions` objective).
    pub fn has_all_positions(&self) -> bool {
        self.net.per_position()
    }

    /// Hidden states `[B, L, d]` at every position (nets with
    /// [`Student::has_all_positions`]).
    pub fn hidden_all(
        &self,
        batch: &SeqBatch,
        table: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        self.net.hidden_all(batch, table, ctx)
    }

    /// Sequence representation `[B, d]` using `table` as the item table
    /// (distillation passes an augmented table).
    pub fn represent_with(
        &self,
        batch: &SeqBatch,
        table: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        self.net.represent(batch, table, ctx)
    }

    /// Sequence representations `[B, d]` and scores `[B, N + 1]` (column 0
    /// = −∞) of each history at inference; selection policies need both.
    pub fn represent_and_score(&self, histories: &[&[ItemId]]) -> Result<(Vec<f32>, Vec<f32>)> {
        let batch =
            SeqBatch::from_histories(histories.iter().copied(), self.spec.max_len, &self.device)?;
        let table = self.item_table();
        let rep = self.represent_with(&batch, table, &mut ForwardCtx::eval())?;
        let scores = rep.matmul(&table.t()?)?;
        let mut v = scores.flatten_all()?.to_vec1::<f32>()?;
        let c = self.spec.num_items + 1;
        for row in v.chunks_mut(c) {
            row[0] = f32::NEG_INFINITY;
        }
        Ok((rep.flatten_all()?.to_vec1::<f32>()?, v))
    }

    /// Scores `[B, N + 1]` of every item for each history (inference, no
    /// dropout); column 0 is padding and is set to −∞.
    pub fn score_histories(&self, histories: &[&[ItemId]]) -> Result<Vec<f32>> {
        Ok(self.represent_and_score(histories)?.1)
    }
}

/// The scores of an ensemble on `histories`, `[B, N + 1]` as
/// [`Student::score_histories`] gives them: one student's as they are,
/// several students' mean log-softmax over items `1..=N` (the normalised
/// geometric mean of their distributions), column 0 −∞. An ensemble of
/// seeds is a teacher stronger than any of them.
pub fn ensemble_scores(students: &[&Student], histories: &[&[ItemId]]) -> Result<Vec<f32>> {
    use rayon::prelude::*;
    match students {
        [] => candle_core::bail!("an ensemble needs at least one student"),
        [one] => return one.score_histories(histories),
        _ => {}
    }
    let n = students[0].spec.num_items;
    if let Some(s) = students.iter().find(|s| s.spec.num_items != n) {
        candle_core::bail!(
            "the ensemble's students score {} and {} items: they were trained on different catalogues",
            n,
            s.spec.num_items
        );
    }
    let mut mean = vec![0f32; histories.len() * (n + 1)];
    let w = 1.0 / students.len() as f32;
    for s in students {
        let scores = s.score_histories(histories)?;
        mean.par_chunks_mut(n + 1)
            .zip(scores.par_chunks(n + 1))
            .for_each_init(
                || vec![0f32; n],
                |scratch, (m, row)| {
                    let items = &row[1..];
                    let mx = crate::fastmath::max(items);
                    let log_z = mx + crate::fastmath::exp_shift_sum(items, mx, scratch).ln();
                    for (acc, &x) in m[1..].iter_mut().zip(items) {
                        *acc += w * (x - log_z);
                    }
                },
            );
    }
    for m in mean.chunks_mut(n + 1) {
        m[0] = f32::NEG_INFINITY;
    }
    Ok(mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: StudentKind, max_len: usize) -> StudentSpec {
        StudentSpec {
            kind,
            num_items: 20,
            hidden: 8,
            layers: 1,
            heads: 2,
            dropout: 0.1,
            max_len,
        }
    }

    fn names(kind: StudentKind) -> Vec<String> {
        let s = Student::new(&spec(kind, 6), 0, &Device::Cpu).unwrap();
        s.params.vars().map(|(k, _)| k.clone()).collect()
    }

    #[test]
    fn parameter_names_are_the_checkpoint_keys_of_every_release() {
        // Checkpoints store parameters under these names; renaming one
        // breaks loading every checkpoint written before.
        let mut sasrec: Vec<String> = ["item_emb", "ln_final.bias", "ln_final.weight", "pos_emb"]
            .map(String::from)
            .to_vec();
        let block = [
            "attn.k.bias",
            "attn.k.weight",
            "attn.o.bias",
            "attn.o.weight",
            "attn.q.bias",
            "attn.q.weight",
            "attn.v.bias",
            "attn.v.weight",
            "ff1.bias",
            "ff1.weight",
            "ff2.bias",
            "ff2.weight",
            "ln_attn.bias",
            "ln_attn.weight",
            "ln_ff.bias",
            "ln_ff.weight",
        ];
        sasrec.extend(block.iter().map(|s| format!("blocks.0.{s}")));
        sasrec.sort_unstable();
        let gru4rec = [
            "gru.bias_hh",
            "gru.bias_ih",
            "gru.weight_hh",
            "gru.weight_ih",
            "item_emb",
        ];
        let caser = [
            "conv_h2.bias",
            "conv_h2.weight",
            "conv_h3.bias",
            "conv_h3.weight",
            "conv_h4.bias",
            "conv_h4.weight",
            "conv_v.bias",
            "conv_v.weight",
            "fc.bias",
            "fc.weight",
            "item_emb",
        ];
        assert_eq!(names(StudentKind::Sasrec), sasrec);
        assert_eq!(names(StudentKind::Gru4rec), gru4rec);
        assert_eq!(names(StudentKind::Caser), caser);
    }

    #[test]
    fn per_position_output_is_a_property_of_the_net() {
        let dev = Device::Cpu;
        let batch = SeqBatch::from_histories([&[3u32, 4][..]], 6, &dev).unwrap();
        for (kind, per_position) in [
            (StudentKind::Sasrec, true),
            (StudentKind::Gru4rec, true),
            (StudentKind::Caser, false),
        ] {
            let s = Student::new(&spec(kind, 6), 0, &dev).unwrap();
            assert_eq!(s.has_all_positions(), per_position, "{kind:?}");
            let all = s.hidden_all(&batch, s.item_table(), &mut ForwardCtx::eval());
            match all {
                Ok(h) => assert_eq!(h.dims(), &[1, 6, 8], "{kind:?}"),
                Err(e) => {
                    assert!(!per_position, "{kind:?}: {e}");
                    assert!(e.to_string().contains("caser has no per-position output"));
                }
            }
            let rep = s
                .represent_with(&batch, s.item_table(), &mut ForwardCtx::eval())
                .unwrap();
            assert_eq!(rep.dims(), &[1, 8], "{kind:?}");
        }
    }

    #[test]
    fn gru4rec_representation_ignores_left_padding() {
        // Same seed and sizes: identical weights; only the amount of padding differs.
        let dev = Device::Cpu;
        let a = Student::new(&spec(StudentKind::Gru4rec, 4), 3, &dev).unwrap();
        let b = Student::new(&spec(StudentKind::Gru4rec, 9), 3, &dev).unwrap();
        let h: &[ItemId] = &[5, 7, 2];
        let (sa, sb) = (
            a.score_histories(&[h]).unwrap(),
            b.score_histories(&[h]).unwrap(),
        );
        for (x, y) in sa.iter().zip(&sb).skip(1) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        assert_eq!(sa[0], f32::NEG_INFINITY, "column 0 is padding");
    }

    #[test]
    fn sasrec_scores_depend_on_the_newest_item() {
        let dev = Device::Cpu;
        let s = Student::new(&spec(StudentKind::Sasrec, 6), 1, &dev).unwrap();
        let one = s.score_histories(&[&[3, 4]]).unwrap();
        let two = s.score_histories(&[&[3, 4], &[3, 9]]).unwrap();
        let same = one
            .iter()
            .zip(&two[..21])
            .all(|(x, y)| x == y || (x - y).abs() < 1e-5);
        assert!(same, "rows are independent of their batch");
        assert_ne!(&two[..21], &two[21..]);
    }
}
