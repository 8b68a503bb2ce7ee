//! Object storage with Kubernetes write semantics: one global resourceVersion counter,
//! uid/creationTimestamp/generation bookkeeping, optimistic concurrency, status
//! subresource isolation, finalizers and a bounded event log for watches.

use crate::defaults;
use crate::error::{ApiError, ApiResult, Subject};
use crate::patch::{self, PatchType};
use crate::resources::{Registry, ResKey, ResourceDef, crd_status};
use crate::schema;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::validation;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

/// RFC 3339 with second precision, as Kubernetes serialises `metav1.Time`.
pub fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change. `old` lets selector-filtered watches turn a MODIFIED that leaves
/// (or enters) the selection into DELETED (or ADDED), as the real watch cache does.
/// Objects are shared with the store, list snapshots and other events, never copied.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub rv: u64,
    pub kind: EventType,
    pub res: ResKey,
    pub object: Arc<Value>,
    pub old: Option<Arc<Value>>,
}

/// What a controller learns from the store's events between two of its syncs.
#[derive(Debug, Default)]
pub struct Changes {
    /// Events were lost (the receiver lagged) or none were seen yet: look at everything.
    pub everything: bool,
    pub events: Vec<Arc<WatchEvent>>,
}

impl Changes {
    pub fn everything() -> Changes {
        Changes {
            everything: true,
            events: Vec::new(),
        }
    }

    /// `first` (what `recv` returned) and every event already queued behind it, so one
    /// sync answers a burst of changes. `None` once the store is gone.
    pub fn collect(
        first: Result<Arc<WatchEvent>, broadcast::error::RecvError>,
        rx: &mut broadcast::Receiver<Arc<WatchEvent>>,
    ) -> Option<Changes> {
        use broadcast::error::{RecvError, TryRecvError};
        let mut changes = Changes::default();
        match first {
            Ok(ev) => changes.events.push(ev),
            Err(RecvError::Lagged(_)) => changes.everything = true,
            Err(RecvError::Closed) => return None,
        }
        loop {
            match rx.try_recv() {
                Ok(ev) => changes.events.push(ev),
                Err(TryRecvError::Lagged(_)) => changes.everything = true,
                Err(TryRecvError::Empty) => return Some(changes),
                Err(TryRecvError::Closed) => return None,
            }
        }
    }

    /// The events on objects of type `res`.
    pub fn of(&self, res: ResKey) -> impl Iterator<Item = &WatchEvent> + '_ {
        self.events
            .iter()
            .map(|e| &**e)
            .filter(move |e| e.res == res)
    }
}

/// Which endpoint a write came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    Main,
    Status,
}

/// A resource collection as addressed by a URL: type, the version asked for, namespace.
#[derive(Debug, Clone)]
pub struct Target {
    pub res: ResKey,
    pub version: String,
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    pub dry_run: bool,
    pub field_manager: Option<String>,
    /// fieldValidation=Strict: unknown fields are an error instead of being pruned.
    pub strict: bool,
    pub force: bool,
}

#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    pub propagation: Option<String>,
    pub grace_seconds: Option<i64>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

/// Result of a delete: gone at once, or pending on finalizers / graceful termination.
#[derive(Debug, Clone)]
pub enum Deleted {
    Gone(Value),
    Pending(Value),
}

#[derive(Debug, Clone, Default)]
pub struct ListOpts {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ListResult {
    pub items: Vec<Arc<Value>>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

/// Where an object is stored within its type: (namespace or "", name).
pub type ObjKey = (String, String);

/// The most events the watch log keeps however young they are: the upper bound of the
/// API server's watch cache for one resource.
pub const LOG_CEILING: usize = 100 * 1024;

/// An object's storage address: its type and key.
pub type ObjRef = (ResKey, ObjKey);

struct Snapshot {
    id: u64,
    rv: u64,
    items: Vec<Arc<Value>>,
}

pub struct State {
    pub rv: u64,
    pub registry: Arc<Registry>,
    objects: HashMap<ResKey, BTreeMap<ObjKey, Arc<Value>>>,
    uids: HashMap<String, ObjRef>,
    /// Dependents by owner uid (every `ownerReferences` entry), so the garbage collector
    /// and the controllers find an owner's objects without scanning the store.
    dependents: HashMap<String, BTreeSet<ObjRef>>,
    /// Objects with a `deletionTimestamp`: what the garbage collector finishes.
    deleting: BTreeSet<ObjRef>,
    /// Objects with owner references none of which exists: what the collector deletes.
    dangling: BTreeSet<ObjRef>,
    /// Committed changes, oldest first, with when they were committed.
    log: VecDeque<(std::time::Instant, Arc<WatchEvent>)>,
    /// Every event with rv greater than this is still in `log`.
    log_floor: u64,
    log_capacity: usize,
    /// Events younger than this stay in the log beyond `log_capacity` (up to
    /// `LOG_CEILING`), as the API server's watch cache keeps 75 s of history.
    log_history: std::time::Duration,
    snapshots: VecDeque<Snapshot>,
    next_snapshot: u64,
    tx: broadcast::Sender<Arc<WatchEvent>>,
}

pub struct Store {
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<WatchEvent>>,
}

/// A watch's starting point: backlog, live receiver and the rv it is current to.
pub type WatchStart = (
    Vec<Arc<WatchEvent>>,
    broadcast::Receiver<Arc<WatchEvent>>,
    u64,
);

/// Where a watch starts.
pub enum WatchFrom {
    /// Synthetic ADDED events for the current state, then changes (rv unset or "0").
    State,
    /// Changes after this resourceVersion.
    Rv(u64),
}

fn meta_str<'a>(o: &'a Value, f: &str) -> Option<&'a str> {
    o["metadata"][f].as_str()
}

fn subject(def: &ResourceDef, name: &str) -> Subject {
    Subject {
        group: def.group.clone(),
        kind: def.kind.clone(),
        plural: def.plural.clone(),
        name: name.to_string(),
    }
}

fn random_suffix() -> String {
    // The alphabet Kubernetes uses for generateName (no vowels, no confusable digits).
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| ALPHA[*b as usize % ALPHA.len()] as char)
        .collect()
}

/// DNS-1123 subdomain, the rule most kinds apply to names.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Whether two values are equal apart from the top-level fields in `skip`.
fn eq_except(a: &Value, b: &Value, skip: &[&str]) -> bool {
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => {
            let kept = |m: &serde_json::Map<String, Value>| {
                m.keys().filter(|k| !skip.contains(&k.as_str())).count()
            };
            kept(a) == kept(b)
                && a.iter()
                    .filter(|(k, _)| !skip.contains(&k.as_str()))
                    .all(|(k, v)| b.get(k) == Some(v))
        }
        _ => a == b,
    }
}

/// Kubernetes keeps core/v1 and events.k8s.io/v1 Events in one storage; here the
/// core/v1 view also shows events.k8s.io Events (what kube-rs' Recorder writes), so
/// `kubectl get events` and `kubectl describe` see them. Writes stay separate.
pub fn event_alias(res: &ResKey) -> Option<ResKey> {
    (res.group.is_empty() && res.plural == "events").then(|| ResKey::new("events.k8s.io", "events"))
}

/// events.k8s.io/v1 → core/v1 field mapping.
pub fn core_event_from(v: &Value) -> Value {
    let mut e = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": v["metadata"],
        "involvedObject": v["regarding"],
        "reason": v["reason"],
        "message": v["note"],
        "type": v["type"],
        "action": v["action"],
        "eventTime": v["eventTime"],
        "reportingComponent": v["reportingController"],
        "reportingInstance": v["reportingInstance"],
        "source": {"component": v["reportingController"]},
        "count": v["deprecatedCount"],
        "firstTimestamp": v["deprecatedFirstTimestamp"],
        "lastTimestamp": v["deprecatedLastTimestamp"],
        "related": v["related"],
    });
    if let Some(series) = v.get("series").filter(|s| s.is_object()) {
        e["series"] = series.clone();
        e["count"] = series["count"].clone();
        e["lastTimestamp"] = series["lastObservedTime"].clone();
    }
    if e["firstTimestamp"].is_null() {
        e["firstTimestamp"] = v["eventTime"].clone();
    }
    if e["lastTimestamp"].is_null() {
        e["lastTimestamp"] = v["eventTime"].clone();
    }
    if let Some(m) = e.as_object_mut() {
        m.retain(|_, x| !x.is_null());
    }
    e
}

/// The uids an object's `ownerReferences` name.
pub fn owner_uids(o: &Value) -> HashSet<String> {
    o["metadata"]["ownerReferences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["uid"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

pub fn finalizers(o: &Value) -> Vec<String> {
    o["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

impl State {
    fn def(&self, res: &ResKey) -> ApiResult<Arc<ResourceDef>> {
        self.registry
            .defs
            .get(res)
            .cloned()
            .ok_or_else(|| ApiError::page_not_found(&format!("{}.{}", res.plural, res.group)))
    }

    fn key(t: &Target, def: &ResourceDef, name: &str) -> ObjKey {
        let ns = if def.namespaced {
            t.namespace.clone().unwrap_or_default()
        } else {
            String::new()
        };
        (ns, name.to_string())
    }

    pub fn get_obj(&self, res: &ResKey, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(res)?
            .get(&(ns.to_string(), name.to_string()))
            .map(|v| &**v)
    }

    /// The stored object, shared: a snapshot that later writes do not change.
    pub fn get_shared_obj(&self, res: &ResKey, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(res)?
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Every object of a type, shared.
    pub fn all_shared(&self, res: &ResKey) -> impl Iterator<Item = &Arc<Value>> {
        self.objects.get(res).into_iter().flat_map(|m| m.values())
    }

    pub fn by_uid(&self, uid: &str) -> Option<&Value> {
        let (res, key) = self.uids.get(uid)?;
        self.objects.get(res)?.get(key).map(|v| &**v)
    }

    /// Objects whose `ownerReferences` name `owner_uid`.
    pub fn dependents_of(&self, owner_uid: &str) -> Vec<(ResKey, Arc<Value>)> {
        self.dependents
            .get(owner_uid)
            .into_iter()
            .flatten()
            .filter_map(|(r, k)| Some((r.clone(), self.objects.get(r)?.get(k)?.clone())))
            .collect()
    }

    /// Objects marked for deletion (a `deletionTimestamp`), not yet gone.
    pub fn deleting(&self) -> Vec<(ResKey, Arc<Value>)> {
        self.values_of(&self.deleting)
    }

    /// Objects with owner references, none of whose owners exists.
    pub fn dangling(&self) -> Vec<(ResKey, Arc<Value>)> {
        self.values_of(&self.dangling)
    }

    fn values_of(&self, refs: &BTreeSet<ObjRef>) -> Vec<(ResKey, Arc<Value>)> {
        refs.iter()
            .filter_map(|(r, k)| Some((r.clone(), self.objects.get(r)?.get(k)?.clone())))
            .collect()
    }

    /// Every object in namespace `ns`, of every namespaced type.
    pub fn in_namespace(&self, ns: &str) -> Vec<(ResKey, Arc<Value>)> {
        let from = (ns.to_string(), String::new());
        self.objects
            .iter()
            .flat_map(|(r, b)| {
                b.range(from.clone()..)
                    .take_while(|((n, _), _)| n == ns)
                    .map(move |(_, v)| (r.clone(), v.clone()))
            })
            .collect()
    }

    /// A target addressing `obj` through its type's preferred version.
    pub fn target_for(&self, res: &ResKey, obj: &Value) -> ApiResult<Target> {
        let def = self.def(res)?;
        Ok(Target {
            res: res.clone(),
            version: def.preferred_version().to_string(),
            namespace: meta_str(obj, "namespace").map(String::from),
        })
    }

    pub fn all(&self, res: &ResKey) -> impl Iterator<Item = &Value> {
        self.objects
            .get(res)
            .into_iter()
            .flat_map(|m| m.values().map(|v| &**v))
    }

    /// Assigns the next resourceVersion, stores (or removes) the object and publishes
    /// the change, with the stored object it replaces as `old`.
    fn commit(&mut self, res: &ResKey, key: ObjKey, mut obj: Value, kind: EventType) -> Value {
        self.rv += 1;
        let rv = self.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let obj = Arc::new(obj);
        let uid = meta_str(&obj, "uid").unwrap_or_default().to_string();
        let bucket = self.objects.entry(res.clone()).or_default();
        let old = bucket.get(&key).cloned();
        let before = old.as_deref().map(owner_uids).unwrap_or_default();
        let existed = old.is_some();
        let at: ObjRef = (res.clone(), key.clone());
        let after = if kind == EventType::Deleted {
            bucket.remove(&key);
            self.uids.remove(&uid);
            self.deleting.remove(&at);
            HashSet::new()
        } else {
            let owners = owner_uids(&obj);
            if obj["metadata"]["deletionTimestamp"].is_null() {
                self.deleting.remove(&at);
            } else {
                self.deleting.insert(at.clone());
            }
            bucket.insert(key, obj.clone());
            self.uids.insert(uid.clone(), at.clone());
            owners
        };
        for gone in before.difference(&after) {
            if let Some(set) = self.dependents.get_mut(gone) {
                set.remove(&at);
                if set.is_empty() {
                    self.dependents.remove(gone);
                }
            }
        }
        for owner in &after {
            self.dependents
                .entry(owner.clone())
                .or_default()
                .insert(at.clone());
        }
        self.check_dangling(&at);
        // An owner appearing or disappearing changes whether its dependents dangle.
        if existed != (kind != EventType::Deleted) {
            let deps: Vec<ObjRef> = self
                .dependents
                .get(&uid)
                .map(|d| d.iter().cloned().collect())
                .unwrap_or_default();
            for d in &deps {
                self.check_dangling(d);
            }
        }
        let ev = Arc::new(WatchEvent {
            rv,
            kind,
            res: res.clone(),
            object: obj.clone(),
            old,
        });
        let now = std::time::Instant::now();
        self.log.push_back((now, ev.clone()));
        while let Some((at, e)) = self.log.front() {
            let expired = self.log.len() > self.log_capacity
                && (now.duration_since(*at) >= self.log_history || self.log.len() > LOG_CEILING);
            if !expired {
                break;
            }
            self.log_floor = e.rv;
            self.log.pop_front();
        }
        self.snapshots.retain(|s| s.rv >= self.log_floor);
        // No receivers is fine: nobody is watching yet.
        let _ = self.tx.send(ev);
        Arc::unwrap_or_clone(obj)
    }

    fn check_dangling(&mut self, at: &ObjRef) {
        let dangles = self
            .objects
            .get(&at.0)
            .and_then(|b| b.get(&at.1))
            .map(|o| owner_uids(o))
            .is_some_and(|o| !o.is_empty() && o.iter().all(|u| !self.uids.contains_key(u)));
        if dangles {
            self.dangling.insert(at.clone());
        } else {
            self.dangling.remove(at);
        }
    }

    pub fn compact(&mut self) {
        self.log.clear();
        self.log_floor = self.rv;
        self.snapshots.clear();
    }

    fn check_namespace(&self, def: &ResourceDef, ns: &str) -> ApiResult<()> {
        if !def.namespaced {
            return Ok(());
        }
        match self.get_obj(&ResKey::new("", "namespaces"), "", ns) {
            None => Err(ApiError::not_found(&Subject {
                plural: "namespaces".into(),
                name: ns.into(),
                ..Default::default()
            })),
            Some(n) if !n["metadata"]["deletionTimestamp"].is_null() => {
                Err(ApiError::forbidden(format!(
                    "{} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    def.plural
                )))
            }
            Some(_) => Ok(()),
        }
    }

    pub fn create(&mut self, t: &Target, obj: Value, opts: &WriteOpts) -> ApiResult<Value> {
        self.create_with(t, obj, opts, false)
    }

    /// `applied`: the object came from server-side apply and already carries its Apply
    /// managedFields entry, so no Update entry is recorded.
    fn create_with(
        &mut self,
        t: &Target,
        mut obj: Value,
        opts: &WriteOpts,
        applied: bool,
    ) -> ApiResult<Value> {
        let def = self.def(&t.res)?;
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was not an object",
            ));
        }
        if let (Some(body_ns), Some(url_ns)) = (meta_str(&obj, "namespace"), t.namespace.as_deref())
            && def.namespaced
            && body_ns != url_ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let name = match (
            meta_str(&obj, "name").filter(|n| !n.is_empty()),
            meta_str(&obj, "generateName"),
        ) {
            (Some(n), _) => n.to_string(),
            (None, Some(g)) => format!("{g}{}", random_suffix()),
            (None, None) => {
                return Err(ApiError::invalid(
                    &def.kind,
                    &def.group,
                    "",
                    vec![(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
        };
        if !valid_name(&name) {
            return Err(ApiError::invalid(
                &def.kind,
                &def.group,
                &name,
                vec![(
                    "metadata.name".into(),
                    format!(
                        "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                    ),
                )],
            ));
        }
        let key = State::key(t, &def, &name);
        if self
            .objects
            .get(&t.res)
            .is_some_and(|b| b.contains_key(&key))
        {
            return Err(ApiError::already_exists(&subject(&def, &name)));
        }
        self.check_namespace(&def, &key.0)?;
        let version = t.version.clone();
        let has_status = def.has_status(&version);
        {
            let m = obj["metadata"]
                .as_object_mut()
                .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
            m.insert("name".into(), json!(name));
            if def.namespaced {
                m.insert("namespace".into(), json!(key.0));
            } else {
                m.remove("namespace");
            }
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now()));
            m.insert("generation".into(), json!(1));
            for f in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                m.remove(f);
            }
        }
        obj["apiVersion"] = json!(def.api_version(&version));
        obj["kind"] = json!(def.kind);
        if has_status && let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
        defaults::apply(&def.kind, &def.group, &mut obj, true);
        let errs = validation::on_create(&def.group, &def.kind, &obj);
        if !errs.is_empty() {
            return Err(ApiError::invalid(&def.kind, &def.group, &name, errs));
        }
        if def.custom {
            schema::admit(&def, &version, &mut obj, None, opts.strict)?;
        }
        if def.group == "apiextensions.k8s.io" && def.kind == "CustomResourceDefinition" {
            let mut probe = (*self.registry).clone();
            probe.register_crd(&obj).map_err(|m| {
                ApiError::invalid(&def.kind, &def.group, &name, vec![("spec".into(), m)])
            })?;
            obj["status"] = crd_status(&obj);
        }
        if !applied {
            let manager = opts
                .field_manager
                .clone()
                .unwrap_or_else(|| "unknown".into());
            let schema = def.version(&version).and_then(|v| v.schema.as_ref());
            let lists = patch::Lists { schema };
            patch::record_update(
                None,
                &mut obj,
                &manager,
                "",
                &def.api_version(&version),
                lists,
            );
        }
        if opts.dry_run {
            obj["metadata"]["resourceVersion"] = json!("");
            return Ok(obj);
        }
        let stored = self.commit(&t.res, key, obj, EventType::Added);
        if def.kind == "CustomResourceDefinition" && def.group == "apiextensions.k8s.io" {
            // Validated above, so registration cannot fail here.
            let _ = Arc::make_mut(&mut self.registry).register_crd(&stored);
        }
        Ok(stored)
    }

    pub fn get(&self, t: &Target, name: &str) -> ApiResult<Value> {
        self.get_shared(t, name).map(Arc::unwrap_or_clone)
    }

    /// The stored object itself, shared rather than copied.
    fn get_shared(&self, t: &Target, name: &str) -> ApiResult<Arc<Value>> {
        let def = self.def(&t.res)?;
        let key = State::key(t, &def, name);
        self.objects
            .get(&t.res)
            .and_then(|b| b.get(&key))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&subject(&def, name)))
    }

    /// A read through the API: like `get`, plus the core/v1 view of events.k8s.io Events.
    pub fn get_view(&self, t: &Target, name: &str) -> ApiResult<Value> {
        let found = self.get(t, name);
        match (found, event_alias(&t.res)) {
            (Err(e), Some(alias)) => self
                .get_obj(&alias, t.namespace.as_deref().unwrap_or(""), name)
                .map(core_event_from)
                .ok_or(e),
            (r, _) => r,
        }
    }

    /// The shared tail of PUT and PATCH: `new` is the full desired object.
    pub fn update(
        &mut self,
        t: &Target,
        name: &str,
        mut new: Value,
        opts: &WriteOpts,
        sub: Sub,
        apply: bool,
    ) -> ApiResult<Value> {
        let def = self.def(&t.res)?;
        let old = self.get_shared(t, name)?;
        let subj = subject(&def, name);
        if !new.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was not an object",
            ));
        }
        if let Some(rv) = meta_str(&new, "resourceVersion").filter(|r| !r.is_empty())
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::modified(&subj));
        }
        if let Some(uid) = meta_str(&new, "uid").filter(|u| !u.is_empty())
            && Some(uid) != meta_str(&old, "uid")
        {
            return Err(ApiError::conflict(
                &subj,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid").unwrap_or("")
                ),
            ));
        }
        if let Some(n) = meta_str(&new, "name").filter(|n| !n.is_empty())
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        let version = t.version.clone();
        let has_status = def.has_status(&version);
        let mut merged = match sub {
            Sub::Status => {
                let mut m = (*old).clone();
                m["status"] = new.get("status").cloned().unwrap_or(Value::Null);
                if m["status"].is_null()
                    && let Some(o) = m.as_object_mut()
                {
                    o.remove("status");
                }
                if apply {
                    m["metadata"]["managedFields"] = new["metadata"]["managedFields"].clone();
                }
                m
            }
            Sub::Main => {
                let m = new["metadata"]
                    .as_object_mut()
                    .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
                for f in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                    "namespace",
                    "name",
                ] {
                    match old["metadata"].get(f) {
                        Some(v) => m.insert(f.into(), v.clone()),
                        None => m.remove(f),
                    };
                }
                if !m.contains_key("managedFields")
                    && let Some(mf) = old["metadata"].get("managedFields")
                {
                    m.insert("managedFields".into(), mf.clone());
                }
                if has_status {
                    match old.get("status") {
                        Some(s) => new["status"] = s.clone(),
                        None => {
                            new.as_object_mut().map(|o| o.remove("status"));
                        }
                    }
                }
                new
            }
        };
        merged["apiVersion"] = json!(def.api_version(&version));
        merged["kind"] = json!(def.kind);
        if !old["metadata"]["deletionTimestamp"].is_null() {
            let before = finalizers(&old);
            let added: Vec<String> = finalizers(&merged)
                .into_iter()
                .filter(|f| !before.contains(f))
                .collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(
                    &def.kind,
                    &def.group,
                    name,
                    vec![(
                        "metadata.finalizers".into(),
                        format!(
                            "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                        ),
                    )],
                ));
            }
        }
        defaults::apply(&def.kind, &def.group, &mut merged, false);
        if sub == Sub::Main {
            let errs = validation::on_update(&def.group, &def.kind, &old, &merged);
            if !errs.is_empty() {
                return Err(ApiError::invalid(&def.kind, &def.group, name, errs));
            }
        }
        if def.custom {
            schema::admit(&def, &version, &mut merged, Some(&old), opts.strict)?;
        }
        if def.kind == "CustomResourceDefinition" && def.group == "apiextensions.k8s.io" {
            let mut probe = (*self.registry).clone();
            probe.register_crd(&merged).map_err(|m| {
                ApiError::invalid(&def.kind, &def.group, name, vec![("spec".into(), m)])
            })?;
            if sub == Sub::Main {
                merged["status"] = crd_status(&merged);
            }
        }
        // Everything but metadata (and status, when it has its own endpoint) is what
        // generation tracks.
        let unversioned: &[&str] = if has_status {
            &["metadata", "status"]
        } else {
            &["metadata"]
        };
        if !eq_except(&old, &merged, unversioned) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            merged["metadata"]["generation"] = json!(g + 1);
        }
        // A write that changes nothing is not a write: no new resourceVersion, no event.
        if eq_except(&merged, &old, &["metadata"])
            && eq_except(
                &merged["metadata"],
                &old["metadata"],
                &["managedFields", "resourceVersion"],
            )
        {
            return Ok(Arc::unwrap_or_clone(old));
        }
        if !apply {
            let manager = opts
                .field_manager
                .clone()
                .unwrap_or_else(|| "unknown".into());
            let subres = if sub == Sub::Status { "status" } else { "" };
            let schema = def.version(&version).and_then(|v| v.schema.as_ref());
            let lists = patch::Lists { schema };
            patch::record_update(
                Some(&old),
                &mut merged,
                &manager,
                subres,
                &def.api_version(&version),
                lists,
            );
        }
        if opts.dry_run {
            return Ok(merged);
        }
        let key = State::key(t, &def, name);
        let deleting = !merged["metadata"]["deletionTimestamp"].is_null();
        if deleting && finalizers(&merged).is_empty() && !self.awaits_graceful_stop(&def, &merged) {
            return Ok(self.commit(&t.res, key, merged, EventType::Deleted));
        }
        let stored = self.commit(&t.res, key, merged, EventType::Modified);
        if def.kind == "CustomResourceDefinition" && def.group == "apiextensions.k8s.io" {
            let _ = Arc::make_mut(&mut self.registry).register_crd(&stored);
        }
        Ok(stored)
    }

    /// Pods being deleted gracefully stay until the kubelet reports them stopped.
    fn awaits_graceful_stop(&self, def: &ResourceDef, obj: &Value) -> bool {
        def.group.is_empty()
            && def.kind == "Pod"
            && obj["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(0)
                > 0
    }

    pub fn patch(
        &mut self,
        t: &Target,
        name: &str,
        ptype: PatchType,
        body: &[u8],
        opts: &WriteOpts,
        sub: Sub,
    ) -> ApiResult<Value> {
        let def = self.def(&t.res)?;
        let current = self.get(t, name);
        let api_version = def.api_version(&t.version);
        let schema = def.version(&t.version).and_then(|v| v.schema.as_ref());
        let lists = patch::Lists { schema };
        if ptype == PatchType::Apply {
            let manager = opts
                .field_manager
                .clone()
                .ok_or_else(|| ApiError::bad_request("PATCH requests of type application/apply-patch+yaml must specify a fieldManager"))?;
            let applied = patch::parse_body(body)?;
            if !applied.is_object() {
                return Err(ApiError::bad_request(
                    "the body of an apply patch must be an object",
                ));
            }
            if let Some(n) = meta_str(&applied, "name")
                && n != name
            {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            let subres = if sub == Sub::Status { "status" } else { "" };
            return match current {
                Err(e) if e.code == 404 => {
                    if sub == Sub::Status {
                        return Err(e);
                    }
                    let base = json!({"apiVersion": api_version, "kind": def.kind, "metadata": {"name": name}});
                    let obj = patch::server_side_apply(
                        &base,
                        &applied,
                        &manager,
                        opts.force,
                        "",
                        &api_version,
                        lists,
                    )?;
                    self.create_with(t, obj, opts, true)
                }
                Err(e) => Err(e),
                Ok(cur) => {
                    let mut merged = patch::server_side_apply(
                        &cur,
                        &applied,
                        &manager,
                        opts.force,
                        subres,
                        &api_version,
                        lists,
                    )?;
                    if let Some(rv) = meta_str(&applied, "resourceVersion") {
                        merged["metadata"]["resourceVersion"] = json!(rv);
                    } else {
                        merged["metadata"]["resourceVersion"] =
                            cur["metadata"]["resourceVersion"].clone();
                    }
                    self.update(t, name, merged, opts, sub, true)
                }
            };
        }
        let current = current?;
        let patch_value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        let mut target = current.clone();
        match ptype {
            PatchType::Merge => patch::merge_patch(&mut target, &patch_value),
            PatchType::Strategic => patch::strategic_merge(&mut target, &patch_value),
            PatchType::Json => patch::json_patch(&mut target, &patch_value)?,
            PatchType::Apply => unreachable!("handled above"),
        }
        // A patch only carries a resourceVersion precondition if it sets one explicitly.
        let patched_rv = target["metadata"]["resourceVersion"].clone();
        let explicit = match ptype {
            PatchType::Json => patched_rv != current["metadata"]["resourceVersion"],
            _ => !patch_value["metadata"]["resourceVersion"].is_null(),
        };
        if !explicit {
            target["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        }
        self.update(t, name, target, opts, sub, false)
    }

    pub fn delete(&mut self, t: &Target, name: &str, opts: &DeleteOpts) -> ApiResult<Deleted> {
        let def = self.def(&t.res)?;
        let obj = self.get(t, name)?;
        let subj = subject(&def, name);
        if let Some(uid) = &opts.uid
            && Some(uid.as_str()) != meta_str(&obj, "uid")
        {
            return Err(ApiError::conflict(
                &subj,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&obj, "uid").unwrap_or("")
                ),
            ));
        }
        if let Some(rv) = &opts.resource_version
            && Some(rv.as_str()) != meta_str(&obj, "resourceVersion")
        {
            return Err(ApiError::conflict(
                &subj,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&obj, "resourceVersion").unwrap_or("")
                ),
            ));
        }
        if opts.dry_run {
            return Ok(Deleted::Gone(obj));
        }
        let key = State::key(t, &def, name);
        let is_pod = def.group.is_empty() && def.kind == "Pod";
        let already = !obj["metadata"]["deletionTimestamp"].is_null();
        if already {
            // A repeated delete may cut a pod's grace period short (kubelet uses grace 0).
            if is_pod && opts.grace_seconds == Some(0) && finalizers(&obj).is_empty() {
                return Ok(Deleted::Gone(self.commit(
                    &t.res,
                    key,
                    obj,
                    EventType::Deleted,
                )));
            }
            return Ok(Deleted::Pending(obj));
        }
        let policy = opts.propagation.clone().unwrap_or_else(|| {
            // batch/v1 Jobs still default to orphaning their Pods.
            if def.group == "batch" && def.kind == "Job" {
                "Orphan".into()
            } else {
                "Background".into()
            }
        });
        let mut fins = finalizers(&obj);
        match policy.as_str() {
            "Foreground" => fins.push("foregroundDeletion".into()),
            "Orphan" => fins.push("orphan".into()),
            "Background" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "propagationPolicy: Unsupported value: \"{other}\""
                )));
            }
        }
        let mut marked = obj.clone();
        marked["metadata"]["deletionTimestamp"] = json!(now());
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        let running_pod = is_pod
            && !matches!(
                obj["status"]["phase"].as_str(),
                Some("Succeeded") | Some("Failed")
            )
            && !obj["spec"]["nodeName"].is_null();
        let grace = opts
            .grace_seconds
            .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30);
        if running_pod && grace > 0 {
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        }
        let is_ns = def.group.is_empty() && def.kind == "Namespace";
        if is_ns {
            marked["status"]["phase"] = json!("Terminating");
        }
        if fins.is_empty() && !is_ns && !(running_pod && grace > 0) {
            if def.kind == "CustomResourceDefinition" && def.group == "apiextensions.k8s.io" {
                self.drop_crd_instances(&obj);
            }
            return Ok(Deleted::Gone(self.commit(
                &t.res,
                key,
                obj,
                EventType::Deleted,
            )));
        }
        let mut seen = Vec::new();
        fins.retain(|f| {
            let dup = seen.contains(f);
            seen.push(f.clone());
            !dup
        });
        if !fins.is_empty() {
            marked["metadata"]["finalizers"] = json!(fins);
        }
        Ok(Deleted::Pending(self.commit(
            &t.res,
            key,
            marked,
            EventType::Modified,
        )))
    }

    /// Deleting a CRD deletes every instance and stops serving the type.
    fn drop_crd_instances(&mut self, crd: &Value) {
        let group = crd["spec"]["group"].as_str().unwrap_or_default();
        let plural = crd["spec"]["names"]["plural"].as_str().unwrap_or_default();
        let res = ResKey::new(group, plural);
        let items: Vec<(ObjKey, Value)> = self
            .objects
            .get(&res)
            .map(|b| b.iter().map(|(k, v)| (k.clone(), (**v).clone())).collect())
            .unwrap_or_default();
        for (k, v) in items {
            self.commit(&res, k, v, EventType::Deleted);
        }
        Arc::make_mut(&mut self.registry).unregister(&res);
    }

    /// Removes a finished object outright (used by the GC and namespace controller).
    pub fn remove(&mut self, res: &ResKey, ns: &str, name: &str) -> Option<Value> {
        let key = (ns.to_string(), name.to_string());
        let obj = (**self.objects.get(res)?.get(&key)?).clone();
        Some(self.commit(res, key, obj, EventType::Deleted))
    }

    /// Replaces an object through the internal path (controllers), keeping semantics.
    pub fn put_internal(&mut self, res: &ResKey, obj: Value, sub: Sub) -> ApiResult<Value> {
        let def = self.def(res)?;
        let t = Target {
            res: res.clone(),
            version: def.preferred_version().to_string(),
            namespace: meta_str(&obj, "namespace").map(String::from),
        };
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let opts = WriteOpts {
            field_manager: Some(controller_manager(&def)),
            ..Default::default()
        };
        self.update(&t, &name, obj, &opts, sub, false)
    }

    pub fn list(&mut self, t: &Target, opts: &ListOpts) -> ApiResult<ListResult> {
        let def = self.def(&t.res)?;
        let limit = opts.limit.filter(|l| *l > 0);
        if let Some(tok) = &opts.continue_token {
            let (id, offset) = decode_continue(tok)?;
            let snap = self.snapshots.iter().find(|s| s.id == id).ok_or_else(|| {
                ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
            })?;
            return Ok(page(&snap.items, snap.rv, id, offset, limit));
        }
        let ns = if def.namespaced {
            t.namespace.clone()
        } else {
            None
        };
        let mut items: Vec<Arc<Value>> = self
            .objects
            .get(&t.res)
            .map(|b| {
                b.iter()
                    .filter(|((ons, _), _)| ns.as_ref().is_none_or(|n| n == ons))
                    .filter(|((_, name), _)| opts.fields.name().is_none_or(|n| n == name))
                    .map(|(_, v)| v)
                    .filter(|v| opts.labels.matches(v) && opts.fields.matches(v))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if let Some(alias) = event_alias(&t.res) {
            items.extend(
                self.all(&alias)
                    .map(core_event_from)
                    .filter(|v| {
                        ns.as_ref()
                            .is_none_or(|n| v["metadata"]["namespace"].as_str() == Some(n))
                    })
                    .filter(|v| opts.labels.matches(v) && opts.fields.matches(v))
                    .map(Arc::new),
            );
            items.sort_by(|a, b| {
                let k = |v: &Value| {
                    (
                        meta_str(v, "namespace").unwrap_or("").to_string(),
                        meta_str(v, "name").unwrap_or("").to_string(),
                    )
                };
                k(a).cmp(&k(b))
            });
        }
        let rv = self.rv;
        if limit.is_some_and(|l| items.len() > l) {
            // Later pages come from this snapshot, so the pages are consistent.
            self.next_snapshot += 1;
            let id = self.next_snapshot;
            let first = page(&items, rv, id, 0, limit);
            self.snapshots.push_back(Snapshot { id, rv, items });
            while self.snapshots.len() > 64 {
                self.snapshots.pop_front();
            }
            return Ok(first);
        }
        Ok(page(&items, rv, 0, 0, None))
    }

    /// Events after `from` for one resource type, or the current state as ADDED events.
    pub fn watch_backlog(&self, res: &ResKey, from: &WatchFrom) -> ApiResult<Vec<Arc<WatchEvent>>> {
        match from {
            WatchFrom::Rv(n) => {
                if *n < self.log_floor {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {n} ({})",
                        self.log_floor + 1
                    )));
                }
                let alias = event_alias(res);
                let from = self.log.partition_point(|(_, e)| e.rv <= *n);
                Ok(self
                    .log
                    .range(from..)
                    .map(|(_, e)| e)
                    .filter(|e| &e.res == res || alias.as_ref() == Some(&e.res))
                    .cloned()
                    .collect())
            }
            WatchFrom::State => Ok(self
                .objects
                .get(res)
                .into_iter()
                .flat_map(|b| b.values().cloned())
                .chain(event_alias(res).into_iter().flat_map(|a| {
                    self.all(&a)
                        .map(|e| Arc::new(core_event_from(e)))
                        .collect::<Vec<_>>()
                }))
                .map(|o| {
                    Arc::new(WatchEvent {
                        rv: o["metadata"]["resourceVersion"]
                            .as_str()
                            .and_then(|r| r.parse().ok())
                            .unwrap_or(0),
                        kind: EventType::Added,
                        res: res.clone(),
                        object: o.clone(),
                        old: None,
                    })
                })
                .collect()),
        }
    }
}

/// The field manager Kubernetes' own controllers use, for managedFields realism.
fn controller_manager(def: &ResourceDef) -> String {
    match def.kind.as_str() {
        "Job" => "kube-controller-manager".into(),
        "Pod" => "kubelet".into(),
        _ => "kube-emulator".into(),
    }
}

/// The page of `items` (snapshot `id`, at `rv`) from `offset`, at most `limit` long.
fn page(items: &[Arc<Value>], rv: u64, id: u64, offset: usize, limit: Option<usize>) -> ListResult {
    let offset = offset.min(items.len());
    match limit {
        Some(l) if items.len() > offset + l => ListResult {
            items: items[offset..offset + l].to_vec(),
            resource_version: rv,
            continue_token: Some(encode_continue(id, offset + l)),
            remaining: Some(items.len() - offset - l),
        },
        _ => ListResult {
            items: items[offset..].to_vec(),
            resource_version: rv,
            continue_token: None,
            remaining: None,
        },
    }
}

fn encode_continue(id: u64, offset: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{id}:{offset}"))
}

fn decode_continue(tok: &str) -> ApiResult<(u64, usize)> {
    use base64::Engine;
    let bad = || ApiError::bad_request("continue key is not valid");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(tok)
        .map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
}

impl Store {
    /// A store whose watch log keeps `log_capacity` events, and beyond that those
    /// younger than `log_history` (at most `LOG_CEILING`).
    pub fn new(log_capacity: usize, log_history: std::time::Duration) -> Arc<Store> {
        let (tx, _) = broadcast::channel(16384);
        let mut state = State {
            rv: 0,
            registry: Arc::new(Registry::builtins()),
            objects: HashMap::new(),
            uids: HashMap::new(),
            dependents: HashMap::new(),
            deleting: BTreeSet::new(),
            dangling: BTreeSet::new(),
            log: VecDeque::new(),
            log_floor: 0,
            log_capacity: log_capacity.max(1),
            log_history,
            snapshots: VecDeque::new(),
            next_snapshot: 0,
            tx: tx.clone(),
        };
        let ns = Target {
            res: ResKey::new("", "namespaces"),
            version: "v1".into(),
            namespace: None,
        };
        for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let _ = state.create(&ns, json!({"metadata": {"name": n}}), &WriteOpts::default());
        }
        Arc::new(Store {
            state: Mutex::new(state),
            tx,
        })
    }

    /// Runs `f` with the state locked; every write happens under this one lock, which
    /// is what keeps resourceVersions, the log and the broadcast in one order.
    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.lock())
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.tx.subscribe()
    }

    /// Registers a watcher atomically with its backlog, so no event falls in between.
    pub fn watch(&self, res: &ResKey, from: &WatchFrom) -> ApiResult<WatchStart> {
        let st = self.lock();
        let backlog = st.watch_backlog(res, from)?;
        Ok((backlog, self.tx.subscribe(), st.rv))
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.lock().registry.clone()
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }
}
