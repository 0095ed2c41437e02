//! Trine's edges: they translate sockets to engine calls and never decide anything themselves.
//!
//! Layout:
//! - [`settings`]: resolved listener settings.
//! - [`config`]: reading an iii `config.yaml` (both formats, `${VAR:default}` substitution).
//! - [`listen`]: binding with TCP_NODELAY on every accepted socket.
//! - [`worker_ws`]: the worker WebSocket (`/`, `/otel`).
//! - [`http_api`]: the REST listener serving `http` triggers.
//! - [`stream_ws`]: the stream WebSocket (`/` with join/leave, `/stream/{stream}/{group}[/{item}]`).
//! - [`stream_port`]: the stream port's answer when the stream module is off.

pub mod config;
pub mod http_api;
pub mod listen;
pub mod settings;
pub mod stream_port;
pub mod stream_ws;
pub mod worker_ws;

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;
use trine_engine::Engine;

pub use settings::ServerSettings;

/// Where the listeners ended up (ports may have been 0).
#[derive(Debug, Clone)]
pub struct BoundAddrs {
    pub worker: SocketAddr,
    pub http: Option<SocketAddr>,
    pub stream: Option<SocketAddr>,
}

/// Binds every enabled listener and serves until `shutdown` is cancelled. Fails if a port cannot
/// be bound, before anything is served.
pub async fn start(
    engine: &Engine,
    settings: &ServerSettings,
    shutdown: CancellationToken,
) -> std::io::Result<BoundAddrs> {
    let tasks = engine.tasks();
    let (wl, worker) = bind_named("worker", &settings.worker.host, settings.worker.port).await?;
    let worker_app = worker_ws::router(engine.clone(), settings.worker.max_message_bytes);
    if let Some(twin) = listen::bind_ipv6_twin(worker).await {
        listen::serve(tasks, twin, worker_app.clone(), shutdown.clone());
    }
    listen::serve(tasks, wl, worker_app, shutdown.clone());

    let mut http = None;
    if settings.http.enabled {
        let (hl, addr) = bind_named("http", &settings.http.host, settings.http.port).await?;
        let app = http_api::router(engine.clone(), settings.http.clone());
        if let Some(twin) = listen::bind_ipv6_twin(addr).await {
            listen::serve(tasks, twin, app.clone(), shutdown.clone());
        }
        listen::serve(tasks, hl, app, shutdown.clone());
        http = Some(addr);
    }
    let mut stream = None;
    if settings.stream.enabled {
        let (sl, addr) = bind_named("stream", &settings.stream.host, settings.stream.port).await?;
        let app = if engine.streams().is_some() {
            stream_ws::router(engine.clone())
        } else {
            stream_port::router()
        };
        listen::serve(tasks, sl, app, shutdown.clone());
        stream = Some(addr);
    }
    Ok(BoundAddrs {
        worker,
        http,
        stream,
    })
}

async fn bind_named(
    what: &str,
    host: &str,
    port: u16,
) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    listen::bind(host, port).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen for {what} on {host}:{port}: {e}"),
        )
    })
}
