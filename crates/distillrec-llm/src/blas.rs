//! An optional system BLAS for the explicit path's large products.
//!
//! The `gemm` crate reaches 80–150 GFLOP/s on the products of a
//! SmolLM2-sized layer on two AVX2 cores; OpenBLAS reaches 130–157 on the
//! same shapes, and the gap is widest for the 128-row products of a single
//! prompt (measured side by side, `cblas_sgemm` against gemm with the
//! column split of the tape module). So when a system OpenBLAS is
//! installed (Debian/Ubuntu: `libopenblas0-pthread`), the tape hands it the
//! products with more than a few hundred thousand multiply-adds; without
//! one everything runs on gemm, with the same results up to float rounding.
//!
//! The library is found at run time, so no build needs it:
//! `DISTILLREC_BLAS=<path>` names one (an LP64 CBLAS: 32-bit sizes, as
//! `libopenblas.so.0` is; not an ILP64 `libopenblas64`), `DISTILLREC_BLAS=off` disables the
//! lookup, otherwise `libopenblas.so.0` is tried. Its thread count is set
//! to rayon's.
//!
//! An OpenBLAS that does not recognise the CPU falls back to its generic
//! SSE3 (`Prescott`) kernels. Virtual machines that report a generic model
//! name trigger this: on a 2-core Sapphire Rapids VM the adapter training
//! step ran at 61 tokens/s on such an OpenBLAS against 240 on gemm, and
//! batched inference at 2.0 rows/s against 5.6. So on an AVX2 CPU a library
//! whose detected core has no AVX2 kernels is declined and gemm runs
//! instead; `OPENBLAS_CORETYPE=SkylakeX` (or `Haswell`, `Zen`) makes
//! OpenBLAS use its fast kernels, and then it is taken.

use std::sync::OnceLock;

/// `cblas_sgemm` / `cblas_dgemm` (row-major order, transposes, sizes,
/// alpha, a, lda, b, ldb, beta, c, ldc).
type Gemm<T> = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    T,
    *const T,
    i32,
    *const T,
    i32,
    T,
    *mut T,
    i32,
);

/// A loaded BLAS.
pub struct Blas {
    _lib: libloading::Library,
    sgemm: Gemm<f32>,
    dgemm: Gemm<f64>,
    /// Where it was loaded from.
    pub path: String,
}

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

/// The system BLAS, loaded on first use (None when absent, disabled or
/// declined).
pub fn get() -> Option<&'static Blas> {
    state().0.as_ref()
}

/// Which products the explicit path runs on, for benchmark records:
/// `openblas:<core>` (or the library path for another CBLAS), `gemm`, or
/// `gemm(declined:<core>)` when an OpenBLAS with generic kernels was found.
pub fn describe() -> &'static str {
    &state().1
}

fn state() -> &'static (Option<Blas>, String) {
    static BLAS: OnceLock<(Option<Blas>, String)> = OnceLock::new();
    BLAS.get_or_init(load)
}

/// Whether an OpenBLAS core name (`openblas_get_corename`) is one of its
/// kernel sets with AVX2 (or wider) products.
fn avx2_core(name: &str) -> bool {
    const AVX2: [&str; 6] = [
        "haswell",
        "zen",
        "skylakex",
        "cooperlake",
        "sapphirerapids",
        "excavator",
    ];
    AVX2.contains(&name.trim().to_ascii_lowercase().as_str())
}

/// Whether this CPU runs AVX2 with FMA (what gemm's kernels use).
fn cpu_has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// OpenBLAS's idle-spin setting and the value the explicit path wants,
/// read once by the library when it loads. Its worker threads spin `2^n`
/// cycles waiting for the next product (n = 28 by default, about 0.1 s);
/// between products the explicit path runs attention and element-wise work
/// on rayon's threads, which a spinning worker then shares its core with
/// (on two cores, three busy threads). 4, the minimum, lets it sleep almost
/// at once; a product then pays a thread wake-up (microseconds). On a
/// quiet 2-core VM, 2 threads, two back-to-back pairs: the teacher's
/// generative step 10.4 / 10.0 s → 8.6 / 9.3 s; the ranking step unchanged
/// within noise.
const THREAD_TIMEOUT: (&str, &str) = ("OPENBLAS_THREAD_TIMEOUT", "4");

/// Sets [`THREAD_TIMEOUT`] before the library loads, unless the user set it.
fn quiet_idle_threads() {
    if std::env::var_os(THREAD_TIMEOUT.0).is_none() {
        // runs once, before any BLAS thread exists; nothing in this process
        // reads the environment concurrently while the library loads
        std::env::set_var(THREAD_TIMEOUT.0, THREAD_TIMEOUT.1);
    }
}

fn load() -> (Option<Blas>, String) {
    let gemm = || (None, "gemm".to_string());
    let path = match std::env::var("DISTILLREC_BLAS") {
        Ok(v) if matches!(v.as_str(), "off" | "none" | "0" | "") => return gemm(),
        Ok(v) => v,
        Err(_) => "libopenblas.so.0".to_string(),
    };
    quiet_idle_threads();
    // SAFETY: loading a shared library runs its initialisers; this is the
    // system BLAS the user installed or named, as linking it would.
    let Ok(lib) = (unsafe { libloading::Library::new(&path) }) else {
        return gemm();
    };
    // SAFETY: the symbols have the CBLAS / OpenBLAS signatures written here;
    // `openblas_get_corename` returns a static NUL-terminated string.
    unsafe {
        let (Ok(sgemm), Ok(dgemm)) = (
            lib.get::<Gemm<f32>>(b"cblas_sgemm\0"),
            lib.get::<Gemm<f64>>(b"cblas_dgemm\0"),
        ) else {
            return gemm();
        };
        let (sgemm, dgemm) = (*sgemm, *dgemm);
        let mut label = path.clone();
        if let Ok(core) =
            lib.get::<unsafe extern "C" fn() -> *const std::ffi::c_char>(b"openblas_get_corename\0")
        {
            let p = core();
            let name = if p.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(p)
                    .to_string_lossy()
                    .trim()
                    .to_string()
            };
            if cpu_has_avx2() && !avx2_core(&name) {
                return (None, format!("gemm(declined:{name})"));
            }
            label = format!("openblas:{name}");
        }
        if let Ok(set) = lib.get::<unsafe extern "C" fn(i32)>(b"openblas_set_num_threads\0") {
            set(rayon::current_num_threads() as i32);
        }
        let blas = Blas {
            _lib: lib,
            sgemm,
            dgemm,
            path,
        };
        (Some(blas), label)
    }
}

/// A matrix operand for CBLAS: row-major with leading dimension `ld`,
/// possibly transposed.
#[derive(Clone, Copy)]
pub struct Operand<T> {
    /// First element.
    pub ptr: *const T,
    /// Leading dimension.
    pub ld: usize,
    /// Whether the stored matrix is the transpose of the operand.
    pub trans: bool,
}

impl<T> Operand<T> {
    /// The operand of a strided view `(row stride, column stride)`, when
    /// one of the strides is 1.
    pub fn of(ptr: *const T, rs: usize, cs: usize) -> Option<Operand<T>> {
        match (rs, cs) {
            (_, 1) => Some(Operand {
                ptr,
                ld: rs,
                trans: false,
            }),
            (1, _) => Some(Operand {
                ptr,
                ld: cs,
                trans: true,
            }),
            _ => None,
        }
    }
}

/// Floats CBLAS multiplies.
pub trait BlasFloat: Copy {
    /// `c[m, n] = beta·c + a[m, k]·b[k, n]` (`c` row-major, leading
    /// dimension `ldc`).
    ///
    /// # Safety
    /// The operands must be valid for their shapes and leading dimensions,
    /// and `c` for `m` rows of `ldc` with nothing else writing it.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        blas: &Blas,
        mnk: (usize, usize, usize),
        a: Operand<Self>,
        b: Operand<Self>,
        beta: Self,
        c: *mut Self,
        ldc: usize,
    );
}

macro_rules! blas_float {
    ($t:ty, $f:ident) => {
        impl BlasFloat for $t {
            unsafe fn gemm(
                blas: &Blas,
                (m, n, k): (usize, usize, usize),
                a: Operand<$t>,
                b: Operand<$t>,
                beta: $t,
                c: *mut $t,
                ldc: usize,
            ) {
                let t = |o: &Operand<$t>| if o.trans { TRANS } else { NO_TRANS };
                (blas.$f)(
                    ROW_MAJOR,
                    t(&a),
                    t(&b),
                    m as i32,
                    n as i32,
                    k as i32,
                    1.0,
                    a.ptr,
                    a.ld as i32,
                    b.ptr,
                    b.ld as i32,
                    beta,
                    c,
                    ldc as i32,
                )
            }
        }
    };
}
blas_float!(f32, sgemm);
blas_float!(f64, dgemm);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_openblas_cores_with_avx2_kernels_are_taken() {
        for fast in [
            "Haswell",
            "SkylakeX",
            "Zen",
            "COOPERLAKE",
            "SapphireRapids ",
        ] {
            assert!(avx2_core(fast), "{fast}");
        }
        for slow in [
            "Prescott",
            "Core2",
            "Nehalem",
            "Sandybridge",
            "Atom",
            "",
            "generic",
        ] {
            assert!(!avx2_core(slow), "{slow}");
        }
    }

    #[test]
    fn the_description_matches_what_was_loaded() {
        let d = describe();
        match get() {
            Some(b) => assert!(d.starts_with("openblas:") || d == b.path, "{d}"),
            None => assert!(d == "gemm" || d.starts_with("gemm(declined:"), "{d}"),
        }
    }

    /// Loading the BLAS leaves OpenBLAS's idle spin at the minimum (or at
    /// the user's own setting), so its threads do not keep a core busy
    /// while rayon runs the work between products.
    #[test]
    fn loading_the_blas_quiets_openblas_idle_threads() {
        let before = std::env::var_os(THREAD_TIMEOUT.0);
        let _ = describe();
        let after = std::env::var(THREAD_TIMEOUT.0).expect("the setting is set");
        match before {
            Some(v) => assert_eq!(v.to_string_lossy(), after),
            None => assert_eq!(after, THREAD_TIMEOUT.1),
        }
    }
}
