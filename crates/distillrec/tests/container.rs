//! Tests of `docker/entrypoint.sh` (issue 31), run on the host without a
//! container: the command runs as `HOST_UID:HOST_GID` and what it writes
//! into the workspace is theirs, its exit code comes back, SIGTERM reaches
//! it, users and groups with those ids are reused, bad ids are refused
//! before anything runs, and the development image rebuilds only when the
//! sources are newer than the binary.
//!
//! Switching users needs root: those tests run where the build ran as root
//! (`build.rs` sets `cfg(as_root)`; CI runs as root) and are reported as
//! ignored elsewhere. As root they run the entrypoint in a private mount
//! namespace (`unshare --mount`) over a copy of `/etc` and an empty `/home`,
//! so the users it creates never reach the machine's own files; where
//! `unshare` is refused they use the machine's `/etc` and `/home`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// The script under test.
fn entrypoint() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker/entrypoint.sh")
}

/// The entrypoint's exit code for a refused `HOST_UID`/`HOST_GID`.
const REFUSED: i32 = 125;

/// Variables the entrypoint reads, cleared so the caller's never leak in.
const ENTRYPOINT_ENV: [&str; 6] = [
    "HOST_UID",
    "HOST_GID",
    "ALLOW_ROOT",
    "WORKSPACE",
    "DISTILLREC_DEV",
    "CARGO_TARGET_DIR",
];

/// A temporary workspace (`<tmp>/ws`) owned by a given user, with room for
/// a private `/etc` and `/home`.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    /// A sandbox whose workspace belongs to `owner` (uid, gid); the current
    /// user's when `None`.
    fn new(owner: Option<(u32, u32)>) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        // the host user must be able to reach the workspace inside it
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["ws", "etc", "home"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path().join("ws"), Some(uid), Some(gid)).unwrap();
        }
        Sandbox { dir }
    }

    fn ws(&self) -> PathBuf {
        self.dir.path().join("ws")
    }

    /// `bash docker/entrypoint.sh cmd...` in the workspace with only `env`
    /// of the entrypoint's variables set, after the shell lines `setup`;
    /// as root inside a private mount namespace (see the file's header).
    fn command(&self, env: &[(&str, &str)], setup: &str, cmd: &[&str]) -> Command {
        let mut c = if is_root() && private_mounts_work() {
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "bash", "-c"])
                .arg(
                    "set -e; etc=$1 home=$2 setup=$3; shift 3; cp -a /etc/. \"$etc\"; \
                     mount --bind \"$etc\" /etc; mount --bind \"$home\" /home; \
                     eval \"$setup\"; exec bash \"$@\"",
                )
                .arg("sandbox")
                .arg(self.dir.path().join("etc"))
                .arg(self.dir.path().join("home"));
            c
        } else {
            let mut c = Command::new("bash");
            c.args([
                "-c",
                "set -e; setup=$1; shift; eval \"$setup\"; exec bash \"$@\"",
            ])
            .arg("sandbox");
            c
        };
        c.arg(setup).arg(entrypoint()).args(cmd);
        for k in ENTRYPOINT_ENV {
            c.env_remove(k);
        }
        c.env("WORKSPACE", self.ws()).current_dir(self.ws());
        c.envs(env.iter().copied());
        c
    }

    /// Runs [`Sandbox::command`] to the end.
    fn run(&self, env: &[(&str, &str)], setup: &str, cmd: &[&str]) -> Output {
        self.command(env, setup, cmd).output().unwrap()
    }

    /// (uid, gid) of `name` in the workspace.
    fn owner(&self, name: &str) -> (u32, u32) {
        let m = std::fs::metadata(self.ws().join(name))
            .unwrap_or_else(|e| panic!("{name} in the workspace: {e}"));
        (m.uid(), m.gid())
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `unshare --mount` may be used here (as root; refused in
/// containers without CAP_SYS_ADMIN).
fn private_mounts_work() -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| {
        let ok = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "true"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("note: unshare --mount is refused: the entrypoint tests use this machine's /etc and /home");
        }
        ok
    })
}

/// The tests gated on `cfg(as_root)` were built as root: fail clearly when
/// they are now run by another user.
fn require_root() {
    assert!(
        is_root(),
        "built as root (cfg as_root) but running as another user: run as root, \
         or touch crates/distillrec/build.rs and rebuild to have these tests ignored"
    );
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// The output's stdout lines, after asserting the exit code.
fn lines_of(out: &Output, code: i32) -> Vec<String> {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout).lines().map(str::to_string).collect()
}

/// Asserts a refusal: exit code 125, one `error:` line containing `want`.
fn assert_refused(out: &Output, want: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(REFUSED), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(want), "want `{want}` in: {stderr}");
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root: the entrypoint switches users")]
fn the_command_runs_as_the_host_ids_owns_what_it_writes_and_its_exit_code_comes_back() {
    require_root();
    let sb = Sandbox::new(Some((4321, 4321)));
    // a file root made before: the entrypoint must not chown the workspace
    std::fs::write(sb.ws().join("made-by-root"), b"x").unwrap();
    std::os::unix::fs::chown(sb.ws().join("made-by-root"), Some(0), Some(0)).unwrap();
    let script = "id -u; id -g; id -un; echo \"$HOME\"; touch \"$HOME/probe\"; \
                  echo hi > out.txt; mkdir sub; touch sub/inner; exit 7";
    let out = sb.run(
        &[("HOST_UID", "4321"), ("HOST_GID", "4321")],
        "",
        &["sh", "-c", script],
    );
    assert_eq!(
        lines_of(&out, 7),
        ["4321", "4321", "distillrec", "/home/distillrec"]
    );
    for f in ["out.txt", "sub", "sub/inner"] {
        assert_eq!(sb.owner(f), (4321, 4321), "{f}");
    }
    assert_eq!(
        sb.owner("made-by-root"),
        (0, 0),
        "the workspace was chowned"
    );
    assert_eq!(sb.owner("."), (4321, 4321));
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root: the entrypoint switches users")]
fn the_ids_default_to_the_owner_of_the_workspace_and_a_root_owned_one_is_refused() {
    require_root();
    let sb = Sandbox::new(Some((4331, 4332)));
    let out = sb.run(&[], "", &["sh", "-c", "id -u; id -g; touch made"]);
    assert_eq!(lines_of(&out, 0), ["4331", "4332"]);
    assert_eq!(sb.owner("made"), (4331, 4332));

    let sb = Sandbox::new(Some((0, 0)));
    let out = sb.run(&[], "", &["touch", "ran"]);
    assert_refused(&out, "HOST_UID is unset and");
    assert!(text(&out.stderr).contains("ALLOW_ROOT=1"));
    assert!(!sb.ws().join("ran").exists(), "the command ran");
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root: the entrypoint switches users")]
fn an_existing_user_and_group_with_the_ids_are_reused() {
    require_root();
    let sb = Sandbox::new(Some((4341, 4341)));
    let setup = "getent group 4341 >/dev/null || groupadd -g 4341 hostgrp; \
                 getent passwd 4341 >/dev/null || useradd -l -M -u 4341 -g 4341 -d /nonexistent hostusr";
    let script = "id -un; id -gn; awk -F: '$3 == 4341' /etc/passwd | wc -l; \
                  awk -F: '$3 == 4341' /etc/group | wc -l";
    let out = sb.run(
        &[("HOST_UID", "4341"), ("HOST_GID", "4341")],
        setup,
        &["sh", "-c", script],
    );
    let lines = lines_of(&out, 0);
    let trimmed: Vec<&str> = lines.iter().map(|l| l.trim()).collect();
    assert_eq!(trimmed, ["hostusr", "hostgrp", "1", "1"]);
}

/// Waits up to 30 s for `path` to exist.
fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to 30 s for the child to end.
fn wait_end(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the entrypoint did not end 30 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root: the entrypoint switches users")]
fn sigterm_sent_to_the_entrypoint_reaches_the_command() {
    require_root();
    let sb = Sandbox::new(Some((4351, 4351)));
    // the loop ends by itself after 30 s, so a failed test leaves nothing
    let script = "trap 'echo term > got-term; exit 143' TERM; echo ready > ready; \
                  i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; exit 9";
    let mut child = sb
        .command(
            &[("HOST_UID", "4351"), ("HOST_GID", "4351")],
            "",
            &["sh", "-c", script],
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&sb.ws().join("ready"));
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill has no memory preconditions; pid is our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = wait_end(&mut child);
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert_eq!(sb.owner("got-term"), (4351, 4351));
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root: the entrypoint switches users")]
fn allow_root_runs_as_root_and_the_default_command_is_distillrec_help() {
    require_root();
    let sb = Sandbox::new(Some((0, 0)));
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_distillrec"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let root = [
        ("HOST_UID", "0"),
        ("HOST_GID", "0"),
        ("ALLOW_ROOT", "1"),
        ("PATH", path.as_str()),
    ];
    let out = sb.run(&root, "", &["sh", "-c", "id -u; touch made"]);
    assert_eq!(lines_of(&out, 0), ["0"]);
    assert_eq!(sb.owner("made"), (0, 0));
    let out = sb.run(&root, "", &[]);
    let help = lines_of(&out, 0).join("\n");
    assert!(help.contains("Usage: distillrec"), "{help}");
}

#[test]
fn ids_that_are_not_numbers_or_are_root_are_refused_before_anything_runs() {
    let sb = Sandbox::new(None);
    let cases: [(&str, &str, &str); 10] = [
        ("HOST_UID", "abc", "HOST_UID=abc is not a numeric id"),
        ("HOST_UID", "12x", "HOST_UID=12x is not a numeric id"),
        ("HOST_UID", "-1", "HOST_UID=-1 is not a numeric id"),
        ("HOST_UID", "0x10", "HOST_UID=0x10 is not a numeric id"),
        ("HOST_UID", "1 2", "HOST_UID=1 2 is not a numeric id"),
        (
            "HOST_UID",
            "4294967295",
            "HOST_UID=4294967295 is not a numeric id",
        ),
        ("HOST_UID", "", "HOST_UID is empty"),
        ("HOST_UID", "0", "HOST_UID=0 would run the command as root"),
        (
            "HOST_UID",
            "000",
            "HOST_UID=000 would run the command as root",
        ),
        ("HOST_GID", "staff", "HOST_GID=staff is not a numeric id"),
    ];
    for (key, value, want) in cases {
        let other = if key == "HOST_UID" {
            "HOST_GID"
        } else {
            "HOST_UID"
        };
        let out = sb.run(&[(key, value), (other, "4361")], "", &["touch", "ran"]);
        assert_refused(&out, want);
        assert!(
            !sb.ws().join("ran").exists(),
            "{key}={value}: the command ran"
        );
    }
    // ALLOW_ROOT must be exactly 1
    let out = sb.run(
        &[("HOST_UID", "0"), ("HOST_GID", "0"), ("ALLOW_ROOT", "yes")],
        "",
        &["touch", "ran"],
    );
    assert_refused(&out, "ALLOW_ROOT=1");
    // without the ids and without a workspace to take them from
    let mut c = sb.command(&[], "", &["touch", "ran"]);
    c.env("WORKSPACE", sb.dir.path().join("absent"));
    assert_refused(&c.output().unwrap(), "HOST_UID/HOST_GID are unset and");
    assert!(!sb.ws().join("ran").exists(), "the command ran");
}

/// Sets the modification time of `path` to `secs_ago` seconds ago.
fn set_age(path: &Path, secs_ago: u64) {
    let t = SystemTime::now() - Duration::from_secs(secs_ago);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// `entrypoint.sh --needs-rebuild src bin`: (exit code, stdout).
fn needs_rebuild(src: &Path, bin: &Path) -> (Option<i32>, String) {
    let out = Command::new("bash")
        .arg(entrypoint())
        .arg("--needs-rebuild")
        .args([src, bin])
        .output()
        .unwrap();
    (out.status.code(), text(&out.stdout).trim().to_string())
}

#[test]
fn the_dev_image_rebuilds_only_when_the_lock_file_or_a_source_is_newer_than_the_binary() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path();
    let lib = src.join("crates/a/src/lib.rs");
    std::fs::create_dir_all(lib.parent().unwrap()).unwrap();
    for f in [src.join("Cargo.lock"), src.join("Cargo.toml"), lib.clone()] {
        std::fs::write(&f, b"").unwrap();
        set_age(&f, 1000);
    }
    let bin = src.join("target/container/release/distillrec");
    let (code, said) = needs_rebuild(src, &bin);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("no binary"), "{said}");

    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::write(&bin, b"").unwrap();
    set_age(&bin, 500);
    let (code, said) = needs_rebuild(src, &bin);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.starts_with("up to date"), "{said}");

    set_age(&src.join("Cargo.lock"), 10);
    let (code, said) = needs_rebuild(src, &bin);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("Cargo.lock is newer than"), "{said}");

    set_age(&src.join("Cargo.lock"), 1000);
    set_age(&lib, 10);
    let (code, said) = needs_rebuild(src, &bin);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("crates/a/src/lib.rs is newer than"), "{said}");

    // a checkout without Cargo.lock is no checkout
    std::fs::remove_file(src.join("Cargo.lock")).unwrap();
    let out = Command::new("bash")
        .arg(entrypoint())
        .arg("--needs-rebuild")
        .args([src, &bin])
        .output()
        .unwrap();
    assert_refused(&out, "Cargo.lock is absent");
}

/// `scripts/container.sh args...` in `dir` with `CONTAINER_ENGINE=engine`.
fn container_sh(dir: &Path, engine: &str, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/container.sh"))
        .args(args)
        .env("CONTAINER_ENGINE", engine)
        .env_remove("CONTAINER_RUN_ARGS")
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn container_sh_runs_the_image_as_you_with_the_project_mounted_and_folders_read_only() {
    let d = tempfile::tempdir().unwrap();
    let (models, data) = (d.path().join("m"), d.path().join("d"));
    let project = d.path().join("project");
    for p in [&models, &data, &project] {
        std::fs::create_dir(p).unwrap();
    }
    // SAFETY: getuid and getgid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let (m, dd) = (models.to_str().unwrap(), data.to_str().unwrap());
    let args = [
        "--gpu", "--models", m, "--data", dd, "--", "pipeline", "--out", "r",
    ];
    // `echo` stands in for docker: the line it would run
    let out = container_sh(&project, "echo", &args);
    let line = lines_of(&out, 0).join("\n");
    let p = project.to_str().unwrap();
    for want in [
        format!("run --rm -v {p}:/workspace -w /workspace -e HOST_UID={uid} -e HOST_GID={gid} "),
        " --gpus all ".into(),
        format!(" -v {m}:/workspace/models:ro -v {dd}:/workspace/data:ro "),
        " distillrec:cuda distillrec pipeline --out r".into(),
    ] {
        assert!(line.contains(&want), "want `{want}` in: {line}");
    }
    assert_eq!(line.contains("-e ALLOW_ROOT=1"), uid == 0, "{line}");
    // the mount points are made by the caller, so they are the caller's
    for sub in ["models", "data"] {
        let meta = std::fs::metadata(project.join(sub)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{sub}");
    }

    let out = container_sh(
        &project,
        "podman",
        &["--dry-run", "--gpu", "--", "--version"],
    );
    let line = lines_of(&out, 0).join("\n");
    assert!(line.starts_with("podman run "), "{line}");
    assert!(line.contains(" --device nvidia.com/gpu=all "), "{line}");
    assert!(!line.contains("--gpus"), "{line}");
    assert!(
        line.ends_with(" distillrec:cuda distillrec --version "),
        "{line}"
    );

    let out = container_sh(&project, "docker", &["--dry-run", "--dev"]);
    let line = lines_of(&out, 0).join("\n");
    assert!(
        line.ends_with(" distillrec:dev distillrec --help "),
        "{line}"
    );
    assert!(!line.contains("--gpus"), "{line}");

    for (args, want) in [
        (&["--gpu", "--dev"][..], "no CUDA development image"),
        (
            &["--models", "/absent/models"][..],
            "--models /absent/models is not a folder",
        ),
        (&["--shell"][..], "unknown option --shell"),
    ] {
        let out = container_sh(&project, "echo", args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains(want), "{}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "{args:?} ran: {}", text(&out.stdout));
    }
}
