//! `distillrec`: the command-line program. It parses arguments ([`args`]),
//! hands each command to its module in [`cmd`], which calls the library
//! crates (mostly `distillrec-pipeline`) and prints; errors end as one line.

#[global_allocator]
static GLOBAL: distillrec_run::heap::CountingAlloc<mimalloc::MiMalloc> =
    distillrec_run::heap::CountingAlloc(mimalloc::MiMalloc);

mod args;
mod cmd;
mod common;

use anyhow::Result;
use clap::Parser;

use args::{BenchCommand, Cli, Command, ModelCommand};

/// Runs one parsed command line.
fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data(c) => cmd::data::run(c),
        Command::Train(c) => cmd::train::run(c),
        Command::Eval(c) => cmd::eval::run(c),
        Command::Teacher(c) => cmd::teacher::run(c),
        Command::Select(a) => cmd::select::run(a),
        Command::Distill(a) => cmd::distill::run(a),
        Command::Active(a) => cmd::active::run(a),
        Command::Report(a) => cmd::report::run(a),
        Command::Recommend(a) => cmd::recommend::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Pipeline(a) => cmd::pipeline::run(a),
        Command::Sweep(a) => cmd::pipeline::sweep(a),
        Command::Llm(c) => cmd::llm::run(c),
        Command::Bench(BenchCommand::Llm(a)) => cmd::llm::bench(a),
        Command::Model(ModelCommand::Fetch(a)) => cmd::llm::fetch(a),
        Command::Bench(BenchCommand::Student(a)) => cmd::bench::student(a),
        Command::Bench(BenchCommand::Distill(a)) => cmd::bench::distill(a),
        Command::Bench(BenchCommand::Eval(a)) => cmd::bench::eval(a),
        Command::Bench(BenchCommand::Serve(a)) => cmd::serve::bench(a),
    }
}

/// Restores the default action of SIGPIPE (Rust ignores it, so a write to a
/// closed pipe becomes a panic): `distillrec data stats d | head` then ends
/// quietly, like other Unix tools.
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called once at the start of `main`, before any other thread
    // exists; `signal` with SIG_DFL installs no handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Parses the command line. A value outside its closed set (`--dataset
/// nosuch`) or one its type refuses (`--budget 1`) ends like every other
/// bad input: one line naming the option and the valid names, exit code 1.
/// Every other clap outcome (help, version, usage errors) is clap's own.
fn parse_cli() -> Cli {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let e = match Cli::try_parse() {
        Ok(cli) => return cli,
        Err(e) => e,
    };
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        e.exit();
    }
    let text = |k: ContextKind| match e.get(k) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => Some(v.join(", ")),
        _ => None,
    };
    let arg = text(ContextKind::InvalidArg).unwrap_or_default();
    let flag = arg.split_whitespace().next().unwrap_or("").to_string();
    let value = text(ContextKind::InvalidValue).unwrap_or_default();
    let msg = match (e.kind(), text(ContextKind::ValidValue)) {
        (ErrorKind::InvalidValue, Some(valid)) => {
            format!("{flag} '{value}' is not one of {valid}")
        }
        _ => {
            // clap's own first line: "error: invalid value 'x' for '--f <V>': reason"
            let rendered = e.to_string();
            let first = rendered.lines().next().unwrap_or("").to_string();
            let reason = first.rsplit_once("': ").map_or(first.as_str(), |(_, r)| r);
            format!("{flag} '{value}': {reason}")
        }
    };
    eprintln!("error: {}", msg.replace('\n', " "));
    std::process::exit(1);
}

/// `mi_option_purge_delay` in mimalloc's header (the same value in its v2
/// and v3 series; libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory committed instead of returning it to the OS. Training
/// steps free and reallocate the same large activation buffers every step;
/// with purging on, each step faults them in again and the kernel zeroes
/// every page (measured: the LLM teacher step 7.1 s → 5.2 s). The process
/// keeps its peak footprint, which the peak-memory figures report anyway.
fn keep_freed_memory() {
    // SAFETY: sets an integer option of the allocator; no pointer involved.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    distillrec_run::set_release_freed_memory(release_freed_memory);
}

/// Returns the memory freed so far to the OS, between pipeline stages (the
/// LLM teacher's gigabyte would otherwise count in the next stage's peak),
/// then keeps freed memory again.
fn release_freed_memory() {
    // SAFETY: integer options and a collection of the allocator's own free
    // pages; no pointer involved.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        libmimalloc_sys::mi_collect(true);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
}

fn main() {
    keep_freed_memory();
    default_sigpipe();
    if let Err(e) = dispatch(parse_cli()) {
        // One line, naming the file/line/key (the errors carry them).
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
