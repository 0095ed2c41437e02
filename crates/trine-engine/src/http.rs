//! The `http` trigger type: route table, handler input, response mapping (http.md).
//!
//! No sockets here: `trine-server` owns the listener and calls [`HttpRoutes::route`],
//! [`request_object`] and [`map_result`]/[`error_reply`], so the whole pipeline is testable
//! without a network.
//!
//! Route ownership mirrors function ownership: a second trigger for the same method and path does
//! not steal the route from a live binding; it waits as a standby and serves once the first
//! binding is removed (http.md weakness 8, fixed on purpose).
//!
//! In a group of engines, each engine serves its own listener and also the routes registered on
//! the others: [`HttpRoutes::local_triggers`] is what this engine announces,
//! [`HttpRoutes::set_remote`] takes what the others announced. A remote route is parsed by the
//! same code as a local one and dispatched the same way; its function (and condition and
//! middleware) are called by id, and a call with no local handler is forwarded to an engine that
//! has one. Matching considers both sets: the most specific route wins, and a local route wins
//! over a remote one of the same shape, so a request is routed the same way on every engine.

use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use trine_protocol::{codes, ErrorBody};

use crate::registry::{TriggerEntry, TriggerProvider};

/// Methods a route can be mounted on.
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Param(String),
}

/// The function a route invokes, from one `http` trigger.
#[derive(Debug, Clone)]
pub struct Binding {
    pub trigger_id: String,
    pub function_id: String,
    pub condition_function_id: Option<String>,
    /// Per-route middleware (`middleware_function_ids`), run in order after the condition.
    pub middleware: Vec<String>,
    pub metadata: Option<Value>,
    /// Announced by another engine of the group (`trigger_id` is then empty): the function is
    /// called by id and the call forwarded to an engine that has it.
    pub remote: bool,
}

/// A route registered on another engine, as announced: the `http` trigger's function, its
/// config exactly as registered (parsed here by the same code as a local registration) and its
/// metadata (passed to the calls, as for a local route).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteRoute {
    pub function_id: String,
    pub config: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// A binding with the config it was parsed from (announced to other engines).
#[derive(Debug)]
struct Bound {
    binding: Binding,
    config: Value,
}

#[derive(Debug)]
struct Route {
    method: String,
    /// `api_path` exactly as registered (what handlers see in `path`).
    template: String,
    segments: Vec<Seg>,
    /// `bindings[0]` serves; the rest are standbys, oldest first (remote routes have one).
    bindings: Vec<Bound>,
}

/// One `http` trigger config, parsed.
struct Parsed {
    method: String,
    template: String,
    segments: Vec<Seg>,
    binding: Binding,
}

/// Parses an `http` trigger config (shared by local registrations and remote announcements).
fn parse_route(
    trigger_id: &str,
    function_id: &str,
    config: &Value,
    metadata: &Option<Value>,
    remote: bool,
) -> Result<Parsed, String> {
    let api_path = config
        .get("api_path")
        .and_then(Value::as_str)
        .ok_or("api_path is required for http triggers (a string such as \"/todos/:id\")")?;
    let method = match config.get("http_method") {
        Some(Value::String(m)) => m.to_ascii_uppercase(),
        None | Some(Value::Null) => "GET".to_owned(),
        Some(_) => return Err("http_method must be a string such as \"POST\"".into()),
    };
    if !METHODS.contains(&method.as_str()) {
        return Err(format!(
            "http_method `{method}` is not supported (use one of {})",
            METHODS.join(", ")
        ));
    }
    let segments = parse_template(api_path);
    if let Some(empty) = segments
        .iter()
        .position(|s| matches!(s, Seg::Lit(l) if l.is_empty()))
    {
        if empty + 1 != segments.len() {
            return Err(format!("api_path `{api_path}` has an empty segment"));
        }
    }
    let binding = Binding {
        trigger_id: trigger_id.to_owned(),
        function_id: function_id.to_owned(),
        condition_function_id: config
            .get("condition_function_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        middleware: config
            .get("middleware_function_ids")
            .and_then(Value::as_array)
            .map(|ids| {
                ids.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        metadata: metadata.clone(),
        remote,
    };
    Ok(Parsed {
        method,
        template: api_path.to_owned(),
        segments,
        binding,
    })
}

/// The route table: routes of this engine's workers, and those announced by other engines.
#[derive(Default)]
struct Table {
    local: Vec<Route>,
    remote: Vec<Route>,
}

/// Result of matching a request against the table.
#[derive(Debug)]
pub enum RouteMatch {
    Found {
        binding: Box<Binding>,
        template: String,
        path_params: Map<String, Value>,
    },
    /// The path exists under other methods.
    MethodNotAllowed {
        allow: Vec<String>,
    },
    NotFound,
}

/// The `http` trigger type's provider and route table.
#[derive(Default)]
pub struct HttpRoutes {
    table: RwLock<Table>,
}

fn parse_template(path: &str) -> Vec<Seg> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    if trimmed.is_empty() {
        return Vec::new();
    }
    trimmed
        .split('/')
        .map(|s| match s.strip_prefix(':') {
            Some(name) if !name.is_empty() => Seg::Param(name.to_owned()),
            _ => Seg::Lit(s.to_owned()),
        })
        .collect()
}

fn same_shape(a: &[Seg], b: &[Seg]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Seg::Lit(p), Seg::Lit(q)) => p == q,
            (Seg::Param(_), Seg::Param(_)) => true,
            _ => false,
        })
}

impl HttpRoutes {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Finds the binding for a request among local and remote routes. Static segments win over
    /// parameters at the first position where candidate routes differ (`/todos/metrics` beats
    /// `/todos/:id`); between a local and a remote route of the same shape, the local one wins.
    pub fn route(&self, method: &str, path: &str) -> RouteMatch {
        let req: Vec<&str> = {
            let t = path.strip_prefix('/').unwrap_or(path);
            if t.is_empty() {
                Vec::new()
            } else {
                t.split('/').collect()
            }
        };
        let table = self.read();
        // Local routes after remote ones: `max_by_key` keeps the last of equal keys.
        let routes = || table.remote.iter().chain(&table.local);
        let matches_path = |r: &Route| {
            r.segments.len() == req.len()
                && r.segments.iter().zip(&req).all(|(s, p)| match s {
                    Seg::Lit(l) => l == p,
                    Seg::Param(_) => !p.is_empty(),
                })
        };
        let specificity = |r: &Route| -> Vec<bool> {
            r.segments
                .iter()
                .map(|s| matches!(s, Seg::Lit(_)))
                .collect()
        };
        let pick = |m: &str| {
            routes()
                .filter(|r| r.method == m && matches_path(r))
                .max_by_key(|r| specificity(r))
        };
        let found = pick(method).or_else(|| if method == "HEAD" { pick("GET") } else { None });
        if let Some(r) = found {
            let mut path_params = Map::new();
            for (s, p) in r.segments.iter().zip(&req) {
                if let Seg::Param(name) = s {
                    path_params.insert(name.clone(), Value::String((*p).to_owned()));
                }
            }
            return RouteMatch::Found {
                binding: Box::new(r.bindings[0].binding.clone()),
                template: r.template.clone(),
                path_params,
            };
        }
        let mut allow: Vec<String> = routes()
            .filter(|r| matches_path(r))
            .map(|r| r.method.clone())
            .collect();
        if allow.is_empty() {
            return RouteMatch::NotFound;
        }
        allow.sort();
        allow.dedup();
        RouteMatch::MethodNotAllowed { allow }
    }

    /// Number of distinct local routes (for listings and tests).
    pub fn len(&self) -> usize {
        self.read().local.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The routes registered by this engine's workers, to announce to the other engines: the
    /// serving binding of each (standbys serve only here, after it), sorted by method and path.
    pub fn local_triggers(&self) -> Vec<RemoteRoute> {
        let table = self.read();
        let mut routes: Vec<(&str, &str, RemoteRoute)> = table
            .local
            .iter()
            .filter_map(|r| {
                let b = r.bindings.first()?;
                Some((
                    r.method.as_str(),
                    r.template.as_str(),
                    RemoteRoute {
                        function_id: b.binding.function_id.clone(),
                        config: b.config.clone(),
                        metadata: b.binding.metadata.clone(),
                    },
                ))
            })
            .collect();
        routes.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        routes.into_iter().map(|(_, _, r)| r).collect()
    }

    /// Replaces the routes announced by the other engines. Invalid ones are skipped (logged at
    /// debug level); of several with the same method and shape, the first by function id (then
    /// config) is kept.
    pub fn set_remote(&self, mut routes: Vec<RemoteRoute>) {
        routes.sort_by_cached_key(|r| (r.function_id.clone(), r.config.to_string()));
        let mut remote: Vec<Route> = Vec::with_capacity(routes.len());
        for r in routes {
            let p = match parse_route("", &r.function_id, &r.config, &r.metadata, true) {
                Ok(p) => p,
                Err(error) => {
                    tracing::debug!(function_id = %r.function_id, config = %r.config, %error,
                        "remote http route skipped");
                    continue;
                }
            };
            if let Some(kept) = remote
                .iter()
                .find(|k| k.method == p.method && same_shape(&k.segments, &p.segments))
            {
                if kept.bindings[0].binding.function_id != p.binding.function_id
                    || kept.segments != p.segments
                {
                    tracing::debug!(route = %format!("{} {}", p.method, p.template),
                        kept = %kept.bindings[0].binding.function_id, skipped = %p.binding.function_id,
                        "two engines announce the same remote http route; one is used");
                }
                continue;
            }
            remote.push(Route {
                method: p.method,
                template: p.template,
                segments: p.segments,
                bindings: vec![Bound {
                    binding: p.binding,
                    config: r.config,
                }],
            });
        }
        self.write().remote = remote;
    }

    /// Number of distinct remote routes held.
    pub fn remote_len(&self) -> usize {
        self.read().remote.len()
    }
}

impl TriggerProvider for HttpRoutes {
    fn register(&self, t: &TriggerEntry) -> Result<(), String> {
        let Parsed {
            method,
            template,
            segments,
            binding,
        } = parse_route(&t.id, &t.function_id, &t.config, &t.metadata, false)?;
        let bound = Bound {
            binding,
            config: t.config.clone(),
        };
        let mut table = self.write();
        if let Some(route) = table
            .local
            .iter_mut()
            .find(|r| r.method == method && same_shape(&r.segments, &segments))
        {
            if route.segments != segments {
                return Err(format!(
                    "Route '{method} {template}' conflicts with already-registered route '{method} {}' (same shape, different parameter names)",
                    route.template
                ));
            }
            route.bindings.retain(|b| b.binding.trigger_id != t.id);
            if let Some(active) = route.bindings.first() {
                tracing::warn!(route = %format!("{method} {template}"), active_function = %active.binding.function_id,
                    standby_function = %t.function_id, "route already bound; the new binding waits as a standby");
            }
            route.bindings.push(bound);
            return Ok(());
        }
        table.local.push(Route {
            method,
            template,
            segments,
            bindings: vec![bound],
        });
        Ok(())
    }

    fn unregister(&self, t: &TriggerEntry) {
        let mut table = self.write();
        for r in table.local.iter_mut() {
            r.bindings.retain(|b| b.binding.trigger_id != t.id);
        }
        table.local.retain(|r| !r.bindings.is_empty());
    }
}

/// Percent-decodes a query component (`+` is a space).
fn decode_component(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a raw query string: percent-decoded, `+` → space, last value wins, `?flag` → `""`.
pub fn parse_query(raw: Option<&str>) -> Map<String, Value> {
    let mut out = Map::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(decode_component(k), Value::String(decode_component(v)));
    }
    out
}

/// Whether a content type carries JSON (`application/json`, `…+json`, any case).
pub fn is_json_content_type(ct: &str) -> bool {
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media.ends_with("+json")
}

/// The fields of the request object that hoisted body keys may not overwrite (H3).
const RESERVED: &[&str] = &[
    "query_params",
    "path_params",
    "headers",
    "path",
    "method",
    "body",
    "trigger",
    "request_body",
    "response",
];

/// Builds the handler input (http.md §4.1, plus the body's keys at the top level, H3).
pub fn request_object(
    template: &str,
    method: &str,
    path_params: Map<String, Value>,
    query_params: Map<String, Value>,
    headers: Map<String, Value>,
    body: Value,
) -> Value {
    let mut obj = Map::new();
    if let Value::Object(fields) = &body {
        for (k, v) in fields {
            if !RESERVED.contains(&k.as_str()) {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    obj.insert("query_params".into(), Value::Object(query_params));
    obj.insert("path_params".into(), Value::Object(path_params));
    obj.insert("headers".into(), Value::Object(headers));
    obj.insert("path".into(), Value::String(template.to_owned()));
    obj.insert("method".into(), Value::String(method.to_owned()));
    obj.insert("body".into(), body);
    obj.insert(
        "trigger".into(),
        json!({"type": "http", "path": template, "method": method}),
    );
    Value::Object(obj)
}

/// A response ready to be written by the server.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn json(status: u16, body: &Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(body).unwrap_or_default(),
        }
    }
}

/// Whether a handler's return value is a response envelope (H1).
fn is_envelope(obj: &Map<String, Value>) -> bool {
    obj.contains_key("status_code")
        || (obj.contains_key("body")
            && obj
                .keys()
                .all(|k| matches!(k.as_str(), "status_code" | "headers" | "body")))
}

/// Maps a handler's result to a response (http.md §6 with H1 and H2).
pub fn map_result(result: Option<Value>) -> HttpReply {
    let value = match result {
        None | Some(Value::Null) => return HttpReply::json(200, &Value::Null),
        Some(v) => v,
    };
    let obj = match &value {
        Value::Object(o) if is_envelope(o) => o,
        _ => return HttpReply::json(200, &value),
    };
    let status = obj
        .get("status_code")
        .and_then(Value::as_u64)
        .map(|s| (s & 0xFFFF) as u16)
        .filter(|s| (100..=999).contains(s))
        .unwrap_or(200);
    let mut headers: Vec<(String, String)> = Vec::new();
    match obj.get("headers") {
        Some(Value::Object(h)) => {
            for (k, v) in h {
                if let Some(v) = v.as_str() {
                    headers.push((k.to_ascii_lowercase(), v.to_owned()));
                }
            }
        }
        Some(Value::Array(items)) => {
            for item in items.iter().filter_map(Value::as_str) {
                if let Some((k, v)) = item.split_once(':') {
                    let k = k.trim();
                    if !k.is_empty() {
                        headers.push((k.to_ascii_lowercase(), v.trim().to_owned()));
                    }
                }
            }
        }
        _ => {}
    }
    let body = obj.get("body").cloned().unwrap_or_else(|| json!({}));
    let user_ct = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.clone());
    let bytes = match (&user_ct, &body) {
        (Some(_), Value::String(s)) => s.clone().into_bytes(),
        (Some(_), Value::Null) => Vec::new(),
        _ => serde_json::to_vec(&body).unwrap_or_default(),
    };
    if user_ct.is_none() {
        headers.push(("content-type".into(), "application/json".into()));
    }
    HttpReply {
        status,
        headers,
        body: bytes,
    }
}

/// What a middleware function decided (http.md §10).
#[derive(Debug, PartialEq)]
pub enum MiddlewareDecision {
    Continue,
    Respond(HttpReply),
}

/// Input of a middleware call: the request without body, path or trigger.
pub fn middleware_input(request: &Value) -> Value {
    json!({
        "phase": "preHandler",
        "request": {
            "path_params": request["path_params"],
            "query_params": request["query_params"],
            "headers": request["headers"],
            "method": request["method"],
        },
        "context": {},
    })
}

/// Interprets a middleware result: only `{action:"respond", response:{…}}` short-circuits.
/// The body is always JSON-encoded; header entries that are not strings are skipped one by one
/// (the reference dropped the whole map, weakness 10).
pub fn middleware_decision(result: Option<Value>) -> MiddlewareDecision {
    let Some(v) = result else {
        return MiddlewareDecision::Continue;
    };
    if v.get("action").and_then(Value::as_str) != Some("respond") {
        return MiddlewareDecision::Continue;
    }
    let resp = v.get("response").cloned().unwrap_or(Value::Null);
    let status = resp
        .get("status_code")
        .and_then(Value::as_u64)
        .filter(|s| (100..=999).contains(s))
        .unwrap_or(200) as u16;
    let body = resp.get("body").cloned().unwrap_or(Value::Null);
    let mut headers: Vec<(String, String)> = resp
        .get("headers")
        .and_then(Value::as_object)
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.to_ascii_lowercase(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    if !headers.iter().any(|(k, _)| k == "content-type") {
        headers.push(("content-type".into(), "application/json".into()));
    }
    MiddlewareDecision::Respond(HttpReply {
        status,
        headers,
        body: serde_json::to_vec(&body).unwrap_or_default(),
    })
}

/// The one place where error codes become HTTP statuses.
pub fn http_status(code: &str) -> u16 {
    match code {
        codes::FUNCTION_NOT_FOUND | codes::OVERLOADED => 503,
        codes::INVOCATION_TIMEOUT | "MIDDLEWARE_TIMEOUT" => 504,
        "NOT_FOUND" => 404,
        "METHOD_NOT_ALLOWED" => 405,
        "INVALID_JSON" => 400,
        "PAYLOAD_TOO_LARGE" => 413,
        "CONDITION_NOT_MET" => 422,
        _ => 500,
    }
}

/// Error body in the chosen shape (http.md §9): `{"error": message, "code": code}` plus a
/// random `error_id` on 5xx (logged with the cause, so a client report can be traced).
pub fn error_reply(err: &ErrorBody) -> (HttpReply, Option<String>) {
    let status = http_status(&err.code);
    let mut body = json!({"error": err.message, "code": err.code});
    let mut error_id = None;
    if status >= 500 {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        body["error_id"] = Value::String(id.clone());
        error_id = Some(id);
    }
    if err.code == "CONDITION_NOT_MET" {
        body["skipped"] = Value::Bool(true);
    }
    (HttpReply::json(status, &body), error_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trig(id: &str, f: &str, path: &str, method: &str) -> TriggerEntry {
        TriggerEntry::for_test(
            id,
            "http",
            f,
            json!({"api_path": path, "http_method": method}),
        )
    }

    fn found(m: RouteMatch) -> (String, Map<String, Value>) {
        match m {
            RouteMatch::Found {
                binding,
                path_params,
                ..
            } => (binding.function_id, path_params),
            other => panic!("expected a match, got {other:?}"),
        }
    }

    #[test]
    fn static_segments_beat_params_and_methods_are_separate() {
        let r = HttpRoutes::default();
        r.register(&trig("1", "get", "/todos/:id", "GET")).unwrap();
        r.register(&trig("2", "metrics", "/todos/metrics", "get"))
            .unwrap();
        r.register(&trig("3", "create", "todos", "POST")).unwrap();
        assert_eq!(found(r.route("GET", "/todos/metrics")).0, "metrics");
        let (f, p) = found(r.route("GET", "/todos/42"));
        assert_eq!((f.as_str(), p["id"].as_str()), ("get", Some("42")));
        assert_eq!(found(r.route("POST", "/todos")).0, "create");
        match r.route("DELETE", "/todos") {
            RouteMatch::MethodNotAllowed { allow } => assert_eq!(allow, ["POST"]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.route("GET", "/nope"), RouteMatch::NotFound));
        assert!(matches!(r.route("GET", "/todos/"), RouteMatch::NotFound));
        assert_eq!(found(r.route("HEAD", "/todos/1")).0, "get");
    }

    #[test]
    fn second_binding_is_a_standby_not_a_thief() {
        let r = HttpRoutes::default();
        r.register(&trig("a", "first", "/dup", "GET")).unwrap();
        r.register(&trig("b", "second", "/dup", "GET")).unwrap();
        assert_eq!(found(r.route("GET", "/dup")).0, "first");
        r.unregister(&trig("a", "first", "/dup", "GET"));
        assert_eq!(found(r.route("GET", "/dup")).0, "second");
        r.unregister(&trig("b", "second", "/dup", "GET"));
        assert!(r.is_empty());
    }

    #[test]
    fn rejects_bad_configs() {
        let r = HttpRoutes::default();
        let mut t = trig("x", "f", "/a", "GET");
        t.config = json!({"http_method": "GET"});
        assert!(r.register(&t).unwrap_err().contains("api_path"));
        r.register(&trig("1", "f", "/s/:a", "GET")).unwrap();
        assert!(r
            .register(&trig("2", "g", "/s/:b", "GET"))
            .unwrap_err()
            .contains("conflicts"));
        // Different methods may name parameters differently.
        r.register(&trig("3", "g", "/s/:b", "POST")).unwrap();
        assert!(r.register(&trig("4", "g", "/x", "BREW")).is_err());
    }

    fn remote(f: &str, path: &str, method: &str) -> RemoteRoute {
        RemoteRoute {
            function_id: f.into(),
            config: json!({"api_path": path, "http_method": method}),
            metadata: None,
        }
    }

    fn found_binding(m: RouteMatch) -> Binding {
        match m {
            RouteMatch::Found { binding, .. } => *binding,
            other => panic!("expected a match, got {other:?}"),
        }
    }

    #[test]
    fn a_local_route_wins_over_a_remote_one_of_the_same_shape() {
        let r = HttpRoutes::default();
        r.register(&trig("1", "local", "/todos/:id", "GET"))
            .unwrap();
        r.set_remote(vec![
            remote("remote", "/todos/:key", "GET"),
            remote("remote", "/todos", "POST"),
        ]);
        let b = found_binding(r.route("GET", "/todos/1"));
        assert_eq!((b.function_id.as_str(), b.remote), ("local", false));
        let (f, p) = found(r.route("GET", "/todos/1"));
        assert_eq!((f.as_str(), &p["id"]), ("local", &json!("1")));
        // Remote routes serve what no local route does, and count for 405s.
        let b = found_binding(r.route("POST", "/todos"));
        assert_eq!(
            (b.function_id.as_str(), b.trigger_id.as_str(), b.remote),
            ("remote", "", true)
        );
        match r.route("DELETE", "/todos") {
            RouteMatch::MethodNotAllowed { allow } => assert_eq!(allow, ["POST"]),
            other => panic!("{other:?}"),
        }
        assert_eq!((r.len(), r.remote_len()), (1, 2));
        // Once the local route goes, the remote one of the same shape serves, with its own
        // parameter names.
        r.unregister(&trig("1", "local", "/todos/:id", "GET"));
        let (f, p) = found(r.route("GET", "/todos/1"));
        assert_eq!((f.as_str(), &p["key"]), ("remote", &json!("1")));
    }

    #[test]
    fn the_most_specific_route_wins_whichever_engine_has_it() {
        // Every engine of the group routes a request the same way.
        let r = HttpRoutes::default();
        r.register(&trig("1", "get", "/todos/:id", "GET")).unwrap();
        r.set_remote(vec![remote("metrics", "/todos/metrics", "GET")]);
        assert_eq!(found(r.route("GET", "/todos/metrics")).0, "metrics");
        assert_eq!(found(r.route("GET", "/todos/42")).0, "get");
        assert_eq!(found(r.route("HEAD", "/todos/metrics")).0, "metrics");
    }

    #[test]
    fn set_remote_replaces_skips_invalid_routes_and_picks_deterministically() {
        let r = HttpRoutes::default();
        r.set_remote(vec![remote("a", "/a", "GET"), remote("b", "/b", "GET")]);
        assert_eq!(r.remote_len(), 2);
        r.set_remote(vec![remote("c", "/c", "GET")]);
        assert_eq!(r.remote_len(), 1);
        assert!(matches!(r.route("GET", "/a"), RouteMatch::NotFound));
        assert_eq!(found(r.route("GET", "/c")).0, "c");

        let bad = |config: Value| RemoteRoute {
            function_id: "bad".into(),
            config,
            metadata: None,
        };
        r.set_remote(vec![
            bad(json!({"http_method": "GET"})),
            bad(json!({"api_path": "/x", "http_method": "BREW"})),
            bad(json!({"api_path": "/x", "http_method": 1})),
            bad(json!({"api_path": "/a//b"})),
            bad(json!("nope")),
            remote("ok", "/ok", "GET"),
        ]);
        assert_eq!(r.remote_len(), 1);
        assert_eq!(found(r.route("GET", "/ok")).0, "ok");

        // Same method and shape from several engines: the first by function id, in any order.
        for order in [["z", "m", "b"], ["b", "z", "m"], ["m", "b", "z"]] {
            r.set_remote(
                order
                    .iter()
                    .map(|f| remote(f, &format!("/items/:{f}"), "GET"))
                    .collect(),
            );
            assert_eq!(r.remote_len(), 1);
            let (f, p) = found(r.route("GET", "/items/1"));
            assert_eq!((f.as_str(), &p["b"]), ("b", &json!("1")));
        }
        r.set_remote(Vec::new());
        assert_eq!(r.remote_len(), 0);
        assert!(matches!(r.route("GET", "/items/1"), RouteMatch::NotFound));
    }

    #[test]
    fn local_triggers_round_trip_through_set_remote() {
        let here = HttpRoutes::default();
        let mut t = trig("1", "todo::get", "/todos/:id", "get");
        t.config = json!({
            "api_path": "/todos/:id",
            "http_method": "get",
            "condition_function_id": "todo::allowed",
            "middleware_function_ids": ["auth::check", "rate::limit"],
        });
        t.metadata = Some(json!({"team": "a"}));
        here.register(&t).unwrap();
        here.register(&trig("2", "todo::create", "/todos", "POST"))
            .unwrap();
        here.register(&trig("3", "todo::metrics", "/todos/metrics", "GET"))
            .unwrap();
        // A standby is not announced: only the serving binding is.
        here.register(&trig("4", "todo::other", "/todos", "POST"))
            .unwrap();

        let announced = here.local_triggers();
        assert_eq!(announced.len(), 3);
        let get = announced
            .iter()
            .find(|a| a.function_id == "todo::get")
            .unwrap();
        assert_eq!((&get.config, &get.metadata), (&t.config, &t.metadata));
        assert!(!announced.iter().any(|a| a.function_id == "todo::other"));
        let wire = serde_json::to_string(&announced).unwrap();
        let back: Vec<RemoteRoute> = serde_json::from_str(&wire).unwrap();
        assert_eq!(back, announced);

        let there = HttpRoutes::default();
        there.set_remote(back);
        assert_eq!((there.len(), there.remote_len()), (0, 3));
        for (method, path) in [
            ("GET", "/todos/7"),
            ("GET", "/todos/metrics"),
            ("HEAD", "/todos/7"),
            ("POST", "/todos"),
            ("DELETE", "/todos"),
            ("GET", "/nope"),
        ] {
            let (a, b) = (here.route(method, path), there.route(method, path));
            match (a, b) {
                (
                    RouteMatch::Found {
                        binding: a,
                        template: ta,
                        path_params: pa,
                    },
                    RouteMatch::Found {
                        binding: b,
                        template: tb,
                        path_params: pb,
                    },
                ) => {
                    assert_eq!((ta, pa), (tb, pb), "{method} {path}");
                    assert_eq!(
                        (
                            &a.function_id,
                            &a.condition_function_id,
                            &a.middleware,
                            &a.metadata
                        ),
                        (
                            &b.function_id,
                            &b.condition_function_id,
                            &b.middleware,
                            &b.metadata
                        ),
                        "{method} {path}"
                    );
                    assert!(!a.remote && b.remote);
                }
                (
                    RouteMatch::MethodNotAllowed { allow: a },
                    RouteMatch::MethodNotAllowed { allow: b },
                ) => assert_eq!(a, b, "{method} {path}"),
                (RouteMatch::NotFound, RouteMatch::NotFound) => {}
                (a, b) => panic!("{method} {path}: {a:?} here, {b:?} there"),
            }
        }
    }

    #[test]
    fn query_parsing() {
        let q = parse_query(Some("x=1&x=2&q=a+b%21&flag&bad=%zz"));
        assert_eq!(q["x"], "2");
        assert_eq!(q["q"], "a b!");
        assert_eq!(q["flag"], "");
        assert_eq!(q["bad"], "%zz");
        assert!(parse_query(None).is_empty());
    }

    #[test]
    fn hoists_body_keys_without_overwriting() {
        let req = request_object(
            "/todos",
            "POST",
            Map::new(),
            Map::new(),
            Map::new(),
            json!({"title": "t", "method": "x"}),
        );
        assert_eq!(req["title"], "t");
        assert_eq!(req["method"], "POST");
        assert_eq!(req["body"]["method"], "x");
        assert_eq!(
            req["trigger"],
            json!({"type":"http","path":"/todos","method":"POST"})
        );
        let req = request_object("/a", "GET", Map::new(), Map::new(), Map::new(), json!([1]));
        assert_eq!(req["body"], json!([1]));
    }

    #[test]
    fn response_mapping_follows_h1_h2() {
        let plain = map_result(Some(json!({"id": "t1", "title": "x"})));
        assert_eq!(plain.status, 200);
        assert_eq!(plain.body, br#"{"id":"t1","title":"x"}"#);
        assert_eq!(map_result(None).body, b"null");
        assert_eq!(map_result(Some(json!([1, 2]))).body, b"[1,2]");
        // A blog post with a body field is data, not an envelope.
        let post = map_result(Some(json!({"title": "t", "body": "b"})));
        assert_eq!(post.body, br#"{"title":"t","body":"b"}"#);
        let env = map_result(Some(json!({"body": {"a": 1}})));
        assert_eq!(env.body, br#"{"a":1}"#);
        let env = map_result(Some(
            json!({"status_code": 201, "body": {"a": 1}, "headers": {"X-A": "1"}}),
        ));
        assert_eq!(env.status, 201);
        assert!(env.headers.contains(&("x-a".into(), "1".into())));
        assert!(env
            .headers
            .contains(&("content-type".into(), "application/json".into())));
        let text = map_result(Some(
            json!({"status_code": 200, "body": "hi", "headers": {"Content-Type": "text/plain"}}),
        ));
        assert_eq!(text.body, b"hi");
        assert_eq!(
            map_result(Some(json!({"status_code": 200, "body": "hi"}))).body,
            b"\"hi\""
        );
        assert_eq!(map_result(Some(json!({"status_code": 1000}))).status, 200);
        assert_eq!(map_result(Some(json!({"status_code": "201"}))).status, 200);
        assert_eq!(map_result(Some(json!({"status_code": 204}))).body, b"{}");
        let arr = map_result(Some(
            json!({"status_code": 200, "headers": ["X-B: two", "bad"]}),
        ));
        assert!(arr.headers.contains(&("x-b".into(), "two".into())));
    }

    #[test]
    fn error_bodies() {
        let (r, id) = error_reply(&ErrorBody::new("invocation_failed", "boom"));
        assert_eq!(r.status, 500);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"], "boom");
        assert_eq!(v["code"], "invocation_failed");
        assert_eq!(v["error_id"].as_str(), id.as_deref());
        let (r, id) = error_reply(&ErrorBody::new("NOT_FOUND", "Not Found"));
        assert_eq!((r.status, id), (404, None));
        assert_eq!(
            error_reply(&ErrorBody::new("function_not_found", "x"))
                .0
                .status,
            503
        );
        assert_eq!(
            error_reply(&ErrorBody::new("invocation_timeout", "x"))
                .0
                .status,
            504
        );
    }

    #[test]
    fn middleware_contract() {
        assert_eq!(middleware_decision(None), MiddlewareDecision::Continue);
        assert_eq!(
            middleware_decision(Some(json!({"action": "continue"}))),
            MiddlewareDecision::Continue
        );
        match middleware_decision(Some(json!({"action": "respond",
            "response": {"status_code": 401, "body": "no", "headers": {"X-Y": "1", "bad": 2}}})))
        {
            MiddlewareDecision::Respond(r) => {
                assert_eq!(r.status, 401);
                assert_eq!(r.body, b"\"no\"");
                assert!(r.headers.contains(&("x-y".into(), "1".into())));
                assert!(!r.headers.iter().any(|(k, _)| k == "bad"));
            }
            other => panic!("{other:?}"),
        }
        let req = request_object(
            "/a",
            "GET",
            Map::new(),
            Map::new(),
            Map::new(),
            json!({"x": 1}),
        );
        let input = middleware_input(&req);
        assert_eq!(input["phase"], "preHandler");
        assert!(input["request"].get("body").is_none());
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type("application/json; charset=utf-8"));
        assert!(is_json_content_type("Application/JSON"));
        assert!(is_json_content_type("application/vnd.api+json"));
        assert!(!is_json_content_type("text/plain"));
    }
}
