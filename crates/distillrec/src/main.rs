//! `distillrec`: the command-line program. It parses arguments ([`args`]),
//! hands each command to its module in [`cmd`], which calls the library
//! crates (mostly `distillrec-pipeline`) and prints; errors end as one line.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod args;
mod cmd;
mod common;

use anyhow::Result;
use clap::Parser;

use args::{BenchCommand, Cli, Command};

/// Runs one parsed command line.
fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data(c) => cmd::data::run(c),
        Command::Train(c) => cmd::train::run(c),
        Command::Eval(c) => cmd::eval::run(c),
        Command::Teacher(c) => cmd::teacher::run(c),
        Command::Select(a) => cmd::select::run(a),
        Command::Distill(a) => cmd::distill::run(a),
        Command::Report(a) => cmd::report::run(a),
        Command::Recommend(a) => cmd::recommend::run(a),
        Command::Pipeline(a) => cmd::pipeline::run(a),
        Command::Llm(c) => cmd::llm::run(c),
        Command::Bench(BenchCommand::Llm(a)) => cmd::llm::bench(a),
        Command::Bench(BenchCommand::Student(a)) => cmd::bench::student(a),
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

fn main() {
    default_sigpipe();
    if let Err(e) = dispatch(Cli::parse()) {
        // One line, naming the file/line/key (the errors carry them).
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
