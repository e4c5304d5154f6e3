//! Webhook: one HTTP/1.1 POST per alert, over a kept-alive connection.
//!
//! Bodies (`Content-Type: application/json`):
//! - `format = "json"`: `{"kind": "reached", "text": "EXPOSED ...", "host": "web-01",
//!   "record": {...}}`; `record` is the JSON audit record that raised the alert (the
//!   README's contract), null for the shared rate-limit summary (`kind` "suppressed")
//!   and for `health` alerts, which carry `"health": {"condition", "state", "count",
//!   "subject"}` instead.
//!   With `--json-format ecs` or `ocsf` the body is the alert's ECS or OCSF event
//!   instead (`formats`).
//! - `format = "slack"`: `{"text": "dockexpose on web-01: EXPOSED ..."}`, what Slack
//!   and Mattermost incoming webhooks take (`&`, `<`, `>` escaped as Slack asks).
//!
//! 2xx is delivered; 429, 408 and 5xx are retried (after Retry-After when it gives
//! seconds); other answers give up at once. https verifies the server's certificate
//! against Mozilla's roots (webpki-roots) plus `ca_file` when given.

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    client::conn::http1::SendRequest,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    Method, Request, StatusCode, Uri,
};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::{net::TcpStream, task::JoinHandle};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, ServerName},
        ClientConfig, RootCertStore,
    },
    TlsConnector,
};

use super::{Deliver, Failure, SinkError, WebhookConfig, WebhookFormat};
use crate::output::{alerts::Alert, formats::Formatter};

/// Most bytes of an answer read (the rest is not waited for).
const MAX_ANSWER: usize = 64 * 1024;

pub struct Webhook {
    /// "https://hooks.example.com:443": no user info, no path (it may hold a secret).
    origin: String,
    /// HOST:PORT to connect to.
    connect_to: String,
    /// Origin-form request target: path and query.
    target: String,
    headers: HeaderMap,
    format: WebhookFormat,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    formatter: Formatter,
    conn: Option<(SendRequest<Full<Bytes>>, JoinHandle<()>)>,
}

#[derive(Serialize)]
struct SlackBody {
    text: String,
}

/// The body of an alert in `format`; a `json` body in the formatter's JSON format
/// (native: the struct above, whose key order is the contract's).
pub fn body(alert: &Alert, format: WebhookFormat, formatter: &Formatter) -> Vec<u8> {
    let host = formatter.observer.hostname.as_str();
    match format {
        WebhookFormat::Json => formatter.alert_json(alert, std::time::SystemTime::now()),
        WebhookFormat::Slack => {
            serde_json::to_vec(&SlackBody { text: slack_escape(&format!("dockexpose on {host}: {}", alert.text)) })
                .expect("serializing to memory cannot fail")
        }
    }
}

/// Slack's escaping of message text: `&`, `<` and `>` (they start links and mentions).
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Retry-After in seconds ("120"); an HTTP date is not read (the backoff applies).
pub fn retry_after(value: Option<&HeaderValue>) -> Option<Duration> {
    value?.to_str().ok()?.trim().parse().ok().map(Duration::from_secs)
}

fn tls_config(key: &str, ca_file: Option<&Path>) -> Result<ClientConfig, SinkError> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        let bad = |reason: String| {
            SinkError::config(
                format!("{key}.ca_file"),
                path.display().to_string(),
                reason,
                "give a readable PEM file of the CA certificate(s) that signed the server's, or leave it out",
            )
        };
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(path).and_then(Iterator::collect).map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no certificate in it".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Webhook {
    /// `key`: the config key of this sink ("sinks.webhook[0]"), for errors.
    pub fn new(key: &str, config: &WebhookConfig, formatter: &Formatter) -> Result<Self, SinkError> {
        let url_error = |reason: &str| {
            SinkError::config(
                format!("{key}.url"),
                &config.url,
                reason,
                "write the full URL of the webhook, such as https://hooks.slack.com/services/T000/B000/XXXX",
            )
        };
        let uri: Uri = config.url.parse().map_err(|e: hyper::http::uri::InvalidUri| url_error(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(url_error("the URL must start with https:// or http://")),
        };
        let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
            return Err(url_error("no host in the URL"));
        };
        if authority.as_str().contains('@') {
            return Err(url_error("credentials in the URL are not sent; put them in headers (Authorization)"));
        }
        let host = authority.host().to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let origin = format!("{}://{host}:{port}", if https { "https" } else { "http" });
        let target = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();

        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(authority.as_str()).map_err(|e| url_error(&e.to_string()))?);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::USER_AGENT, HeaderValue::from_static(concat!("dockexpose/", env!("CARGO_PKG_VERSION"))));
        for (name_text, value) in &config.headers {
            let name = HeaderName::from_bytes(name_text.as_bytes()).map_err(|_| {
                SinkError::config(
                    format!("{key}.headers"),
                    name_text.as_str(),
                    "not a valid header name",
                    "header names are letters, digits and -, such as Authorization or X-Api-Key",
                )
            })?;
            let mut value = HeaderValue::from_str(value).map_err(|_| {
                SinkError::config(
                    format!("{key}.headers.{name_text}"),
                    "(not shown)",
                    "not a valid header value",
                    "a header value is one line of visible ASCII characters and spaces",
                )
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }

        let tls = if https {
            let sni = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
            let server = ServerName::try_from(sni).map_err(|e| url_error(&e.to_string()))?;
            Some((TlsConnector::from(Arc::new(tls_config(key, config.ca_file.as_deref())?)), server))
        } else {
            None
        };
        Ok(Self {
            origin,
            connect_to: format!("{host}:{port}"),
            target,
            headers,
            format: config.format,
            tls,
            formatter: formatter.clone(),
            conn: None,
        })
    }

    /// "https://hooks.example.com:443": where alerts go, without the path.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    async fn connect(&self) -> Result<(SendRequest<Full<Bytes>>, JoinHandle<()>), Failure> {
        let retry = |what: &str, e: &dyn std::fmt::Display| Failure::Retry {
            after: None,
            reason: format!("{what} {}: {e}", self.origin),
        };
        let tcp = TcpStream::connect(&self.connect_to).await.map_err(|e| retry("connect", &e))?;
        let _ = tcp.set_nodelay(true);
        let Some((connector, server)) = &self.tls else {
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| retry("HTTP to", &e))?;
            return Ok((sender, tokio::spawn(async move { drop(conn.await) })));
        };
        let stream = connector.connect(server.clone(), tcp).await.map_err(|e| {
            let rustls_error = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
            match rustls_error {
                // Trying again cannot fix a certificate.
                Some(rustls::Error::InvalidCertificate(why)) => Failure::GiveUp(format!(
                    "TLS to {}: the server's certificate is not trusted ({why:?}); fix the server's certificate, \
                     or give its CA in ca_file",
                    self.origin
                )),
                _ => retry("TLS to", &e),
            }
        })?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| retry("HTTP to", &e))?;
        Ok((sender, tokio::spawn(async move { drop(conn.await) })))
    }

    /// Sends one POST of `body` on the kept connection (made first if there is none).
    async fn post(&mut self, body: Bytes) -> Result<hyper::Response<hyper::body::Incoming>, Failure> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.target.parse().expect("checked at start");
        *req.headers_mut() = self.headers.clone();
        let origin = &self.origin;
        let retry = |e: hyper::Error| Failure::Retry { after: None, reason: format!("POST to {origin}: {e}") };
        let (sender, _) = self.conn.as_mut().expect("connected");
        sender.ready().await.map_err(retry)?;
        sender.send_request(req).await.map_err(retry)
    }
}

impl Deliver for Webhook {
    async fn deliver(&mut self, alert: &Alert) -> Result<(), Failure> {
        let body = Bytes::from(body(alert, self.format, &self.formatter));
        if self.conn.as_ref().is_some_and(|(s, _)| s.is_closed()) {
            self.reset();
        }
        let reused = self.conn.is_some();
        let resp = match self.post(body.clone()).await {
            // A kept connection the server closed while idle (its close not seen yet):
            // once more on a new connection, within this attempt.
            Err(_) if reused => {
                self.reset();
                self.post(body).await?
            }
            other => other?,
        };
        let status = resp.status();
        let after = retry_after(resp.headers().get(header::RETRY_AFTER));
        // Read the answer, so that the connection serves the next alert.
        let answer = match Limited::new(resp.into_body(), MAX_ANSWER).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                self.reset();
                Bytes::new()
            }
        };
        if status.is_success() {
            return Ok(());
        }
        let text: String = String::from_utf8_lossy(&answer).chars().take(200).filter(|c| !c.is_control()).collect();
        let reason = format!("POST to {} answered {status}: {text}", self.origin);
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT || status.is_server_error()
        {
            Err(Failure::Retry { after, reason })
        } else {
            Err(Failure::GiveUp(reason))
        }
    }

    fn reset(&mut self) {
        if let Some((_, task)) = self.conn.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{
        alerts::AlertKind,
        formats::{JsonFormat, Observer},
    };

    fn native(host: &str) -> Formatter {
        Formatter::new(JsonFormat::Native, Observer { hostname: host.into(), host_id: None, version: "0.1.0" })
    }

    #[test]
    fn json_body_carries_the_record() {
        let alert = Alert::new(AlertKind::Reached, "EXPOSED web".into(), Some(Arc::new(super::super::test_record())));
        let v: serde_json::Value = serde_json::from_slice(&body(&alert, WebhookFormat::Json, &native("h1"))).unwrap();
        assert_eq!(v["kind"], "reached");
        assert_eq!(v["text"], "EXPOSED web");
        assert_eq!(v["host"], "h1");
        assert_eq!(v["record"]["container"]["name"], "web");
        assert_eq!(v["record"]["host_port"], 8080);
        let summary = Alert::new(AlertKind::Suppressed, "WARNING".into(), None);
        let v: serde_json::Value = serde_json::from_slice(&body(&summary, WebhookFormat::Json, &native("h1"))).unwrap();
        assert!(v["record"].is_null());
    }

    #[test]
    fn json_body_in_ecs_and_ocsf_is_the_alert_event() {
        let alert = Alert::new(AlertKind::Reached, "EXPOSED web".into(), Some(Arc::new(super::super::test_record())));
        let observer = Observer { hostname: "h1".into(), host_id: None, version: "0.1.0" };
        let ecs = Formatter::new(JsonFormat::Ecs, observer.clone());
        let v: serde_json::Value = serde_json::from_slice(&body(&alert, WebhookFormat::Json, &ecs)).unwrap();
        assert_eq!((v["event"]["kind"].as_str(), v["message"].as_str()), (Some("alert"), Some("EXPOSED web")));
        assert_eq!(v["destination"]["port"], 8080);
        let ocsf = Formatter::new(JsonFormat::Ocsf, observer);
        let v: serde_json::Value = serde_json::from_slice(&body(&alert, WebhookFormat::Json, &ocsf)).unwrap();
        assert_eq!((v["class_uid"].as_u64(), v["dst_endpoint"]["port"].as_u64()), (Some(4001), Some(8080)));
        let slack: serde_json::Value = serde_json::from_slice(&body(&alert, WebhookFormat::Slack, &ocsf)).unwrap();
        assert_eq!(
            slack,
            serde_json::json!({"text": "dockexpose on h1: EXPOSED web"}),
            "Slack's body is text in every format"
        );
    }

    #[test]
    fn slack_body_is_escaped_text() {
        let alert = Alert::new(AlertKind::Reached, "EXPOSED a&b <web> 1.2.3.4:80 -> 80/tcp \"q\"".into(), None);
        let v: serde_json::Value = serde_json::from_slice(&body(&alert, WebhookFormat::Slack, &native("h1"))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"text": "dockexpose on h1: EXPOSED a&amp;b &lt;web&gt; 1.2.3.4:80 -&gt; 80/tcp \"q\""})
        );
    }

    #[test]
    fn retry_after_seconds() {
        assert_eq!(retry_after(Some(&HeaderValue::from_static("1"))), Some(Duration::from_secs(1)));
        assert_eq!(retry_after(Some(&HeaderValue::from_static(" 120 "))), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(Some(&HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"))), None);
        assert_eq!(retry_after(None), None);
    }

    #[test]
    fn origin_hides_the_path_and_defaults_the_port() {
        let config = WebhookConfig { url: "https://hooks.example.com/services/SECRET".into(), ..Default::default() };
        let w = Webhook::new("k", &config, &native("h1")).unwrap();
        assert_eq!(
            (w.origin(), w.target.as_str(), w.connect_to.as_str()),
            ("https://hooks.example.com:443", "/services/SECRET", "hooks.example.com:443")
        );
        let config = WebhookConfig { url: "http://[::1]:8080".into(), ..Default::default() };
        let w = Webhook::new("k", &config, &native("h1")).unwrap();
        assert_eq!((w.origin(), w.target.as_str()), ("http://[::1]:8080", "/"));
        let config = WebhookConfig { url: "https://user:pw@hooks.example.com/".into(), ..Default::default() };
        assert!(Webhook::new("k", &config, &native("h1")).err().unwrap().to_string().contains("credentials"));
    }
}
