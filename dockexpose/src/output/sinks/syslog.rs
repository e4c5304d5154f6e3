//! Syslog: RFC 5424 messages over a unix datagram socket, UDP (RFC 5426) or TCP with
//! octet-counting framing (RFC 6587: `LEN SP MSG`, so a message may hold anything).
//!
//! `<PRI>1 TIMESTAMP HOSTNAME dockexpose PROCID KIND [dockexpose@32473 kind=".."
//! container=".." ...] TEXT`: MSGID is the alert kind, and the STRUCTURED-DATA element
//! carries the record's fields for rules that match on them (32473 is the enterprise
//! number RFC 5612 reserves for examples and documentation). With `--json-format ecs`
//! or `ocsf` the MSG is the alert's event as one line of compact JSON instead of TEXT;
//! header and structured data stay.

use std::{
    fmt::Write as _,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    path::PathBuf,
    time::SystemTime,
};

use tokio::{
    io::AsyncWriteExt,
    net::{TcpStream, UdpSocket, UnixDatagram},
};

use super::{escape_controls, hostname, Deliver, Failure, SinkError, SyslogConfig};
use crate::output::{
    alerts::Alert,
    formats::{Formatter, JsonFormat},
    record::Timestamp,
};

/// The SD-ID of dockexpose's structured data.
pub const SD_ID: &str = "dockexpose@32473";

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

/// Where messages go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// "HOST:PORT", resolved at each connect.
    Udp(String),
    Tcp(String),
    Unix(PathBuf),
}

/// Parses `udp://HOST:PORT`, `tcp://HOST:PORT` or `unix:///PATH`; the error is the reason.
pub fn parse_address(address: &str) -> Result<Target, String> {
    if let Some(path) = address.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err("a unix socket needs an absolute path (unix:///dev/log)".into());
        }
        return Ok(Target::Unix(PathBuf::from(path)));
    }
    let (udp, rest) = match (address.strip_prefix("udp://"), address.strip_prefix("tcp://")) {
        (Some(rest), _) => (true, rest),
        (_, Some(rest)) => (false, rest),
        _ => return Err("the address starts with udp://, tcp:// or unix://".into()),
    };
    let Some((host, port)) =
        rest.rsplit_once(':').filter(|(h, _)| !h.is_empty() && (!h.contains(':') || h.starts_with('[')))
    else {
        return Err("no port: write HOST:PORT, with [brackets] around an IPv6 address".into());
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("bad port {port:?}"));
    }
    if host.starts_with('[') && host[1..].strip_suffix(']').and_then(|a| a.parse::<Ipv6Addr>().ok()).is_none() {
        return Err(format!("bad IPv6 address {host}"));
    }
    let hp = rest.to_string();
    Ok(if udp { Target::Udp(hp) } else { Target::Tcp(hp) })
}

/// A PARAM-VALUE: control characters as `\u{..}`, then `"`, `\` and `]` escaped with a
/// backslash (RFC 5424, 6.3.3).
pub fn escape_param(value: &str) -> String {
    let value = escape_controls(value);
    let mut out = String::with_capacity(value.len() + 4);
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// HOSTNAME, APP-NAME and the like: printable US-ASCII without spaces, at most `max`
/// characters; "-" when empty.
fn header_field(s: &str, max: usize) -> String {
    let out: String = s.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if out.is_empty() {
        "-".into()
    } else {
        out
    }
}

/// The RFC 5424 message of an alert: TEXT for the native format, else the event's JSON.
pub fn format(alert: &Alert, facility: u8, host: &str, pid: u32, now: SystemTime, formatter: &Formatter) -> String {
    let pri = u32::from(facility) * 8 + u32::from(alert.severity());
    let ts = Timestamp(now).format();
    let ts = std::str::from_utf8(&ts).expect("ASCII");
    let kind = alert.kind.as_str();
    let mut out = format!("<{pri}>1 {ts} {} dockexpose {pid} {kind} [{SD_ID} kind=\"{kind}\"", header_field(host, 255));
    let mut param = |name: &str, value: &str| {
        let _ = write!(out, " {name}=\"{}\"", escape_param(value));
    };
    if let Some(h) = &alert.health {
        param("condition", h.condition.as_str());
        param("state", h.state.as_str());
        param("count", &h.count.to_string());
        if let Some(subject) = &h.subject {
            param("subject", subject);
        }
    }
    if let Some(rec) = &alert.record {
        if let Some(c) = &rec.container {
            param("container", &c.name);
            param("image", &c.image);
        }
        if let Some(port) = rec.host_port {
            param("host_port", &port.to_string());
        }
        param("proto", rec.proto);
        param("src_ip", &rec.src_ip.to_string());
        param("stage", rec.stage);
    }
    out.push_str("] ");
    if formatter.format == JsonFormat::Native {
        out.push_str(&escape_controls(&alert.text));
    } else {
        // Compact JSON holds no control character: strings are escaped.
        out.push_str(&String::from_utf8_lossy(&formatter.alert_json(alert, now)));
    }
    out
}

/// Whether the peer of a TCP connection has not closed it, asked of the socket itself
/// (tokio's readiness may not have seen the FIN yet). A syslog server sends nothing, so
/// anything readable is an end of file or an error.
fn peer_open(stream: &TcpStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv writes at most 1 byte into `byte`, on a socket `stream` owns.
    let n = unsafe { libc::recv(stream.as_raw_fd(), (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Unix(UnixDatagram),
}

pub struct Syslog {
    target: Target,
    address: String,
    facility: u8,
    host: String,
    pid: u32,
    formatter: Formatter,
    conn: Option<Conn>,
}

impl Syslog {
    /// `key`: the config key of this sink ("sinks.syslog[0]"), for errors.
    pub fn new(key: &str, config: &SyslogConfig, formatter: &Formatter) -> Result<Self, SinkError> {
        let target = parse_address(&config.address).map_err(|reason| {
            SinkError::config(
                format!("{key}.address"),
                &config.address,
                reason,
                "write udp://127.0.0.1:514, tcp://logs.example.com:6514 or unix:///dev/log",
            )
        })?;
        let Some(facility) = FACILITIES.iter().position(|&f| f == config.facility) else {
            return Err(SinkError::config(
                format!("{key}.facility"),
                &config.facility,
                "no such syslog facility",
                format!("use one of: {}", FACILITIES.join(", ")),
            ));
        };
        let host = config.hostname.clone().unwrap_or_else(hostname);
        Ok(Self {
            target,
            address: config.address.clone(),
            facility: facility as u8,
            host,
            pid: std::process::id(),
            formatter: formatter.clone(),
            conn: None,
        })
    }

    async fn connect(&self) -> io::Result<Conn> {
        Ok(match &self.target {
            Target::Udp(hp) => {
                let addr = tokio::net::lookup_host(hp.as_str())
                    .await?
                    .next()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
                let local: SocketAddr =
                    if addr.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
                let sock = UdpSocket::bind(local).await?;
                sock.connect(addr).await?;
                Conn::Udp(sock)
            }
            Target::Tcp(hp) => {
                let stream = TcpStream::connect(hp.as_str()).await?;
                stream.set_nodelay(true)?;
                Conn::Tcp(stream)
            }
            Target::Unix(path) => {
                let sock = UnixDatagram::unbound()?;
                sock.connect(path)?;
                Conn::Unix(sock)
            }
        })
    }
}

impl Deliver for Syslog {
    async fn deliver(&mut self, alert: &Alert) -> Result<(), Failure> {
        let msg = format(alert, self.facility, &self.host, self.pid, SystemTime::now(), &self.formatter);
        let failed =
            |what: &str, e: io::Error| Failure::Retry { after: None, reason: format!("{what} {}: {e}", self.address) };
        // A TCP peer that closed (a restarted server): reconnect rather than write
        // into a connection that will only answer with a reset.
        if self.conn.as_ref().is_some_and(|c| matches!(c, Conn::Tcp(s) if !peer_open(s))) {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect().await.map_err(|e| failed("connect", e))?);
        }
        let res = match self.conn.as_mut().expect("connected") {
            Conn::Udp(s) => s.send(msg.as_bytes()).await.map(drop),
            Conn::Unix(s) => s.send(msg.as_bytes()).await.map(drop),
            Conn::Tcp(s) => s.write_all(format!("{} {msg}", msg.len()).as_bytes()).await,
        };
        match res {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                Err(Failure::GiveUp(format!("send to {}: {e} ({} bytes)", self.address, msg.len())))
            }
            Err(e) => Err(failed("send to", e)),
        }
    }

    fn reset(&mut self) {
        self.conn = None;
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::output::{alerts::AlertKind, formats::Observer};

    fn formatter(format: JsonFormat) -> Formatter {
        Formatter::new(format, Observer { hostname: "h1".into(), host_id: None, version: "0.1.0" })
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_address("udp://127.0.0.1:514"), Ok(Target::Udp("127.0.0.1:514".into())));
        assert_eq!(parse_address("tcp://[::1]:6514"), Ok(Target::Tcp("[::1]:6514".into())));
        assert_eq!(parse_address("tcp://logs.example.com:601"), Ok(Target::Tcp("logs.example.com:601".into())));
        assert_eq!(parse_address("unix:///dev/log"), Ok(Target::Unix("/dev/log".into())));
        for bad in [
            "127.0.0.1:514",
            "udp://127.0.0.1",
            "udp://::1:514",
            "udp://[::1]",
            "tcp://h:0",
            "tcp://h:99999",
            "tcp://:514",
            "unix://dev/log",
            "tcp://[zz]:1",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn param_values_are_escaped() {
        assert_eq!(escape_param(r#"a"b\c]d"#), r#"a\"b\\c\]d"#);
        assert_eq!(escape_param("x\ny"), r"x\\u{a}y");
        assert_eq!(escape_param("plain [ok]"), r"plain [ok\]");
    }

    #[test]
    fn an_alert_is_one_rfc5424_message() {
        let mut rec = super::super::test_record();
        Arc::make_mut(rec.container.as_mut().unwrap()).name = "we\"b]".into();
        let alert = Alert::new(AlertKind::Reached, "EXPOSED we\"b] 198.18.3.1:8080".into(), Some(Arc::new(rec)));
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_936_834_123_456);
        let msg = format(&alert, 3, "host one", 42, at, &formatter(JsonFormat::Native));
        assert_eq!(
            msg,
            "<28>1 2026-11-29T07:20:34.123456Z hostone dockexpose 42 reached [dockexpose@32473 kind=\"reached\" \
             container=\"we\\\"b\\]\" image=\"nginx:1.27\" host_port=\"8080\" proto=\"tcp\" src_ip=\"198.18.3.2\" \
             stage=\"reached\"] EXPOSED we\"b] 198.18.3.1:8080"
        );
        let summary = Alert::new(AlertKind::Blocked, "x".into(), None);
        // local0 (16) * 8 + notice (5).
        assert!(format(&summary, 16, "", 1, at, &formatter(JsonFormat::Native)).starts_with(
            "<133>1 2026-11-29T07:20:34.123456Z - dockexpose 1 blocked [dockexpose@32473 kind=\"blocked\"] x"
        ));
    }

    #[test]
    fn in_ecs_and_ocsf_the_message_is_the_event_as_compact_json() {
        let alert =
            Alert::new(AlertKind::Reached, "EXPOSED web\nx".into(), Some(Arc::new(super::super::test_record())));
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_936_834_123_456);
        let native = format(&alert, 3, "host one", 42, at, &formatter(JsonFormat::Native));
        let header = native.split_once("] ").unwrap().0;
        for json_format in [JsonFormat::Ecs, JsonFormat::Ocsf] {
            let msg = format(&alert, 3, "host one", 42, at, &formatter(json_format));
            let (head, body) = msg.split_once("] ").unwrap();
            assert_eq!(head, header, "header and structured data as in native");
            assert!(!body.contains('\n'), "one line: {body}");
            let event: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(event["message"], "EXPOSED web\nx");
        }
    }
}
