//! The node agent of `tally_e2e::node_agent`: its pure parts (environment, volumes,
//! users, statuses), the image `image/build.sh` builds and the agent's unpacking of it,
//! and Pods of that image run by the agent for the real control plane
//! (`tally_e2e::control_plane`): a restricted Job, a failing Pod's exit code and
//! termination message, a deleted Pod's SIGTERM and final delete.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, Node, Pod, Secret, ServiceAccount, Volume,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use tally_e2e::control_plane::{self, ControlPlane};
use tally_e2e::eventually;
use tally_e2e::node_agent::{
    ImageConfig, NodeAgent, Outcome, Resolved, ServiceEndpoint, VolumeContent, VolumeFile, Waiting,
    argv, build_image, container_env, expand, quantity_value, run_as, running_status,
    terminated_status, unpack_image, volume_files, waiting_status, write_volume,
};

fn pod(spec: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "worker-abc", "namespace": "team-a", "uid": "0000-1111",
            "labels": {"job-name": "calc-1"},
        },
        "spec": spec,
    }))
    .unwrap()
}

fn container(c: Value) -> Container {
    serde_json::from_value(c).unwrap()
}

fn env_of(list: &[(String, String)], name: &str) -> Option<String> {
    list.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

fn service() -> ServiceEndpoint {
    ServiceEndpoint::from_url("https://127.0.0.1:36443").unwrap()
}

fn resolved() -> Resolved {
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "settings"},
        "data": {"mode": "fast", "nested.conf": "a=1\n"},
        "binaryData": {"blob.bin": "AAEC/w=="},
    }))
    .unwrap();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("creds".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "password".to_string(),
            ByteString(b"s3cret".to_vec()),
        )])),
        ..Default::default()
    };
    Resolved {
        config_maps: [("settings".to_string(), cm)].into(),
        secrets: [("creds".to_string(), secret)].into(),
        tokens: [(
            "kube-api-access-x/token".to_string(),
            "eyJ.token".to_string(),
        )]
        .into(),
        root_ca: Some("-----BEGIN CERTIFICATE-----\nCA\n".into()),
    }
}

#[test]
fn expansion_follows_kubernetes() {
    let env = vec![
        ("A".to_string(), "x".to_string()),
        ("B".to_string(), "$(A)y".to_string()),
    ];
    assert_eq!(expand("$(A)-$(B)", &env), "x-$(A)y");
    assert_eq!(expand("$(MISSING)", &env), "$(MISSING)");
    assert_eq!(expand("$$(A)", &env), "$(A)");
    assert_eq!(expand("cost: $5 $(A", &env), "cost: $5 $(A");
    assert_eq!(expand("$", &env), "$");
    assert_eq!(expand("a$$b", &env), "a$b");
}

#[test]
fn resource_field_refs_give_limits_in_bytes_and_whole_cores() {
    assert_eq!(quantity_value("2Gi"), Some(2147483648.0));
    assert_eq!(quantity_value("250m"), Some(0.25));
    assert_eq!(quantity_value("1.5"), Some(1.5));
    assert_eq!(quantity_value("4k"), Some(4000.0));
    assert_eq!(quantity_value("lots"), None);
    let limited = container(json!({
        "name": "worker",
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"},
                      "limits": {"cpu": "1500m", "memory": "2Gi"}},
        "env": [
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"containerName": "worker", "resource": "limits.memory"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory", "divisor": "1Mi"}}},
        ],
    }));
    let p = pod(json!({"nodeName": "node-1", "containers": [limited.clone()]}));
    let env = container_env(&p, &limited, "node-1", &service(), &resolved()).unwrap();
    assert_eq!(env_of(&env, "MEM").as_deref(), Some("2147483648"));
    assert_eq!(env_of(&env, "CPU").as_deref(), Some("2"), "cores round up");
    assert_eq!(env_of(&env, "REQ").as_deref(), Some("512"));
    // Without a limit, the node's allocatable amount.
    let unlimited = container(json!({
        "name": "worker",
        "env": [{"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}],
    }));
    let p = pod(json!({"nodeName": "node-1", "containers": [unlimited.clone()]}));
    let env = container_env(&p, &unlimited, "node-1", &service(), &resolved()).unwrap();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    assert_eq!(env_of(&env, "CPU"), Some(cores.to_string()));
}

#[test]
fn container_environment() {
    let p = pod(json!({
        "nodeName": "node-1",
        "serviceAccountName": "tally-worker",
        "containers": [],
    }));
    let c = container(json!({
        "name": "worker",
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
        "env": [
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "JOB", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}}},
            {"name": "WHERE", "value": "$(NS)/$(POD) on $(KUBERNETES_SERVICE_HOST)"},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "NONE", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": true}}},
            {"name": "CFG_mode", "value": "overridden"},
        ],
    }));
    let env = container_env(&p, &c, "node-1", &service(), &resolved()).unwrap();
    let get = |k: &str| env_of(&env, k);
    assert_eq!(get("KUBERNETES_SERVICE_HOST").as_deref(), Some("127.0.0.1"));
    assert_eq!(get("KUBERNETES_SERVICE_PORT").as_deref(), Some("36443"));
    assert_eq!(get("NS").as_deref(), Some("team-a"));
    assert_eq!(get("POD").as_deref(), Some("worker-abc"));
    assert_eq!(get("UID").as_deref(), Some("0000-1111"));
    assert_eq!(get("NODE").as_deref(), Some("node-1"));
    assert_eq!(get("SA").as_deref(), Some("tally-worker"));
    assert_eq!(get("JOB").as_deref(), Some("calc-1"));
    assert_eq!(
        get("WHERE").as_deref(),
        Some("team-a/worker-abc on 127.0.0.1")
    );
    assert_eq!(get("MODE").as_deref(), Some("fast"));
    assert_eq!(get("PASSWORD").as_deref(), Some("s3cret"));
    assert_eq!(get("NONE"), None);
    assert_eq!(get("CFG_mode").as_deref(), Some("overridden"));
    assert_eq!(get("CFG_nested.conf").as_deref(), Some("a=1\n"));
    assert_eq!(env.iter().filter(|(k, _)| k == "CFG_mode").count(), 1);

    // What is missing and not optional keeps the container from being created.
    let missing = container(json!({
        "name": "worker",
        "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope"}}}],
    }));
    let waiting = container_env(&p, &missing, "node-1", &service(), &resolved()).unwrap_err();
    assert_eq!(waiting.reason, "CreateContainerConfigError");
    assert!(waiting.message.contains("nope"), "{waiting:?}");
    let absent = container(json!({
        "name": "worker",
        "envFrom": [{"secretRef": {"name": "absent"}}],
    }));
    let waiting = container_env(&p, &absent, "node-1", &service(), &resolved()).unwrap_err();
    assert_eq!(waiting.message, "secret \"absent\" not found");
}

#[test]
fn command_and_args_use_the_image_entrypoint() {
    let image = ImageConfig {
        entrypoint: vec!["/usr/local/bin/tally".into()],
        cmd: vec!["--help".into()],
        ..Default::default()
    };
    let env = vec![("PLAN".to_string(), "p.json".to_string())];
    let only_args = container(json!({"name": "c", "args": ["worker", "--plan=$(PLAN)"]}));
    assert_eq!(
        argv(&only_args, &image, &env),
        ["/usr/local/bin/tally", "worker", "--plan=p.json"]
    );
    let nothing = container(json!({"name": "c"}));
    assert_eq!(
        argv(&nothing, &image, &env),
        ["/usr/local/bin/tally", "--help"]
    );
    let command = container(json!({"name": "c", "command": ["tally"], "args": ["--version"]}));
    assert_eq!(argv(&command, &image, &env), ["tally", "--version"]);
}

#[test]
fn users_and_groups() {
    let passwd = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
    let c = container(json!({"name": "c"}));
    let restricted = pod(json!({
        "containers": [],
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "fsGroup": 2000},
    }));
    assert_eq!(
        run_as(&restricted, &c, "", passwd).unwrap(),
        (65532, 65532, vec![2000])
    );
    let grouped =
        container(json!({"name": "c", "securityContext": {"runAsUser": 1000, "runAsGroup": 3000}}));
    assert_eq!(
        run_as(&restricted, &grouped, "", passwd).unwrap(),
        (1000, 3000, vec![2000])
    );
    let plain = pod(json!({"containers": []}));
    assert_eq!(
        run_as(&plain, &c, "65532:65532", passwd).unwrap(),
        (65532, 65532, vec![])
    );
    assert_eq!(
        run_as(&plain, &c, "nonroot", passwd).unwrap(),
        (65532, 65532, vec![])
    );
    assert_eq!(run_as(&plain, &c, "", passwd).unwrap(), (0, 0, vec![]));
    let non_root = pod(json!({"containers": [], "securityContext": {"runAsNonRoot": true}}));
    let waiting = run_as(&non_root, &c, "0", passwd).unwrap_err();
    assert_eq!(waiting.reason, "CreateContainerConfigError");
}

fn files(content: VolumeContent) -> BTreeMap<String, (Vec<u8>, u32)> {
    match content {
        VolumeContent::Files(files) => files
            .into_iter()
            .map(|VolumeFile { path, data, mode }| (path, (data, mode)))
            .collect(),
        VolumeContent::EmptyDir => panic!("not files"),
    }
}

#[test]
fn volumes_materialise() {
    let p = pod(json!({"containers": []}));
    let volume = |v: Value| -> Volume { serde_json::from_value(v).unwrap() };
    let r = resolved();

    let empty = volume(json!({"name": "scratch", "emptyDir": {}}));
    assert_eq!(
        volume_files(&p, "n", &empty, &r).unwrap(),
        VolumeContent::EmptyDir
    );

    let cm =
        volume(json!({"name": "cfg", "configMap": {"name": "settings", "defaultMode": 0o440}}));
    let f = files(volume_files(&p, "n", &cm, &r).unwrap());
    assert_eq!(f["mode"], (b"fast".to_vec(), 0o440));
    assert_eq!(f["blob.bin"], (vec![0, 1, 2, 255], 0o440));
    assert_eq!(f.len(), 3);

    let items = volume(json!({"name": "cfg", "configMap": {
        "name": "settings", "items": [{"key": "mode", "path": "sub/mode.txt", "mode": 0o400}],
    }}));
    let f = files(volume_files(&p, "n", &items, &r).unwrap());
    assert_eq!(f.keys().collect::<Vec<_>>(), ["sub/mode.txt"]);
    assert_eq!(f["sub/mode.txt"].1, 0o400);

    let secret = volume(json!({"name": "s", "secret": {"secretName": "creds"}}));
    let f = files(volume_files(&p, "n", &secret, &r).unwrap());
    assert_eq!(f["password"], (b"s3cret".to_vec(), 0o644));

    let missing = volume(json!({"name": "s", "secret": {"secretName": "absent"}}));
    assert!(volume_files(&p, "n", &missing, &r).is_err());
    let optional =
        volume(json!({"name": "s", "secret": {"secretName": "absent", "optional": true}}));
    assert_eq!(
        volume_files(&p, "n", &optional, &r).unwrap(),
        VolumeContent::Files(vec![])
    );
    let escape = volume(json!({"name": "cfg", "configMap": {
        "name": "settings", "items": [{"key": "mode", "path": "../x"}],
    }}));
    assert!(volume_files(&p, "n", &escape, &r).is_err());
    let host = volume(json!({"name": "h", "hostPath": {"path": "/etc"}}));
    assert!(volume_files(&p, "n", &host, &r).is_err());

    // What the ServiceAccount admission plugin injects.
    let projected = volume(json!({"name": "kube-api-access-x", "projected": {
        "defaultMode": 420,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ],
    }}));
    let f = files(volume_files(&p, "n", &projected, &r).unwrap());
    assert_eq!(f["token"], (b"eyJ.token".to_vec(), 0o644));
    assert_eq!(f["ca.crt"].0, b"-----BEGIN CERTIFICATE-----\nCA\n");
    assert_eq!(f["namespace"].0, b"team-a");

    let dir = tempfile::tempdir().unwrap();
    write_volume(
        &dir.path().join("cfg"),
        &volume_files(&p, "n", &items, &r).unwrap(),
    )
    .unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("cfg/sub/mode.txt")).unwrap(),
        b"fast"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("cfg/sub/mode.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o400);
}

#[test]
fn statuses() {
    let p =
        pod(json!({"containers": [{"name": "worker", "image": "ghcr.io/tally-dev/tally:0.1.0"}]}));
    let waiting = waiting_status(
        &p,
        &Waiting {
            reason: "CreateContainerConfigError".into(),
            message: "secret \"creds\" not found".into(),
        },
    );
    assert_eq!(waiting["phase"], "Pending");
    assert_eq!(
        waiting["containerStatuses"][0]["state"]["waiting"]["reason"],
        "CreateContainerConfigError"
    );

    let running = running_status(
        &p,
        "2026-01-01T00:00:00Z",
        &[("worker".into(), "2026-01-01T00:00:01Z".into(), 0)],
    );
    assert_eq!(running["phase"], "Running");
    assert_eq!(running["podIP"], "127.0.0.1");
    assert_eq!(running["startTime"], "2026-01-01T00:00:00Z");
    let cs = &running["containerStatuses"][0];
    assert_eq!(cs["state"]["running"]["startedAt"], "2026-01-01T00:00:01Z");
    assert_eq!(cs["ready"], true);
    assert_eq!(cs["image"], "ghcr.io/tally-dev/tally:0.1.0");
    for t in ["Ready", "ContainersReady", "Initialized", "PodScheduled"] {
        let c = running["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .unwrap();
        assert_eq!(c["status"], "True", "{t}");
    }
    // The typed Pod status reads what the agent writes.
    let _: k8s_openapi::api::core::v1::PodStatus = serde_json::from_value(running).unwrap();

    let outcome = |code| Outcome {
        name: "worker".into(),
        image: "ghcr.io/tally-dev/tally:0.1.0".into(),
        exit_code: code,
        signal: None,
        message: if code == 0 {
            String::new()
        } else {
            "no warehouse".into()
        },
        started_at: "2026-01-01T00:00:01Z".into(),
        finished_at: "2026-01-01T00:00:05Z".into(),
        restart_count: 0,
    };
    let failed = terminated_status(&p, "2026-01-01T00:00:00Z", &[outcome(3)]);
    assert_eq!(failed["phase"], "Failed");
    let t = &failed["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["exitCode"], 3);
    assert_eq!(t["reason"], "Error");
    assert_eq!(t["message"], "no warehouse");
    assert_eq!(t["finishedAt"], "2026-01-01T00:00:05Z");
    let succeeded = terminated_status(&p, "2026-01-01T00:00:00Z", &[outcome(0)]);
    assert_eq!(succeeded["phase"], "Succeeded");
    let t = &succeeded["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["reason"], "Completed");
    assert!(t.get("message").is_none());
    let _: k8s_openapi::api::core::v1::PodStatus = serde_json::from_value(succeeded).unwrap();
}

#[test]
fn service_endpoint_from_url() {
    assert_eq!(service().host, "127.0.0.1");
    assert_eq!(service().port, 36443);
    assert!(ServiceEndpoint::from_url("https://127.0.0.1").is_err());
}

/// The image `image/build.sh` builds from the local `tally`, unpacked as the agent
/// does: the binary, its libraries, certificates, the nonroot user, the config.
#[test]
fn image_builds_and_unpacks() {
    if std::process::Command::new("buildah")
        .arg("--version")
        .output()
        .is_err()
    {
        tally_e2e::tool_unavailable("buildah is not installed (apt-get install buildah)");
        return;
    }
    let started = Instant::now();
    let layout = tally_e2e::node_agent::build_image(&tally_e2e::tally_bin()).unwrap();
    eprintln!("image: {} in {:.1?}", layout.display(), started.elapsed());
    let image = unpack_image(&layout).unwrap();
    eprintln!(
        "rootfs: {} (unpacked in {:?})",
        image.root.display(),
        image.unpack_time
    );
    assert_eq!(image.config.entrypoint, ["/usr/local/bin/tally"]);
    assert_eq!(image.config.user, "65532:65532");
    for file in [
        "usr/local/bin/tally",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
        "etc/group",
        "lib64/ld-linux-x86-64.so.2",
    ] {
        assert!(image.root.join(file).is_file(), "{file} is missing");
    }
    assert!(image.root.join("tmp").is_dir());
    let passwd = std::fs::read_to_string(image.root.join("etc/passwd")).unwrap();
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
    // A second unpack reuses the first.
    assert_eq!(unpack_image(&layout).unwrap().unpack_time, None);
    // The binary runs from the image root alone (chroot, as the agent runs it).
    let out = std::process::Command::new("chroot")
        .arg("--userspec=65532:65532")
        .arg(&image.root)
        .args(["/usr/local/bin/tally", "--version"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
}

// ------------------------------------------------------------ on the real control plane

/// A static program that writes a termination message and exits 3 (the image has
/// only `tally`; this reaches the Pod through a ConfigMap's `binaryData`).
const EXIT3_C: &str = r#"
static long sys(long n, long a, long b, long c) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}
void _start(void) {
    static const char msg[] = "the warehouse is gone";
    long fd = sys(2, (long)"/dev/termination-log", 1, 0);
    if (fd >= 0) sys(1, fd, (long)msg, sizeof msg - 1);
    sys(60, 3, 0, 0);
    for (;;) {}
}
"#;

/// `EXIT3_C` compiled (freestanding, static), or None without a C compiler.
fn exit3_program(dir: &std::path::Path) -> Option<Vec<u8>> {
    let source = dir.join("exit3.c");
    let binary = dir.join("exit3");
    std::fs::write(&source, EXIT3_C).unwrap();
    let status = std::process::Command::new("cc")
        .args([
            "-static",
            "-nostdlib",
            "-Os",
            "-fno-stack-protector",
            "-fno-pie",
            "-no-pie",
            "-o",
        ])
        .arg(&binary)
        .arg(&source)
        .status()
        .ok()?;
    status.success().then(|| std::fs::read(&binary).unwrap())
}

/// A restricted container of the image (what Pod Security `restricted` admits).
fn restricted(name: &str, extra: Value) -> Value {
    let mut c = json!({
        "name": name,
        "image": IMAGE,
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn restricted_pod_spec(containers: Vec<Value>, extra: Value) -> Value {
    let mut spec = json!({
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": containers,
    });
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    spec
}

const IMAGE: &str = "ghcr.io/tally-dev/tally:0.1.0";

/// The example's data files. The worker checks its sources exist and the image root
/// has nothing of the host's, so they reach Pods as a ConfigMap mounted at
/// /tally-data (plans rewritten to read there). The sessions file is left out: no
/// plan these tests run reads it, and with it the ConfigMap would pass 1 MiB.
fn example_data(data_dir: &std::path::Path) -> BTreeMap<String, ByteString> {
    ["exposures.csv.gz", "purchases.csv.gz", "users.csv.gz"]
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(data_dir.join(name)).unwrap();
            (name.to_string(), ByteString(bytes))
        })
        .collect()
}

fn data_config_map(data: BTreeMap<String, ByteString>) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("example-data".into()),
            ..Default::default()
        },
        binary_data: Some(data),
        ..Default::default()
    }
}

fn terminated(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .clone()
}

#[tokio::test]
async fn pods_run_on_the_node_agent() {
    if std::process::Command::new("buildah")
        .arg("--version")
        .output()
        .is_err()
    {
        tally_e2e::tool_unavailable("buildah is not installed (apt-get install buildah)");
        return;
    }
    let started = Instant::now();
    let plane = match ControlPlane::start().await {
        Ok(plane) => plane,
        Err(e @ control_plane::Error::GoUnavailable(_)) => {
            tally_e2e::tool_unavailable(&e.to_string());
            return;
        }
        Err(e) => panic!("the control plane did not start: {e}"),
    };
    eprintln!("control plane ready in {:.1?}", started.elapsed());
    let client = plane.client().await.unwrap();
    let t = Instant::now();
    let layout = build_image(&tally_e2e::tally_bin()).unwrap();
    eprintln!("image {} in {:.1?}", layout.display(), t.elapsed());
    let ca = std::fs::read_to_string(plane.ca_path()).unwrap();
    let t = Instant::now();
    let agent = NodeAgent::start(client.clone(), "node-1", &layout, plane.server(), &ca)
        .await
        .unwrap();
    eprintln!(
        "node agent started in {:.1?} (image unpacked in {:?})",
        t.elapsed(),
        agent.image().unpack_time
    );

    // The node is Ready and carries no taint that keeps Pods off.
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(
        "node-1 Ready and untainted",
        Duration::from_secs(60),
        || async {
            let node = nodes.get("node-1").await.ok()?;
            let ready = node
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let tainted = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| !t.is_empty());
            (ready && !tainted).then_some(())
        },
    )
    .await;

    // A namespace where Pod Security enforces `restricted`, with its ServiceAccount.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = "node-agent";
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    eventually(
        "the default ServiceAccount",
        Duration::from_secs(60),
        || async { sas.get_opt("default").await.ok().flatten() },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);

    // 1. A Job of the image, restricted, runs `tally --version` to completion.
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "version"},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": restricted_pod_spec(vec![restricted("tally", json!({"args": ["--version"]}))], json!({}))},
        },
    }))
    .unwrap();
    let t = Instant::now();
    jobs.create(&PostParams::default(), &job).await.unwrap();
    let job = eventually("Job version Complete", Duration::from_secs(60), || async {
        let job = jobs.get("version").await.ok()?;
        let conditions = job.status.as_ref()?.conditions.clone()?;
        assert!(
            !conditions
                .iter()
                .any(|c| c.type_ == "Failed" && c.status == "True"),
            "Job version failed: {conditions:?}; agent errors: {:?}",
            agent.errors()
        );
        conditions
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True")
            .then_some(job)
    })
    .await;
    eprintln!(
        "Job version completed in {:.1?}: {:?}",
        t.elapsed(),
        job.status.and_then(|s| s.succeeded)
    );
    let version_pods = pods
        .list(&ListParams::default().labels("job-name=version"))
        .await
        .unwrap();
    let pod = &version_pods.items[0];
    assert_eq!(
        pod.status.as_ref().unwrap().phase.as_deref(),
        Some("Succeeded")
    );
    assert_eq!(terminated(pod).unwrap().exit_code, 0);
    let output = agent.logs(ns, &pod.name_any(), "tally").unwrap();
    assert!(
        output.contains("tally"),
        "tally --version printed {output:?}"
    );
    eprintln!("tally --version in the Pod: {}", output.trim());

    // 2. A Pod whose container writes a termination message and exits 3 ends Failed
    //    with both (its program comes from a ConfigMap's binaryData, mode 0755).
    let dir = tempfile::tempdir().unwrap();
    match exit3_program(dir.path()) {
        None => tally_e2e::tool_unavailable("no C compiler (cc) for the exit-3 program"),
        Some(program) => {
            let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            let cm = ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some("probe".into()),
                    ..Default::default()
                },
                binary_data: Some(BTreeMap::from([("exit3".to_string(), ByteString(program))])),
                ..Default::default()
            };
            cms.create(&PostParams::default(), &cm).await.unwrap();
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": "exit3"},
                "spec": restricted_pod_spec(
                    vec![restricted("probe", json!({
                        "command": ["/opt/probe/exit3"],
                        "volumeMounts": [{"name": "probe", "mountPath": "/opt/probe"}],
                    }))],
                    json!({"volumes": [{"name": "probe", "configMap": {"name": "probe", "defaultMode": 0o755}}]}),
                ),
            }))
            .unwrap();
            pods.create(&PostParams::default(), &pod).await.unwrap();
            let pod = eventually("Pod exit3 Failed", Duration::from_secs(60), || async {
                let pod = pods.get("exit3").await.ok()?;
                (pod.status.as_ref()?.phase.as_deref() == Some("Failed")).then_some(pod)
            })
            .await;
            let t = terminated(&pod).unwrap();
            assert_eq!(t.exit_code, 3);
            assert_eq!(t.reason.as_deref(), Some("Error"));
            assert_eq!(t.message.as_deref(), Some("the warehouse is gone"));
            assert!(t.started_at.is_some() && t.finished_at.is_some());
        }
    }

    // 3. The worker failing on a bad plan: its termination message reaches the status.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "bad-plan"},
        "spec": restricted_pod_spec(vec![restricted("worker", json!({
            "args": ["worker"],
            "env": [
                {"name": "TALLY_PLAN", "value": "{not json"},
                {"name": "TALLY_JOB_NAME", "value": "bad-plan"},
                {"name": "TALLY_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            ],
        }))], json!({})),
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let pod = eventually("Pod bad-plan Failed", Duration::from_secs(60), || async {
        let pod = pods.get("bad-plan").await.ok()?;
        (pod.status.as_ref()?.phase.as_deref() == Some("Failed")).then_some(pod)
    })
    .await;
    let t = terminated(&pod).unwrap();
    assert_ne!(t.exit_code, 0);
    assert_eq!(t.reason.as_deref(), Some("Error"));
    assert!(
        t.message
            .as_deref()
            .is_some_and(|m| m.contains("TALLY_PLAN")),
        "{t:?}"
    );

    // 4. The worker completes a calculation with the Pod's ServiceAccount token, the
    //    cluster CA and KUBERNETES_SERVICE_HOST/PORT: its result ConfigMap appears.
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "tally-worker"},
                "rules": [
                    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]},
                    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "patch"]},
                ],
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "tally-worker"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tally-worker"},
                "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}],
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let example_plans =
        tally_e2e::tally_json(&["plan", "-f", tally_e2e::example().to_str().unwrap()]);
    let data_dir = tally_e2e::example().join("data");
    let quick = example_plans
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["calculation"]
                .as_str()
                .is_some_and(|c| c.ends_with("/checkout-conversion"))
        })
        .unwrap()
        .to_string()
        .replace(data_dir.to_str().unwrap(), "/tally-data");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    cms.create(
        &PostParams::default(),
        &data_config_map(example_data(&data_dir)),
    )
    .await
    .unwrap();
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "conversion"},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": restricted_pod_spec(vec![restricted("worker", json!({
                "args": ["worker"],
                "env": [
                    {"name": "TALLY_PLAN", "value": quick},
                    {"name": "TALLY_JOB_NAME", "value": "conversion"},
                    {"name": "TALLY_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                ],
                "volumeMounts": [
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "data", "mountPath": "/tally-data", "readOnly": true},
                ],
            }))], json!({"volumes": [
                {"name": "tmp", "emptyDir": {}},
                {"name": "data", "configMap": {"name": "example-data"}},
            ]}))},
        },
    }))
    .unwrap();
    let t = Instant::now();
    jobs.create(&PostParams::default(), &job).await.unwrap();
    eventually(
        "Job conversion Complete",
        Duration::from_secs(120),
        || async {
            let job = jobs.get("conversion").await.ok()?;
            let conditions = job.status.as_ref()?.conditions.clone()?;
            let failed = conditions
                .iter()
                .any(|c| c.type_ == "Failed" && c.status == "True");
            if failed {
                let list = pods
                    .list(&ListParams::default().labels("job-name=conversion"))
                    .await
                    .unwrap();
                let logs: Vec<_> = list
                    .items
                    .iter()
                    .map(|p| agent.logs(ns, &p.name_any(), "worker"))
                    .collect();
                panic!("Job conversion failed: {conditions:?}; logs: {logs:?}");
            }
            conditions
                .iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
                .then_some(())
        },
    )
    .await;
    let result = cms.get("conversion-result").await.unwrap();
    assert!(result.data.unwrap_or_default().contains_key("result.json"));
    eprintln!("the worker wrote conversion-result in {:.1?}", t.elapsed());

    // 5. Deleting a running worker (a slow query) sends SIGTERM: the Pod is gone well
    //    before its 60 s grace period would end in SIGKILL.
    let mut plan = example_plans.as_array().unwrap()[0].clone();
    plan["sql"] =
        json!("SELECT count(*) AS n FROM range(1000000000000) AS a(i) WHERE hash(i) % 7 = 3");
    // Its sources are the example data in the ConfigMap at /tally-data.
    let plan = plan
        .to_string()
        .replace(data_dir.to_str().unwrap(), "/tally-data");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "slow"},
        "spec": restricted_pod_spec(vec![restricted("worker", json!({
            "args": ["worker"],
            "env": [
                {"name": "TALLY_PLAN", "value": plan},
                {"name": "TALLY_JOB_NAME", "value": "slow"},
                {"name": "TALLY_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            ],
            "volumeMounts": [
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "data", "mountPath": "/tally-data", "readOnly": true},
            ],
        }))], json!({"terminationGracePeriodSeconds": 60, "volumes": [
            {"name": "tmp", "emptyDir": {}},
            {"name": "data", "configMap": {"name": "example-data"}},
        ]})),
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let running = eventually("Pod slow Running", Duration::from_secs(60), || async {
        let pod = pods.get("slow").await.ok()?;
        let phase = pod.status.as_ref()?.phase.clone();
        assert_ne!(
            phase.as_deref(),
            Some("Failed"),
            "slow failed: {:?}; log: {:?}",
            pod.status,
            agent.logs(ns, "slow", "worker")
        );
        (phase.as_deref() == Some("Running")).then_some(pod)
    })
    .await;
    let status = running.status.unwrap();
    assert_eq!(status.pod_ip.as_deref(), Some("127.0.0.1"));
    assert!(status.start_time.is_some());
    let ready = status.conditions.unwrap_or_default();
    for t in ["Ready", "ContainersReady", "Initialized", "PodScheduled"] {
        assert!(
            ready.iter().any(|c| c.type_ == t && c.status == "True"),
            "{t}: {ready:?}"
        );
    }
    // Let the query start.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = Instant::now();
    pods.delete("slow", &DeleteParams::default()).await.unwrap();
    eventually("Pod slow gone", Duration::from_secs(30), || async {
        pods.get_opt("slow").await.ok()?.is_none().then_some(())
    })
    .await;
    eprintln!("Pod slow gone {:.1?} after its delete", t.elapsed());
    let log = agent.logs(ns, "slow", "worker").unwrap_or_default();
    eprintln!("the worker's log:\n{log}");

    assert!(
        agent.errors().is_empty(),
        "agent errors: {:?}",
        agent.errors()
    );
    agent.shutdown().await;
    assert!(nodes.get_opt("node-1").await.unwrap().is_none());
    plane.shutdown();
}
