//! The `tally` binary: the command line is `tally::cli`.

fn main() -> std::process::ExitCode {
    tally::cli::main()
}
