//! The `signet` binary: everything lives in the library.

/// mimalloc: the gRPC path makes many small, short-lived allocations across
/// threads, where it beats glibc malloc (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    #[cfg(feature = "fault-injection")]
    signet::fault::setup();
    signet::cli::main()
}
