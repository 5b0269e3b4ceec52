//! The `token-janitor` command line: migrate, verify, status and bench
//! (src/cli.rs).

fn main() -> std::process::ExitCode {
    token_janitor::cli::main()
}
