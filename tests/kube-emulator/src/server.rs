//! The HTTP front end: URL routing, query parsing and JSON responses.

use crate::discovery;
use crate::error::{ApiError, ApiResult};
use crate::faults::{Fault, Faults};
use crate::patch::{PatchType, parse_body};
use crate::resources::ResourceDef;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{DeleteOpts, Deleted, ListOpts, Store, Sub, Target, WriteOpts};
use crate::table;
use crate::watch::{self, WatchRequest};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch as tokio_watch;

pub type Body = BoxBody<Bytes, Infallible>;

/// Everything a request handler needs.
pub struct Ctx {
    pub store: Arc<Store>,
    pub faults: Arc<Faults>,
    pub addr: String,
    pub bookmark_every: Duration,
    pub shutdown: tokio_watch::Receiver<bool>,
    /// Pod name → captured output file, for `pods/log`.
    pub logs: Arc<std::sync::Mutex<HashMap<(String, String), PathBuf>>>,
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

pub fn json_response(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("Content-Type", "application/json")
        .body(full(serde_json::to_vec(v).unwrap_or_default()))
        .expect("valid response")
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

fn fault_error(code: u16) -> ApiError {
    let reason = match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    };
    ApiError::new(code, reason, format!("injected fault: {reason}"))
}

/// Parses a query string, ignoring the empty pairs kube sends (`?&watch=true`).
fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(decode(k), decode(v));
    }
    out
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Entry point for one HTTP request. `Err` closes the connection (fault injection).
pub async fn handle(
    ctx: Arc<Ctx>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    if let Some(f) = ctx.faults.take(&method, &path) {
        match f {
            Fault::Drop => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "injected connection drop",
                ));
            }
            Fault::Status(code) => return Ok(error_response(&fault_error(code))),
            Fault::Hang => std::future::pending::<()>().await,
        }
    }
    let query = parse_query(req.uri().query());
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let accept = header("accept");
    let content_type = header("content-type");
    let user_agent = header("user-agent");
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    // Typed client-go clients (e.g. `kubectl create configmap`) send protobuf; only JSON
    // and YAML are understood here, so say so the way a server does for unknown types.
    if content_type.starts_with("application/vnd.kubernetes.protobuf") {
        return Ok(error_response(&ApiError::new(
            415,
            "UnsupportedMediaType",
            "kube-emulator accepts JSON and YAML bodies only, not protobuf; use `kubectl apply/create -f` instead of generator commands",
        )));
    }
    let r = Routed {
        method,
        path,
        query,
        accept,
        content_type,
        user_agent,
        body,
    };
    tracing::debug!(method = %r.method, path = %r.path, "request");
    Ok(match route(&ctx, &r).await {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    })
}

struct Routed {
    method: String,
    path: String,
    query: HashMap<String, String>,
    accept: String,
    content_type: String,
    user_agent: String,
    body: Bytes,
}

impl Routed {
    fn q(&self, k: &str) -> Option<&str> {
        self.query
            .get(k)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.q(k), Some("true") | Some("1"))
    }

    /// kubectl and client-go name the manager; otherwise the user agent's program name,
    /// which is what the real server records.
    fn manager(&self) -> Option<String> {
        self.q("fieldManager").map(String::from).or_else(|| {
            let ua = self.user_agent.split('/').next().unwrap_or("").trim();
            (!ua.is_empty()).then(|| ua.to_string())
        })
    }

    fn write_opts(&self) -> WriteOpts {
        WriteOpts {
            dry_run: self.q("dryRun") == Some("All"),
            field_manager: self.manager(),
            strict: self.q("fieldValidation") == Some("Strict"),
            force: self.flag("force"),
        }
    }
}

async fn route(ctx: &Arc<Ctx>, r: &Routed) -> ApiResult<Response<Body>> {
    let segs: Vec<&str> = r
        .path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let reg = || ctx.store.registry();
    let nf = || ApiError::page_not_found(&r.path);
    match segs.as_slice() {
        ["version"] => Ok(json_response(200, &discovery::version())),
        ["healthz"] | ["readyz"] | ["livez"] => Ok(Response::new(full("ok"))),
        ["api"] => Ok(json_response(200, &discovery::core_versions(&ctx.addr))),
        ["apis"] => Ok(json_response(200, &discovery::group_list(&reg()))),
        ["api", v] => discovery::resource_list(&reg(), "", v)
            .map(|d| json_response(200, &d))
            .ok_or_else(nf),
        ["apis", g] => discovery::group(&reg(), g)
            .map(|d| json_response(200, &d))
            .ok_or_else(nf),
        ["apis", g, v] => discovery::resource_list(&reg(), g, v)
            .map(|d| json_response(200, &d))
            .ok_or_else(nf),
        ["openapi", "v3"] => Ok(json_response(200, &discovery::openapi_v3_index(&reg()))),
        ["openapi", "v3", "api", v] => discovery::openapi_v3_gv(&reg(), "", v)
            .map(|d| json_response(200, &d))
            .ok_or_else(nf),
        ["openapi", "v3", "apis", g, v] => discovery::openapi_v3_gv(&reg(), g, v)
            .map(|d| json_response(200, &d))
            .ok_or_else(nf),
        ["api", v, rest @ ..] => resource(ctx, r, "", v, rest).await,
        ["apis", g, v, rest @ ..] => resource(ctx, r, g, v, rest).await,
        _ => Err(nf()),
    }
}

async fn resource(
    ctx: &Arc<Ctx>,
    r: &Routed,
    group: &str,
    version: &str,
    rest: &[&str],
) -> ApiResult<Response<Body>> {
    let reg = ctx.store.registry();
    let nf = || ApiError::page_not_found(&r.path);
    // `/namespaces/{ns}/{plural}...` is namespaced unless {plural} isn't a namespaced type,
    // in which case it is the Namespace object's own subresource.
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if reg
                .lookup(group, version, plural)
                .is_some_and(|d| d.namespaced) =>
        {
            (Some(ns.to_string()), [&[*plural][..], tail].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(*n), None),
        [p, n, s] => (*p, Some(*n), Some(*s)),
        _ => return Err(nf()),
    };
    let def = reg.lookup(group, version, plural).cloned().ok_or_else(nf)?;
    if namespace.is_some() && !def.namespaced {
        return Err(nf());
    }
    let t = Target {
        res: def.key(),
        version: version.to_string(),
        namespace: namespace.clone(),
    };
    let metadata_only = table::wants_metadata(&r.accept);
    let present = |mut v: Value| {
        v["apiVersion"] = json!(def.api_version(version));
        if metadata_only { table::partial(&v) } else { v }
    };
    match (name, sub) {
        (None, None) => collection(ctx, r, &def, &t).await,
        (Some(name), None) => {
            if def.namespaced && namespace.is_none() {
                return Err(nf());
            }
            match r.method.as_str() {
                "GET" => {
                    let object = present(ctx.store.with(|s| s.get_view(&t, name))?);
                    // `kubectl get KIND NAME` asks for a Table, as for a list: a plain
                    // object would lose the printer columns.
                    if table::wants_table(&r.accept) && !metadata_only {
                        let include = r.q("includeObject").unwrap_or("Metadata").to_string();
                        let meta =
                            json!({"resourceVersion": object["metadata"]["resourceVersion"]});
                        return Ok(json_response(
                            200,
                            &table::table(&def, version, &[object], &include, meta),
                        ));
                    }
                    Ok(json_response(200, &object))
                }
                "PUT" => {
                    let body = parse_body(&r.body)?;
                    let opts = r.write_opts();
                    Ok(json_response(
                        200,
                        &present(
                            ctx.store
                                .with(|s| s.update(&t, name, body, &opts, Sub::Main, false))?,
                        ),
                    ))
                }
                "PATCH" => {
                    patch(ctx, r, &t, name, Sub::Main).map(|v| json_response(200, &present(v)))
                }
                "DELETE" => delete(ctx, r, &def, &t, name),
                _ => Err(ApiError::method_not_allowed(format!(
                    "{} is not supported",
                    r.method
                ))),
            }
        }
        (Some(name), Some("status")) if def.has_status(version) => match r.method.as_str() {
            "GET" => Ok(json_response(
                200,
                &present(ctx.store.with(|s| s.get(&t, name))?),
            )),
            "PUT" => {
                let body = parse_body(&r.body)?;
                let opts = r.write_opts();
                Ok(json_response(
                    200,
                    &present(
                        ctx.store
                            .with(|s| s.update(&t, name, body, &opts, Sub::Status, false))?,
                    ),
                ))
            }
            "PATCH" => {
                patch(ctx, r, &t, name, Sub::Status).map(|v| json_response(200, &present(v)))
            }
            _ => Err(ApiError::method_not_allowed(format!(
                "{} is not supported on status",
                r.method
            ))),
        },
        (Some(name), Some("log")) if def.kind == "Pod" && def.group.is_empty() => {
            ctx.store.with(|s| s.get(&t, name))?;
            let ns = namespace.unwrap_or_default();
            let file = ctx
                .logs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&(ns, name.to_string()))
                .cloned();
            let text = file.and_then(|f| std::fs::read(f).ok()).unwrap_or_default();
            Ok(Response::builder()
                .header("Content-Type", "text/plain")
                .body(full(text))
                .expect("valid response"))
        }
        _ => Err(nf()),
    }
}

fn patch(ctx: &Arc<Ctx>, r: &Routed, t: &Target, name: &str, sub: Sub) -> ApiResult<Value> {
    let ptype = PatchType::from_content_type(&r.content_type)
        .ok_or_else(|| ApiError::unsupported_media(&r.content_type))?;
    let opts = r.write_opts();
    ctx.store
        .with(|s| s.patch(t, name, ptype, &r.body, &opts, sub))
}

fn delete_opts(r: &Routed) -> ApiResult<DeleteOpts> {
    let body = if r.body.is_empty() {
        json!({})
    } else {
        parse_body(&r.body)?
    };
    Ok(DeleteOpts {
        propagation: r
            .q("propagationPolicy")
            .map(String::from)
            .or_else(|| body["propagationPolicy"].as_str().map(String::from))
            .or_else(|| {
                // The deprecated orphanDependents flag still comes from older clients.
                body["orphanDependents"].as_bool().map(|o| {
                    if o {
                        "Orphan".into()
                    } else {
                        "Background".into()
                    }
                })
            }),
        grace_seconds: r
            .q("gracePeriodSeconds")
            .and_then(|g| g.parse().ok())
            .or_else(|| body["gracePeriodSeconds"].as_i64()),
        uid: body["preconditions"]["uid"].as_str().map(String::from),
        resource_version: body["preconditions"]["resourceVersion"]
            .as_str()
            .map(String::from),
        dry_run: r.q("dryRun") == Some("All")
            || body["dryRun"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "All")),
    })
}

fn delete(
    ctx: &Arc<Ctx>,
    r: &Routed,
    def: &ResourceDef,
    t: &Target,
    name: &str,
) -> ApiResult<Response<Body>> {
    let opts = delete_opts(r)?;
    let out = ctx.store.with(|s| s.delete(t, name, &opts))?;
    let mut obj = match out {
        Deleted::Gone(o) => {
            // Like the real server for most kinds: a Status once the object is gone.
            let status = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "group": def.group, "kind": def.plural, "uid": o["metadata"]["uid"]}
            });
            if def.custom {
                return Ok(json_response(200, &status));
            }
            o
        }
        Deleted::Pending(o) => o,
    };
    obj["apiVersion"] = json!(def.api_version(&t.version));
    Ok(json_response(200, &obj))
}

async fn collection(
    ctx: &Arc<Ctx>,
    r: &Routed,
    def: &Arc<ResourceDef>,
    t: &Target,
) -> ApiResult<Response<Body>> {
    let labels = LabelSelector::parse(r.q("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(r.q("fieldSelector").unwrap_or(""))?;
    let table_include = table::wants_table(&r.accept)
        .then(|| r.q("includeObject").unwrap_or("Metadata").to_string());
    match r.method.as_str() {
        "GET" if r.flag("watch") => {
            let req = WatchRequest {
                def: def.clone(),
                version: t.version.clone(),
                namespace: t.namespace.clone(),
                labels,
                fields,
                resource_version: r.q("resourceVersion").unwrap_or("").to_string(),
                bookmarks: r.flag("allowWatchBookmarks"),
                send_initial_events: r.flag("sendInitialEvents"),
                timeout: r
                    .q("timeoutSeconds")
                    .and_then(|s| s.parse().ok())
                    .map(Duration::from_secs),
                table: table_include,
                metadata_only: table::wants_metadata(&r.accept),
            };
            let rx = watch::start(
                ctx.store.clone(),
                ctx.faults.clone(),
                req,
                ctx.bookmark_every,
                ctx.shutdown.clone(),
            )
            .await;
            let stream = rx.map(|b| Ok::<_, Infallible>(Frame::data(b)));
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header("Content-Type", "application/json")
                .header("Transfer-Encoding", "chunked")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .expect("valid response"))
        }
        "GET" => {
            let opts = ListOpts {
                labels,
                fields,
                limit: r.q("limit").and_then(|l| l.parse().ok()),
                continue_token: r.q("continue").map(String::from),
            };
            let res = ctx.store.with(|s| s.list(t, &opts))?;
            let mut meta = json!({"resourceVersion": res.resource_version.to_string()});
            if let Some(c) = &res.continue_token {
                meta["continue"] = json!(c);
            }
            if let Some(n) = res.remaining {
                meta["remainingItemCount"] = json!(n);
            }
            let api_version = def.api_version(&t.version);
            // Stored objects carry the apiVersion they were written through; only those
            // written through another version of the type are copied to change it.
            let items: Vec<Arc<Value>> = res
                .items
                .into_iter()
                .map(|o| {
                    if o["apiVersion"] == api_version.as_str() {
                        o
                    } else {
                        let mut o = (*o).clone();
                        o["apiVersion"] = json!(api_version);
                        Arc::new(o)
                    }
                })
                .collect();
            if table::wants_metadata(&r.accept) {
                let items: Vec<Value> = items.iter().map(|o| table::partial(o)).collect();
                return Ok(json_response(
                    200,
                    &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items}),
                ));
            }
            if let Some(include) = table_include {
                let items: Vec<Value> = items.iter().map(|o| (**o).clone()).collect();
                return Ok(json_response(
                    200,
                    &table::table(def, &t.version, &items, &include, meta),
                ));
            }
            #[derive(serde::Serialize)]
            #[serde(rename_all = "camelCase")]
            struct List<'a> {
                kind: &'a str,
                api_version: &'a str,
                metadata: Value,
                items: Vec<&'a Value>,
            }
            let list = List {
                kind: &def.list_kind,
                api_version: &api_version,
                metadata: meta,
                items: items.iter().map(|o| &**o).collect(),
            };
            Ok(Response::builder()
                .status(200)
                .header("Content-Type", "application/json")
                .body(full(serde_json::to_vec(&list).unwrap_or_default()))
                .expect("valid response"))
        }
        "POST" => {
            if def.namespaced && t.namespace.is_none() {
                return Err(ApiError::page_not_found(&r.path));
            }
            let body = parse_body(&r.body)?;
            let opts = r.write_opts();
            let mut created = ctx.store.with(|s| s.create(t, body, &opts))?;
            created["apiVersion"] = json!(def.api_version(&t.version));
            Ok(json_response(201, &created))
        }
        "DELETE" => {
            let opts = delete_opts(r)?;
            let lopts = ListOpts {
                labels,
                fields,
                ..Default::default()
            };
            let items = ctx.store.with(|s| -> ApiResult<Vec<Value>> {
                let list = s.list(t, &lopts)?;
                let mut out = Vec::new();
                for o in list.items {
                    let name = o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let nt = Target {
                        namespace: o["metadata"]["namespace"].as_str().map(String::from),
                        ..t.clone()
                    };
                    if let Ok(Deleted::Gone(v) | Deleted::Pending(v)) = s.delete(&nt, &name, &opts)
                    {
                        out.push(v);
                    }
                }
                Ok(out)
            })?;
            Ok(json_response(
                200,
                &json!({"kind": def.list_kind, "apiVersion": def.api_version(&t.version), "metadata": {}, "items": items}),
            ))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{} is not supported on collections",
            r.method
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_tolerates_empty_pairs_and_decodes() {
        let q = parse_query(Some(
            "&watch=true&labelSelector=a%3Db%2Cc+in+(x)&&timeoutSeconds=5",
        ));
        assert_eq!(q.get("watch").map(String::as_str), Some("true"));
        assert_eq!(
            q.get("labelSelector").map(String::as_str),
            Some("a=b,c in (x)")
        );
        assert_eq!(q.len(), 3);
    }
}
