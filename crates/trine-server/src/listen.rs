//! Binding listeners: every accepted socket gets TCP_NODELAY, and a loopback host listens on both
//! address families where it can (Node resolves `localhost` to `::1` first on some systems).

use std::net::SocketAddr;

use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Binds `host:port` (port 0 = ephemeral) and returns the listener and its address.
pub async fn bind(host: &str, port: u16) -> std::io::Result<(TcpListener, SocketAddr)> {
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    let listener = TcpListener::bind((host, port)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Also listens on `[::1]` at the same port when the primary address is `127.0.0.1`, so that
/// `ws://localhost:PORT` works whichever family the client tries first. Failure is not fatal.
pub async fn bind_ipv6_twin(addr: SocketAddr) -> Option<TcpListener> {
    if !addr.ip().is_loopback() || !addr.is_ipv4() {
        return None;
    }
    TcpListener::bind(("::1", addr.port())).await.ok()
}

/// Serves `app` on `listener` until `shutdown` is cancelled.
pub fn serve(tasks: &TaskTracker, listener: TcpListener, app: Router, shutdown: CancellationToken) {
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
    });
    tasks.spawn(async move {
        let result = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "listener stopped with an error");
        }
    });
}
