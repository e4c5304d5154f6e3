//! One HTTP/1.1 client connection, kept alive between requests, plain or TLS (rustls
//! with ring; Mozilla's roots from webpki-roots plus an optional CA file: no system
//! OpenSSL). The webhook sink and the fleet store (ClickHouse) send through it.

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{client::conn::http1::SendRequest, header::HeaderValue, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, task::JoinHandle};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, ServerName},
        ClientConfig, RootCertStore,
    },
    TlsConnector,
};

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// Worth another attempt: no connection, a reset, a timeout.
    Retry(String),
    /// Another attempt would fail the same way: the server's certificate is not trusted.
    Fatal(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Retry(s) | HttpError::Fatal(s) => f.write_str(s),
        }
    }
}

/// An answer, read whole (up to the limit given).
pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as one line of printable text, cut at `max` characters (for errors).
    pub fn text(&self, max: usize) -> String {
        String::from_utf8_lossy(&self.body).chars().take(max).map(|c| if c.is_control() { ' ' } else { c }).collect()
    }
}

/// Where requests go: scheme, host and port, checked once.
pub struct HttpClient {
    /// "https://host:443": no user info, no path (either may hold a secret).
    origin: String,
    /// HOST:PORT to connect to.
    connect_to: String,
    /// The Host header.
    host: HeaderValue,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    conn: Option<(SendRequest<Full<Bytes>>, JoinHandle<()>)>,
}

/// A client config trusting Mozilla's roots and the certificates in `ca_file`.
/// Err: why `ca_file` cannot be used.
pub fn tls_config(ca_file: Option<&Path>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(path).and_then(Iterator::collect).map_err(|e| e.to_string())?;
        if certs.is_empty() {
            return Err("no certificate in it".into());
        }
        for cert in certs {
            roots.add(cert).map_err(|e| e.to_string())?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What is wrong with a client's URL or CA file.
#[derive(Debug)]
pub enum SetupError {
    Url(String),
    CaFile(String),
}

impl HttpClient {
    /// For `uri` (http or https, a host, no user info); its path is the caller's.
    pub fn new(uri: &Uri, ca_file: Option<&Path>) -> Result<Self, SetupError> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(SetupError::Url("the URL must start with https:// or http://".into())),
        };
        let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
            return Err(SetupError::Url("no host in the URL".into()));
        };
        if authority.as_str().contains('@') {
            return Err(SetupError::Url("credentials in the URL are not sent".into()));
        }
        let host = authority.host().to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let sni = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let server = ServerName::try_from(sni).map_err(|e| SetupError::Url(e.to_string()))?;
            Some((TlsConnector::from(Arc::new(tls_config(ca_file).map_err(SetupError::CaFile)?)), server))
        } else {
            None
        };
        Ok(Self {
            origin: format!("{}://{host}:{port}", if https { "https" } else { "http" }),
            connect_to: format!("{host}:{port}"),
            host: HeaderValue::from_str(authority.as_str()).map_err(|e| SetupError::Url(e.to_string()))?,
            tls,
            conn: None,
        })
    }

    /// "https://host:443".
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The value for the Host header.
    pub fn host_header(&self) -> &HeaderValue {
        &self.host
    }

    /// Is the connection kept from an earlier request?
    pub fn connected(&self) -> bool {
        self.conn.as_ref().is_some_and(|(s, _)| !s.is_closed())
    }

    /// Drops the kept connection (after an error, or to start afresh).
    pub fn reset(&mut self) {
        if let Some((_, task)) = self.conn.take() {
            task.abort();
        }
    }

    async fn connect(&self) -> Result<(SendRequest<Full<Bytes>>, JoinHandle<()>), HttpError> {
        let retry = |what: &str, e: &dyn std::fmt::Display| HttpError::Retry(format!("{what} {}: {e}", self.origin));
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
                Some(rustls::Error::InvalidCertificate(why)) => HttpError::Fatal(format!(
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

    async fn send_once(&mut self, req: Request<Full<Bytes>>) -> Result<Response<hyper::body::Incoming>, HttpError> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let origin = &self.origin;
        let retry = |e: hyper::Error| HttpError::Retry(format!("{} to {origin}: {e}", "request"));
        let Some((sender, _)) = self.conn.as_mut() else { unreachable!("connected just above") };
        sender.ready().await.map_err(retry)?;
        sender.send_request(req).await.map_err(retry)
    }

    /// Sends `req` on the kept connection (made first if there is none) and reads the
    /// answer's body up to `max_body` bytes. A kept connection the server closed
    /// while idle (its close not seen yet) gets one more try on a new one. `timeout`
    /// bounds the whole exchange.
    pub async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
        max_body: usize,
        timeout: Duration,
    ) -> Result<Answer, HttpError> {
        match tokio::time::timeout(timeout, self.exchange(req, max_body)).await {
            Ok(result) => result,
            Err(_) => {
                self.reset();
                Err(HttpError::Retry(format!("{}: no answer within {} s", self.origin, timeout.as_secs_f64())))
            }
        }
    }

    async fn exchange(&mut self, req: Request<Full<Bytes>>, max_body: usize) -> Result<Answer, HttpError> {
        if self.conn.as_ref().is_some_and(|(s, _)| s.is_closed()) {
            self.reset();
        }
        let reused = self.conn.is_some();
        let again = reused.then(|| clone_request(&req));
        let resp = match (self.send_once(req).await, again) {
            (Err(_), Some(again)) => {
                self.reset();
                self.send_once(again).await?
            }
            (other, _) => other?,
        };
        let (parts, body) = resp.into_parts();
        // Read the answer, so that the connection serves the next request.
        let body = match Limited::new(body, max_body).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                self.reset();
                Bytes::new()
            }
        };
        Ok(Answer { status: parts.status, headers: parts.headers, body })
    }
}

/// A request's copy for the one retry (bodies here are whole `Bytes`: cheap clones).
fn clone_request(req: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut copy = Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.headers_mut() = req.headers().clone();
    copy
}
