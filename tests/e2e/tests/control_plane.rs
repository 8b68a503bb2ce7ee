//! The real control plane of `tally_e2e::control_plane` (etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler built from upstream source): its
//! controllers run, it issues and checks ServiceAccount tokens, RBAC denies what no
//! role grants, and Pod Security admission enforces a namespace's level.
//!
//! Skipped (passing, with a `SKIPPED` note) when Go is not installed and no built
//! control plane is cached, unless `TALLY_REQUIRE_TOOLS` is set.

use std::time::{Duration, Instant};

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenReview, TokenReviewSpec},
    batch::v1::Job,
    core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount},
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use serde_json::json;
use tally_e2e::control_plane::{ADMIN_USER, ControlPlane, Error};
use tally_e2e::eventually;

const NAMESPACE: &str = "restricted";

/// A Pod spec the `restricted` Pod Security level admits.
fn restricted_pod_spec() -> serde_json::Value {
    json!({
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [{
            "name": "probe",
            "image": "registry.invalid/probe:1",
            "command": ["true"],
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]},
            },
        }],
    })
}

#[tokio::test]
async fn control_plane_runs_controllers_rbac_and_pod_security() {
    let started = Instant::now();
    let plane = match ControlPlane::start().await {
        Ok(plane) => plane,
        Err(e @ Error::GoUnavailable(_)) => {
            tally_e2e::tool_unavailable(&e.to_string());
            return;
        }
        Err(e) => panic!("the control plane did not start: {e}"),
    };
    eprintln!(
        "control plane ready in {:.1?} at {}",
        started.elapsed(),
        plane.server()
    );
    let client = plane.client().await.expect("an admin client");

    // The API server reports the release go.mod pins (build.sh stamps it).
    let version = client
        .apiserver_version()
        .await
        .expect("the server's version");
    assert_eq!(version.git_version, "v1.37.2");
    // The admin user is who the client certificate says, in system:masters.
    let review: serde_json::Value = client
        .request(
            http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
                .header("content-type", "application/json")
                .body(
                    serde_json::to_vec(&json!({
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "SelfSubjectReview",
                    }))
                    .unwrap(),
                )
                .unwrap(),
        )
        .await
        .expect("a SelfSubjectReview");
    assert_eq!(review["status"]["userInfo"]["username"], ADMIN_USER);
    assert!(
        review["status"]["userInfo"]["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == "system:masters")),
        "{review}"
    );

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = serde_json::from_value(json!({
        "metadata": {
            "name": NAMESPACE,
            "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
        },
    }))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .expect("the namespace is created");

    // The ServiceAccount controller creates `default`; the root CA publisher the
    // CA bundle Pods mount.
    let service_accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    eventually(
        "the default ServiceAccount",
        Duration::from_secs(60),
        || {
            let service_accounts = service_accounts.clone();
            async move { service_accounts.get_opt("default").await.ok().flatten() }
        },
    )
    .await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let root_ca = eventually("kube-root-ca.crt", Duration::from_secs(60), || {
        let config_maps = config_maps.clone();
        async move { config_maps.get_opt("kube-root-ca.crt").await.ok().flatten() }
    })
    .await;
    let ca = std::fs::read_to_string(plane.ca_path()).unwrap();
    assert_eq!(
        root_ca
            .data
            .unwrap_or_default()
            .get("ca.crt")
            .map(|c| c.trim()),
        Some(ca.trim())
    );

    // A token the API server signs for `default` is one it authenticates, and RBAC
    // grants that ServiceAccount nothing.
    let token_request: TokenRequest =
        serde_json::from_value(json!({"spec": {"expirationSeconds": 600}})).unwrap();
    let token = service_accounts
        .create_token_request("default", &PostParams::default(), &token_request)
        .await
        .expect("a ServiceAccount token")
        .status
        .and_then(|s| s.token)
        .expect("a token in the TokenRequest's status");
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = reviews
        .create(
            &PostParams::default(),
            &TokenReview {
                spec: TokenReviewSpec {
                    token: token.clone(),
                    ..TokenReviewSpec::default()
                },
                ..TokenReview::default()
            },
        )
        .await
        .expect("a TokenReview")
        .status
        .expect("a TokenReview's status");
    assert_eq!(review.authenticated, Some(true), "{review:?}");
    assert_eq!(
        review.user.and_then(|u| u.username).as_deref(),
        Some("system:serviceaccount:restricted:default")
    );
    let mut as_default = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(plane.kubeconfig_path()).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    as_default.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    let as_default = Client::try_from(as_default).unwrap();
    match Api::<Secret>::namespaced(as_default, "kube-system")
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("default listed kube-system's Secrets: {other:?}"),
    }

    // The Job controller creates the Job's Pod; with no node it stays Pending.
    let jobs: Api<Job> = Api::namespaced(client.clone(), NAMESPACE);
    let job = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": restricted_pod_spec()},
        },
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("the Job is created");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let pod = eventually("the Job's Pod", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("batch.kubernetes.io/job-name=probe"))
                .await
                .ok()?;
            list.items.into_iter().next()
        }
    })
    .await;
    assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    assert_eq!(pod.spec.and_then(|s| s.node_name), None);

    // Pod Security admission rejects a privileged Pod in the restricted namespace.
    let mut privileged = restricted_pod_spec();
    privileged["containers"][0]["securityContext"] = json!({"privileged": true});
    let privileged: Pod = serde_json::from_value(json!({
        "metadata": {"name": "privileged"},
        "spec": privileged,
    }))
    .unwrap();
    match pods.create(&PostParams::default(), &privileged).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(
                status
                    .message
                    .contains("violates PodSecurity \"restricted:latest\"")
                    && status.message.contains("privileged"),
                "{}",
                status.message
            );
        }
        other => panic!("a privileged Pod was not rejected: {other:?}"),
    }
    // ... where the same Pod passes the API server's own checks (a namespace without
    // enforcement admits it, as a dry run).
    Api::<Pod>::namespaced(client.clone(), "default")
        .create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &privileged,
        )
        .await
        .expect("a privileged Pod is admitted where no level is enforced");

    plane.shutdown();
}
