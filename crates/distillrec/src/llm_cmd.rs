//! `distillrec llm ...` and `distillrec bench llm` (being written).

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

/// `llm` subcommands.
#[derive(Subcommand, Debug)]
pub enum LlmCommand {
    /// Greedy generation with the model's chat template.
    Generate(GenerateArgs),
}

/// Arguments of `llm generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Hugging Face model directory or GGUF file.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// The user prompt.
    #[arg(long)]
    pub prompt: String,
}

/// Arguments of `bench llm`.
#[derive(Args, Debug)]
pub struct BenchLlmArgs {
    /// Hugging Face model directory or GGUF file.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
}

/// Runs an `llm` subcommand.
pub fn run(c: LlmCommand) -> Result<()> {
    match c {
        LlmCommand::Generate(_) => bail!("llm generate is not implemented yet"),
    }
}

/// Runs `bench llm`.
pub fn bench(_a: BenchLlmArgs) -> Result<()> {
    bail!("bench llm is not implemented yet")
}
