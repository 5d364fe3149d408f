//! What this process may allocate and use, so that a size taken from a
//! config or a flag is refused in one line naming it, before anything is
//! allocated, instead of aborting in the allocator ("memory allocation of N
//! bytes failed") or panicking when a thread cannot be spawned.
//!
//! Available memory is `MemAvailable` of `/proc/meminfo`, lowered to the
//! soft address-space limit of `/proc/self/limits` when one is set
//! (`ulimit -v`, `prlimit --as`); when neither can be read it is
//! [`FALLBACK_BYTES`]. Estimates are rough (within a small factor): they are
//! there to refuse sizes that cannot work, not to plan a run.

use std::fmt;

/// Memory assumed available when `/proc/meminfo` cannot be read.
pub const FALLBACK_BYTES: u64 = 8 << 30;

/// Most worker threads accepted when the core count cannot be read.
pub const MAX_THREADS: usize = 1024;

/// Bytes this process may still use: `MemAvailable`, or
/// [`FALLBACK_BYTES`], capped by the address-space limit.
pub fn available_bytes() -> u64 {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| mem_available(&t))
        .unwrap_or(FALLBACK_BYTES);
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| address_space_limit(&t));
    limit.map_or(mem, |l| mem.min(l))
}

/// `MemAvailable` (kB in the file) of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// The soft `Max address space` of a `/proc/self/limits` text, in bytes
/// (`None` when unlimited or unreadable).
fn address_space_limit(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    line["Max address space".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Bytes in decimal units with two significant digits or more: `950 B`,
/// `1.2 TB`, `22 GB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut x = bytes as f64;
    let mut unit = 0;
    while x >= 1000.0 && unit + 1 < UNITS.len() {
        x /= 1000.0;
        unit += 1;
    }
    if unit == 0 || x >= 10.0 {
        format!("{x:.0} {}", UNITS[unit])
    } else {
        format!("{x:.1} {}", UNITS[unit])
    }
}

/// A size that does not fit in the memory available: names the setting,
/// the estimate and what it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLarge {
    /// The setting(s) to blame, as the user wrote them
    /// (`student.hidden = 1000000`).
    pub setting: String,
    /// What the memory is for (`the item table and its optimizer state`).
    pub what: String,
    /// Estimated bytes.
    pub needed: u64,
    /// Bytes available.
    pub available: u64,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} needs about {} for {}; this machine has {} available: choose a smaller value",
            self.setting,
            human(self.needed),
            self.what,
            human(self.available)
        )
    }
}

impl std::error::Error for TooLarge {}

/// Refuses `needed` bytes (for `what`, caused by `setting`) when they are
/// more than [`available_bytes`].
pub fn check_fits(setting: &str, what: &str, needed: u64) -> Result<(), TooLarge> {
    check_fits_in(setting, what, needed, available_bytes())
}

/// [`check_fits`] against a given amount of available memory.
pub fn check_fits_in(
    setting: &str,
    what: &str,
    needed: u64,
    available: u64,
) -> Result<(), TooLarge> {
    if needed <= available {
        return Ok(());
    }
    Err(TooLarge {
        setting: setting.to_string(),
        what: what.to_string(),
        needed,
        available,
    })
}

/// The most worker threads a flag may ask for: 4 × the cores, at most
/// [`MAX_THREADS`].
pub fn max_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(MAX_THREADS, |n| n.get().saturating_mul(4))
        .min(MAX_THREADS)
}

/// Refuses a thread count of 0 or above [`max_threads`], naming `flag`.
pub fn check_threads(flag: &str, threads: usize) -> Result<(), String> {
    let max = max_threads();
    if threads == 0 || threads > max {
        return Err(format!(
            "{flag} {threads} is not in 1..={max} (4 threads per core of this machine, at most {MAX_THREADS})"
        ));
    }
    Ok(())
}

/// The product of `factors` in bytes, saturating instead of overflowing
/// (an estimate past `u64::MAX` is refused all the same).
pub fn product(factors: &[u64]) -> u64 {
    factors.iter().fold(1u64, |acc, &f| acc.saturating_mul(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let meminfo = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(mem_available(meminfo), Some(22_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        let limits = "Max stack size            8388608              unlimited            bytes\nMax address space         2000000000           unlimited            bytes\n";
        assert_eq!(address_space_limit(limits), Some(2_000_000_000));
        let unlimited =
            "Max address space         unlimited            unlimited            bytes\n";
        assert_eq!(address_space_limit(unlimited), None);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(950), "950 B");
        assert_eq!(human(1_200_000_000_000), "1.2 TB");
        assert_eq!(human(22_500_000_000), "22 GB");
        assert_eq!(human(u64::MAX), "18447 PB");
    }

    #[test]
    fn too_large_names_the_setting_and_both_sizes() {
        let e = check_fits_in(
            "student.hidden = 1000000",
            "the item table and its optimizer state",
            1_200_000_000_000,
            22_000_000_000,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "student.hidden = 1000000 needs about 1.2 TB for the item table and its optimizer state; this machine has 22 GB available: choose a smaller value"
        );
        assert!(check_fits_in("x", "y", 10, 10).is_ok());
        assert_eq!(product(&[u64::MAX, 2]), u64::MAX);
    }

    #[test]
    fn thread_counts_are_capped() {
        assert!(check_threads("--threads", 1).is_ok());
        let e = check_threads("--threads", 100_000).unwrap_err();
        assert!(e.starts_with("--threads 100000 is not in 1..="), "{e}");
        assert!(check_threads("--threads", 0).is_err());
    }
}
