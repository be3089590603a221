//! `keepsake`: the Keepsake agent and command line.
//!
//! Crash behaviour: see the modules; `main` only hands the command line to `cli`.

use std::process::ExitCode;

fn main() -> ExitCode {
    match keepsake_agent::cli::main_with_args(std::env::args_os()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keepsake: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
