//! The `http` trigger type: route table, handler input, response mapping (http.md).
//!
//! No sockets here: `trine-server` owns the listener and calls [`HttpRoutes::route`],
//! [`request_object`] and [`map_result`]/[`error_reply`], so the whole pipeline is testable
//! without a network.
//!
//! Route ownership mirrors function ownership: a second trigger for the same method and path does
//! not steal the route from a live binding; it waits as a standby and serves once the first
//! binding is removed (http.md weakness 8, fixed on purpose).

use std::sync::RwLock;

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
}

#[derive(Debug)]
struct Route {
    method: String,
    /// `api_path` exactly as registered (what handlers see in `path`).
    template: String,
    segments: Vec<Seg>,
    /// `bindings[0]` serves; the rest are standbys, oldest first.
    bindings: Vec<Binding>,
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

#[derive(Default)]
pub struct HttpRoutes {
    routes: RwLock<Vec<Route>>,
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
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Route>> {
        self.routes.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Route>> {
        self.routes.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Finds the binding for a request. Static segments win over parameters at the first
    /// position where candidate routes differ (`/todos/metrics` beats `/todos/:id`).
    pub fn route(&self, method: &str, path: &str) -> RouteMatch {
        let req: Vec<&str> = {
            let t = path.strip_prefix('/').unwrap_or(path);
            if t.is_empty() {
                Vec::new()
            } else {
                t.split('/').collect()
            }
        };
        let routes = self.read();
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
            routes
                .iter()
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
                binding: Box::new(r.bindings[0].clone()),
                template: r.template.clone(),
                path_params,
            };
        }
        let mut allow: Vec<String> = routes
            .iter()
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

    /// Number of distinct routes (for listings and tests).
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TriggerProvider for HttpRoutes {
    fn register(&self, t: &TriggerEntry) -> Result<(), String> {
        let api_path =
            t.config.get("api_path").and_then(Value::as_str).ok_or(
                "api_path is required for http triggers (a string such as \"/todos/:id\")",
            )?;
        let method = match t.config.get("http_method") {
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
            trigger_id: t.id.clone(),
            function_id: t.function_id.clone(),
            condition_function_id: t
                .config
                .get("condition_function_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            middleware: t
                .config
                .get("middleware_function_ids")
                .and_then(Value::as_array)
                .map(|ids| {
                    ids.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            metadata: t.metadata.clone(),
        };
        let mut routes = self.write();
        if let Some(route) = routes
            .iter_mut()
            .find(|r| r.method == method && same_shape(&r.segments, &segments))
        {
            if route.segments != segments {
                return Err(format!(
                    "Route '{method} {api_path}' conflicts with already-registered route '{method} {}' (same shape, different parameter names)",
                    route.template
                ));
            }
            route.bindings.retain(|b| b.trigger_id != t.id);
            if let Some(active) = route.bindings.first() {
                tracing::warn!(route = %format!("{method} {api_path}"), active_function = %active.function_id,
                    standby_function = %t.function_id, "route already bound; the new binding waits as a standby");
            }
            route.bindings.push(binding);
            return Ok(());
        }
        routes.push(Route {
            method,
            template: api_path.to_owned(),
            segments,
            bindings: vec![binding],
        });
        Ok(())
    }

    fn unregister(&self, t: &TriggerEntry) {
        let mut routes = self.write();
        for r in routes.iter_mut() {
            r.bindings.retain(|b| b.trigger_id != t.id);
        }
        routes.retain(|r| !r.bindings.is_empty());
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
        TriggerEntry {
            id: id.into(),
            trigger_type: "http".into(),
            function_id: f.into(),
            config: json!({"api_path": path, "http_method": method}),
            metadata: None,
            owner: None,
            active: true,
        }
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
