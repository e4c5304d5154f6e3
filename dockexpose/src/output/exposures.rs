//! What is exposed, as the running daemon knows it: one row per published container
//! port (from Docker's inventory), with what reached it. `dockexpose status` and the
//! Prometheus metrics read it.
//!
//! Bounded by the inventory, never by sources: a row exists for each published binding
//! of a running container (plus at most `MAX_UNPUBLISHED_ROWS` rows for ports reached
//! without being published), and each row keeps at most `MAX_SOURCES` distinct sources
//! (exact up to there; past it the count is a floor, said so).

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    net::IpAddr,
    sync::Arc,
    time::SystemTime,
};

use serde::Serialize;

use super::record::{ContainerRef, Record, Timestamp};
use crate::inventory::model::Inventory;

/// Outsiders choose the source keys: a randomly seeded hasher.
type HashMap<K, V> = StdHashMap<K, V, foldhash::quality::RandomState>;

/// Distinct sources counted exactly per row; past that the count is "at least".
pub const MAX_SOURCES: usize = 10_000;
/// Rows for ports reached without a publication (direct routing), at most.
const MAX_UNPUBLISHED_ROWS: usize = 1024;
/// Sources listed per row.
const TOP_SOURCES: usize = 5;

/// A row: a container's published binding, or a port of it reached unpublished.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct RowKey {
    container_id: String,
    /// None for an unpublished port.
    host_ip: Option<IpAddr>,
    /// The host port; the container port for an unpublished one.
    port: u16,
    proto: &'static str,
}

#[derive(Debug)]
struct Row {
    container: Arc<ContainerRef>,
    container_port: u16,
    exposure: &'static str,
    first_seen: Option<SystemTime>,
    last_seen: Option<SystemTime>,
    attempts: u64,
    reached: u64,
    blocked: u64,
    sources: HashMap<IpAddr, u64>,
    /// More distinct sources came than `MAX_SOURCES`.
    sources_capped: bool,
    /// The last verify probe's verdict (EXPOSED, PROXY, HELD).
    verified: Option<&'static str>,
}

impl Row {
    fn new(container: Arc<ContainerRef>, container_port: u16, exposure: &'static str) -> Self {
        Self {
            container,
            container_port,
            exposure,
            first_seen: None,
            last_seen: None,
            attempts: 0,
            reached: 0,
            blocked: 0,
            sources: HashMap::default(),
            sources_capped: false,
            verified: None,
        }
    }
}

/// One row of `dockexpose status`, as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ExposureRow {
    pub container: String,
    pub container_id: String,
    pub image: String,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
    /// Null for a port reached without being published.
    pub host_ip: Option<IpAddr>,
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub proto: String,
    /// published, loopback_only or unpublished.
    pub exposure: String,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    pub attempts: u64,
    pub reached: u64,
    pub blocked: u64,
    pub distinct_sources: u64,
    /// False when more than 10 000 distinct sources came: `distinct_sources` is a floor.
    pub distinct_sources_exact: bool,
    pub top_sources: Vec<SourceCount>,
    /// The last verify probe's verdict, when `--verify-every` runs.
    pub verified: Option<String>,
}

#[cfg(test)]
impl ExposureRow {
    /// A row of `name` (image nginx:1.27) at 0.0.0.0:8080 -> 80/tcp, for tests.
    pub fn sample(name: &str) -> Self {
        ExposureRow {
            container: name.into(),
            container_id: "c1".into(),
            image: "nginx:1.27".into(),
            compose_project: None,
            compose_service: None,
            host_ip: Some("0.0.0.0".parse().unwrap()),
            host_port: Some(8080),
            container_port: 80,
            proto: "tcp".into(),
            exposure: "published".into(),
            first_seen: None,
            last_seen: Some("2026-11-29T07:20:34.123456Z".into()),
            attempts: 4,
            reached: 3,
            blocked: 1,
            distinct_sources: 2,
            distinct_sources_exact: true,
            top_sources: vec![SourceCount { ip: "198.18.3.2".parse().unwrap(), connections: 2 }],
            verified: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SourceCount {
    pub ip: IpAddr,
    pub connections: u64,
}

#[derive(Default)]
pub struct ExposureTable {
    rows: BTreeMap<RowKey, Row>,
    /// (host port, proto) -> the published rows with it, as (container id, binding
    /// address): found per record without building a key.
    by_port: HashMap<(u16, &'static str), Vec<RowKey>>,
    /// Records of no known container, or past the row caps.
    unmatched: u64,
}

fn stamp(t: Option<SystemTime>) -> Option<String> {
    t.map(|t| String::from_utf8_lossy(&Timestamp(t).format()).into_owned())
}

impl ExposureTable {
    /// Rows become the published bindings of the running containers; rows that persist
    /// keep their figures, rows whose container or binding is gone are dropped.
    pub fn sync(&mut self, inv: &Inventory) {
        let mut rows = BTreeMap::new();
        let mut by_port: HashMap<(u16, &'static str), Vec<RowKey>> = HashMap::default();
        for c in &inv.containers {
            for p in &c.ports {
                let key = RowKey {
                    container_id: c.id.clone(),
                    host_ip: Some(p.host_ip),
                    port: p.host_port,
                    proto: p.proto.as_str(),
                };
                let exposure = if p.loopback_only() { "loopback_only" } else { "published" };
                let mut row =
                    self.rows.remove(&key).unwrap_or_else(|| Row::new(c.identity.clone(), p.container_port, exposure));
                row.container = c.identity.clone();
                row.container_port = p.container_port;
                by_port.entry((p.host_port, key.proto)).or_default().push(key.clone());
                rows.insert(key, row);
            }
        }
        // Unpublished rows stay while their container runs.
        for (key, row) in std::mem::take(&mut self.rows) {
            if key.host_ip.is_none() && inv.containers.iter().any(|c| c.id == key.container_id) {
                rows.insert(key, row);
            }
        }
        self.rows = rows;
        self.by_port = by_port;
    }

    /// The row a record belongs to, created for an unpublished port. The published
    /// case builds no key: it borrows the one `by_port` holds.
    fn row_for(&mut self, rec: &Record) -> Option<&mut Row> {
        let container = rec.container.as_ref()?;
        match rec.host_port {
            Some(host_port) => {
                let candidates = self.by_port.get(&(host_port, rec.proto))?;
                let ours = || candidates.iter().filter(|k| k.container_id == container.id);
                let exact = ours().find(|k| k.host_ip.is_some() && k.host_ip == rec.host_ip);
                let wildcard = || {
                    ours().find(|k| {
                        k.host_ip.is_some_and(|ip| {
                            ip.is_unspecified() && rec.host_ip.is_none_or(|h| h.is_ipv4() == ip.is_ipv4())
                        })
                    })
                };
                let key = exact.or_else(wildcard).or_else(|| ours().next())?;
                self.rows.get_mut(key)
            }
            None if matches!(rec.exposure, "unpublished" | "direct") && rec.stage == "reached" => {
                let key =
                    RowKey { container_id: container.id.clone(), host_ip: None, port: rec.dst_port, proto: rec.proto };
                if !self.rows.contains_key(&key) {
                    if self.rows.keys().filter(|k| k.host_ip.is_none()).count() >= MAX_UNPUBLISHED_ROWS {
                        return None;
                    }
                    self.rows.insert(key.clone(), Row::new(container.clone(), rec.dst_port, rec.exposure));
                }
                self.rows.get_mut(&key)
            }
            None => None,
        }
    }

    /// Counts one record.
    pub fn record(&mut self, rec: &Record) {
        let at = rec.ts.0;
        let Some(row) = self.row_for(rec) else {
            self.unmatched += 1;
            return;
        };
        // A source counts once per connection: at its outcome (reached or blocked),
        // not also at its attempt.
        match rec.stage {
            "attempted" => {
                row.attempts += 1;
                row.first_seen.get_or_insert(at);
                row.last_seen = Some(at);
                return;
            }
            "reached" => row.reached += 1,
            "blocked" => row.blocked += 1,
            super::record::STAGE_VERIFIED => {
                row.verified = rec.verdict;
                return;
            }
            _ => return,
        }
        row.first_seen.get_or_insert(at);
        row.last_seen = Some(at);
        let room = row.sources.len() < MAX_SOURCES;
        match row.sources.get_mut(&rec.src_ip) {
            Some(n) => *n += 1,
            None if room => {
                row.sources.insert(rec.src_ip, 1);
            }
            None => row.sources_capped = true,
        }
    }

    /// Records that matched no row (no container known, or past the caps).
    pub fn unmatched(&self) -> u64 {
        self.unmatched
    }

    pub fn rows(&self) -> Vec<ExposureRow> {
        self.rows
            .iter()
            .map(|(key, row)| {
                let mut top: Vec<SourceCount> =
                    row.sources.iter().map(|(ip, n)| SourceCount { ip: *ip, connections: *n }).collect();
                top.sort_by(|a, b| b.connections.cmp(&a.connections).then(a.ip.cmp(&b.ip)));
                top.truncate(TOP_SOURCES);
                ExposureRow {
                    container: row.container.name.clone(),
                    container_id: row.container.id.clone(),
                    image: row.container.image.clone(),
                    compose_project: row.container.compose_project.clone(),
                    compose_service: row.container.compose_service.clone(),
                    host_ip: key.host_ip,
                    host_port: key.host_ip.map(|_| key.port),
                    container_port: row.container_port,
                    proto: key.proto.to_string(),
                    exposure: row.exposure.to_string(),
                    first_seen: stamp(row.first_seen),
                    last_seen: stamp(row.last_seen),
                    attempts: row.attempts,
                    reached: row.reached,
                    blocked: row.blocked,
                    distinct_sources: row.sources.len() as u64,
                    distinct_sources_exact: !row.sources_capped,
                    top_sources: top,
                    verified: row.verified.map(str::to_string),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{
        correlate,
        inventory::model::tests::sample,
        kernel::event::{Observation, Proto, Stage},
    };

    fn rec(stage: Stage, src: &str, dst: &str, port: u16, orig: Option<(&str, u16)>) -> Record {
        let obs = Observation {
            ktime_ns: 0,
            stage,
            proto: Proto::Tcp,
            src: src.parse().unwrap(),
            src_port: 1,
            dst: dst.parse().unwrap(),
            dst_port: port,
            orig_dst: orig.map(|(ip, p)| (ip.parse().unwrap(), p)),
            ifindex: 0,
            seq: 0,
            flags: 0,
            cpu: 0,
            rec_seq: 0,
        };
        correlate::record(
            &obs,
            stage,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
            "docker0",
            Some(&sample()),
        )
    }

    fn row<'a>(rows: &'a [ExposureRow], name: &str, port: Option<u16>) -> &'a ExposureRow {
        rows.iter()
            .find(|r| r.container == name && r.host_port == port)
            .unwrap_or_else(|| panic!("no row {name} {port:?}: {rows:#?}"))
    }

    #[test]
    fn one_row_per_published_binding_even_before_traffic() {
        let mut t = ExposureTable::default();
        let inv = sample();
        t.sync(&inv);
        let published: usize = inv.containers.iter().map(|c| c.ports.len()).sum();
        let rows = t.rows();
        assert_eq!(rows.len(), published);
        assert!(rows.iter().all(|r| r.attempts + r.reached + r.blocked == 0 && r.first_seen.is_none()));
    }

    #[test]
    fn reaches_attempts_and_sources_are_counted_on_their_row() {
        let mut t = ExposureTable::default();
        t.sync(&sample());
        for (i, src) in ["198.18.3.2", "198.18.3.2", "198.18.3.2", "198.18.3.3", "198.18.3.4"].iter().enumerate() {
            let _ = i;
            t.record(&rec(Stage::Reached, src, "172.17.0.2", 80, Some(("198.18.3.1", 8080))));
        }
        t.record(&rec(Stage::Attempted, "198.18.3.9", "198.18.3.1", 8080, None));
        let rows = t.rows();
        let web = row(&rows, "web", Some(8080));
        assert_eq!((web.reached, web.attempts, web.blocked), (5, 1, 0));
        assert_eq!(web.distinct_sources, 3, "a source counts at the outcome of its connection");
        t.record(&rec(Stage::Attempted, "198.18.3.2", "198.18.3.1", 8080, None));
        t.record(&rec(Stage::Reached, "198.18.3.2", "172.17.0.2", 80, Some(("198.18.3.1", 8080))));
        let web = row(&t.rows(), "web", Some(8080)).clone();
        assert_eq!(
            web.top_sources[0],
            SourceCount { ip: "198.18.3.2".parse().unwrap(), connections: 4 },
            "attempt + reach: one connection"
        );
        assert!(web.distinct_sources_exact);
        assert_eq!(web.first_seen.as_deref(), Some("1970-01-12T13:46:40.000000Z"));
    }

    #[test]
    fn unpublished_reaches_get_a_row_and_unknown_ones_are_counted() {
        let mut t = ExposureTable::default();
        t.sync(&sample());
        t.record(&rec(Stage::Reached, "198.18.3.2", "172.17.0.3", 5432, None));
        t.record(&rec(Stage::Reached, "198.18.3.2", "172.17.0.99", 80, None));
        let rows = t.rows();
        let db = row(&rows, "db", None);
        assert_eq!((db.exposure.as_str(), db.container_port, db.reached), ("unpublished", 5432, 1));
        assert_eq!(t.unmatched(), 1);
    }

    #[test]
    fn distinct_sources_are_exact_up_to_the_cap() {
        let mut t = ExposureTable::default();
        t.sync(&sample());
        let mut r = rec(Stage::Reached, "198.18.3.2", "172.17.0.2", 80, Some(("198.18.3.1", 8080)));
        for i in 0..(MAX_SOURCES as u32 + 500) {
            r.src_ip = std::net::Ipv4Addr::from(0xC612_0000 + i).into();
            t.record(&r);
        }
        let rows = t.rows();
        let web = row(&rows, "web", Some(8080));
        assert_eq!((web.distinct_sources, web.distinct_sources_exact), (MAX_SOURCES as u64, false));
        assert_eq!(web.reached, MAX_SOURCES as u64 + 500);
    }

    #[test]
    fn rows_of_containers_gone_are_dropped_and_kept_rows_keep_their_figures() {
        let mut t = ExposureTable::default();
        let mut inv = sample();
        t.sync(&inv);
        t.record(&rec(Stage::Reached, "198.18.3.2", "172.17.0.2", 80, Some(("198.18.3.1", 8080))));
        t.sync(&inv);
        assert_eq!(row(&t.rows(), "web", Some(8080)).reached, 1);
        inv.containers.retain(|c| c.name != "web");
        t.sync(&inv);
        assert!(t.rows().iter().all(|r| r.container != "web"));
    }
}
