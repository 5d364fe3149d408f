//! Property tests in the manner of a fuzzer: arbitrary bytes, and valid
//! files with random byte edits, given to every reader and to the prepared
//! dataset loader never panic and never make the reader hold more memory
//! than a bound proportional to the input (a counting allocator measures
//! the peak of live bytes on the test's thread).

use std::path::Path;

use distillrec_testkit::{fixed_seed, peak_of, Counting};
use proptest::prelude::*;

use distillrec_data::readers::reference::RefOptions;
use distillrec_data::readers::{amazon, generic, movielens, reference};
use distillrec_data::store;

#[global_allocator]
static ALLOC: Counting = Counting;

/// What a reader may hold for `input` bytes: a constant plus a multiple.
fn bound(input: usize) -> usize {
    (8 << 20) + 64 * input
}

/// Files of a reader's directory layout: names and a valid example each.
type Layout2 = &'static [(&'static str, &'static str)];

const ML100K: Layout2 = &[
    ("u.item", "1|A (1995)|x\n2|B (1996)|y\n3|C (1997)|z\n"),
    (
        "u.data",
        "1\t1\t5\t10\n1\t2\t4\t11\n1\t3\t3\t12\n2\t1\t5\t10\n",
    ),
];
const ML1M: Layout2 = &[
    (
        "movies.dat",
        "1::A (1995)::Drama\n2::B:: C (1996)::Comedy\n",
    ),
    ("ratings.dat", "1::1::5::10\n1::2::4::11\n"),
];
const AMAZON: Layout2 = &[(
    "reviews_X.json",
    "{\"reviewerID\":\"u\",\"asin\":\"i\",\"overall\":5.0,\"unixReviewTime\":1}\n{\"user_id\":\"u\",\"parent_asin\":\"i\",\"rating\":5,\"timestamp\":2}\n",
)];
const GENERIC: Layout2 = &[
    (
        "interactions.csv",
        "user,item,timestamp,rating\nu,1,10,5\nu,2,11,4\nv,1,12,3\n",
    ),
    ("items.csv", "item,title\n1,A\n2,\"B, the\"\n"),
];
const ILORA: Layout2 = &[
    ("id2name.txt", "0::A\n1::B\n2::C::D\n"),
    (
        "train_data.jsonl",
        "{\"seq\":[0,1,3],\"len_seq\":2,\"next\":2}\n",
    ),
    (
        "Val_data.jsonl",
        "{\"seq\":[0,1,3],\"len_seq\":2,\"next\":2}\n",
    ),
    (
        "Test_data.jsonl",
        "{\"seq\":[0,1,3],\"len_seq\":2,\"next\":2}\n",
    ),
];
const DLLM2REC: Layout2 = &[
    ("data_statis.json", "{\"seq_size\":3,\"item_num\":5}"),
    (
        "train_data.csv",
        "seq,len_seq,next\n\"[1, 1, 5]\",2,4.0\n\"[0, 2, 3]\",3,1.0\n",
    ),
    ("val_data.csv", "seq,len_seq,next\n\"[1, 1, 5]\",2,4.0\n"),
    ("test_data.csv", "seq,len_seq,next\n\"[1, 1, 5]\",2,4.0\n"),
];

/// Runs reader `which` on `dir`; the result is ignored (errors are fine).
fn read(which: usize, dir: &Path) {
    let opts = RefOptions { min_history: 1 };
    let _ = match which {
        0 => movielens::read_ml_100k(dir).map(|_| ()),
        1 => movielens::read_ml_1m(dir).map(|_| ()),
        2 => amazon::read_amazon(dir).map(|_| ()),
        3 => generic::read_generic(dir).map(|_| ()),
        4 => reference::read_ilora(dir, &opts).map(|_| ()),
        _ => reference::read_dllm2rec(dir, &opts).map(|_| ()),
    };
}

const LAYOUTS: [Layout2; 6] = [ML100K, ML1M, AMAZON, GENERIC, ILORA, DLLM2REC];

/// Writes the layout with file `target` replaced by `bytes` (or, when
/// `edits` is given, the valid example with those byte edits).
fn write_case(
    dir: &Path,
    layout: Layout2,
    target: usize,
    bytes: &[u8],
    edits: Option<&[(usize, u8)]>,
) -> usize {
    let mut total = 0;
    for (i, (name, valid)) in layout.iter().enumerate() {
        let content: Vec<u8> = if i != target % layout.len() {
            valid.as_bytes().to_vec()
        } else if let Some(edits) = edits {
            let mut v = valid.as_bytes().to_vec();
            for &(at, b) in edits {
                if v.is_empty() {
                    v.push(b);
                } else {
                    let at = at % (v.len() + 1);
                    if at == v.len() {
                        v.push(b);
                    } else {
                        v[at] = b;
                    }
                }
            }
            v
        } else {
            bytes.to_vec()
        };
        total += content.len();
        std::fs::write(dir.join(name), content).unwrap();
    }
    total
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, rng_seed: fixed_seed(), ..ProptestConfig::default() })]

    /// 256 cases: arbitrary bytes as one file of a random reader's layout.
    #[test]
    fn readers_survive_arbitrary_bytes(which in 0usize..6, target in 0usize..4, bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let dir = tempfile::tempdir().unwrap();
        let total = write_case(dir.path(), LAYOUTS[which], target, &bytes, None);
        let peak = peak_of(|| read(which, dir.path()));
        prop_assert!(peak <= bound(total), "reader {which}: peak {peak} bytes for {total} input bytes");
    }

    /// 256 cases: valid files with up to 8 random byte edits (digits are
    /// likely, so huge ids and counts are tried).
    #[test]
    fn readers_survive_mutated_valid_files(which in 0usize..6, target in 0usize..4, edits in proptest::collection::vec((any::<usize>(), prop_oneof![b'0'..=b'9', any::<u8>()]), 1..8)) {
        let dir = tempfile::tempdir().unwrap();
        let total = write_case(dir.path(), LAYOUTS[which], target, &[], Some(&edits));
        let peak = peak_of(|| read(which, dir.path()));
        prop_assert!(peak <= bound(total), "reader {which}: peak {peak} bytes for {total} input bytes");
    }
}

/// A small prepared dataset to mutate.
fn prepared() -> tempfile::TempDir {
    let log = distillrec_data::synthetic::generate(&distillrec_data::synthetic::SyntheticOptions {
        users: 30,
        ..Default::default()
    })
    .unwrap();
    let ds = distillrec_data::prepare::prepare("s", &log, &Default::default(), 42).unwrap();
    let dir = tempfile::tempdir().unwrap();
    store::save(&ds, dir.path()).unwrap();
    dir
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, rng_seed: fixed_seed(), ..ProptestConfig::default() })]

    /// 128 cases: one file of a prepared dataset with random byte edits.
    #[test]
    fn prepared_loader_survives_mutations(file in 0usize..8, edits in proptest::collection::vec((any::<usize>(), prop_oneof![b'0'..=b'9', any::<u8>()]), 1..8)) {
        let dir = prepared();
        let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        let p = &names[file % names.len()];
        let mut v = std::fs::read(p).unwrap();
        for &(at, b) in &edits {
            let at = at % v.len().max(1);
            if v.is_empty() { v.push(b) } else { v[at] = b }
        }
        std::fs::write(p, &v).unwrap();
        let total: usize = names.iter().map(|n| std::fs::metadata(n).unwrap().len() as usize).sum();
        let peak = peak_of(|| { let _ = store::load(dir.path()); });
        prop_assert!(peak <= bound(total), "peak {peak} bytes for {total} input bytes");
    }
}
