//! `distillrec`: the command-line program. A thin layer over the library
//! crates: it parses arguments, resolves the configuration, opens the run
//! directory and calls the pipeline stage.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench_cmd;
mod cli;
mod commands;
mod distill_cmd;
mod llm_cmd;
mod report_cmd;
mod source;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = commands::run(args) {
        // One line, naming the file/line/key (the errors carry them).
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
