//! The REST listener: every request goes through one fallback handler that matches the engine's
//! route table, builds the handler input, invokes the bound function and maps its result.
//! The decisions (matching, input shape, response mapping, error statuses) live in
//! `trine_engine::http`; this file only translates HTTP.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Semaphore};
use trine_engine::channels::{ChannelEnd, ChannelFrame, ChannelHub, Direction};
use trine_engine::http::{
    error_reply, is_json_content_type, map_result, middleware_decision, middleware_input,
    parse_query, request_object, HttpReply, MiddlewareDecision, RouteMatch,
};
use trine_engine::{Call, Caller, Engine};
use trine_protocol::ErrorBody;

use crate::settings::HttpSettings;

#[derive(Clone)]
struct HttpState {
    engine: Engine,
    settings: Arc<HttpSettings>,
    slots: Arc<Semaphore>,
}

pub fn router(engine: Engine, settings: HttpSettings) -> Router {
    let slots = Arc::new(Semaphore::new(settings.concurrency_request_limit.max(1)));
    Router::new().fallback(handle).with_state(HttpState {
        engine,
        settings: Arc::new(settings),
        slots,
    })
}

fn code_error(code: &str, message: impl Into<String>) -> HttpReply {
    let (reply, _) = error_reply(&ErrorBody::new(code, message));
    reply
}

async fn handle(State(st): State<HttpState>, req: Request) -> Response {
    let origin = req
        .headers()
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let is_preflight = req.method() == Method::OPTIONS
        && origin.is_some()
        && req.headers().contains_key("access-control-request-method");
    if is_preflight {
        return preflight(&st.settings, req.headers(), origin.as_deref());
    }
    let mut response = match st.slots.clone().acquire_owned().await {
        Ok(_permit) => {
            let timeout = st.settings.default_timeout;
            match tokio::time::timeout(timeout, serve(&st, req)).await {
                Ok(Outcome::Reply(reply)) => into_response(reply),
                Ok(Outcome::Stream {
                    status,
                    headers,
                    first,
                    rest,
                }) => stream_response(status, headers, first, rest),
                Err(_) => into_response(code_error(
                    trine_protocol::codes::INVOCATION_TIMEOUT,
                    format!("request timed out after {} ms", timeout.as_millis()),
                )),
            }
        }
        Err(_) => into_response(code_error("INTERNAL_ERROR", "server is shutting down")),
    };
    add_cors(&st.settings, origin.as_deref(), response.headers_mut());
    response
}

async fn serve(st: &HttpState, req: Request) -> Outcome {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().map(str::to_owned);
    let routes = st.engine.http_routes();
    let mut found = routes.route(&method, &path);
    if st.settings.ignore_trailing_slash
        && matches!(found, RouteMatch::NotFound)
        && path.len() > 1
        && path.ends_with('/')
    {
        found = routes.route(&method, path.trim_end_matches('/'));
    }
    let (binding, template, path_params) = match found {
        RouteMatch::NotFound => return Outcome::Reply(code_error("NOT_FOUND", "Not Found")),
        RouteMatch::MethodNotAllowed { allow } => {
            let mut reply = code_error(
                "METHOD_NOT_ALLOWED",
                format!("Method {method} not allowed on {path}"),
            );
            reply.headers.push(("allow".into(), allow.join(", ")));
            return Outcome::Reply(reply);
        }
        RouteMatch::Found {
            binding,
            template,
            path_params,
        } => (binding, template, path_params),
    };

    let (parts, body) = req.into_parts();
    let mut headers = Map::new();
    for (name, value) in parts.headers.iter() {
        headers.insert(
            name.as_str().to_owned(),
            Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        );
    }
    let bytes = match to_bytes(body, st.settings.body_limit).await {
        Ok(b) => b,
        Err(_) => {
            return Outcome::Reply(code_error(
                "PAYLOAD_TOO_LARGE",
                format!(
                    "request body exceeds the limit of {} bytes",
                    st.settings.body_limit
                ),
            ))
        }
    };
    let content_type = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let body_value = if is_json_content_type(content_type) && !bytes.is_empty() {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => v,
            Err(e) => {
                return Outcome::Reply(code_error(
                    "INVALID_JSON",
                    format!("request body is not valid JSON: {e}"),
                ))
            }
        }
    } else {
        Value::Null
    };
    let input = request_object(
        &template,
        &method,
        path_params,
        parse_query(raw_query.as_deref()),
        headers,
        body_value,
    );

    if let Some(reply) = run_middleware(st, &st.settings.middleware, &input).await {
        return Outcome::Reply(reply);
    }

    if let Some(cond) = &binding.condition_function_id {
        match st
            .engine
            .invoke(Call::new(cond.clone(), input.clone(), Caller::Http))
            .await
        {
            Ok(Some(Value::Bool(false))) => {
                return Outcome::Reply(code_error("CONDITION_NOT_MET", "Request condition not met"))
            }
            Ok(_) => {}
            Err(e) => return Outcome::Reply(logged_error(&binding.function_id, e)),
        }
    }

    if let Some(reply) = run_middleware(st, &binding.middleware, &input).await {
        return Outcome::Reply(reply);
    }

    // Channels for the raw request body (engine writes) and a streamed response (engine reads).
    let hub = st.engine.channels();
    let req_ch = hub.create(None);
    let resp_ch = hub.create(None);
    let mut input = input;
    input["request_body"] = req_ch.reference("read");
    input["response"] = resp_ch.reference("write");
    if bytes.is_empty() {
        ChannelHub::close_writer(&req_ch);
    } else if let Some(ChannelEnd::Writer(tx)) = ChannelHub::take_end(&req_ch, Direction::Write) {
        // One frame always fits: a fresh channel buffers at least one.
        let _ = tx.try_send(ChannelFrame::Binary(bytes.to_vec()));
    }
    let mut call = Call::new(binding.function_id.clone(), input, Caller::Http);
    call.metadata = binding.metadata.clone();
    // The tighter of the request deadline and the engine-wide call deadline.
    call.timeout = Some(
        st.settings
            .default_timeout
            .min(st.engine.config().invocation_timeout),
    );
    let outcome = run_handler(st, &binding.function_id, call, &resp_ch).await;
    hub.remove(&req_ch.id);
    hub.remove(&resp_ch.id);
    outcome
}

/// Runs middleware functions in order; the first `respond` (or failure) ends the request.
async fn run_middleware(st: &HttpState, ids: &[String], request: &Value) -> Option<HttpReply> {
    if ids.is_empty() {
        return None;
    }
    let input = middleware_input(request);
    for id in ids {
        let mut call = Call::new(id.clone(), input.clone(), Caller::Http);
        call.timeout = Some(st.settings.default_timeout);
        match st.engine.invoke(call).await {
            Ok(result) => {
                if let MiddlewareDecision::Respond(reply) = middleware_decision(result) {
                    return Some(reply);
                }
            }
            Err(e) if e.code == trine_protocol::codes::INVOCATION_TIMEOUT => {
                return Some(code_error("MIDDLEWARE_TIMEOUT", "Middleware timeout"));
            }
            Err(e) => return Some(logged_error(id, e)),
        }
    }
    None
}

/// What a request produced: a buffered reply, or a streamed one whose body keeps flowing from
/// the response channel.
enum Outcome {
    Reply(HttpReply),
    Stream {
        status: u16,
        headers: Vec<(String, String)>,
        first: Vec<u8>,
        rest: mpsc::Receiver<ChannelFrame>,
    },
}

/// Runs the handler while watching its response channel (http.md §6–§7 with H1/H2): a non-null
/// result wins unless body bytes were already streamed; a null result waits `null_result_grace`
/// for a writer to attach, then answers 200 `null`.
async fn run_handler(
    st: &HttpState,
    function_id: &str,
    call: Call,
    resp_ch: &trine_engine::channels::Channel,
) -> Outcome {
    let mut attached = resp_ch.writer_attached();
    // The response channel's reader is taken only once a writer attaches (no queue otherwise).
    let mut rx: Option<mpsc::Receiver<ChannelFrame>> = None;
    if *attached.borrow_and_update() {
        if let Some(ChannelEnd::Reader(r)) = ChannelHub::take_end(resp_ch, Direction::Read) {
            rx = Some(r);
        }
    }
    let invoke = st.engine.invoke(call);
    tokio::pin!(invoke);
    let mut status = 200u16;
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut handler_done = false;
    let mut writer_closed = false;
    let mut grace: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            r = &mut invoke, if !handler_done => match r {
                Ok(Some(v)) if !v.is_null() => return Outcome::Reply(map_result(Some(v))),
                Err(e) => return Outcome::Reply(logged_error(function_id, e)),
                Ok(_) => {
                    if writer_closed {
                        return Outcome::Reply(HttpReply { status, headers, body: Vec::new() });
                    }
                    handler_done = true;
                    grace = Some(tokio::time::Instant::now() + st.settings.null_result_grace);
                }
            },
            changed = attached.changed(), if rx.is_none() && !writer_closed => {
                if changed.is_err() {
                    writer_closed = true;
                } else if *attached.borrow_and_update() {
                    match ChannelHub::take_end(resp_ch, Direction::Read) {
                        Some(ChannelEnd::Reader(r)) => rx = Some(r),
                        _ => writer_closed = true,
                    }
                }
            },
            frame = recv_opt(&mut rx), if rx.is_some() && !writer_closed => match frame {
                Some(ChannelFrame::Text(t)) => apply_control(&t, &mut status, &mut headers),
                Some(ChannelFrame::Binary(first)) => {
                    if let Some(rest) = rx.take() {
                        return Outcome::Stream { status, headers, first, rest };
                    }
                }
                None => {
                    if handler_done {
                        return Outcome::Reply(HttpReply { status, headers, body: Vec::new() });
                    }
                    writer_closed = true;
                }
            },
            _ = sleep_until_opt(grace), if grace.is_some() => {
                if *attached.borrow() {
                    grace = None; // a writer is streaming: wait for it (bounded by default_timeout)
                } else {
                    return Outcome::Reply(map_result(None));
                }
            }
        }
    }
}

async fn recv_opt(rx: &mut Option<mpsc::Receiver<ChannelFrame>>) -> Option<ChannelFrame> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// `set_status` / `set_headers` control frames of the streaming protocol (http.md §7).
fn apply_control(text: &str, status: &mut u16, headers: &mut Vec<(String, String)>) {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return;
    };
    match v.get("type").and_then(Value::as_str) {
        Some("set_status") => {
            if let Some(code) = v.get("status_code").and_then(Value::as_u64) {
                if (100..=599).contains(&code) {
                    *status = code as u16;
                }
            }
        }
        Some("set_headers") => {
            if let Some(map) = v.get("headers").and_then(Value::as_object) {
                for (k, val) in map {
                    if let Some(val) = val.as_str() {
                        let k = k.to_ascii_lowercase();
                        headers.retain(|(name, _)| name != &k);
                        headers.push((k, val.to_owned()));
                    }
                }
            }
        }
        _ => {}
    }
}

fn logged_error(function_id: &str, e: ErrorBody) -> HttpReply {
    let (reply, error_id) = error_reply(&e);
    tracing::warn!(function_id, code = %e.code, error = %e.message, error_id = ?error_id, status = reply.status, "HTTP handler failed");
    reply
}

fn into_response(reply: HttpReply) -> Response {
    let mut resp = Response::new(Body::from(reply.body));
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let headers = resp.headers_mut();
    for (k, v) in reply.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            headers.append(name, value);
        }
    }
    resp
}

fn stream_response(
    status: u16,
    headers: Vec<(String, String)>,
    first: Vec<u8>,
    rest: mpsc::Receiver<ChannelFrame>,
) -> Response {
    // Later text frames are ignored once the body started (http.md §7).
    let tail = futures_util::stream::unfold(rest, |mut rx| async move {
        loop {
            match rx.recv().await {
                Some(ChannelFrame::Binary(b)) => {
                    return Some((Ok::<_, std::convert::Infallible>(bytes::Bytes::from(b)), rx))
                }
                Some(ChannelFrame::Text(_)) => continue,
                None => return None,
            }
        }
    });
    let head = futures_util::stream::once(async move { Ok(bytes::Bytes::from(first)) });
    let mut resp = Response::new(Body::from_stream(futures_util::StreamExt::chain(
        head, tail,
    )));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    for (k, v) in headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            resp.headers_mut().append(name, value);
        }
    }
    resp
}

fn add_cors(settings: &HttpSettings, origin: Option<&str>, headers: &mut HeaderMap) {
    let Some(origin) = origin else { return };
    let allowed = match &settings.cors {
        None => Some("*".to_owned()),
        Some(c) if c.allows_origin(origin) => Some(
            if c.allowed_origins.is_empty() || c.allowed_origins.iter().any(|o| o == "*") {
                "*".to_owned()
            } else {
                origin.to_owned()
            },
        ),
        Some(_) => None,
    };
    if let Some(value) = allowed.and_then(|v| HeaderValue::try_from(v).ok()) {
        headers.insert("access-control-allow-origin", value);
        headers.insert("vary", HeaderValue::from_static("origin"));
        if settings.cors.is_none() {
            headers.insert(
                "access-control-expose-headers",
                HeaderValue::from_static("*"),
            );
        }
    }
}

fn preflight(settings: &HttpSettings, req_headers: &HeaderMap, origin: Option<&str>) -> Response {
    let requested = req_headers
        .get("access-control-request-method")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_uppercase();
    let method_ok = match &settings.cors {
        None => true,
        Some(c) => {
            c.allowed_methods.is_empty()
                || c.allowed_methods
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(&requested))
        }
    };
    let origin_ok = match (&settings.cors, origin) {
        (None, _) => true,
        (Some(c), Some(o)) => c.allows_origin(o),
        (Some(_), None) => false,
    };
    if !(method_ok && origin_ok) {
        let body = json!({"error": "CORS preflight rejected", "code": "CORS_REJECTED"});
        return into_response(HttpReply::json(403, &body));
    }
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    add_cors(settings, origin, h);
    let methods = match &settings.cors {
        Some(c) if !c.allowed_methods.is_empty() => c.allowed_methods.join(", "),
        _ => "GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS".to_owned(),
    };
    if let Ok(v) = HeaderValue::try_from(methods) {
        h.insert("access-control-allow-methods", v);
    }
    let req_h = req_headers
        .get("access-control-request-headers")
        .cloned()
        .unwrap_or(HeaderValue::from_static("*"));
    h.insert("access-control-allow-headers", req_h);
    h.insert("access-control-max-age", HeaderValue::from_static("600"));
    resp
}
