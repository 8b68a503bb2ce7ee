//! kube-runtime against the emulator: watcher recovery (dropped watch, 410 relist),
//! a `Controller` owning Jobs, the finalizer helper and the event `Recorder`.

mod common;

use common::*;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher::{self, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Apply(String, String),
    Delete(String),
    Init,
    InitApply(String, String),
    InitDone,
    Error(u16),
}

fn cm(name: &str, v: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": v}})).unwrap()
}

fn rv(c: &ConfigMap) -> String {
    c.resource_version().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_recovers_from_drops_and_410_without_gaps_or_duplicates() {
    let emu = kube_emulator::Emulator::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client(&emu).await, "default");
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let sink = seen.clone();
    let task = tokio::spawn(
        watcher(cms.clone(), watcher::Config::default()).for_each(move |ev| {
            let sink = sink.clone();
            async move {
                let s = match ev {
                    Ok(watcher::Event::Apply(c)) => Seen::Apply(c.name_any(), rv(&c)),
                    Ok(watcher::Event::Delete(c)) => Seen::Delete(c.name_any()),
                    Ok(watcher::Event::Init) => Seen::Init,
                    Ok(watcher::Event::InitApply(c)) => Seen::InitApply(c.name_any(), rv(&c)),
                    Ok(watcher::Event::InitDone) => Seen::InitDone,
                    // kube-runtime surfaces the 410 once, then relists on the next poll.
                    Err(watcher::Error::WatchError(s)) => Seen::Error(s.code),
                    Err(e) => panic!("watcher error: {e}"),
                };
                sink.lock().unwrap().push(s);
            }
        }),
    );
    let snapshot = || seen.lock().unwrap().clone();
    eventually(5, "initial list", || async {
        snapshot().contains(&Seen::InitDone).then_some(())
    })
    .await;

    let a1 = cms
        .create(&PostParams::default(), &cm("a", "1"))
        .await
        .unwrap();
    eventually(5, "a created", || async {
        snapshot()
            .contains(&Seen::Apply("a".into(), rv(&a1)))
            .then_some(())
    })
    .await;

    // 1. Dropped watch: the watcher resumes from its resourceVersion; nothing is lost
    //    or delivered twice.
    emu.faults().drop_watches();
    let a2 = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"v": "2"}})),
        )
        .await
        .unwrap();
    let b1 = cms
        .create(&PostParams::default(), &cm("b", "1"))
        .await
        .unwrap();
    eventually(5, "changes after drop", || async {
        snapshot()
            .contains(&Seen::Apply("b".into(), rv(&b1)))
            .then_some(())
    })
    .await;
    let applies: Vec<Seen> = snapshot()
        .into_iter()
        .filter(|s| matches!(s, Seen::Apply(..)))
        .collect();
    assert_eq!(
        applies,
        vec![
            Seen::Apply("a".into(), rv(&a1)),
            Seen::Apply("a".into(), rv(&a2)),
            Seen::Apply("b".into(), rv(&b1))
        ],
        "each change exactly once, in order"
    );
    assert_eq!(
        snapshot().iter().filter(|s| **s == Seen::Init).count(),
        1,
        "no relist after a clean drop"
    );

    // 2. Disconnected while the log is compacted past its resourceVersion: 410 → relist.
    emu.faults().hold_watches(true);
    emu.faults().drop_watches();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b2 = cms
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"v": "2"}})),
        )
        .await
        .unwrap();
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    let c1 = cms
        .create(&PostParams::default(), &cm("c", "1"))
        .await
        .unwrap();
    emu.compact();
    emu.faults().hold_watches(false);
    eventually(10, "relist after 410", || async {
        (snapshot().iter().filter(|s| **s == Seen::InitDone).count() == 2).then_some(())
    })
    .await;
    let all = snapshot();
    let second_init = all.iter().rposition(|s| *s == Seen::Init).unwrap();
    let relisted: Vec<Seen> = all[second_init..]
        .iter()
        .filter(|s| matches!(s, Seen::InitApply(..)))
        .cloned()
        .collect();
    assert_eq!(
        relisted,
        vec![
            Seen::InitApply("b".into(), rv(&b2)),
            Seen::InitApply("c".into(), rv(&c1))
        ]
    );
    assert!(
        all.contains(&Seen::Error(410)),
        "the watcher saw the 410: {all:?}"
    );

    // And the watch continues after the relist.
    let d1 = cms
        .create(&PostParams::default(), &cm("d", "1"))
        .await
        .unwrap();
    eventually(5, "d after relist", || async {
        snapshot()
            .contains(&Seen::Apply("d".into(), rv(&d1)))
            .then_some(())
    })
    .await;
    task.abort();
}

struct Ctx {
    client: kube::Client,
    recorder: Recorder,
    cleanups: AtomicUsize,
    reconciles: AtomicUsize,
}

#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

const FINALIZER: &str = "test.tally.dev/cleanup";

async fn reconcile(
    w: Arc<Widget>,
    ctx: Arc<Ctx>,
) -> Result<Action, kube::runtime::finalizer::Error<ReconcileError>> {
    ctx.reconciles.fetch_add(1, Ordering::SeqCst);
    let widgets: Api<Widget> = Api::namespaced(ctx.client.clone(), "default");
    let c = ctx.clone();
    finalizer(&widgets, FINALIZER, w, |event| async move {
        match event {
            Finalizer::Apply(w) => apply(&w, &c).await,
            Finalizer::Cleanup(_) => {
                c.cleanups.fetch_add(1, Ordering::SeqCst);
                Ok(Action::await_change())
            }
        }
    })
    .await
}

async fn apply(w: &Widget, ctx: &Ctx) -> Result<Action, ReconcileError> {
    let name = w.name_any();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), "default");
    let widgets: Api<Widget> = Api::namespaced(ctx.client.clone(), "default");
    let owner = w.controller_owner_ref(&()).unwrap();
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": format!("{name}-job"), "ownerReferences": [owner]},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "main", "image": "none", "command": ["sh", "-c", "sleep 0.3"]}
        ]}}}
    });
    let job = jobs
        .patch(
            &format!("{name}-job"),
            &PatchParams::apply("widget-controller").force(),
            &Patch::Apply(job),
        )
        .await?;
    let complete = job
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Complete" && c.status == "True");
    let status = json!({
        "apiVersion": "test.tally.dev/v1", "kind": "Widget",
        "status": {"phase": if complete { "Complete" } else { "Running" }, "observedGeneration": w.metadata.generation}
    });
    widgets
        .patch_status(
            &name,
            &PatchParams::apply("widget-controller").force(),
            &Patch::Apply(status),
        )
        .await?;
    ctx.recorder
        .publish(
            &Event {
                type_: EventType::Normal,
                reason: "Reconciled".into(),
                note: Some(format!("generation {:?}", w.metadata.generation)),
                action: "Reconcile".into(),
                secondary: None,
            },
            &w.object_ref(&()),
        )
        .await?;
    Ok(Action::await_change())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_owns_jobs_with_finalizer_and_recorder() {
    let (emu, client) = start_with_widgets().await;
    let widgets: Api<Widget> = Api::namespaced(client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "widget-controller".into(),
                instance: None,
            },
        ),
        cleanups: AtomicUsize::new(0),
        reconciles: AtomicUsize::new(0),
    });
    let controller = Controller::new(widgets.clone(), watcher::Config::default())
        .owns(jobs.clone(), watcher::Config::default())
        .run(
            reconcile,
            |_, _, _| Action::requeue(Duration::from_secs(1)),
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                eprintln!("reconcile error: {e:?}");
            }
        });
    let handle = tokio::spawn(controller);

    widgets
        .create(&PostParams::default(), &widget("w", 2))
        .await
        .unwrap();
    // Job completion reaches the controller only through `owns` (no requeue timer).
    let done = eventually(20, "widget Complete", || async {
        let w = widgets.get("w").await.unwrap();
        (w.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Complete")).then_some(w)
    })
    .await;
    assert_eq!(done.status.unwrap().observed_generation, Some(1));
    assert!(
        done.metadata
            .finalizers
            .unwrap()
            .contains(&FINALIZER.to_string())
    );
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), "default");
    let evs = events.list(&ListParams::default()).await.unwrap();
    assert!(
        evs.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Reconciled")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("w"))
    );

    // A spec change made while the controller is disconnected and the log compacted
    // (410 on reconnect) is still reconciled.
    emu.faults().hold_watches(true);
    emu.faults().drop_watches();
    tokio::time::sleep(Duration::from_millis(100)).await;
    widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 5}})),
        )
        .await
        .unwrap();
    emu.compact();
    emu.faults().hold_watches(false);
    eventually(20, "generation 2 observed", || async {
        let w = widgets.get("w").await.unwrap();
        (w.status.and_then(|s| s.observed_generation) == Some(2)).then_some(())
    })
    .await;

    // Deleting runs the finalizer cleanup; the Job is garbage-collected.
    widgets.delete("w", &DeleteParams::default()).await.unwrap();
    eventually(20, "widget gone", || async {
        widgets.get_opt("w").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(ctx.cleanups.load(Ordering::SeqCst) >= 1);
    eventually(20, "job collected", || async {
        jobs.get_opt("w-job").await.unwrap().is_none().then_some(())
    })
    .await;
    handle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_watcher_and_streaming_lists() {
    let emu = kube_emulator::Emulator::start().await.unwrap();
    let client = client(&emu).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("before", "1"))
        .await
        .unwrap();

    // Api<PartialObjectMeta<K>> asks for PartialObjectMetadata lists and watch events.
    let metas: Api<kube::core::PartialObjectMeta<ConfigMap>> =
        Api::namespaced(client.clone(), "default");
    let meta_seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = meta_seen.clone();
    let meta_task = tokio::spawn(
        watcher(metas, watcher::Config::default()).for_each(move |ev| {
            let sink = sink.clone();
            async move {
                if let Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) = ev {
                    assert_eq!(
                        m.types.as_ref().map(|t| t.kind.as_str()),
                        Some("PartialObjectMetadata")
                    );
                    sink.lock().unwrap().push(m.name_any());
                }
            }
        }),
    );
    // Streaming lists: sendInitialEvents=true, ended by the initial-events-end bookmark.
    let stream_seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = stream_seen.clone();
    let stream_task = tokio::spawn(
        watcher(cms.clone(), watcher::Config::default().streaming_lists()).for_each(move |ev| {
            let sink = sink.clone();
            async move {
                match ev {
                    Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => {
                        sink.lock().unwrap().push(c.name_any())
                    }
                    Ok(watcher::Event::InitDone) => sink.lock().unwrap().push("<init-done>".into()),
                    _ => {}
                }
            }
        }),
    );
    eventually(5, "initial state in both", || async {
        (meta_seen.lock().unwrap().contains(&"before".to_string())
            && stream_seen
                .lock()
                .unwrap()
                .contains(&"<init-done>".to_string()))
        .then_some(())
    })
    .await;
    cms.create(&PostParams::default(), &cm("after", "1"))
        .await
        .unwrap();
    eventually(5, "live event in both", || async {
        (meta_seen.lock().unwrap().contains(&"after".to_string())
            && stream_seen.lock().unwrap().contains(&"after".to_string()))
        .then_some(())
    })
    .await;
    assert_eq!(
        *stream_seen.lock().unwrap(),
        vec!["before".to_string(), "<init-done>".into(), "after".into()]
    );
    meta_task.abort();
    stream_task.abort();
}
