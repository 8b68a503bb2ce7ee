//! `tally worker`: the entrypoint of calculation Jobs.

use std::process::ExitCode;

use super::runtime;

pub fn command() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(crate::worker::run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            runtime.block_on(crate::worker::report_failure(&error));
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
