//! CRD structural schemas: pruning, defaulting, type validation and CEL rules.

mod common;

use common::*;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;

fn widgets_dyn(client: kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("test.tally.dev", "v1", "Widget"),
        "widgets",
    );
    Api::namespaced_with(client, "default", &ar)
}

fn obj(v: serde_json::Value) -> DynamicObject {
    serde_json::from_value(v).unwrap()
}

fn err(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.message),
        other => panic!("expected API error, got {other:?}"),
    }
}

#[tokio::test]
async fn prunes_defaults_and_validates_types() {
    let (_emu, client) = start_with_widgets().await;
    let api = widgets_dyn(client);
    let created = api
        .create(
            &PostParams::default(),
            &obj(json!({
                "apiVersion": "test.tally.dev/v1", "kind": "Widget", "metadata": {"name": "a"},
                "spec": {"color": "blue", "unknown": 1, "extra": {"anything": {"goes": true}}}
            })),
        )
        .await
        .unwrap();
    assert_eq!(
        created.data["spec"],
        json!({"color": "blue", "size": 1, "extra": {"anything": {"goes": true}}}),
        "pruned and defaulted"
    );

    let (code, msg) = err(api
        .create(&PostParams::default(), &obj(json!({"apiVersion": "test.tally.dev/v1", "kind": "Widget", "metadata": {"name": "b"}, "spec": {"size": "big"}})))
        .await
        .unwrap_err());
    assert_eq!(code, 422);
    assert!(
        msg.contains("spec.size") && msg.contains("must be of type integer"),
        "{msg}"
    );

    let (code, msg) = err(api
        .create(&PostParams::default(), &obj(json!({"apiVersion": "test.tally.dev/v1", "kind": "Widget", "metadata": {"name": "c"}, "spec": {"color": "green"}})))
        .await
        .unwrap_err());
    assert_eq!(code, 422);
    assert!(msg.contains("Unsupported value: \"green\""), "{msg}");

    // fieldValidation=Strict rejects unknown fields instead of pruning them.
    let strict = PatchParams {
        field_validation: Some(kube::api::ValidationDirective::Strict),
        ..Default::default()
    };
    let (code, msg) = err(api
        .patch("a", &strict, &Patch::Merge(json!({"spec": {"bogus": 1}})))
        .await
        .unwrap_err());
    assert_eq!(code, 400);
    assert!(msg.contains("unknown field \"spec.bogus\""), "{msg}");
}

#[tokio::test]
async fn cel_rules_with_old_self() {
    let (_emu, client) = start_with_widgets().await;
    let api = widgets_dyn(client);
    let (code, msg) = err(api
        .create(&PostParams::default(), &obj(json!({"apiVersion": "test.tally.dev/v1", "kind": "Widget", "metadata": {"name": "big"}, "spec": {"size": 11}})))
        .await
        .unwrap_err());
    assert_eq!(code, 422);
    assert_eq!(
        msg,
        "Widget.test.tally.dev \"big\" is invalid: spec: Invalid value: \"object\": size must be at most 10"
    );

    api.create(&PostParams::default(), &obj(json!({"apiVersion": "test.tally.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1, "color": "red"}})))
        .await
        .unwrap();
    // Transition rule: oldSelf is bound on update.
    let (code, msg) = err(api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"color": "blue"}})),
        )
        .await
        .unwrap_err());
    assert_eq!(code, 422);
    assert!(msg.contains("color is immutable"), "{msg}");
    let ok = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 10}})),
        )
        .await
        .unwrap();
    assert_eq!(ok.data["spec"]["size"], 10);
}

#[tokio::test]
async fn crd_versions_and_cluster_scope() {
    let (emu, client) = start_with_widgets().await;
    emu.apply_yaml(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.test.tally.dev}
spec:
  group: test.tally.dev
  scope: Cluster
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - {name: v1beta1, served: true, storage: false, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}
  - {name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object, properties: {spec: {type: object, properties: {n: {type: integer}}}}}}}
"#,
    )
    .unwrap();
    let gvk = |v: &str| {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("test.tally.dev", v, "Gadget"),
            "gadgets",
        )
    };
    let v1: Api<DynamicObject> = Api::all_with(client.clone(), &gvk("v1"));
    let beta: Api<DynamicObject> = Api::all_with(client, &gvk("v1beta1"));
    v1.create(&PostParams::default(), &obj(json!({"apiVersion": "test.tally.dev/v1", "kind": "Gadget", "metadata": {"name": "g"}, "spec": {"n": 1}})))
        .await
        .unwrap();
    let via_beta = beta.get("g").await.unwrap();
    assert_eq!(
        via_beta.types.unwrap().api_version,
        "test.tally.dev/v1beta1"
    );
    assert_eq!(via_beta.metadata.namespace, None);
}

#[tokio::test]
async fn tally_crds_apply() {
    let crds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    assert!(crds.is_dir(), "{} is missing", crds.display());
    let emu = kube_emulator::Emulator::start().await.unwrap();
    let applied = emu.apply_path(&crds).unwrap();
    assert!(!applied.is_empty());
    let registry = emu.store().registry();
    for crd in applied {
        let group = crd["spec"]["group"].as_str().unwrap();
        let plural = crd["spec"]["names"]["plural"].as_str().unwrap();
        assert!(
            registry.get(group, plural).is_some(),
            "{plural}.{group} served"
        );
        assert_eq!(crd["status"]["conditions"][1]["type"], "Established");
    }
}
