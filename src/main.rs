//! The `signet` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    signet::cli::main()
}
