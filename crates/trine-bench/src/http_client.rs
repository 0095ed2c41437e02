//! A lean HTTP/1.1 keep-alive client: one hyper connection per load task, TCP_NODELAY.

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1;
use hyper::{header, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What to GET and what the body must be.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port`
    pub authority: String,
    pub path: String,
    pub expected_body: Bytes,
}

impl Target {
    pub fn new(base_url: &str, path: &str, expected_body: &[u8]) -> anyhow::Result<Self> {
        let uri: Uri = base_url
            .parse()
            .with_context(|| format!("bad url {base_url}"))?;
        let authority = uri
            .authority()
            .with_context(|| format!("url {base_url} has no host:port"))?
            .to_string();
        Ok(Self {
            authority,
            path: path.to_owned(),
            expected_body: Bytes::copy_from_slice(expected_body),
        })
    }
}

pub struct HttpConn {
    sender: http1::SendRequest<Empty<Bytes>>,
    target: Target,
}

impl HttpConn {
    pub async fn open(target: &Target) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(&target.authority)
            .await
            .with_context(|| format!("connecting to {}", target.authority))?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the server closes; errors show up on requests.
            let _ = conn.await;
        });
        Ok(Self {
            sender,
            target: target.clone(),
        })
    }

    /// One GET; fails on a non-200 status or an unexpected body.
    pub async fn get(&mut self) -> anyhow::Result<()> {
        self.sender.ready().await?;
        let req = Request::get(self.target.path.as_str())
            .header(header::HOST, self.target.authority.as_str())
            .body(Empty::<Bytes>::new())?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK {
            bail!("status {status}: {}", String::from_utf8_lossy(&body));
        }
        if body != self.target.expected_body && !same_json(&body, &self.target.expected_body) {
            bail!("unexpected body {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }
}

/// A keep-alive connection for JSON requests with a body (`POST`), and plain `GET`s, returning
/// the status and body as they come.
pub struct JsonConn {
    sender: http1::SendRequest<Full<Bytes>>,
    authority: String,
}

impl JsonConn {
    /// Connects to `authority` (`host:port`) with TCP_NODELAY.
    pub async fn open(authority: &str) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            sender,
            authority: authority.to_owned(),
        })
    }

    /// `POST path` with a JSON body.
    pub async fn post(&mut self, path: &str, body: Bytes) -> anyhow::Result<(StatusCode, Bytes)> {
        self.sender.ready().await?;
        let req = Request::post(path)
            .header(header::HOST, self.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        Ok((status, resp.into_body().collect().await?.to_bytes()))
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        self.sender.ready().await?;
        let req = Request::get(path)
            .header(header::HOST, self.authority.as_str())
            .body(Full::new(Bytes::new()))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        Ok((status, resp.into_body().collect().await?.to_bytes()))
    }
}

/// Slow path of the body check (only when the bytes differ, e.g. other whitespace).
fn same_json(a: &[u8], b: &[u8]) -> bool {
    match (
        serde_json::from_slice::<serde_json::Value>(a),
        serde_json::from_slice::<serde_json::Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_and_body_check() {
        let t = Target::new("http://127.0.0.1:3111", "/hello", b"{}").unwrap();
        assert_eq!(t.authority, "127.0.0.1:3111");
        assert!(same_json(br#"{ "a" : 1 }"#, br#"{"a":1}"#));
        assert!(!same_json(b"{}", b"[]"));
    }
}
