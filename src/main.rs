//! The `keygate` binary: everything is in the library, so tests run the same code.
fn main() -> std::process::ExitCode {
    keygate::cli::main()
}
