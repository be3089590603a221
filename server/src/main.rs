fn main() -> std::process::ExitCode {
    keepsake_server::cli::main()
}
