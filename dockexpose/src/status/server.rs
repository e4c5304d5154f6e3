//! The HTTP/1.1 servers: `GET /v1/status` on the unix socket (mode 0600), and
//! `/metrics`, `/healthz`, `/readyz` on the metrics address. Each request is a
//! `Query` to the daemon's loop; an answer that does not come within 2 s is a 503.

use std::{
    convert::Infallible,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpListener, UnixListener},
    sync::{mpsc, oneshot},
};

use super::Query;

/// How long a request waits for the loop.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn ask<T>(queries: &mpsc::Sender<Query>, make: impl FnOnce(oneshot::Sender<T>) -> Query) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    queries.send(make(tx)).await.ok()?;
    tokio::time::timeout(ANSWER_WITHIN, rx).await.ok()?.ok()
}

async fn status_request(
    req: Request<Incoming>,
    queries: mpsc::Sender<Query>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/v1/status" {
        return Ok(reply(StatusCode::NOT_FOUND, "text/plain", "not found; try GET /v1/status\n"));
    }
    Ok(match ask(&queries, Query::Status).await {
        Some(report) => match serde_json::to_vec(&report) {
            Ok(body) => reply(StatusCode::OK, "application/json", body),
            Err(e) => {
                reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("encoding the report failed: {e}\n"))
            }
        },
        None => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "the daemon's loop did not answer within 2 s\n"),
    })
}

async fn metrics_request(
    req: Request<Incoming>,
    queries: mpsc::Sender<Query>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match req.uri().path() {
        "/metrics" => match ask(&queries, Query::Metrics).await {
            Some(text) => reply(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", text),
            None => {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "the daemon's loop did not answer within 2 s\n")
            }
        },
        // Alive: the loop answers.
        "/healthz" => match ask(&queries, Query::Status).await {
            Some(_) => reply(StatusCode::OK, "text/plain", "ok\n"),
            None => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "the daemon's loop does not answer\n"),
        },
        // Ready: attached and healthy.
        "/readyz" => match ask(&queries, Query::Status).await {
            Some(r) if r.health.state == "healthy" && !r.health.attachments.is_empty() => {
                reply(StatusCode::OK, "text/plain", "ready\n")
            }
            Some(r) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!(
                    "not ready: {}\n",
                    if r.health.reasons.is_empty() {
                        "nothing attached yet".into()
                    } else {
                        r.health.reasons.join("; ")
                    }
                ),
            ),
            None => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "the daemon's loop does not answer\n"),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found; try /metrics, /healthz or /readyz\n"),
    })
}

/// Serves one accepted connection with `handler`, on a task of its own.
fn serve_connection<S, F, Fut>(stream: S, queries: mpsc::Sender<Query>, handler: F)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>, mpsc::Sender<Query>) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    tokio::spawn(async move {
        let service = service_fn(move |req| handler(req, queries.clone()));
        let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
    });
}

/// The status socket, bound. Removed again when dropped.
pub struct StatusSocket {
    path: PathBuf,
}

impl Drop for StatusSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the status socket (its folder is created 0755, the socket 0600) and serves
/// it. A socket that answers means another daemon runs: that is an error.
pub fn serve_status(path: &Path, queries: mpsc::Sender<Query>) -> Result<StatusSocket, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {} failed: {e}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "{} answers: another dockexpose daemon is running. Fix: stop it first, or give this one --status-socket PATH",
            path.display()
        ));
    }
    // A socket file left by a daemon that died.
    let _ = std::fs::remove_file(path);
    // Bound with a tight umask so that it is never reachable by others, even briefly.
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above; the previous mask is restored.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|e| format!("binding {} failed: {e}", path.display()))?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                serve_connection(stream, queries.clone(), status_request);
            }
        }
    });
    Ok(StatusSocket { path: path.to_path_buf() })
}

/// Binds the metrics address now (a taken port fails at start) and serves it.
pub async fn serve_metrics(addr: SocketAddr, queries: mpsc::Sender<Query>) -> Result<SocketAddr, String> {
    let listener =
        TcpListener::bind(addr).await.map_err(|e| format!("binding the metrics address {addr} failed: {e}"))?;
    let local = listener.local_addr().unwrap_or(addr);
    tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                serve_connection(stream, queries.clone(), metrics_request);
            }
        }
    });
    Ok(local)
}
