//! Records the git commit, dirty flag and rustc version for `run.json`, and
//! tells the tests whether the shared data sets are beside the checkout and
//! whether they run as root.
use std::path::Path;
use std::process::Command;

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = output("git", &["rev-parse", "HEAD"]).unwrap_or_default();
    let dirty = output("git", &["status", "--porcelain", "--untracked-files=no"])
        .map(|s| (!s.is_empty()).to_string())
        .unwrap_or_default();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = output(&rustc, &["--version"]).unwrap_or_default();
    println!("cargo:rustc-env=DISTILLREC_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=DISTILLREC_GIT_DIRTY={dirty}");
    println!("cargo:rustc-env=DISTILLREC_RUSTC={rustc_version}");
    if let Some(git_dir) = output("git", &["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        println!("cargo:rerun-if-changed={git_dir}/index");
    }
    println!("cargo:rerun-if-changed=build.rs");
    shared_data_cfg();
    as_root_cfg();
}

/// Sets `cfg(shared_data)` when `<workspace>/../shared/data` exists, so the
/// tests on the shared data sets run there and are reported as *ignored*
/// (never as passed) elsewhere. With `DISTILLREC_REQUIRE_SHARED=1` the cfg
/// is set even when the folder is absent: those tests then run and fail,
/// naming the missing path.
///
/// The folder is watched only while it exists: watching a missing path
/// would rerun this script, and so rebuild the binary, on every cargo
/// command. After adding `../shared`, touch this file (or run once with
/// `DISTILLREC_REQUIRE_SHARED=1`, which `.ci/run` sets when the folder is
/// present) so the tests stop being ignored.
fn shared_data_cfg() {
    println!("cargo:rustc-check-cfg=cfg(shared_data)");
    println!("cargo:rerun-if-env-changed=DISTILLREC_REQUIRE_SHARED");
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let data = Path::new(&manifest).join("../../../shared/data");
    let require =
        std::env::var("DISTILLREC_REQUIRE_SHARED").is_ok_and(|v| !v.is_empty() && v != "0");
    if data.is_dir() {
        println!("cargo:rerun-if-changed={}", data.display());
        println!("cargo:rustc-cfg=shared_data");
    } else if require {
        println!(
            "cargo:warning=DISTILLREC_REQUIRE_SHARED is set but {} is absent: the tests on the shared data sets will fail",
            data.display()
        );
        println!("cargo:rustc-cfg=shared_data");
    }
}

/// Sets `cfg(as_root)` when the build runs as root (CI does), so the tests
/// of `docker/entrypoint.sh` that switch users run there and are reported as
/// *ignored* elsewhere. They check at run time that they are still root.
fn as_root_cfg() {
    println!("cargo:rustc-check-cfg=cfg(as_root)");
    if output("id", &["-u"]).as_deref() == Some("0") {
        println!("cargo:rustc-cfg=as_root");
    }
}
