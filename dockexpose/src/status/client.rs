//! `dockexpose status`: asks the running daemon over its unix socket.

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;

use super::StatusReport;

/// What went wrong reaching the daemon (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error("the dockexpose daemon is not running: no socket at {0}.\n  Fix: start it (`systemctl start dockexpose`, or `sudo dockexpose watch`); if it runs with --status-socket PATH, give the same --socket PATH here")]
    NoSocket(String),
    #[error("permission denied on {0}: the status socket is root's (mode 0600).\n  Fix: run `sudo dockexpose status`")]
    Denied(String),
    #[error("the daemon at {path} did not answer: {reason}.\n  Fix: check the daemon's log (journalctl -u dockexpose); restart it if it hangs")]
    NoAnswer { path: String, reason: String },
}

pub async fn fetch(socket: &Path) -> Result<StatusReport, Unreachable> {
    let shown = socket.display().to_string();
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => Unreachable::NoSocket(shown.clone()),
        std::io::ErrorKind::PermissionDenied => Unreachable::Denied(shown.clone()),
        _ => Unreachable::NoAnswer { path: shown.clone(), reason: e.to_string() },
    })?;
    let no_answer = |reason: String| Unreachable::NoAnswer { path: shown.clone(), reason };
    let exchange = async {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| no_answer(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::get("/v1/status")
            .header("host", "dockexpose")
            .body(Empty::<Bytes>::new())
            .map_err(|e| no_answer(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| no_answer(e.to_string()))?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| no_answer(e.to_string()))?.to_bytes();
        if !status.is_success() {
            return Err(no_answer(format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim())));
        }
        serde_json::from_slice::<StatusReport>(&body)
            .map_err(|e| no_answer(format!("an answer that is not a status report ({e})")))
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .map_err(|_| no_answer("no answer within 5 s".into()))?
}

/// The command: prints the report; returns the exit code (0 healthy, 1 degraded,
/// 2 unreachable).
pub async fn run(args: &crate::cli::StatusArgs) -> i32 {
    match fetch(&args.socket).await {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(t) => crate::say_out!("{t}"),
                    Err(e) => {
                        crate::say!("error: encoding the report failed: {e}");
                        return 2;
                    }
                }
            } else {
                crate::output::console::stdout_text(format_args!("{}", report.to_table()));
            }
            report.exit_code()
        }
        Err(e) => {
            crate::say!("error: {e}");
            2
        }
    }
}
