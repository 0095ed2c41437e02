//! The stream listener's port (3112). The stream module arrives in a later release; the port is
//! bound now so configurations and firewall rules keep their meaning, and clients get a clear
//! answer instead of a refused connection.

use axum::http::StatusCode;
use axum::Router;
use serde_json::json;

pub fn router() -> Router {
    Router::new().fallback(|| async {
        (
            StatusCode::NOT_IMPLEMENTED,
            [("content-type", "application/json")],
            json!({
                "error": "the stream module is not available in this Trine build yet",
                "code": "STREAMS_UNAVAILABLE"
            })
            .to_string(),
        )
    })
}
