//! Standalone emulator: `kube-emulator [--port N] [--kubeconfig PATH] [--image IMAGE=PATH]... [--apply FILE_OR_DIR]...`
//! Runs until Ctrl-C so a person can point `kubectl` and `tally controller` at it.

use kube_emulator::Emulator;
use std::process::ExitCode;

const USAGE: &str = "usage: kube-emulator [--port N] [--kubeconfig PATH] [--image-map IMAGE=EXECUTABLE]... [--apply FILE_OR_DIR]... [--job-backoff-ms N]";

#[tokio::main]
async fn main() -> ExitCode {
    let mut builder = Emulator::builder();
    let mut apply = Vec::new();
    let mut kubeconfig = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next());
        match flag.as_str() {
            "--port" => match value().and_then(|v| v.parse().ok()) {
                Some(p) => builder = builder.port(p),
                None => return usage("--port needs a number"),
            },
            "--kubeconfig" => match value() {
                Some(p) => {
                    kubeconfig = Some(p.clone());
                    builder = builder.kubeconfig(p);
                }
                None => return usage("--kubeconfig needs a path"),
            },
            "--image-map" | "--image" => match value().as_deref().and_then(|v| v.split_once('=')) {
                Some((image, path)) => {
                    builder = builder.image(
                        image,
                        std::path::absolute(path).unwrap_or_else(|_| path.into()),
                    )
                }
                None => return usage("--image-map needs IMAGE=EXECUTABLE"),
            },
            "--apply" => match value() {
                Some(p) => apply.push(p),
                None => return usage("--apply needs a path"),
            },
            "--job-backoff-ms" => match value().and_then(|v| v.parse().ok()) {
                Some(ms) => builder = builder.job_backoff(std::time::Duration::from_millis(ms)),
                None => return usage("--job-backoff-ms needs a number"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other}")),
        }
    }
    if kubeconfig.is_none() {
        eprintln!(
            "note: no --kubeconfig given; the kubeconfig lives in a temporary directory (printed below)"
        );
    }
    let emu = match builder.start().await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("kube-emulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    for p in &apply {
        if let Err(e) = emu.apply_path(p) {
            eprintln!("kube-emulator: applying {p}: {e}");
            return ExitCode::FAILURE;
        }
    }
    println!("kube-emulator serving {}", emu.url());
    println!("export KUBECONFIG={}", emu.kubeconfig_path().display());
    let _ = tokio::signal::ctrl_c().await;
    emu.shutdown().await;
    ExitCode::SUCCESS
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("kube-emulator: {msg}\n{USAGE}");
    ExitCode::from(2)
}
