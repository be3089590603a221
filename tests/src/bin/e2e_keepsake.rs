//! The `keepsake` agent, built inside the end-to-end test package so its tests can run it as a
//! real process (a test binary can only find the binaries of its own package).
fn main() -> std::process::ExitCode {
    match keepsake_agent::cli::main_with_args(std::env::args_os()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keepsake: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
