//! The batch/v1 Job controller and a "kubelet" that runs Pod containers as local
//! processes (images map to executables through a table the test provides).

use crate::resources::ResKey;
use crate::store::{
    Changes, DeleteOpts, EventType, ObjKey, State, Store, Sub, Target, WriteOpts, now, parse_time,
};
use base64::Engine;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

fn pods_key() -> ResKey {
    ResKey::new("", "pods")
}

fn jobs_key() -> ResKey {
    ResKey::new("batch", "jobs")
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn deleting(o: &Value) -> bool {
    !o["metadata"]["deletionTimestamp"].is_null()
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("Pending")
}

fn terminal(p: &Value) -> bool {
    matches!(phase(p), "Succeeded" | "Failed")
}

fn condition(status: &Value, t: &str) -> Option<Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t && c["status"] == "True")
        .cloned()
}

fn set_condition(status: &mut Value, t: &str, st: &str, reason: &str, message: &str) {
    let ts = now();
    let cond = json!({"type": t, "status": st, "lastProbeTime": ts, "lastTransitionTime": ts, "reason": reason, "message": message});
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    let list = status["conditions"].as_array_mut().expect("array");
    match list.iter_mut().find(|c| c["type"] == t) {
        Some(c) if c["status"] == st => {}
        Some(c) => *c = cond,
        None => list.push(cond),
    }
}

// ---------------------------------------------------------------- Job controller

struct JobMemory {
    failed_seen: i64,
    last_failure: Instant,
}

/// The Job controller's state between syncs.
struct JobController {
    backoff: Duration,
    /// By Job uid.
    memory: HashMap<String, JobMemory>,
    /// When a Job must be looked at again without any change to it (deadline, TTL,
    /// backoff, a failed write), by Job key; `timers` orders the same entries by time.
    due: HashMap<ObjKey, Instant>,
    timers: BTreeSet<(Instant, ObjKey)>,
}

/// Runs the Job controller: level-triggered on every Job whose object or Pods changed
/// (on all Jobs when events were lost), and on each Job's next deadline, TTL or backoff.
pub async fn run_job_controller(
    store: Arc<Store>,
    backoff: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut events = store.subscribe();
    let mut ctl = JobController {
        backoff,
        memory: HashMap::new(),
        due: HashMap::new(),
        timers: BTreeSet::new(),
    };
    let mut changes = Changes::everything();
    loop {
        let keys = store.with(|st| ctl.changed(st, &changes));
        // A few Jobs per lock, so requests and watches are served in between.
        for chunk in keys.chunks(SYNC_CHUNK) {
            store.with(|st| {
                for key in chunk {
                    ctl.sync(st, key);
                }
            });
            tokio::task::yield_now().await;
        }
        let wake = ctl
            .timers
            .first()
            .map(|(at, _)| tokio::time::Instant::from_std(*at))
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            ev = events.recv() => match Changes::collect(ev, &mut events) {
                Some(c) => changes = c,
                None => return,
            },
            _ = tokio::time::sleep_until(wake) => changes = Changes::default(),
            _ = shutdown.changed() => return,
        }
    }
}

fn obj_key(o: &Value) -> ObjKey {
    (
        s(o, &["metadata", "namespace"])
            .unwrap_or_default()
            .to_string(),
        s(o, &["metadata", "name"]).unwrap_or_default().to_string(),
    )
}

/// How many objects a controller syncs while holding the store's lock.
const SYNC_CHUNK: usize = 32;

impl JobController {
    /// The Jobs to sync: those changed, those whose Pods changed, those due.
    fn changed(&mut self, st: &State, changes: &Changes) -> Vec<ObjKey> {
        let mut keys: BTreeSet<ObjKey> = BTreeSet::new();
        if changes.everything {
            let jobs: Vec<&Value> = st.all(&jobs_key()).collect();
            let live: HashSet<&str> = jobs
                .iter()
                .filter_map(|j| s(j, &["metadata", "uid"]))
                .collect();
            self.memory.retain(|k, _| live.contains(k.as_str()));
            keys.extend(jobs.iter().map(|j| obj_key(j)));
        }
        for ev in changes.of(jobs_key()) {
            if ev.kind == EventType::Deleted {
                if let Some(uid) = s(&ev.object, &["metadata", "uid"]) {
                    self.memory.remove(uid);
                }
                self.set_timer(obj_key(&ev.object), None);
            } else {
                keys.insert(obj_key(&ev.object));
            }
        }
        // A Pod's change is a change of the Jobs that own it (before and after).
        for ev in changes.of(pods_key()) {
            for pod in std::iter::once(&ev.object).chain(&ev.old) {
                let ns = s(pod, &["metadata", "namespace"]).unwrap_or_default();
                for r in pod["metadata"]["ownerReferences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    if r["kind"] == "Job"
                        && r["apiVersion"] == "batch/v1"
                        && let Some(name) = r["name"].as_str()
                    {
                        keys.insert((ns.to_string(), name.to_string()));
                    }
                }
            }
        }
        let now = Instant::now();
        while let Some((at, key)) = self.timers.first().cloned()
            && at <= now
        {
            self.timers.remove(&(at, key.clone()));
            self.due.remove(&key);
            keys.insert(key);
        }
        keys.into_iter().collect()
    }

    fn sync(&mut self, st: &mut State, key: &ObjKey) {
        let Some(job) = st.get_shared_obj(&jobs_key(), &key.0, &key.1) else {
            self.set_timer(key.clone(), None);
            return;
        };
        let next = match reconcile(st, &job, self.backoff, &mut self.memory) {
            Ok(next) => next,
            Err(e) => {
                tracing::debug!(error = %e, "job reconcile");
                Some(Duration::from_millis(100))
            }
        };
        self.set_timer(key.clone(), next.map(|d| Instant::now() + d));
    }

    fn set_timer(&mut self, key: ObjKey, at: Option<Instant>) {
        if let Some(old) = self.due.remove(&key) {
            self.timers.remove(&(old, key.clone()));
        }
        if let Some(at) = at {
            self.timers.insert((at, key.clone()));
            self.due.insert(key, at);
        }
    }
}

/// How long until `at` plus `seconds` (rounded up to whole milliseconds, at least 1 ms).
fn until(
    at: chrono::DateTime<chrono::Utc>,
    seconds: i64,
    now: chrono::DateTime<chrono::Utc>,
) -> Duration {
    let ms = seconds.saturating_mul(1000) - (now - at).num_milliseconds();
    Duration::from_millis(ms.max(0) as u64 + 1)
}

fn pod_target(ns: &str) -> Target {
    Target {
        res: pods_key(),
        version: "v1".into(),
        namespace: Some(ns.to_string()),
    }
}

fn delete_pod(st: &mut State, p: &Value) {
    let ns = s(p, &["metadata", "namespace"]).unwrap_or_default();
    let name = s(p, &["metadata", "name"]).unwrap_or_default().to_string();
    let _ = st.delete(
        &pod_target(ns),
        &name,
        &DeleteOpts {
            propagation: Some("Background".into()),
            ..Default::default()
        },
    );
}

/// Syncs one Job; returns when it must be looked at again if nothing changes.
fn reconcile(
    st: &mut State,
    job: &Value,
    backoff: Duration,
    memory: &mut HashMap<String, JobMemory>,
) -> crate::ApiResult<Option<Duration>> {
    if deleting(job) {
        return Ok(None);
    }
    let uid = s(job, &["metadata", "uid"]).unwrap_or_default().to_string();
    let ns = s(job, &["metadata", "namespace"])
        .unwrap_or_default()
        .to_string();
    let name = s(job, &["metadata", "name"])
        .unwrap_or_default()
        .to_string();
    let spec = &job["spec"];
    let mut status = if job["status"].is_object() {
        job["status"].clone()
    } else {
        json!({})
    };
    let now_t = chrono::Utc::now();

    let finished = condition(&status, "Complete").or_else(|| condition(&status, "Failed"));
    if let Some(done) = &finished {
        if let Some(ttl) = spec["ttlSecondsAfterFinished"].as_i64() {
            let at = status["completionTime"]
                .as_str()
                .or(done["lastTransitionTime"].as_str())
                .and_then(parse_time)
                .unwrap_or(now_t);
            if (now_t - at).num_milliseconds() < ttl * 1000 {
                return Ok(Some(until(at, ttl, now_t)));
            }
            {
                let t = Target {
                    res: jobs_key(),
                    version: "v1".into(),
                    namespace: Some(ns),
                };
                st.delete(
                    &t,
                    &name,
                    &DeleteOpts {
                        propagation: Some("Background".into()),
                        ..Default::default()
                    },
                )?;
            }
        }
        return Ok(None);
    }

    let pods: Vec<Arc<Value>> = st
        .dependents_of(&uid)
        .into_iter()
        .filter(|(res, _)| *res == pods_key())
        .map(|(_, p)| p)
        .filter(|p| s(p, &["metadata", "namespace"]) == Some(ns.as_str()))
        .filter(|p| {
            p["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| {
                    refs.iter()
                        .any(|r| r["uid"] == uid.as_str() && r["controller"] == true)
                })
        })
        .collect();
    let active: Vec<&Value> = pods
        .iter()
        .map(|p| &**p)
        .filter(|p| !terminal(p) && !deleting(p))
        .collect();
    let terminating = pods.iter().filter(|p| !terminal(p) && deleting(p)).count() as i64;
    let succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
    let restarts: i64 = pods
        .iter()
        .map(|p| {
            p["status"]["containerStatuses"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                        .sum::<i64>()
                })
                .unwrap_or(0)
        })
        .sum();
    let failed = pods.iter().filter(|p| phase(p) == "Failed").count() as i64 + restarts;
    let ready = active
        .iter()
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .count() as i64;

    let mem = memory.entry(uid.clone()).or_insert(JobMemory {
        failed_seen: 0,
        last_failure: Instant::now(),
    });
    if failed > mem.failed_seen {
        mem.failed_seen = failed;
        mem.last_failure = Instant::now();
    }

    let completions = spec["completions"].as_i64().unwrap_or(1);
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1);
    let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
    let suspended = spec["suspend"].as_bool() == Some(true);

    if suspended {
        for p in &active {
            delete_pod(st, p);
        }
        set_condition(
            &mut status,
            "Suspended",
            "True",
            "JobSuspended",
            "Job suspended",
        );
    } else if condition(&status, "Suspended").is_some() {
        set_condition(
            &mut status,
            "Suspended",
            "False",
            "JobResumed",
            "Job resumed",
        );
        status["startTime"] = json!(now());
    }
    if !suspended && status["startTime"].is_null() {
        status["startTime"] = json!(now());
    }

    let mut failure = condition(&status, "FailureTarget");
    let mut success = condition(&status, "SuccessCriteriaMet");
    let mut next: Option<Duration> = None;
    if failure.is_none() && success.is_none() && !suspended {
        let started = status["startTime"].as_str().and_then(parse_time);
        let deadline = spec["activeDeadlineSeconds"].as_i64().zip(started);
        let deadline_passed =
            deadline.is_some_and(|(ads, t)| (now_t - t).num_milliseconds() >= ads * 1000);
        if let Some((ads, t)) = deadline
            && !deadline_passed
        {
            next = Some(until(t, ads, now_t));
        }
        if deadline_passed {
            set_condition(
                &mut status,
                "FailureTarget",
                "True",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            );
        } else if failed > backoff_limit {
            set_condition(
                &mut status,
                "FailureTarget",
                "True",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            );
        } else if succeeded >= completions {
            set_condition(
                &mut status,
                "SuccessCriteriaMet",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            );
        }
        failure = condition(&status, "FailureTarget");
        success = condition(&status, "SuccessCriteriaMet");
    }

    let mut active_count = active.len() as i64;
    if let Some(f) = &failure {
        for p in &active {
            delete_pod(st, p);
        }
        active_count = 0;
        if active.is_empty() && terminating == 0 {
            set_condition(
                &mut status,
                "Failed",
                "True",
                f["reason"].as_str().unwrap_or(""),
                f["message"].as_str().unwrap_or(""),
            );
        }
    } else if success.is_some() {
        for p in &active {
            delete_pod(st, p);
        }
        active_count = 0;
        if active.is_empty() && terminating == 0 {
            set_condition(
                &mut status,
                "Complete",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            );
            status["completionTime"] = json!(now());
        }
    } else if !suspended {
        let want = parallelism.min(completions - succeeded).max(0);
        let delay = if failed > 0 && !backoff.is_zero() {
            backoff
                .saturating_mul(1 << (failed - 1).min(10) as u32)
                .min(Duration::from_secs(360))
        } else {
            Duration::ZERO
        };
        let waited = mem.last_failure.elapsed() >= delay || failed == 0;
        if !waited {
            let rest = delay.saturating_sub(mem.last_failure.elapsed()) + Duration::from_millis(1);
            next = Some(next.map_or(rest, |n| n.min(rest)));
        }
        if waited && terminating == 0 {
            while active_count < want {
                create_pod(st, job)?;
                active_count += 1;
            }
        }
    }

    status["active"] = json!(active_count);
    status["succeeded"] = json!(succeeded);
    status["failed"] = json!(failed);
    status["ready"] = json!(ready);
    status["terminating"] = json!(terminating);
    status["uncountedTerminatedPods"] = json!({});
    for k in ["active", "succeeded", "failed"] {
        if status[k] == 0 {
            status.as_object_mut().map(|m| m.remove(k));
        }
    }
    if status != job["status"] {
        let mut updated = job.clone();
        updated["status"] = status;
        st.put_internal(&jobs_key(), updated, Sub::Status)?;
    }
    Ok(next)
}

fn create_pod(st: &mut State, job: &Value) -> crate::ApiResult<Value> {
    let ns = s(job, &["metadata", "namespace"]).unwrap_or_default();
    let name = s(job, &["metadata", "name"]).unwrap_or_default();
    let tmpl = &job["spec"]["template"];
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{name}-"),
            "namespace": ns,
            "labels": tmpl["metadata"]["labels"],
            "annotations": tmpl["metadata"]["annotations"].as_object().cloned().unwrap_or_default(),
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job["metadata"]["uid"],
                "controller": true, "blockOwnerDeletion": true
            }]
        },
        "spec": tmpl["spec"],
    });
    let opts = WriteOpts {
        field_manager: Some("kube-controller-manager".into()),
        ..Default::default()
    };
    st.create(&pod_target(ns), pod, &opts)
}

// ---------------------------------------------------------------- kubelet

pub struct KubeletConfig {
    pub images: HashMap<String, PathBuf>,
    pub kubeconfig: PathBuf,
    pub server: String,
    pub work_dir: PathBuf,
    pub env_passthrough: Vec<String>,
    pub logs: Arc<Mutex<HashMap<(String, String), PathBuf>>>,
}

struct PodProc {
    pgids: Arc<Mutex<Vec<i32>>>,
    stop: watch::Sender<Option<i64>>,
}

/// Runs Pods as local processes and reports their status like a kubelet.
pub struct Kubelet {
    cfg: KubeletConfig,
    procs: Mutex<HashMap<String, PodProc>>,
    /// Pods that could not start yet (image not mapped, ConfigMap or Secret missing).
    waiting: Mutex<HashSet<ObjKey>>,
}

fn signal(pgid: i32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group we created; it has
    // no memory-safety preconditions.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

impl Kubelet {
    pub fn new(cfg: KubeletConfig) -> Kubelet {
        Kubelet {
            cfg,
            procs: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashSet::new()),
        }
    }

    fn procs(&self) -> std::sync::MutexGuard<'_, HashMap<String, PodProc>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashSet<ObjKey>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// SIGKILL every container process group at once (used on drop).
    pub fn kill_all_now(&self) {
        for p in self.procs().values() {
            for g in p.pgids.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                signal(*g, libc::SIGKILL);
            }
        }
    }

    /// SIGTERM, a short grace, then SIGKILL for every running container.
    pub async fn kill_all(&self) {
        let groups: Vec<i32> = self
            .procs()
            .values()
            .flat_map(|p| p.pgids.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect();
        if groups.is_empty() {
            return;
        }
        for g in &groups {
            signal(*g, libc::SIGTERM);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        for g in &groups {
            signal(*g, libc::SIGKILL);
        }
    }

    /// Syncs the Pods that changed (all of them when events were lost), and every
    /// 200 ms those waiting for their image, ConfigMap or Secret.
    pub async fn run(self: Arc<Self>, store: Arc<Store>, mut shutdown: watch::Receiver<bool>) {
        let mut events = store.subscribe();
        let mut changes = Changes::everything();
        loop {
            self.sync(&store, &changes).await;
            tokio::select! {
                ev = events.recv() => match Changes::collect(ev, &mut events) {
                    Some(c) => changes = c,
                    None => return,
                },
                _ = tokio::time::sleep(Duration::from_millis(200)) => changes = Changes::default(),
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn sync(self: &Arc<Self>, store: &Arc<Store>, changes: &Changes) {
        let waiting: Vec<ObjKey> = self.waiting().drain().collect();
        let pods: Vec<Arc<Value>> = store.with(|st| {
            if changes.everything {
                return st.all_shared(&pods_key()).cloned().collect();
            }
            let changed = changes
                .of(pods_key())
                .filter(|e| e.kind != EventType::Deleted)
                .map(|e| obj_key(&e.object));
            let keys: BTreeSet<ObjKey> = changed.chain(waiting).collect();
            keys.iter()
                .filter_map(|(ns, name)| st.get_shared_obj(&pods_key(), ns, name))
                .collect()
        });
        // Pods removed outright (force delete) lose their processes at once.
        if changes.everything {
            let present: HashSet<&str> = pods
                .iter()
                .filter_map(|p| s(p, &["metadata", "uid"]))
                .collect();
            for (uid, p) in self.procs().iter() {
                if !present.contains(uid.as_str()) {
                    let _ = p.stop.send(Some(0));
                }
            }
        }
        for ev in changes.of(pods_key()) {
            if ev.kind == EventType::Deleted
                && let Some(uid) = s(&ev.object, &["metadata", "uid"])
                && let Some(p) = self.procs().get(uid)
            {
                let _ = p.stop.send(Some(0));
            }
        }
        for (i, pod) in pods.into_iter().enumerate() {
            if i % SYNC_CHUNK == SYNC_CHUNK - 1 {
                tokio::task::yield_now().await;
            }
            let uid = s(&pod, &["metadata", "uid"])
                .unwrap_or_default()
                .to_string();
            let running = self.procs().contains_key(&uid);
            if deleting(&pod) {
                let grace = pod["metadata"]["deletionGracePeriodSeconds"]
                    .as_i64()
                    .unwrap_or(0);
                if running {
                    if let Some(p) = self.procs().get(&uid) {
                        let _ = p.stop.send(Some(grace));
                    }
                } else if grace > 0 {
                    finalize_deletion(store, &pod);
                }
                continue;
            }
            // Pods bound to another node are not ours to run (as with a real scheduler).
            let node = pod["spec"]["nodeName"].as_str();
            if running
                || phase(&pod) != "Pending"
                || node.is_some_and(|n| n != "kube-emulator")
                || pod["status"]["startTime"].is_string()
            {
                continue;
            }
            self.start_pod(store, Arc::unwrap_or_clone(pod));
        }
    }

    fn start_pod(self: &Arc<Self>, store: &Arc<Store>, pod: Value) {
        let uid = s(&pod, &["metadata", "uid"])
            .unwrap_or_default()
            .to_string();
        let ns = s(&pod, &["metadata", "namespace"])
            .unwrap_or_default()
            .to_string();
        let name = s(&pod, &["metadata", "name"])
            .unwrap_or_default()
            .to_string();
        let containers = pod["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut plans = Vec::new();
        for c in &containers {
            match store.with(|st| self.plan(st, &pod, c)) {
                Ok(p) => plans.push(p),
                Err((reason, message)) => {
                    // Like CreateContainerConfigError / ErrImagePull: stay Pending and retry.
                    self.waiting().insert((ns.clone(), name.clone()));
                    update_pod(store, &ns, &name, &uid, |p| {
                        let cname = c["name"].clone();
                        p["status"]["containerStatuses"] = json!([{
                            "name": cname, "ready": false, "restartCount": 0, "started": false,
                            "image": c["image"], "imageID": "",
                            "state": {"waiting": {"reason": reason, "message": message}}
                        }]);
                    });
                    return;
                }
            }
        }
        let (stop_tx, stop_rx) = watch::channel(None);
        let pgids = Arc::new(Mutex::new(Vec::new()));
        self.procs().insert(
            uid.clone(),
            PodProc {
                pgids: pgids.clone(),
                stop: stop_tx,
            },
        );
        // Bind the pod to the emulator's single node, as the scheduler would.
        store.with(|st| {
            if let Some(mut p) = st.get_obj(&pods_key(), &ns, &name).cloned() {
                p["spec"]["nodeName"] = json!("kube-emulator");
                let _ = st.put_internal(&pods_key(), p, Sub::Main);
            }
        });
        let me = self.clone();
        let store = store.clone();
        tokio::spawn(async move {
            run_pod(&store, &me.cfg, &pod, plans, pgids, stop_rx).await;
            me.procs().remove(&uid);
            // Wake the controllers: the pod's final status is already stored.
            store.with(|_| {});
        });
    }

    /// Resolves a container's executable, arguments and environment.
    fn plan(&self, st: &State, pod: &Value, c: &Value) -> Result<Plan, (String, String)> {
        let ns = s(pod, &["metadata", "namespace"]).unwrap_or_default();
        let pod_name = s(pod, &["metadata", "name"]).unwrap_or_default();
        let cname = c["name"].as_str().unwrap_or("main").to_string();
        let dir = self
            .cfg
            .work_dir
            .join(format!("{ns}_{pod_name}"))
            .join(&cname);
        std::fs::create_dir_all(&dir)
            .map_err(|e| ("CreateContainerError".to_string(), e.to_string()))?;
        let term_file = dir.join("termination-log");
        let log_file = dir.join("output.log");
        let _ = std::fs::write(&term_file, b"");
        let mut env: Vec<(String, String)> = Vec::new();
        let lookup = |kind: &str, name: &str| st.get_obj(&ResKey::new("", kind), ns, name).cloned();
        for from in c["envFrom"].as_array().cloned().unwrap_or_default() {
            let prefix = from["prefix"].as_str().unwrap_or("");
            for (kind, key) in [("configmaps", "configMapRef"), ("secrets", "secretRef")] {
                let Some(r) = from.get(key) else { continue };
                let n = r["name"].as_str().unwrap_or_default();
                match lookup(kind, n) {
                    Some(o) => {
                        for (k, v) in o["data"].as_object().cloned().unwrap_or_default() {
                            env.push((format!("{prefix}{k}"), decode_value(kind, &v)));
                        }
                    }
                    None if r["optional"] == true => {}
                    None => {
                        return Err((
                            "CreateContainerConfigError".into(),
                            format!("{} \"{n}\" not found", &kind[..kind.len() - 1]),
                        ));
                    }
                }
            }
        }
        for e in c["env"].as_array().cloned().unwrap_or_default() {
            let name = e["name"].as_str().unwrap_or_default().to_string();
            let value = if let Some(v) = e["value"].as_str() {
                expand(v, &env)
            } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                key_ref(
                    lookup("secrets", r["name"].as_str().unwrap_or_default()),
                    "secrets",
                    r,
                )?
            } else if let Some(r) = e["valueFrom"]["configMapKeyRef"].as_object() {
                key_ref(
                    lookup("configmaps", r["name"].as_str().unwrap_or_default()),
                    "configmaps",
                    r,
                )?
            } else if let Some(fp) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                field_ref(pod, fp)
            } else {
                String::new()
            };
            if value.is_empty()
                && !e["valueFrom"].is_null()
                && e["valueFrom"].to_string().contains("\"optional\":true")
            {
                continue;
            }
            env.push((name, value));
        }
        let term_path = c["terminationMessagePath"]
            .as_str()
            .unwrap_or("/dev/termination-log")
            .to_string();
        let term_str = term_file.to_string_lossy().to_string();
        let expand_all = |list: &Value| -> Vec<String> {
            list.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|x| expand(x, &env))
                        .map(|x| {
                            if x == term_path {
                                term_str.clone()
                            } else {
                                x.replace(&term_path, &term_str)
                            }
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let command = expand_all(&c["command"]);
        let args = expand_all(&c["args"]);
        let image = c["image"].as_str().unwrap_or_default();
        let entry = lookup_image(&self.cfg.images, image);
        let argv: Vec<String> = match (entry, command.is_empty()) {
            (Some(p), true) => std::iter::once(p.to_string_lossy().to_string())
                .chain(args)
                .collect(),
            (Some(p), false) => {
                let base = |x: &str| {
                    Path::new(x)
                        .file_name()
                        .map(|f| f.to_string_lossy().to_string())
                };
                if base(&command[0]) == base(&p.to_string_lossy()) {
                    std::iter::once(p.to_string_lossy().to_string())
                        .chain(command[1..].iter().cloned())
                        .chain(args)
                        .collect()
                } else {
                    command.into_iter().chain(args).collect()
                }
            }
            (None, false) => command.into_iter().chain(args).collect(),
            (None, true) => {
                return Err((
                    "ErrImagePull".into(),
                    format!(
                        "image \"{image}\" is not in the emulator's image map and the container has no command"
                    ),
                ));
            }
        };
        let mut full_env: Vec<(String, String)> = vec![
            (
                "PATH".into(),
                std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
            ),
            ("HOME".into(), dir.to_string_lossy().to_string()),
            ("HOSTNAME".into(), pod_name.to_string()),
            (
                "KUBECONFIG".into(),
                self.cfg.kubeconfig.to_string_lossy().to_string(),
            ),
            ("KUBE_EMULATOR_SERVER".into(), self.cfg.server.clone()),
            ("TALLY_TERMINATION_LOG".into(), term_str.clone()),
        ];
        for k in &self.cfg.env_passthrough {
            if let Ok(v) = std::env::var(k) {
                full_env.push((k.clone(), v));
            }
        }
        full_env.extend(env);
        let workdir = c["workingDir"]
            .as_str()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or(dir);
        Ok(Plan {
            name: cname,
            argv,
            env: full_env,
            workdir,
            term_file,
            log_file,
            fallback_to_logs: c["terminationMessagePolicy"] == "FallbackToLogsOnError",
            image: image.to_string(),
        })
    }
}

fn decode_value(kind: &str, v: &Value) -> String {
    let raw = v.as_str().unwrap_or_default();
    if kind == "secrets" {
        base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    } else {
        raw.to_string()
    }
}

fn key_ref(
    obj: Option<Value>,
    kind: &str,
    r: &serde_json::Map<String, Value>,
) -> Result<String, (String, String)> {
    let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
    let key = r.get("key").and_then(Value::as_str).unwrap_or_default();
    let optional = r.get("optional").and_then(Value::as_bool) == Some(true);
    let singular = &kind[..kind.len() - 1];
    match obj {
        Some(o) => match o["data"].get(key) {
            Some(v) => Ok(decode_value(kind, v)),
            None if optional => Ok(String::new()),
            None => Err((
                "CreateContainerConfigError".into(),
                format!(
                    "couldn't find key {key} in {singular} {}/{name}",
                    o["metadata"]["namespace"].as_str().unwrap_or("")
                ),
            )),
        },
        None if optional => Ok(String::new()),
        None => Err((
            "CreateContainerConfigError".into(),
            format!("{singular} \"{name}\" not found"),
        )),
    }
}

fn field_ref(pod: &Value, path: &str) -> String {
    let m = &pod["metadata"];
    let quoted = |p: &str| {
        p.split_once("['")
            .map(|(_, r)| r.trim_end_matches("']").to_string())
    };
    match path {
        "metadata.name" => m["name"].as_str().unwrap_or_default().into(),
        "metadata.namespace" => m["namespace"].as_str().unwrap_or_default().into(),
        "metadata.uid" => m["uid"].as_str().unwrap_or_default().into(),
        "spec.nodeName" => "kube-emulator".into(),
        "spec.serviceAccountName" => pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            .into(),
        "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
        p if p.starts_with("metadata.labels") => quoted(p)
            .and_then(|k| m["labels"][k].as_str().map(String::from))
            .unwrap_or_default(),
        p if p.starts_with("metadata.annotations") => quoted(p)
            .and_then(|k| m["annotations"][k].as_str().map(String::from))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// `$(VAR)` references to earlier variables, as Kubernetes expands them.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = s.to_string();
    for (k, v) in env.iter().rev() {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

/// Exact image match first, then the repository without tag or digest.
fn lookup_image(map: &HashMap<String, PathBuf>, image: &str) -> Option<PathBuf> {
    if let Some(p) = map.get(image) {
        return Some(p.clone());
    }
    let repo = |i: &str| {
        let i = i.split('@').next().unwrap_or(i);
        match i.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r.to_string(),
            _ => i.to_string(),
        }
    };
    let want = repo(image);
    map.iter()
        .find(|(k, _)| repo(k) == want)
        .map(|(_, v)| v.clone())
}

struct Plan {
    name: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    workdir: PathBuf,
    term_file: PathBuf,
    log_file: PathBuf,
    fallback_to_logs: bool,
    image: String,
}

/// Applies `f` to the stored pod's status (if it is still the same pod) via /status.
fn update_pod(store: &Store, ns: &str, name: &str, uid: &str, f: impl FnOnce(&mut Value)) {
    store.with(|st| {
        let Some(mut p) = st.get_obj(&pods_key(), ns, name).cloned() else {
            return;
        };
        if p["metadata"]["uid"] != uid {
            return;
        }
        f(&mut p);
        let _ = st.put_internal(&pods_key(), p, Sub::Status);
    });
}

fn finalize_deletion(store: &Store, pod: &Value) {
    let ns = s(pod, &["metadata", "namespace"]).unwrap_or_default();
    let name = s(pod, &["metadata", "name"])
        .unwrap_or_default()
        .to_string();
    store.with(|st| {
        if st
            .get_obj(&pods_key(), ns, &name)
            .is_some_and(|p| p["metadata"]["uid"] == pod["metadata"]["uid"])
        {
            let _ = st.delete(
                &pod_target(ns),
                &name,
                &DeleteOpts {
                    grace_seconds: Some(0),
                    ..Default::default()
                },
            );
        }
    });
}

struct Outcome {
    exit_code: i32,
    signal: Option<i32>,
    started: String,
    finished: String,
    message: String,
    pid: u32,
}

fn spawn(plan: &Plan) -> std::io::Result<tokio::process::Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&plan.log_file)?;
    let log2 = log.try_clone()?;
    let mut cmd = tokio::process::Command::new(&plan.argv[0]);
    cmd.args(&plan.argv[1..])
        .env_clear()
        .envs(plan.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&plan.workdir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .kill_on_drop(true);
    cmd.spawn()
}

fn read_message(plan: &Plan, failed: bool) -> String {
    let mut msg = std::fs::read_to_string(&plan.term_file).unwrap_or_default();
    msg.truncate(4096);
    if msg.is_empty() && failed && plan.fallback_to_logs {
        let log = std::fs::read_to_string(&plan.log_file).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        msg = tail
            .chars()
            .rev()
            .take(2048)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
    }
    msg
}

/// Runs one container until it ends or the pod is stopped, restarting per restartPolicy.
async fn run_container(
    store: &Store,
    pod: &Value,
    plan: &Plan,
    policy: &str,
    pgids: Arc<Mutex<Vec<i32>>>,
    mut stop: watch::Receiver<Option<i64>>,
) -> Outcome {
    let ns = s(pod, &["metadata", "namespace"])
        .unwrap_or_default()
        .to_string();
    let name = s(pod, &["metadata", "name"])
        .unwrap_or_default()
        .to_string();
    let uid = s(pod, &["metadata", "uid"]).unwrap_or_default().to_string();
    let mut restarts = 0;
    loop {
        let started = now();
        let mut child = match spawn(plan) {
            Ok(c) => c,
            Err(e) => {
                return Outcome {
                    exit_code: 128,
                    signal: None,
                    started: started.clone(),
                    finished: now(),
                    message: format!("failed to start {:?}: {e}", plan.argv[0]),
                    pid: 0,
                };
            }
        };
        let pid = child.id().unwrap_or(0);
        pgids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pid as i32);
        set_container_state(
            store,
            &ns,
            &name,
            &uid,
            &plan.name,
            restarts,
            json!({"running": {"startedAt": started}}),
            true,
        );
        let mut stopping: Option<i64> = None;
        let status = loop {
            if let Some(grace) = stopping {
                signal(pid as i32, libc::SIGTERM);
                match tokio::time::timeout(Duration::from_secs(grace.max(0) as u64), child.wait())
                    .await
                {
                    Ok(s) => break s,
                    Err(_) => {
                        signal(pid as i32, libc::SIGKILL);
                        break child.wait().await;
                    }
                }
            }
            tokio::select! {
                s = child.wait() => break s,
                changed = stop.changed() => {
                    if changed.is_err() {
                        stopping = Some(0);
                    } else if let Some(g) = *stop.borrow() {
                        stopping = Some(g);
                    }
                }
            }
        };
        pgids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| *p != pid as i32);
        // The process group may still hold children of a shell; take them down too.
        signal(pid as i32, libc::SIGKILL);
        use std::os::unix::process::ExitStatusExt;
        let (code, sig) = match status {
            Ok(st) => match (st.code(), st.signal()) {
                (Some(c), _) => (c, None),
                (None, Some(sg)) => (128 + sg, Some(sg)),
                _ => (1, None),
            },
            Err(_) => (1, None),
        };
        let out = Outcome {
            exit_code: code,
            signal: sig,
            started,
            finished: now(),
            message: read_message(plan, code != 0),
            pid,
        };
        let stopped = stop.borrow().is_some();
        let restart = !stopped && (policy == "Always" || policy == "OnFailure" && code != 0);
        if !restart {
            return out;
        }
        restarts += 1;
        set_container_state(
            store,
            &ns,
            &name,
            &uid,
            &plan.name,
            restarts,
            terminated_state(&out),
            false,
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn terminated_state(o: &Outcome) -> Value {
    let reason = if o.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let mut t = json!({
        "exitCode": o.exit_code, "reason": reason, "startedAt": o.started, "finishedAt": o.finished,
        "containerID": format!("emulator://{}", o.pid)
    });
    if let Some(sg) = o.signal {
        t["signal"] = json!(sg);
    }
    if !o.message.is_empty() {
        t["message"] = json!(o.message);
    }
    json!({"terminated": t})
}

#[allow(clippy::too_many_arguments)]
fn set_container_state(
    store: &Store,
    ns: &str,
    name: &str,
    uid: &str,
    cname: &str,
    restarts: i64,
    state: Value,
    ready: bool,
) {
    update_pod(store, ns, name, uid, |p| {
        let image = p["spec"]["containers"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == cname))
            .map(|c| c["image"].clone())
            .unwrap_or(Value::Null);
        let total = p["spec"]["containers"]
            .as_array()
            .map(|a| a.len())
            .unwrap_or(0);
        let status = &mut p["status"];
        if !status["containerStatuses"].is_array() {
            status["containerStatuses"] = json!([]);
        }
        let list = status["containerStatuses"].as_array_mut().expect("array");
        let entry = json!({
            "name": cname, "state": state, "ready": ready, "restartCount": restarts, "started": ready,
            "image": image, "imageID": "", "containerID": ""
        });
        match list.iter_mut().find(|c| c["name"] == cname) {
            Some(c) => *c = entry,
            None => list.push(entry),
        }
        let all_ready = total
            == status["containerStatuses"]
                .as_array()
                .map(|l| l.iter().filter(|c| c["ready"] == true).count())
                .unwrap_or(0);
        if status["phase"] == "Pending" && ready {
            status["phase"] = json!("Running");
            status["startTime"] = json!(now());
            status["hostIP"] = json!("127.0.0.1");
            status["podIP"] = json!("127.0.0.1");
        }
        let r = if all_ready { "True" } else { "False" };
        status["conditions"] = json!([
            {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": now()},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now()},
            {"type": "Ready", "status": r, "lastTransitionTime": now()},
            {"type": "ContainersReady", "status": r, "lastTransitionTime": now()},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}
        ]);
    });
}

async fn run_pod(
    store: &Arc<Store>,
    cfg: &KubeletConfig,
    pod: &Value,
    plans: Vec<Plan>,
    pgids: Arc<Mutex<Vec<i32>>>,
    stop: watch::Receiver<Option<i64>>,
) {
    let ns = s(pod, &["metadata", "namespace"])
        .unwrap_or_default()
        .to_string();
    let name = s(pod, &["metadata", "name"])
        .unwrap_or_default()
        .to_string();
    let uid = s(pod, &["metadata", "uid"]).unwrap_or_default().to_string();
    let policy = pod["spec"]["restartPolicy"]
        .as_str()
        .unwrap_or("Always")
        .to_string();
    if let Some(p) = plans.first() {
        cfg.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((ns.clone(), name.clone()), p.log_file.clone());
    }
    let futs = plans
        .iter()
        .map(|p| run_container(store, pod, p, &policy, pgids.clone(), stop.clone()));
    let outcomes = futures::future::join_all(futs).await;
    let all_ok = outcomes.iter().all(|o| o.exit_code == 0);
    update_pod(store, &ns, &name, &uid, |p| {
        let statuses: Vec<Value> = plans
            .iter()
            .zip(&outcomes)
            .map(|(plan, o)| {
                let restarts = p["status"]["containerStatuses"].as_array().and_then(|a| a.iter().find(|c| c["name"] == plan.name.as_str())).and_then(|c| c["restartCount"].as_i64()).unwrap_or(0);
                json!({
                    "name": plan.name, "state": terminated_state(o), "ready": false, "restartCount": restarts,
                    "started": false, "image": plan.image, "imageID": "", "containerID": format!("emulator://{}", o.pid)
                })
            })
            .collect();
        let status = &mut p["status"];
        status["containerStatuses"] = json!(statuses);
        status["phase"] = json!(if all_ok { "Succeeded" } else { "Failed" });
        if status["startTime"].is_null() {
            status["startTime"] = json!(now());
        }
        status["conditions"] = json!([
            {"type": "PodReadyToStartContainers", "status": "False", "lastTransitionTime": now()},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now()},
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now()},
            {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now()},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}
        ]);
    });
    if stop.borrow().is_some() {
        let current = store.with(|st| st.get_obj(&pods_key(), &ns, &name).cloned());
        if let Some(p) = current {
            finalize_deletion(store, &p);
        }
    }
}
