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

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    header::{self, HeaderMap, HeaderName, HeaderValue},
    Method, Request, StatusCode, Uri,
};
use serde::Serialize;

use super::{Deliver, Failure, SinkError, WebhookConfig, WebhookFormat};
use crate::{
    net::http::{Answer, HttpClient, HttpError, SetupError},
    output::{alerts::Alert, formats::Formatter},
};

/// Most bytes of an answer read (the rest is not waited for).
const MAX_ANSWER: usize = 64 * 1024;

pub struct Webhook {
    /// The connection, kept between alerts.
    http: HttpClient,
    /// Origin-form request target: path and query.
    target: String,
    headers: HeaderMap,
    format: WebhookFormat,
    formatter: Formatter,
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
        let http = HttpClient::new(&uri, config.ca_file.as_deref()).map_err(|e| match e {
            SetupError::Url(reason) if reason.starts_with("credentials") => {
                url_error("credentials in the URL are not sent; put them in headers (Authorization)")
            }
            SetupError::Url(reason) => url_error(&reason),
            SetupError::CaFile(reason) => SinkError::config(
                format!("{key}.ca_file"),
                config.ca_file.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
                reason,
                "give a readable PEM file of the CA certificate(s) that signed the server's, or leave it out",
            ),
        })?;
        let target = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();

        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, http.host_header().clone());
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

        Ok(Self { http, target, headers, format: config.format, formatter: formatter.clone() })
    }

    /// "https://hooks.example.com:443": where alerts go, without the path.
    pub fn origin(&self) -> &str {
        self.http.origin()
    }

    /// Sends one POST of `body` and reads the answer.
    async fn post(&mut self, body: Bytes) -> Result<Answer, Failure> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.target.parse().expect("checked at start");
        *req.headers_mut() = self.headers.clone();
        // The worker bounds the attempt; this only keeps a hung server from holding it.
        self.http.send(req, MAX_ANSWER, Duration::from_secs(3600)).await.map_err(|e| match e {
            HttpError::Retry(reason) => Failure::Retry { after: None, reason },
            HttpError::Fatal(reason) => Failure::GiveUp(reason),
        })
    }
}

impl Deliver for Webhook {
    async fn deliver(&mut self, alert: &Alert) -> Result<(), Failure> {
        let answer = self.post(Bytes::from(body(alert, self.format, &self.formatter))).await?;
        if answer.status.is_success() {
            return Ok(());
        }
        let status = answer.status;
        let after = retry_after(answer.headers.get(header::RETRY_AFTER));
        let reason = format!("POST to {} answered {status}: {}", self.http.origin(), answer.text(200));
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT || status.is_server_error()
        {
            Err(Failure::Retry { after, reason })
        } else {
            Err(Failure::GiveUp(reason))
        }
    }

    fn reset(&mut self) {
        self.http.reset();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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
            (w.origin(), w.target.as_str(), w.http.host_header().to_str().unwrap()),
            ("https://hooks.example.com:443", "/services/SECRET", "hooks.example.com")
        );
        let config = WebhookConfig { url: "http://[::1]:8080".into(), ..Default::default() };
        let w = Webhook::new("k", &config, &native("h1")).unwrap();
        assert_eq!((w.origin(), w.target.as_str()), ("http://[::1]:8080", "/"));
        let config = WebhookConfig { url: "https://user:pw@hooks.example.com/".into(), ..Default::default() };
        assert!(Webhook::new("k", &config, &native("h1")).err().unwrap().to_string().contains("credentials"));
    }
}
