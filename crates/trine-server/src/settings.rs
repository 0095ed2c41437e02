//! Resolved settings of the listeners (after CLI flags, env vars and config.yaml are merged).

use std::time::Duration;

/// CORS policy of the REST listener.
#[derive(Debug, Clone, Default)]
pub struct CorsSettings {
    /// Exact origins; empty or containing `*` = any origin.
    pub allowed_origins: Vec<String>,
    /// Upper-case methods; empty = any method.
    pub allowed_methods: Vec<String>,
}

impl CorsSettings {
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allowed_origins.is_empty()
            || self.allowed_origins.iter().any(|o| o == "*" || o == origin)
    }
}

/// Settings of the REST listener (`iii-http`).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    /// Deadline for a whole request (→ 504).
    pub default_timeout: Duration,
    /// Requests served at once; more wait for a slot.
    pub concurrency_request_limit: usize,
    /// Largest accepted request body (→ 413).
    pub body_limit: usize,
    /// `None`: permissive CORS (any origin and method), as the reference without a `cors` block.
    pub cors: Option<CorsSettings>,
    /// How long a handler that returned `null` may take to start streaming on its response
    /// channel before the answer is 200 `null` (http.md H2).
    pub null_result_grace: Duration,
    /// Global `preHandler` middleware function ids, in ascending priority order.
    pub middleware: Vec<String>,
    /// Serve `/a/` with the route of `/a` when no route ends in a slash.
    pub ignore_trailing_slash: bool,
}

/// Settings of the worker WebSocket listener (`iii-worker-manager`).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub host: String,
    pub port: u16,
    /// Largest accepted WebSocket message; larger ones close the connection with 1009.
    pub max_message_bytes: usize,
}

/// Settings of the stream listener (`iii-stream`); the stream module arrives in a later release,
/// the port is reserved now so configurations keep their meaning.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub worker: WorkerSettings,
    pub http: HttpSettings,
    pub stream: StreamSettings,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            worker: WorkerSettings {
                host: "127.0.0.1".into(),
                port: 49134,
                max_message_bytes: 64 * 1024 * 1024,
            },
            http: HttpSettings {
                enabled: true,
                host: "127.0.0.1".into(),
                port: 3111,
                default_timeout: Duration::from_secs(30),
                concurrency_request_limit: 1024,
                body_limit: 10 * 1024 * 1024,
                cors: None,
                ignore_trailing_slash: false,
                null_result_grace: Duration::from_millis(500),
                middleware: Vec::new(),
            },
            stream: StreamSettings {
                enabled: true,
                host: "127.0.0.1".into(),
                port: 3112,
            },
        }
    }
}
