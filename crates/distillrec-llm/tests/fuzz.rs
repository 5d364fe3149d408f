//! Property tests in the manner of a fuzzer for the LLM loaders: a GGUF
//! file (header parser, metadata, tokenizer, tensors) and a Hugging Face
//! directory's `config.json` / `tokenizer.json`, as arbitrary bytes or as
//! valid files with random byte edits, never panic and never make the
//! loader hold more memory than a bound proportional to the input (a
//! counting allocator measures the peak of live bytes on the test thread).

mod common;

use std::path::Path;

use common::*;
use distillrec_llm::{load, LoadOptions};
use distillrec_testkit::{fixed_seed, peak_of, Counting};
use proptest::prelude::*;

#[global_allocator]
static ALLOC: Counting = Counting;

/// What loading `input` bytes may hold at most.
fn bound(input: usize) -> usize {
    (64 << 20) + 64 * input
}

/// Applies byte edits (position modulo the length) to `v`.
fn mutate(mut v: Vec<u8>, edits: &[(usize, u8)]) -> Vec<u8> {
    for &(at, b) in edits {
        if v.is_empty() {
            v.push(b);
        } else {
            let at = at % v.len();
            v[at] = b;
        }
    }
    v
}

fn valid_gguf(dir: &Path) -> Vec<u8> {
    let cfg = llama_config("llama", 1, false);
    let p = dir.join("valid.gguf");
    write_gguf(&p, &cfg, &random_weights(&cfg, 3), "llama");
    std::fs::read(&p).unwrap()
}

fn load_quietly(p: &Path) {
    let _ = load(p, &LoadOptions::default());
}

fn edit() -> impl Strategy<Value = Vec<(usize, u8)>> {
    proptest::collection::vec(
        (
            any::<usize>(),
            prop_oneof![Just(0u8), Just(0xff), any::<u8>()],
        ),
        1..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, rng_seed: fixed_seed(), ..ProptestConfig::default() })]

    /// 128 cases: a valid GGUF with up to 8 byte edits, most in the header.
    #[test]
    fn gguf_survives_mutations(edits in edit(), header_only in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let v = valid_gguf(dir.path());
        let edits: Vec<(usize, u8)> = if header_only {
            edits.iter().map(|&(at, b)| (at % 4096, b)).collect()
        } else {
            edits
        };
        let v = mutate(v, &edits);
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, &v).unwrap();
        let peak = peak_of(|| load_quietly(&p));
        prop_assert!(peak <= bound(v.len()), "peak {peak} for {} bytes", v.len());
    }

    /// 128 cases: arbitrary bytes after a GGUF magic and version.
    #[test]
    fn gguf_survives_arbitrary_headers(version in 1u32..4, bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().unwrap();
        let mut v = Vec::new();
        v.extend_from_slice(&0x4655_4747u32.to_le_bytes());
        v.extend_from_slice(&version.to_le_bytes());
        v.extend_from_slice(&bytes);
        let p = dir.path().join("a.gguf");
        std::fs::write(&p, &v).unwrap();
        let peak = peak_of(|| load_quietly(&p));
        prop_assert!(peak <= bound(v.len()), "peak {peak} for {} bytes", v.len());
    }

    /// 64 cases: an HF directory whose `config.json` or `tokenizer.json`
    /// has random byte edits.
    #[test]
    fn hf_config_and_tokenizer_survive_mutations(edits in edit(), tokenizer in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = llama_config("llama", 1, true);
        write_hf_dir(dir.path(), &cfg, &random_weights(&cfg, 5));
        let name = if tokenizer { "tokenizer.json" } else { "config.json" };
        let p = dir.path().join(name);
        let v = mutate(std::fs::read(&p).unwrap(), &edits);
        std::fs::write(&p, &v).unwrap();
        let total: usize = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len() as usize).sum();
        let peak = peak_of(|| load_quietly(dir.path()));
        prop_assert!(peak <= bound(total), "peak {peak} for {total} bytes");
    }
}
