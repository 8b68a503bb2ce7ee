//! `tally controller --leader-elect` end to end: replicas share one Lease and only its
//! holder reconciles; a stopped leader hands over at once, a dead one after the lease
//! duration, and a leader that loses the Lease exits.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::{
    Api,
    api::{DynamicObject, PostParams},
};
use serde_json::Value;
use tally_e2e::fault_proxy::Fault;
use tally_e2e::{ControllerProcess, TestCluster, patience};

const LEASE: &str = "tally-e2e-leader";

fn leases(cluster: &TestCluster) -> Api<Lease> {
    Api::namespaced(cluster.client().clone(), cluster.namespace())
}

fn replica(cluster: &TestCluster, pod: &str, lease_seconds: &str) -> ControllerProcess {
    replica_of(cluster, LEASE, pod, lease_seconds)
}

fn replica_of(
    cluster: &TestCluster,
    lease: &str,
    pod: &str,
    lease_seconds: &str,
) -> ControllerProcess {
    cluster.start_controller_with(
        &[
            "--leader-elect",
            "--leader-election-lease",
            lease,
            "--leader-election-namespace",
            cluster.namespace(),
            "--leader-election-lease-duration",
            lease_seconds,
        ],
        &[("POD_NAME", pod)],
    )
}

async fn holder(cluster: &TestCluster) -> Option<String> {
    holder_of(cluster, LEASE).await
}

async fn wait_for_holder(cluster: &TestCluster, pod: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let current = holder(cluster).await;
        if current
            .as_deref()
            .is_some_and(|h| h.starts_with(&format!("{pod}_")))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pod} did not take the Lease within {within:?}; holder: {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes the Lease as held by `identity`, renewed now, valid for `seconds`; again
/// when a replica wrote it in between.
async fn hold(cluster: &TestCluster, identity: &str, seconds: i32) {
    let api = leases(cluster);
    loop {
        let spec = LeaseSpec {
            holder_identity: Some(identity.to_string()),
            lease_duration_seconds: Some(seconds),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..LeaseSpec::default()
        };
        let written = match api.get_opt(LEASE).await.unwrap() {
            Some(mut lease) => {
                lease.spec = Some(spec);
                api.replace(LEASE, &PostParams::default(), &lease).await
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEASE.to_string()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                api.create(&PostParams::default(), &lease).await
            }
        };
        match written {
            Ok(_) => return,
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(error) => panic!("writing the Lease: {error}"),
        }
    }
}

fn calculations(cluster: &TestCluster) -> Api<DynamicObject> {
    cluster.tally_api("MetricCalculation")
}

async fn state(cluster: &TestCluster, name: &str) -> Value {
    let object = calculations(cluster).get(name).await.unwrap();
    object.data["status"]["state"].clone()
}

async fn wait_for_completed(cluster: &TestCluster, name: &str) {
    let deadline = Instant::now() + patience(120);
    while state(cluster, name).await != "Completed" {
        assert!(Instant::now() < deadline, "{name} never completed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A copy of the example calculation `from`, named `name`, with no status.
async fn copy_calculation(cluster: &TestCluster, from: &str, name: &str) {
    let mut object = calculations(cluster).get(from).await.unwrap();
    object.metadata = ObjectMeta {
        name: Some(name.to_string()),
        ..ObjectMeta::default()
    };
    object.data.as_object_mut().unwrap().remove("status");
    calculations(cluster)
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
}

// Two threads: the test's own Lease renewals must not wait behind the fault proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_reconciles_and_leadership_passes_on() {
    let cluster = TestCluster::start("leader-election").await;
    cluster.apply_yaml(&cluster.example_manifests().await).await;

    // 1. Another process holds the Lease and renews it: the replica only waits.
    hold(&cluster, "someone-else", 6).await;
    let mut a = replica(&cluster, "replica-a", "10");
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        hold(&cluster, "someone-else", 6).await;
    }
    assert_eq!(holder(&cluster).await.as_deref(), Some("someone-else"));
    assert_eq!(
        state(&cluster, "checkout-revenue").await,
        Value::Null,
        "a replica that does not hold the Lease reconciled"
    );

    // 2. Renewals stop: once the record went unchanged for its 6 s, the replica takes
    //    over and reconciles.
    wait_for_holder(&cluster, "replica-a", patience(15)).await;
    wait_for_completed(&cluster, "checkout-revenue").await;

    // 3. A second replica waits while the first leads.
    let mut b = replica(&cluster, "replica-b", "10");
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_for_holder(&cluster, "replica-a", Duration::ZERO).await;

    // 4. SIGTERM: the leader releases the Lease as it stops, so the second replica
    //    takes over well within the 10 s lease duration, and reconciles.
    a.terminate();
    let exit = a.exit_within(patience(10)).await.expect("the leader stops");
    assert!(exit.success(), "a stopped leader exits cleanly: {exit}");
    wait_for_holder(&cluster, "replica-b", patience(5)).await;
    copy_calculation(&cluster, "checkout-revenue", "after-handover").await;
    wait_for_completed(&cluster, "after-handover").await;
    let lease = leases(&cluster).get(LEASE).await.unwrap();
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(2));

    // 5. A leader that finds the Lease taken stops reconciling and exits with an
    //    error, so that it never runs beside the new holder.
    hold(&cluster, "usurper", 30).await;
    let exit = b.exit_within(patience(10)).await.expect("the leader stops");
    assert!(
        !exit.success(),
        "a leader that lost the Lease exits non-zero"
    );
    assert_eq!(holder(&cluster).await.as_deref(), Some("usurper"));
}

#[tokio::test]
async fn a_lease_without_a_spec_is_taken_over() {
    let cluster = TestCluster::start("leader-no-spec").await;
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("tally-e2e-bare".to_string()),
            ..ObjectMeta::default()
        },
        spec: None,
    };
    leases(&cluster)
        .create(&PostParams::default(), &lease)
        .await
        .unwrap();
    let _replica = replica_of(&cluster, "tally-e2e-bare", "replica-a", "10");
    let deadline = Instant::now() + patience(10);
    loop {
        let holder = holder_of(&cluster, "tally-e2e-bare").await;
        if holder
            .as_deref()
            .is_some_and(|h| h.starts_with("replica-a_"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "never taken over: {holder:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A leader whose renewals go unanswered gives up within its renew deadline, before
/// the Lease could pass to another replica, even though no request ever fails.
#[tokio::test]
async fn a_leader_whose_renewals_hang_stops_before_its_lease_expires() {
    let cluster = TestCluster::start("leader-hang").await;
    let Some(faults) = cluster.faults() else {
        return;
    };
    let mut leader = replica_of(&cluster, "tally-e2e-hang", "replica-a", "6");
    let deadline = Instant::now() + patience(10);
    while holder_of(&cluster, "tally-e2e-hang").await.is_none() {
        assert!(Instant::now() < deadline, "never led");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let path = format!(
        "/apis/coordination.k8s.io/v1/namespaces/{}/leases/tally-e2e-hang",
        cluster.namespace()
    );
    faults.fail_next(&path, usize::MAX, Fault::Hang);
    let hung = Instant::now();
    let exit = leader
        .exit_within(Duration::from_secs(10))
        .await
        .expect("the leader stops");
    assert!(
        !exit.success(),
        "a leader that could not renew exits non-zero"
    );
    // The renew deadline is 4 s of the 6 s lease, counted from the last renewal
    // sent (at most a retry period, 0.8 s, before the hang began).
    assert!(
        hung.elapsed() < Duration::from_secs(6),
        "stopped after {:?}, when the Lease may already have passed on",
        hung.elapsed()
    );
}

async fn holder_of(cluster: &TestCluster, lease: &str) -> Option<String> {
    leases(cluster)
        .get_opt(lease)
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}
