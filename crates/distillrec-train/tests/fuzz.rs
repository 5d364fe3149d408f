//! Property test in the manner of a fuzzer for checkpoint manifests: a
//! valid manifest with random edits (numbers made huge or zero, bytes
//! changed) or arbitrary bytes never panics the loader and never makes it
//! hold more memory than a bound proportional to the weights file (a
//! counting allocator measures the peak of live bytes on the test thread).

use std::collections::BTreeMap;

use candle_core::Device;
use distillrec_config::StudentKind;
use distillrec_models::{Student, StudentSpec};
use distillrec_testkit::{fixed_seed, peak_of, Counting};
use distillrec_train::checkpoint::{self, DatasetRef, Expect};
use proptest::prelude::*;

#[global_allocator]
static ALLOC: Counting = Counting;

/// Saves a tiny checkpoint of `kind`; returns the directory and manifest text.
fn saved(kind: StudentKind) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let spec = StudentSpec {
        kind,
        num_items: 9,
        hidden: 8,
        layers: 2,
        heads: 2,
        dropout: 0.1,
        max_len: 6,
    };
    let s = Student::new(&spec, 1, &Device::Cpu).unwrap();
    let w = dir.path().join("best.safetensors");
    let ds = DatasetRef {
        fingerprint: "fp".into(),
        name: "t".into(),
        dir: None,
    };
    checkpoint::save(&w, &s, BTreeMap::new(), &ds, 1, &BTreeMap::new()).unwrap();
    let text = std::fs::read_to_string(dir.path().join("best.json")).unwrap();
    (dir, text)
}

const KINDS: [StudentKind; 3] = [
    StudentKind::Sasrec,
    StudentKind::Gru4rec,
    StudentKind::Caser,
];
const NUMBERS: [&str; 6] = ["0", "1", "3", "65537", "1000000000", "4000000000"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, failure_persistence: None, rng_seed: fixed_seed(), ..ProptestConfig::default() })]

    /// 192 cases: each spec number replaced by one of a few hostile values,
    /// plus random byte edits of the manifest, for each student kind.
    #[test]
    fn manifest_loader_survives_mutations(
        kind in 0usize..3,
        numbers in proptest::collection::vec(0usize..6, 6),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
    ) {
        let (dir, text) = saved(KINDS[kind]);
        let mut j: serde_json::Value = serde_json::from_str(&text).unwrap();
        for (key, &n) in ["num_items", "hidden", "layers", "heads", "max_len", "dropout"].iter().zip(&numbers) {
            if n > 0 {
                j["spec"][*key] = serde_json::from_str(NUMBERS[n]).unwrap();
            }
        }
        let mut bytes = j.to_string().into_bytes();
        for &(at, b) in &edits {
            let at = at % bytes.len();
            bytes[at] = b;
        }
        let m = dir.path().join("best.json");
        std::fs::write(&m, &bytes).unwrap();
        let weights = std::fs::metadata(dir.path().join("best.safetensors")).unwrap().len() as usize;
        let peak = peak_of(|| {
            let _ = checkpoint::load(&m, &Expect::default(), &Device::Cpu);
        });
        prop_assert!(peak <= (16 << 20) + 16 * weights, "peak {peak} for a {weights}-byte weights file");
    }
}
