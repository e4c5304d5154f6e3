//! ClickHouse over its HTTP interface: inserts of JSONEachRow batches and queries,
//! through the daemon's own HTTP client (rustls for https). Credentials go in a Basic
//! Authorization header (18.16 takes it; the X-ClickHouse-* headers came later).
//!
//! Which failures are worth another try is told by ClickHouse's exception code, not
//! the HTTP status: 18.16 answers 500 to a row it cannot parse, as to a server in
//! trouble. A batch refused for what it is (its content, the table, the
//! credentials) would be refused again: shipping stops and says why.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    header::{self, HeaderValue},
    Method, Request, StatusCode, Uri,
};

use super::{
    schema::INSERT_SETTINGS,
    target::{ClickHouseTarget, Credentials},
};
use crate::net::http::{Answer, HttpClient, HttpError, SetupError};

/// Most bytes of an answer read: a query's rows, or an error's text.
const MAX_ANSWER: usize = 64 << 20;

/// Why a request did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Worth trying again later: no connection, a timeout, a server in trouble.
    Retry(String),
    /// Refused for what was sent (a row it cannot parse, no such table, wrong
    /// credentials): sending it again cannot succeed.
    Refused(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Retry(s) | StoreError::Refused(s) => f.write_str(s),
        }
    }
}

/// ClickHouse exception codes that say the request itself is wrong.
const REFUSED_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    16,  // NO_SUCH_COLUMN_IN_TABLE
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    47,  // UNKNOWN_IDENTIFIER
    53,  // TYPE_MISMATCH
    60,  // UNKNOWN_TABLE
    62,  // SYNTAX_ERROR
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    81,  // UNKNOWN_DATABASE
    117, // INCORRECT_DATA
    164, // READONLY
    192, // UNKNOWN_USER
    193, // WRONG_PASSWORD
    194, // REQUIRED_PASSWORD
    195, // IP_ADDRESS_NOT_ALLOWED
    497, // ACCESS_DENIED
    516, // AUTHENTICATION_FAILED
];

/// "Code: 27, e.displayText() = ..." -> 27.
fn exception_code(text: &str) -> Option<u32> {
    let rest = text.trim_start().strip_prefix("Code:")?;
    rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// A non-2xx answer: worth another try, or refused?
pub fn classify(status: StatusCode, body: &str) -> StoreError {
    let text: String = body.chars().take(300).map(|c| if c.is_control() { ' ' } else { c }).collect();
    let text = text.trim().to_string();
    let refused = match exception_code(&text) {
        Some(code) => REFUSED_CODES.contains(&code),
        // No exception text (a proxy in front?): the status says it.
        None => status.is_client_error() && status != StatusCode::REQUEST_TIMEOUT && status.as_u16() != 429,
    };
    let said = format!("ClickHouse answered {status}: {text}");
    if refused {
        StoreError::Refused(said)
    } else {
        StoreError::Retry(said)
    }
}

/// A connection to one ClickHouse server (kept alive between requests).
pub struct ClickHouse {
    target: ClickHouseTarget,
    http: HttpClient,
    auth: Option<HeaderValue>,
    timeout: Duration,
}

impl ClickHouse {
    /// Err: what is wrong with the target or the CA file, for the operator.
    pub fn new(
        target: &ClickHouseTarget,
        credentials: Option<&Credentials>,
        ca_file: Option<&std::path::Path>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let uri: Uri = target.origin().parse().map_err(|e| format!("{target}: {e}"))?;
        let http = HttpClient::new(&uri, ca_file).map_err(|e| match e {
            SetupError::Url(why) => format!("{target}: {why}"),
            SetupError::CaFile(why) => format!("the CA file: {why}"),
        })?;
        let auth = credentials
            .map(|c| {
                let token = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.user, c.password));
                let mut value = HeaderValue::from_str(&format!("Basic {token}")).map_err(|e| e.to_string())?;
                value.set_sensitive(true);
                Ok::<_, String>(value)
            })
            .transpose()?;
        Ok(Self { target: target.clone(), http, auth, timeout })
    }

    pub fn target(&self) -> &ClickHouseTarget {
        &self.target
    }

    /// Inserts `rows` (JSONEachRow: one record per line) into the target's table.
    pub async fn insert(&mut self, rows: Bytes) -> Result<(), StoreError> {
        let mut query =
            format!("query=INSERT%20INTO%20{}.{}%20FORMAT%20JSONEachRow", self.target.database, self.target.table);
        for (name, value) in INSERT_SETTINGS {
            query += &format!("&{name}={value}");
        }
        self.post(&query, rows).await.map(drop)
    }

    /// Runs one statement (SELECT ... FORMAT ..., or DDL); its answer's body.
    pub async fn query(&mut self, sql: &str) -> Result<Bytes, StoreError> {
        self.post("", Bytes::from(sql.to_string())).await.map(|a| a.body)
    }

    async fn post(&mut self, query_string: &str, body: Bytes) -> Result<Answer, StoreError> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = format!("/?{query_string}").parse().map_err(|e| StoreError::Refused(format!("{e}")))?;
        let headers = req.headers_mut();
        headers.insert(header::HOST, self.http.host_header().clone());
        headers.insert(header::USER_AGENT, HeaderValue::from_static(concat!("dockexpose/", env!("CARGO_PKG_VERSION"))));
        if let Some(auth) = &self.auth {
            headers.insert(header::AUTHORIZATION, auth.clone());
        }
        let answer = self.http.send(req, MAX_ANSWER, self.timeout).await.map_err(|e| match e {
            HttpError::Retry(why) => StoreError::Retry(why),
            HttpError::Fatal(why) => StoreError::Refused(why),
        })?;
        if answer.status.is_success() {
            return Ok(answer);
        }
        Err(classify(answer.status, &String::from_utf8_lossy(&answer.body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_it_cannot_parse_is_refused_though_the_status_is_500() {
        let e = classify(StatusCode::INTERNAL_SERVER_ERROR, "Code: 27, e.displayText() = DB::Exception: Cannot parse");
        assert!(matches!(e, StoreError::Refused(ref s) if s.contains("Cannot parse")), "{e:?}");
        let e = classify(StatusCode::UNAUTHORIZED, "Code: 193, e.displayText() = DB::Exception: Wrong password");
        assert!(matches!(e, StoreError::Refused(_)));
        let e =
            classify(StatusCode::NOT_FOUND, "Code: 60, e.displayText() = DB::Exception: Table t.nope doesn't exist.");
        assert!(matches!(e, StoreError::Refused(_)));
    }

    #[test]
    fn a_server_in_trouble_is_tried_again() {
        let e =
            classify(StatusCode::INTERNAL_SERVER_ERROR, "Code: 252, e.displayText() = DB::Exception: Too many parts");
        assert!(matches!(e, StoreError::Retry(_)), "{e:?}");
        assert!(matches!(classify(StatusCode::BAD_GATEWAY, "<html>bad gateway</html>"), StoreError::Retry(_)));
        assert!(matches!(classify(StatusCode::TOO_MANY_REQUESTS, ""), StoreError::Retry(_)));
        assert!(matches!(classify(StatusCode::FORBIDDEN, "forbidden"), StoreError::Refused(_)));
    }
}
