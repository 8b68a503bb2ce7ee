//! The real `kubectl` against the emulator. Skipped (with a message) without kubectl.

mod common;

use common::*;
use kube_emulator::Emulator;
use std::time::Duration;

const WIDGET: &str = "apiVersion: test.tally.dev/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3, color: red}\n";

async fn run(emu: &Emulator, args: &[&str]) -> String {
    let out = kubectl(emu, args, None).await;
    assert!(out.ok, "kubectl {args:?} failed: {}", out.stderr);
    out.stdout
}

async fn run_stdin(emu: &Emulator, args: &[&str], input: &str) -> String {
    let out = kubectl(emu, args, Some(input)).await;
    assert!(out.ok, "kubectl {args:?} failed: {}", out.stderr);
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_annotate_patch_and_cel() {
    if skip_without_kubectl() {
        return;
    }
    let emu = Emulator::start().await.unwrap();
    assert!(
        run_stdin(&emu, &["apply", "-f", "-"], WIDGET_CRD)
            .await
            .contains(
                "customresourcedefinition.apiextensions.k8s.io/widgets.test.tally.dev created"
            )
    );
    assert!(
        run_stdin(&emu, &["apply", "-f", "-"], WIDGET)
            .await
            .contains("widget.test.tally.dev/w1 created")
    );

    // Printer columns from the CRD.
    let table = run(&emu, &["get", "widgets"]).await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, vec!["NAME", "SIZE", "PHASE", "AGE"]);
    assert!(lines.next().unwrap().starts_with("w1     3"), "{table}");
    // One object by name gets the same columns.
    let one = run(&emu, &["get", "widget", "w1"]).await;
    let header: Vec<&str> = one.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, vec!["NAME", "SIZE", "PHASE", "AGE"], "{one}");
    assert!(one.lines().nth(1).unwrap().starts_with("w1     3"), "{one}");

    // Client-side apply of a change, then server-side apply.
    assert!(
        run_stdin(
            &emu,
            &["apply", "-f", "-"],
            &WIDGET.replace("size: 3", "size: 4")
        )
        .await
        .contains("configured")
    );
    assert_eq!(
        run(
            &emu,
            &[
                "get",
                "widget",
                "w1",
                "-o",
                "jsonpath={.spec.size} {.metadata.generation}"
            ]
        )
        .await,
        "4 2"
    );
    assert!(
        run_stdin(
            &emu,
            &["apply", "--server-side", "-f", "-"],
            &WIDGET.replace("w1", "w2")
        )
        .await
        .contains("serverside-applied")
    );
    assert_eq!(
        run(
            &emu,
            &[
                "get",
                "widget",
                "w2",
                "-o",
                "jsonpath={.metadata.managedFields[0].manager}"
            ]
        )
        .await,
        "kubectl"
    );

    run(&emu, &["annotate", "widget", "w1", "team=metrics"]).await;
    run(
        &emu,
        &[
            "patch",
            "widget",
            "w1",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"size":5}}"#,
        ],
    )
    .await;
    run(
        &emu,
        &[
            "patch",
            "widget",
            "w1",
            "--type",
            "json",
            "-p",
            r#"[{"op":"replace","path":"/spec/size","value":6}]"#,
        ],
    )
    .await;
    run(
        &emu,
        &[
            "patch",
            "widget",
            "w1",
            "--subresource=status",
            "--type",
            "merge",
            "-p",
            r#"{"status":{"phase":"Ready"}}"#,
        ],
    )
    .await;
    assert_eq!(
        run(
            &emu,
            &[
                "get",
                "widget",
                "w1",
                "-o",
                "jsonpath={.metadata.annotations.team} {.spec.size} {.status.phase}"
            ]
        )
        .await,
        "metrics 6 Ready"
    );
    assert!(
        run(&emu, &["get", "wd"]).await.contains("Ready"),
        "short name and status column"
    );

    // A CEL rule violation is refused with the rule's message.
    let bad = kubectl(
        &emu,
        &["apply", "-f", "-"],
        Some(&WIDGET.replace("size: 3", "size: 50")),
    )
    .await;
    assert!(!bad.ok);
    assert!(
        bad.stderr.contains("size must be at most 10"),
        "{}",
        bad.stderr
    );
    // Built-in kinds apply too, and explain reads the CRD schema.
    run_stdin(
        &emu,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: '1'}\n",
    )
    .await;
    assert!(
        run_stdin(
            &emu,
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: '2'}\n"
        )
        .await
        .contains("configured")
    );
    assert!(
        run(&emu, &["explain", "widget", "--recursive"])
            .await
            .contains("color")
    );

    // Tally's own CRDs, once they exist in the repository.
    let crds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    if crds.is_dir() {
        run(&emu, &["apply", "-f", crds.to_str().unwrap()]).await;
    } else {
        eprintln!(
            "note: {} does not exist yet; Tally CRDs not applied",
            crds.display()
        );
    }
}

fn job_yaml(name: &str, script: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: none\n        command: [sh, -c, '{script}']\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_jobs_and_cascading_deletes() {
    if skip_without_kubectl() {
        return;
    }
    let emu = Emulator::start().await.unwrap();
    run_stdin(&emu, &["apply", "-f", "-"], &job_yaml("quick", "echo hi")).await;
    assert!(
        run(
            &emu,
            &[
                "wait",
                "--for=condition=complete",
                "job/quick",
                "--timeout=30s"
            ]
        )
        .await
        .contains("condition met")
    );
    assert!(run(&emu, &["get", "jobs"]).await.contains("Complete"));
    assert_eq!(run(&emu, &["logs", "job/quick"]).await, "hi\n");

    for name in ["fg", "bg", "orphan"] {
        run_stdin(&emu, &["apply", "-f", "-"], &job_yaml(name, "sleep 60")).await;
    }
    let pods_of = |job: &'static str| {
        let emu = &emu;
        async move {
            kubectl(
                emu,
                &[
                    "get",
                    "pods",
                    "-l",
                    &format!("job-name={job}"),
                    "-o",
                    "name",
                ],
                None,
            )
            .await
            .stdout
            .lines()
            .count()
        }
    };
    for name in ["fg", "bg", "orphan"] {
        eventually(10, "job pod", || async {
            (pods_of(name).await == 1).then_some(())
        })
        .await;
    }
    // Foreground: kubectl waits until the Job is gone, which needs its Pod gone first.
    run(&emu, &["delete", "job", "fg", "--cascade=foreground"]).await;
    assert_eq!(pods_of("fg").await, 0);
    run(&emu, &["delete", "job", "bg", "--cascade=background"]).await;
    eventually(10, "background pods collected", || async {
        (pods_of("bg").await == 0).then_some(())
    })
    .await;
    run(&emu, &["delete", "job", "orphan", "--cascade=orphan"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pods_of("orphan").await, 1, "orphaned pod stays");
    let owners = run(
        &emu,
        &[
            "get",
            "pods",
            "-l",
            "job-name=orphan",
            "-o",
            "jsonpath={.items[0].metadata.ownerReferences}",
        ],
    )
    .await;
    assert_eq!(owners, "", "orphaned pod lost its owner reference");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_sees_changes() {
    if skip_without_kubectl() {
        return;
    }
    let emu = Emulator::start().await.unwrap();
    run_stdin(&emu, &["apply", "-f", "-"], WIDGET_CRD).await;
    run_stdin(&emu, &["apply", "-f", "-"], WIDGET).await;
    let cache = emu
        .kubeconfig_path()
        .parent()
        .unwrap()
        .join("kubectl-cache");
    let mut watch = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(emu.kubeconfig_path())
        .arg("--cache-dir")
        .arg(cache)
        .args(["get", "widgets", "-w", "--output-watch-events"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    run(
        &emu,
        &[
            "patch",
            "widget",
            "w1",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"size":8}}"#,
        ],
    )
    .await;
    run_stdin(&emu, &["apply", "-f", "-"], &WIDGET.replace("w1", "w9")).await;
    run(&emu, &["delete", "widget", "w9"]).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    watch.start_kill().unwrap();
    let out = watch.wait_with_output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        rows.iter()
            .any(|r| r.len() > 2 && r[0] == "ADDED" && r[1] == "w1"),
        "{text}"
    );
    assert!(
        rows.iter()
            .any(|r| r.len() > 2 && r[0] == "MODIFIED" && r[1] == "w1" && r[2] == "8"),
        "{text}"
    );
    assert!(
        rows.iter()
            .any(|r| r.len() > 2 && r[0] == "ADDED" && r[1] == "w9"),
        "{text}"
    );
    assert!(
        rows.iter()
            .any(|r| r.len() > 2 && r[0] == "DELETED" && r[1] == "w9"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rollout_runs_pods() {
    if skip_without_kubectl() {
        return;
    }
    let emu = Emulator::start().await.unwrap();
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - {name: main, image: v1, command: [sh, -c, 'sleep 60']}\n";
    run_stdin(&emu, &["apply", "-f", "-"], deployment).await;
    assert!(
        run(
            &emu,
            &["rollout", "status", "deployment/d", "--timeout=20s"]
        )
        .await
        .contains("successfully rolled out")
    );
    let running = run(
        &emu,
        &[
            "get",
            "pods",
            "-l",
            "app=d",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ],
    )
    .await;
    assert_eq!(running, "Running Running");
    let before = run(
        &emu,
        &[
            "get",
            "pods",
            "-l",
            "app=d",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    )
    .await;
    // A template change replaces the Pods.
    run(&emu, &["set", "image", "deployment/d", "main=v2"]).await;
    eventually(20, "pods replaced", || async {
        let names = kubectl(
            &emu,
            &[
                "get",
                "pods",
                "-l",
                "app=d",
                "--field-selector=status.phase=Running",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
            None,
        )
        .await
        .stdout;
        let images = kubectl(
            &emu,
            &[
                "get",
                "pods",
                "-l",
                "app=d",
                "-o",
                "jsonpath={.items[*].spec.containers[0].image}",
            ],
            None,
        )
        .await
        .stdout;
        (images == "v2 v2" && names.split(' ').all(|n| !before.contains(n))).then_some(())
    })
    .await;
    run(&emu, &["delete", "deployment", "d"]).await;
    eventually(20, "pods gone", || async {
        kubectl(&emu, &["get", "pods", "-o", "name"], None)
            .await
            .stdout
            .is_empty()
            .then_some(())
    })
    .await;
}
