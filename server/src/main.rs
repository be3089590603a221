//! `keepsake-server`: hands the command line to [`keepsake_server::cli`].
//!
//! Crash behaviour: see the modules; `main` keeps no state.

fn main() -> std::process::ExitCode {
    keepsake_server::cli::main()
}
