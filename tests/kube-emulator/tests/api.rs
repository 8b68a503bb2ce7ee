//! Storage, errors, list/watch, patches and deletion through kube-rs' `Api`.

mod common;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::ObjectMeta;
use kube_emulator::{Emulator, Fault};
use serde_json::json;
use std::collections::BTreeMap;

struct E {
    code: u16,
    reason: String,
    message: String,
}

fn api_error(e: kube::Error) -> E {
    match e {
        kube::Error::Api(s) => E {
            code: s.code,
            reason: s.reason,
            message: s.message,
        },
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The resource version a watch started now begins after.
async fn list_version(cms: &Api<ConfigMap>) -> String {
    cms.list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
}

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

#[tokio::test]
async fn crud_metadata_and_errors() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let a = cms
        .create(&PostParams::default(), &cm("a", &[("k", "1")]))
        .await
        .unwrap();
    let uid = a.metadata.uid.clone().unwrap();
    assert!(a.metadata.creation_timestamp.is_some());
    let rv1: u64 = a
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();

    let b = cms
        .create(&PostParams::default(), &cm("b", &[]))
        .await
        .unwrap();
    let rv2: u64 = b
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1, "one global resourceVersion counter");

    let dup = api_error(
        cms.create(&PostParams::default(), &cm("a", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!((dup.code, dup.reason.as_str()), (409, "AlreadyExists"));

    let missing = api_error(cms.get("nope").await.unwrap_err());
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(missing.message, "configmaps \"nope\" not found");

    // Stale resourceVersion → 409 Conflict.
    let mut stale = a.clone();
    stale.data = Some(BTreeMap::from([("k".into(), "2".into())]));
    let updated = cms
        .replace("a", &PostParams::default(), &stale)
        .await
        .unwrap();
    assert_eq!(updated.metadata.uid.as_deref(), Some(uid.as_str()));
    let conflict = api_error(
        cms.replace("a", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));

    // A no-op write keeps the resourceVersion.
    let same = cms
        .replace("a", &PostParams::default(), &updated)
        .await
        .unwrap();
    assert_eq!(
        same.metadata.resource_version,
        updated.metadata.resource_version
    );

    // Namespaces must exist; generateName works.
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "missing-ns");
    let e = api_error(
        other
            .create(&PostParams::default(), &cm("x", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404);
    let mut gen_cm = cm("", &[]);
    gen_cm.metadata.name = None;
    gen_cm.metadata.generate_name = Some("gen-".into());
    let g = cms.create(&PostParams::default(), &gen_cm).await.unwrap();
    assert!(g.metadata.name.unwrap().starts_with("gen-"));

    // Secrets fold stringData into data.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let s = secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "s"}, "stringData": {"password": "hunter2"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(s.data.unwrap()["password"].0, b"hunter2");

    let nss: Api<Namespace> = Api::all(client);
    let ns = nss.get("default").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Active"));
}

#[tokio::test]
async fn generation_and_status_subresource() {
    let (_emu, client) = start_with_widgets().await;
    let widgets: Api<Widget> = Api::namespaced(client, "default");
    let mut w = widget("w", 2);
    w.status = Some(WidgetStatus {
        phase: Some("ignored".into()),
        observed_generation: None,
    });
    let created = widgets.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(
        created.status, None,
        "status is dropped on create when /status exists"
    );

    // Metadata changes do not bump generation; spec changes do.
    let labelled = widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(1));
    let bumped = widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(bumped.metadata.generation, Some(2));

    // The main endpoint never changes status; /status changes only status.
    let ignored = widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "X"}})),
        )
        .await
        .unwrap();
    assert_eq!(ignored.status, None);
    let st = widgets
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"size": 9}, "status": {"phase": "Ready", "observedGeneration": 2}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(st.status.unwrap().phase.as_deref(), Some("Ready"));
    assert_eq!(st.spec.size, Some(3));
    assert_eq!(st.metadata.generation, Some(2));
}

#[tokio::test]
async fn pagination_and_selectors() {
    let emu = Emulator::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client(&emu).await, "default");
    for i in 0..7 {
        let mut c = cm(&format!("c{i}"), &[]);
        c.metadata.labels = Some(BTreeMap::from([(
            "parity".into(),
            if i % 2 == 0 { "even" } else { "odd" }.into(),
        )]));
        cms.create(&PostParams::default(), &c).await.unwrap();
    }
    let first = cms.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(first.items.len(), 3);
    let token = first.metadata.continue_.clone().expect("continue token");
    assert_eq!(first.metadata.remaining_item_count, Some(4));
    // A write between pages does not leak into the pinned snapshot.
    cms.create(&PostParams::default(), &cm("c99", &[]))
        .await
        .unwrap();
    let second = cms
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    let third = cms
        .list(
            &ListParams::default()
                .limit(3)
                .continue_token(second.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(third.metadata.continue_, None);
    let names: Vec<String> = first
        .items
        .iter()
        .chain(&second.items)
        .chain(&third.items)
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, (0..7).map(|i| format!("c{i}")).collect::<Vec<_>>());
    assert_eq!(
        first.metadata.resource_version,
        third.metadata.resource_version
    );

    let even = cms
        .list(&ListParams::default().labels("parity=even"))
        .await
        .unwrap();
    assert_eq!(even.items.len(), 4);
    let one = cms
        .list(&ListParams::default().fields("metadata.name=c3"))
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);
    let set = cms
        .list(&ListParams::default().labels("parity in (odd),!missing"))
        .await
        .unwrap();
    assert_eq!(set.items.len(), 3);

    // Compaction expires continue tokens with 410.
    let page = cms.list(&ListParams::default().limit(2)).await.unwrap();
    emu.compact();
    let e = api_error(
        cms.list(
            &ListParams::default()
                .limit(2)
                .continue_token(page.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 410);
}

#[tokio::test]
async fn watch_events_bookmarks_and_expiry() {
    let emu = Emulator::builder()
        .bookmark_interval(std::time::Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client(&emu).await, "default");
    let list = cms.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();

    let mut stream = cms
        .watch(&WatchParams::default().timeout(2), &rv)
        .await
        .unwrap()
        .boxed();
    let created = cms
        .create(&PostParams::default(), &cm("w", &[("a", "1")]))
        .await
        .unwrap();
    cms.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "2"}})),
    )
    .await
    .unwrap();
    cms.delete("w", &DeleteParams::default()).await.unwrap();

    let mut seen = Vec::new();
    let mut bookmarks = 0;
    while let Some(ev) = stream.try_next().await.unwrap() {
        match ev {
            WatchEvent::Added(c) => seen.push(("ADDED", c.metadata.resource_version.unwrap())),
            WatchEvent::Modified(c) => {
                seen.push(("MODIFIED", c.metadata.resource_version.unwrap()))
            }
            WatchEvent::Deleted(c) => seen.push(("DELETED", c.metadata.resource_version.unwrap())),
            WatchEvent::Bookmark(_) => bookmarks += 1,
            WatchEvent::Error(e) => panic!("unexpected error {e:?}"),
        }
    }
    // The stream ended by itself at timeoutSeconds.
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec!["ADDED", "MODIFIED", "DELETED"]
    );
    assert_eq!(seen[0].1, created.metadata.resource_version.unwrap());
    assert!(bookmarks >= 2, "bookmarks: {bookmarks}");

    // A resourceVersion older than the compacted log → 200 + in-stream 410 Expired.
    emu.compact();
    let mut expired = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match expired.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn a_watch_that_falls_behind_catches_up_from_the_log() {
    let emu = Emulator::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client(&emu).await, "default");
    let rv = list_version(&cms).await;
    // Not read while the objects are written: the server side of the watch falls
    // further behind the live events than its buffer holds.
    let mut stream = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let total = 20_000;
    let padding = "x".repeat(2048);
    let target = kube_emulator::store::Target {
        res: kube_emulator::resources::ResKey::new("", "configmaps"),
        version: "v1".into(),
        namespace: Some("default".into()),
    };
    for i in 0..total {
        let obj = json!({"metadata": {"name": format!("cm-{i}")}, "data": {"padding": padding}});
        emu.store()
            .with(|s| s.create(&target, obj, &Default::default()))
            .unwrap();
    }
    for i in 0..total {
        match stream.try_next().await.unwrap() {
            Some(WatchEvent::Added(c)) => {
                assert_eq!(c.metadata.name.unwrap(), format!("cm-{i}"));
            }
            other => panic!("event {i}: expected ADDED, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn watch_selector_transitions() {
    let emu = Emulator::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client(&emu).await, "default");
    let rv = list_version(&cms).await;
    let mut stream = cms
        .watch(&WatchParams::default().labels("pick=yes").timeout(1), &rv)
        .await
        .unwrap()
        .boxed();
    cms.create(&PostParams::default(), &cm("x", &[]))
        .await
        .unwrap();
    cms.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"pick": "yes"}}})),
    )
    .await
    .unwrap();
    cms.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"pick": "no"}}})),
    )
    .await
    .unwrap();
    let mut kinds = Vec::new();
    while let Some(ev) = stream.try_next().await.unwrap() {
        kinds.push(match ev {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
            _ => continue,
        });
    }
    assert_eq!(kinds, vec!["ADDED", "DELETED"]);
}

#[tokio::test]
async fn patch_types() {
    let (_emu, client) = start_with_widgets().await;
    let widgets: Api<Widget> = Api::namespaced(client.clone(), "default");
    widgets
        .create(&PostParams::default(), &widget("p", 1))
        .await
        .unwrap();

    // JSON Patch with a failing test → 422; passing test applies.
    let bad: json_patch::Patch = serde_json::from_value(json!([{"op": "test", "path": "/spec/size", "value": 5}, {"op": "replace", "path": "/spec/size", "value": 2}])).unwrap();
    let e = api_error(
        widgets
            .patch("p", &PatchParams::default(), &Patch::Json::<()>(bad))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 422);
    let good: json_patch::Patch = serde_json::from_value(json!([{"op": "test", "path": "/spec/size", "value": 1}, {"op": "replace", "path": "/spec/size", "value": 2}])).unwrap();
    assert_eq!(
        widgets
            .patch("p", &PatchParams::default(), &Patch::Json::<()>(good))
            .await
            .unwrap()
            .spec
            .size,
        Some(2)
    );

    // Strategic merge on a built-in merges containers by name.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "pp"}, "spec": {"containers": [{"name": "a", "image": "none", "command": ["true"]}], "nodeName": "elsewhere"}})).unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let patched = pods
        .patch(
            "pp",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"containers": [{"name": "a", "image": "other"}]}})),
        )
        .await
        .unwrap();
    let c = &patched.spec.unwrap().containers[0];
    assert_eq!(
        (c.image.as_deref(), c.command.clone()),
        (Some("other"), Some(vec!["true".to_string()]))
    );

    // Server-side apply: creates, records managedFields, removes fields it stops applying,
    // and reports conflicts between managers unless forced.
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let ssa = PatchParams::apply("tester");
    let applied = cms
        .patch(
            "ssa",
            &ssa,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "1", "b": "2"}}),
            ),
        )
        .await
        .unwrap();
    let mf = applied.metadata.managed_fields.unwrap();
    assert_eq!(mf[0].manager.as_deref(), Some("tester"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    let shrunk = cms
        .patch(
            "ssa",
            &ssa,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        shrunk.data.unwrap(),
        BTreeMap::from([("a".into(), "1".into())])
    );
    let e = api_error(
        cms.patch(
            "ssa",
            &PatchParams::apply("other"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "9"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    let forced = cms
        .patch(
            "ssa",
            &PatchParams::apply("other").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "9"}})),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["a"], "9");
    // fieldManager is required for apply.
    let e = api_error(
        cms.patch(
            "ssa",
            &PatchParams::default(),
            &Patch::Apply(json!({"data": {}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 400);
}

#[tokio::test]
async fn finalizers_and_propagation() {
    let (_emu, client) = start_with_widgets().await;
    let widgets: Api<Widget> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let mut w = widget("owner", 1);
    w.metadata.finalizers = Some(vec!["test/hold".into()]);
    let owner = widgets.create(&PostParams::default(), &w).await.unwrap();
    let oref = json!([{"apiVersion": "test.tally.dev/v1", "kind": "Widget", "name": "owner", "uid": owner.metadata.uid, "blockOwnerDeletion": true}]);
    let mut dep = cm("dep", &[]);
    dep.metadata.owner_references = Some(serde_json::from_value(oref.clone()).unwrap());
    cms.create(&PostParams::default(), &dep).await.unwrap();

    // Finalizer keeps the object; no new finalizers once deleting.
    widgets
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    let held = widgets.get("owner").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    let e = api_error(
        widgets
            .patch(
                "owner",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": ["test/hold", "test/new"]}})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 422);
    widgets
        .patch(
            "owner",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    assert_eq!(api_error(widgets.get("owner").await.unwrap_err()).code, 404);
    // Background GC removes the dependent whose owner is gone.
    eventually(5, "dependent collected", || async {
        cms.get_opt("dep").await.unwrap().is_none().then_some(())
    })
    .await;

    // Foreground: the owner waits for blocking dependents.
    let owner = widgets
        .create(&PostParams::default(), &widget("fg", 1))
        .await
        .unwrap();
    let mut dep = cm("fg-dep", &[]);
    dep.metadata.owner_references = Some(serde_json::from_value(json!([{"apiVersion": "test.tally.dev/v1", "kind": "Widget", "name": "fg", "uid": owner.metadata.uid, "blockOwnerDeletion": true}])).unwrap());
    dep.metadata.finalizers = Some(vec!["test/slow".into()]);
    cms.create(&PostParams::default(), &dep).await.unwrap();
    widgets
        .delete("fg", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually(5, "dependent marked", || async {
        cms.get("fg-dep")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .map(|_| ())
    })
    .await;
    let fg = widgets.get("fg").await.unwrap();
    assert!(
        fg.metadata
            .finalizers
            .unwrap()
            .contains(&"foregroundDeletion".to_string())
    );
    cms.patch(
        "fg-dep",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually(5, "owner gone", || async {
        widgets.get_opt("fg").await.unwrap().is_none().then_some(())
    })
    .await;

    // Orphan: the dependent stays and loses its ownerReference.
    let owner = widgets
        .create(&PostParams::default(), &widget("or", 1))
        .await
        .unwrap();
    let mut dep = cm("or-dep", &[]);
    dep.metadata.owner_references = Some(serde_json::from_value(json!([{"apiVersion": "test.tally.dev/v1", "kind": "Widget", "name": "or", "uid": owner.metadata.uid}])).unwrap());
    cms.create(&PostParams::default(), &dep).await.unwrap();
    widgets.delete("or", &DeleteParams::orphan()).await.unwrap();
    eventually(5, "owner gone", || async {
        widgets.get_opt("or").await.unwrap().is_none().then_some(())
    })
    .await;
    let orphan = cms.get("or-dep").await.unwrap();
    assert!(
        orphan
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
}

#[tokio::test]
async fn fault_injection() {
    let emu = Emulator::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client(&emu).await, "default");
    emu.faults().fail_next(
        "/api/v1/namespaces/default/configmaps",
        2,
        Fault::Status(500),
    );
    assert_eq!(
        api_error(cms.list(&ListParams::default()).await.unwrap_err()).code,
        500
    );
    emu.faults().fail_next_method(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        1,
        Fault::Status(409),
    );
    assert_eq!(
        api_error(
            cms.create(&PostParams::default(), &cm("f", &[]))
                .await
                .unwrap_err()
        )
        .code,
        409
    );
    // The 500 rule had one request left.
    assert_eq!(api_error(cms.get("f").await.unwrap_err()).code, 500);
    cms.create(&PostParams::default(), &cm("f", &[]))
        .await
        .unwrap();
    emu.faults()
        .fail_next("/api/v1/namespaces/default/configmaps/f", 1, Fault::Drop);
    assert!(matches!(cms.get("f").await, Err(e) if !matches!(e, kube::Error::Api(_))));
    assert!(cms.get("f").await.is_ok());
}

#[tokio::test]
async fn several_instances_are_independent() {
    let a = Emulator::start().await.unwrap();
    let b = Emulator::start().await.unwrap();
    assert_ne!(a.port(), b.port());
    let ca: Api<ConfigMap> = Api::namespaced(client(&a).await, "default");
    let cb: Api<ConfigMap> = Api::namespaced(client(&b).await, "default");
    ca.create(&PostParams::default(), &cm("only-a", &[]))
        .await
        .unwrap();
    assert!(cb.get_opt("only-a").await.unwrap().is_none());
    a.shutdown().await;
    assert!(cb.list(&ListParams::default()).await.is_ok());
}

#[tokio::test]
async fn namespace_deletion_removes_contents() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu).await;
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "scratch"}})).unwrap(),
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "scratch");
    cms.create(&PostParams::default(), &cm("inside", &[]))
        .await
        .unwrap();
    let mut held = cm("held", &[]);
    held.metadata.finalizers = Some(vec!["test/hold".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();

    nss.delete("scratch", &DeleteParams::default())
        .await
        .unwrap();
    let terminating = nss.get("scratch").await.unwrap();
    assert_eq!(
        terminating.status.unwrap().phase.as_deref(),
        Some("Terminating")
    );
    // No new content in a terminating namespace.
    assert_eq!(
        api_error(
            cms.create(&PostParams::default(), &cm("late", &[]))
                .await
                .unwrap_err()
        )
        .code,
        403
    );
    eventually(5, "content deleted", || async {
        cms.get_opt("inside").await.unwrap().is_none().then_some(())
    })
    .await;
    // The namespace waits for the finalizer on its content.
    assert!(nss.get_opt("scratch").await.unwrap().is_some());
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually(5, "namespace gone", || async {
        nss.get_opt("scratch")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn builtin_validation_and_immutable_fields() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu).await;
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), "default");
    let bad: k8s_openapi::api::batch::v1::Job = serde_json::from_value(json!({"metadata": {"name": "j"}, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}})).unwrap();
    let e = api_error(jobs.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!(e.code, 422);
    assert!(
        e.message.contains("spec.template.spec.restartPolicy"),
        "{}",
        e.message
    );

    let job: k8s_openapi::api::batch::v1::Job = serde_json::from_value(json!({"metadata": {"name": "j"}, "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x", "command": ["true"]}]}}}})).unwrap();
    jobs.create(&PostParams::default(), &job).await.unwrap();
    // A suspended Job that never started may change its template ...
    jobs.patch(
        "j",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"metadata": {"labels": {"x": "y"}}}}})),
    )
    .await
    .unwrap();
    // ... but the selector is immutable, and so is the template once started.
    let e = api_error(
        jobs.patch(
            "j",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"selector": {"matchLabels": {"a": "b"}}}})),
        )
        .await
        .unwrap_err(),
    );
    assert!(
        e.code == 422
            && e.message
                .contains("spec.selector: Invalid value: \"object\": field is immutable"),
        "{}",
        e.message
    );
    jobs.patch(
        "j",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .unwrap();
    eventually(5, "job started", || async {
        jobs.get("j")
            .await
            .unwrap()
            .status
            .and_then(|s| s.start_time)
            .map(|_| ())
    })
    .await;
    let e = api_error(
        jobs.patch(
            "j",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"labels": {"x": "z"}}}}})),
        )
        .await
        .unwrap_err(),
    );
    assert!(e.message.contains("spec.template"), "{}", e.message);

    // Pod spec: only images (and a few fields) may change.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"nodeName": "elsewhere", "containers": [{"name": "a", "image": "i1", "command": ["true"]}]}})).unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.patch(
        "p",
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"containers": [{"name": "a", "image": "i2"}]}})),
    )
    .await
    .unwrap();
    let e = api_error(
        pods.patch(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"spec": {"containers": [{"name": "a", "command": ["false"]}]}}),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert!(
        e.code == 422 && e.message.contains("pod updates may not change fields"),
        "{}",
        e.message
    );

    // An events.k8s.io Event may only count up its series.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "default");
    let event: k8s_openapi::api::events::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": "e"},
        "eventTime": "2026-11-23T00:00:00.000000Z",
        "action": "Reconcile", "reason": "Started", "note": "first", "type": "Normal",
        "reportingController": "c", "reportingInstance": "c-1",
        "regarding": {"kind": "Pod", "name": "p", "namespace": "default"}
    }))
    .unwrap();
    events.create(&PostParams::default(), &event).await.unwrap();
    let series = json!({"series": {"count": 2, "lastObservedTime": "2026-11-23T00:01:00.000000Z"}});
    events
        .patch("e", &PatchParams::default(), &Patch::Merge(series))
        .await
        .unwrap();
    let e = api_error(
        events
            .patch(
                "e",
                &PatchParams::default(),
                &Patch::Merge(json!({"note": "second"})),
            )
            .await
            .unwrap_err(),
    );
    assert!(
        e.code == 422 && e.message.contains("note: Invalid value"),
        "{}",
        e.message
    );

    // Immutable ConfigMaps.
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut c = cm("frozen", &[("a", "1")]);
    c.immutable = Some(true);
    cms.create(&PostParams::default(), &c).await.unwrap();
    let e = api_error(
        cms.patch(
            "frozen",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": "2"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 422);
}
