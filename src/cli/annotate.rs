//! `tally cancel`, `tally resume` and `tally retrigger`: set the annotations the
//! controller acts on, as `kubectl annotate` would.

use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;

use std::process::ExitCode;

use super::runtime;

use crate::api::{
    CANCEL_ANNOTATION, MetricCalculation, RESUME_ANNOTATION, RETRIGGER_ANNOTATION,
    ScheduledMetricCalculation,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Cancel,
    Resume,
    Retrigger,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Calculation,
    Schedule,
}

impl Kind {
    fn resource(self) -> &'static str {
        match self {
            Self::Calculation => "metriccalculation.tally.dev",
            Self::Schedule => "scheduledmetriccalculation.tally.dev",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnnotateError {
    #[error("{0:?} is not KIND/NAME: write e.g. mc/checkout-conversion or smc/daily-revenue")]
    Target(String),
    #[error("unknown kind {0:?}: use mc (MetricCalculation) or smc (ScheduledMetricCalculation)")]
    Kind(String),
    #[error("{0}")]
    NotApplicable(&'static str),
    #[error("{resource}/{name} not found in namespace {namespace}")]
    NotFound {
        resource: &'static str,
        name: String,
        namespace: String,
    },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("no cluster to talk to: {0}")]
    Config(String),
    #[error("could not reach the API server {server}{context}: {message}")]
    Unreachable {
        server: String,
        /// ` (kubeconfig context NAME)`, or empty in a Pod.
        context: String,
        message: String,
    },
}

/// The cluster `tally cancel` and friends talk to: where the kubeconfig (or the Pod's
/// in-cluster config) points, so an error can name it.
pub struct Cluster {
    client: Client,
    server: String,
    context: Option<String>,
}

impl Cluster {
    /// The cluster of `KUBECONFIG` (or `~/.kube/config`), else the in-cluster config.
    pub async fn connect() -> Result<Self, AnnotateError> {
        let config = kube::Config::infer()
            .await
            .map_err(|e| AnnotateError::Config(error_chain(&e)))?;
        let server = config.cluster_url.to_string();
        let context = kube::config::Kubeconfig::read()
            .ok()
            .and_then(|kubeconfig| kubeconfig.current_context);
        let client =
            Client::try_from(config).map_err(|e| AnnotateError::Config(error_chain(&e)))?;
        Ok(Self {
            client,
            server,
            context,
        })
    }

    /// An error of a request to this cluster, naming it when it was not reached.
    fn error(&self, error: kube::Error) -> AnnotateError {
        match error {
            kube::Error::Api(_) => error.into(),
            other => AnnotateError::Unreachable {
                server: self.server.clone(),
                context: self
                    .context
                    .as_ref()
                    .map(|c| format!(" (kubeconfig context {c})"))
                    .unwrap_or_default(),
                message: error_chain(&other),
            },
        }
    }
}

/// An error with its causes: a bare "client error (Connect)" does not say that the
/// connection was refused.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text = format!("{text}: {message}");
        }
        source = cause.source();
    }
    text
}

/// Parses `mc/NAME`, `metriccalculation/NAME`, `smc/NAME`, … (optionally with
/// `.tally.dev` after the kind).
pub fn parse_target(target: &str) -> Result<(Kind, String), AnnotateError> {
    let (kind, name) = target
        .split_once('/')
        .filter(|(k, n)| !k.is_empty() && !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| AnnotateError::Target(target.to_string()))?;
    let kind_lower = kind.to_ascii_lowercase();
    let kind_name = kind_lower.strip_suffix(".tally.dev").unwrap_or(&kind_lower);
    let kind = match kind_name {
        "mc" | "metriccalculation" | "metriccalculations" => Kind::Calculation,
        "smc" | "scheduledmetriccalculation" | "scheduledmetriccalculations" => Kind::Schedule,
        _ => return Err(AnnotateError::Kind(kind.to_string())),
    };
    Ok((kind, name.to_string()))
}

/// The annotation a request sets on a kind, with its value.
pub fn annotation(
    request: Request,
    kind: Kind,
    now: jiff::Timestamp,
) -> Result<(&'static str, String), AnnotateError> {
    match (request, kind) {
        (Request::Cancel, _) => Ok((CANCEL_ANNOTATION, "true".into())),
        (Request::Resume, Kind::Schedule) => Ok((RESUME_ANNOTATION, "true".into())),
        (Request::Retrigger, Kind::Schedule) => Ok((RETRIGGER_ANNOTATION, now.to_string())),
        (Request::Resume, Kind::Calculation) => Err(AnnotateError::NotApplicable(
            "only schedules resume: to run a calculation again, change its spec or apply a new one",
        )),
        (Request::Retrigger, Kind::Calculation) => Err(AnnotateError::NotApplicable(
            "only schedules retrigger: to run a calculation again, change its spec or apply a new one",
        )),
    }
}

/// What to annotate, checked before any cluster is contacted.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    kind: Kind,
    name: String,
    request: Request,
    key: &'static str,
    value: String,
}

/// Checks a target and request: a typo fails here, without a cluster.
pub fn prepare(target: &str, request: Request) -> Result<Annotation, AnnotateError> {
    let (kind, name) = parse_target(target)?;
    let (key, value) = annotation(request, kind, jiff::Timestamp::now())?;
    Ok(Annotation {
        kind,
        name,
        request,
        key,
        value,
    })
}

/// Sets the annotation on the resource; returns what to print.
pub async fn annotate(
    cluster: &Cluster,
    namespace: Option<&str>,
    annotation: Annotation,
) -> Result<String, AnnotateError> {
    let client = cluster.client.clone();
    let Annotation {
        kind,
        name,
        request,
        key,
        value,
    } = annotation;
    let namespace = namespace
        .map(str::to_string)
        .unwrap_or_else(|| client.default_namespace().to_string());
    let patch = Patch::Merge(json!({ "metadata": { "annotations": { key: value } } }));
    let params = PatchParams::default();
    let result = match kind {
        Kind::Calculation => Api::<MetricCalculation>::namespaced(client, &namespace)
            .patch(&name, &params, &patch)
            .await
            .map(drop),
        Kind::Schedule => Api::<ScheduledMetricCalculation>::namespaced(client, &namespace)
            .patch(&name, &params, &patch)
            .await
            .map(drop),
    };
    match result {
        Ok(()) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {
            return Err(AnnotateError::NotFound {
                resource: kind.resource(),
                name,
                namespace,
            });
        }
        Err(e) => return Err(cluster.error(e)),
    }
    let verb = match request {
        Request::Cancel => "cancel requested",
        Request::Resume => "resume requested",
        Request::Retrigger => "retrigger requested",
    };
    Ok(format!("{}/{name} {verb}\n", kind.resource()))
}

/// `tally cancel`, `resume` and `retrigger`.
pub fn command(target: &str, namespace: Option<String>, request: Request) -> ExitCode {
    // A typo fails here, before any cluster is contacted.
    let annotation = match prepare(target, request) {
        Ok(annotation) => annotation,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let result = match Cluster::connect().await {
            Ok(cluster) => annotate(&cluster, namespace.as_deref(), annotation)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_a_kind_and_an_object() {
        assert_eq!(
            parse_target("mc/checkout").unwrap(),
            (Kind::Calculation, "checkout".into())
        );
        assert_eq!(
            parse_target("ScheduledMetricCalculation.tally.dev/daily").unwrap(),
            (Kind::Schedule, "daily".into())
        );
        assert!(matches!(
            parse_target("daily"),
            Err(AnnotateError::Target(_))
        ));
        assert!(matches!(
            parse_target("smc/"),
            Err(AnnotateError::Target(_))
        ));
        let error = parse_target("pod/daily").unwrap_err().to_string();
        assert!(error.contains("use mc"), "{error}");
    }

    #[test]
    fn requests_set_the_controller_annotations() {
        let now: jiff::Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        assert_eq!(
            annotation(Request::Cancel, Kind::Calculation, now).unwrap(),
            (CANCEL_ANNOTATION, "true".into())
        );
        assert_eq!(
            annotation(Request::Resume, Kind::Schedule, now).unwrap(),
            (RESUME_ANNOTATION, "true".into())
        );
        // Each retrigger is a new value, so the controller tells requests apart.
        assert_eq!(
            annotation(Request::Retrigger, Kind::Schedule, now).unwrap(),
            (RETRIGGER_ANNOTATION, "2026-11-23T10:00:00Z".into())
        );
        assert!(annotation(Request::Resume, Kind::Calculation, now).is_err());
    }
}
