//! `jalc`: the Jalapeño toolchain's command line (contract in docs/cli.md).
//!
//! Exit codes: 0 success; 1 a verification mismatch or simulator fault; 2 bad
//! input or usage. Every failure prints a diagnostic to stderr; nothing panics.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A failure with the exit code it maps to.
enum Failure {
    /// Bad input or usage: exit 2.
    Input(String),
}

impl Failure {
    fn exit(self) -> ExitCode {
        match self {
            Failure::Input(msg) => {
                eprint!("{msg}");
                if !msg.ends_with('\n') {
                    eprintln!();
                }
                ExitCode::from(2)
            }
        }
    }
}

#[derive(Parser)]
#[command(name = "jalc", version, about = "The Jalapeño kernel compiler and JPU-1 toolchain")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Assemble a .jasm file into a .jbin chip binary.
    Asm {
        /// Assembly source.
        file: PathBuf,
        /// Output binary.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Print a .jbin chip binary as canonical .jasm text.
    Disasm {
        /// Chip binary.
        file: PathBuf,
        /// Write the text here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

fn read_file(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::Input(format!("error: cannot read {}: {e}", path.display())))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    std::fs::write(path, bytes).map_err(|e| Failure::Input(format!("error: cannot write {}: {e}", path.display())))
}

fn asm(file: &Path, output: &Path) -> Result<(), Failure> {
    let bytes = read_file(file)?;
    let src = String::from_utf8(bytes).map_err(|e| {
        Failure::Input(format!(
            "error: {} is not UTF-8 text (invalid byte at offset {})",
            file.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    let program = jpu_isa::jasm::assemble(&src)
        .map_err(|errs| Failure::Input(jpu_isa::jasm::render_errors(&file.display().to_string(), &src, &errs)))?;
    write_file(output, &jpu_isa::jbin::write(&program))
}

fn disasm(file: &Path, output: Option<&Path>) -> Result<(), Failure> {
    let bytes = read_file(file)?;
    let program = jpu_isa::jbin::read(&bytes).map_err(|e| Failure::Input(format!("error: {}: {e}", file.display())))?;
    let text = jpu_isa::jasm::disassemble(&program);
    match output {
        Some(path) => write_file(path, text.as_bytes()),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Asm { file, output } => asm(file, output),
        Command::Disasm { file, output } => disasm(file, output.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(),
    }
}
