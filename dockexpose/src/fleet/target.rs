//! Where records go: `clickhouse+http(s)://HOST:PORT/DB.TABLE` or
//! `nats://HOST:PORT/SUBJECT`, checked once at start. Credentials never ride in the
//! URL (it lands in argv, ps and logs): they come from the config file or the
//! environment (`Credentials`).

use std::fmt;

/// A ClickHouse table over its HTTP interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickHouseTarget {
    pub https: bool,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub table: String,
}

/// A NATS JetStream subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsTarget {
    pub host: String,
    pub port: u16,
    pub subject: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreTarget {
    ClickHouse(ClickHouseTarget),
    Nats(NatsTarget),
}

/// A user and password for the store: from the config file (mode 0600) or the
/// environment, never from the command line.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("password", &"(not shown)").finish()
    }
}

/// The environment's credentials for the store, when both are set.
pub const ENV_USER: &str = "DOCKEXPOSE_STORE_USER";
pub const ENV_PASSWORD: &str = "DOCKEXPOSE_STORE_PASSWORD";

impl Credentials {
    /// DOCKEXPOSE_STORE_USER and DOCKEXPOSE_STORE_PASSWORD (a user alone: no password).
    pub fn from_env() -> Option<Self> {
        let user = std::env::var(ENV_USER).ok().filter(|u| !u.is_empty())?;
        Some(Self { user, password: std::env::var(ENV_PASSWORD).unwrap_or_default() })
    }
}

impl fmt::Display for ClickHouseTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "clickhouse+{scheme}://{}:{}/{}.{}", self.host, self.port, self.database, self.table)
    }
}

impl fmt::Display for NatsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nats://{}:{}/{}", self.host, self.port, self.subject)
    }
}

impl fmt::Display for StoreTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreTarget::ClickHouse(t) => t.fmt(f),
            StoreTarget::Nats(t) => t.fmt(f),
        }
    }
}

impl ClickHouseTarget {
    /// The HTTP origin, for the client: "http://HOST:PORT".
    pub fn origin(&self) -> String {
        format!("{}://{}:{}", if self.https { "https" } else { "http" }, self.host, self.port)
    }

    /// Is the store on this host (plain HTTP to anything else sends records and
    /// credentials in clear)?
    pub fn is_loopback(&self) -> bool {
        is_loopback(&self.host)
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare == "localhost" || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A ClickHouse identifier we accept: letters, digits and `_`, not starting with a
/// digit. Anything else would need quoting in SQL; refusing it keeps the URL out of
/// the SQL's grammar.
pub fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 128
}

/// A NATS subject: dot-separated tokens of visible characters, no wildcards.
fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.split('.').all(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_graphic() && c != '*' && c != '>'))
}

const EXAMPLES: &str =
    "write clickhouse+http://127.0.0.1:8123/dockexpose.records or nats://127.0.0.1:4222/dockexpose.records";

/// Parses a `--ship` / `--store` URL. Err: what is wrong and how to write it.
pub fn parse(url: &str) -> Result<StoreTarget, String> {
    let bad = |why: &str| Err(format!("{url:?}: {why}; {EXAMPLES}"));
    let (scheme, rest) = match url.split_once("://") {
        Some(parts) => parts,
        None => return bad("no scheme"),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err(format!(
            "{url:?}: credentials in the URL would show in ps and in logs; put them in the config file \
             (mode 0600) or in {ENV_USER} and {ENV_PASSWORD}"
        ));
    }
    let (default_port, https) = match scheme {
        "clickhouse+http" => (8123, false),
        "clickhouse+https" => (8443, true),
        "nats" => (4222, false),
        _ => return bad("the scheme must be clickhouse+http, clickhouse+https or nats"),
    };
    let (host, port) = match split_host_port(authority) {
        Some((host, port)) => (host, port.unwrap_or(default_port)),
        None => return bad("no host, or a port that is not a number from 1 to 65535"),
    };
    if path.contains(['?', '#']) {
        return bad("no query or fragment is taken");
    }
    if scheme == "nats" {
        if !valid_subject(path) {
            return bad("the path must be a NATS subject without wildcards, such as dockexpose.records");
        }
        return Ok(StoreTarget::Nats(NatsTarget { host, port, subject: path.to_string() }));
    }
    let Some((database, table)) = path.split_once('.') else {
        return bad("the path must be DATABASE.TABLE");
    };
    if !valid_identifier(database) || !valid_identifier(table) {
        return bad("database and table are letters, digits and _ (not starting with a digit)");
    }
    Ok(StoreTarget::ClickHouse(ClickHouseTarget {
        https,
        host,
        port,
        database: database.to_string(),
        table: table.to_string(),
    }))
}

/// "host", "host:port", "[v6]", "[v6]:port". None: no host, or a bad port.
fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        (format!("[{v6}]"), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|&p| p != 0)?),
        None => None,
    };
    Some((host, port))
}

#[cfg(test)]
#[path = "target_tests.rs"]
mod tests;
