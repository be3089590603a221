//! `keepsake-server`, built inside the end-to-end test package (see `e2e_keepsake.rs`).
fn main() -> std::process::ExitCode {
    keepsake_server::cli::main()
}
