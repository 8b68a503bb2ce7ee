//! `test-cluster --kubeconfig PATH [--image-archive DIR]`: the end-to-end tests'
//! cluster, started by hand for trying Tally out. It starts the control plane
//! (etcd, kube-apiserver, kube-controller-manager, kube-scheduler; built once by
//! `tests/cluster/build.sh`) and a node agent that runs every Pod from Tally's image,
//! writes an admin kubeconfig to PATH, and serves until SIGTERM or Ctrl-C. Then it
//! stops every process it started and removes PATH, whose certificates went with them.
//!
//! The image is the OCI layout `--image-archive` names, or by default the one
//! `image/build.sh` makes of the local `tally` binary (built first with
//! `cargo test -p tally --no-run` when there is none).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tally_e2e::control_plane::ControlPlane;
use tally_e2e::node_agent::{NodeAgent, build_image};

const USAGE: &str = "usage: test-cluster --kubeconfig PATH [--image-archive OCI-LAYOUT-DIR]";

struct Args {
    kubeconfig: PathBuf,
    image: Option<PathBuf>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut kubeconfig, mut image) = (None, None);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .map(PathBuf::from)
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--kubeconfig" => kubeconfig = Some(value("--kubeconfig")?),
            "--image-archive" => image = Some(value("--image-archive")?),
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(Args {
        kubeconfig: kubeconfig.ok_or_else(|| format!("--kubeconfig is required\n{USAGE}"))?,
        image,
    })
}

/// The local `tally` binary, built in the tests' profile when missing.
fn tally_binary() -> Result<PathBuf, String> {
    if let Some(binary) = tally_e2e::find_tally_bin() {
        return Ok(binary);
    }
    eprintln!("building tally (cargo test -p tally --no-run)");
    let status = std::process::Command::new("cargo")
        .args(["test", "-p", "tally", "--no-run"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .status()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo test -p tally --no-run failed ({status})"));
    }
    tally_e2e::find_tally_bin().ok_or_else(|| "no tally binary after building it".to_string())
}

async fn serve(args: Args) -> Result<(), String> {
    let image = match args.image {
        Some(layout) => layout,
        None => {
            let binary = tally_binary()?;
            eprintln!("building the image from {}", binary.display());
            build_image(&binary).map_err(|e| e.to_string())?
        }
    };
    eprintln!("starting the control plane (the first start builds it: minutes)");
    let plane = ControlPlane::start().await.map_err(|e| e.to_string())?;
    let client = plane.client().await.map_err(|e| e.to_string())?;
    let ca = std::fs::read_to_string(plane.ca_path()).map_err(|e| e.to_string())?;
    let agent = NodeAgent::start(client, "node-1", &image, plane.server(), &ca)
        .await
        .map_err(|e| e.to_string())?;
    std::fs::copy(plane.kubeconfig_path(), &args.kubeconfig)
        .map_err(|e| format!("writing {}: {e}", args.kubeconfig.display()))?;
    println!(
        "serving {} with node {}; admin kubeconfig: {}\n\
         try: KUBECONFIG={} kubectl apply --server-side -f crds/\n\
         stop with SIGTERM or Ctrl-C",
        plane.server(),
        agent.node_name(),
        args.kubeconfig.display(),
        args.kubeconfig.display(),
    );

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("stopping");
    let _ = tokio::time::timeout(Duration::from_secs(30), agent.shutdown()).await;
    plane.shutdown();
    let _ = std::fs::remove_file(&args.kubeconfig);
    Ok(())
}

// The control plane's processes end with the thread that started them: the main
// thread, which serves until told to stop.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match serve(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("test-cluster: {message}");
            ExitCode::FAILURE
        }
    }
}
