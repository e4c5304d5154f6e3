//! Contradictions, live: each `reached` record is set against the firewall's word
//! (`intent`). A record on a host port the intent denies carries the intent and
//! `contradiction: true`; on one it allows, `contradiction: false`; a source that a
//! ban in INPUT drops, reaching a container through FORWARD, carries `ban_bypassed`.
//! The first contradiction per port and rule (per ban and port) raises a
//! CONTRADICTION alert. Pure: the book is read elsewhere, off the loop.

use std::{collections::HashSet, net::IpAddr, sync::Arc};

use super::{
    alerts::{Alert, AlertKind},
    human::escape_untrusted,
    record::Record,
};
use crate::{
    intent::{Action, Intent, IntentBook},
    kernel::event::Proto,
};

/// What was already alerted: (host port, protocol, the rule) and (ban, host port).
#[derive(Default)]
pub struct Contradictions {
    book: Arc<IntentBook>,
    said: HashSet<(u16, &'static str, String)>,
    bans_said: HashSet<(String, Option<u16>)>,
}

impl Contradictions {
    pub fn new(book: Arc<IntentBook>) -> Self {
        Self { book, ..Default::default() }
    }

    /// A new reading of the intent (the ground moved). What was said stays said:
    /// a rule unchanged is not alerted again; a changed rule has a new text.
    pub fn set_book(&mut self, book: Arc<IntentBook>) {
        self.book = book;
    }

    pub fn book(&self) -> &IntentBook {
        &self.book
    }

    /// Sets `intent`, `contradiction` and `ban_bypassed` on a `reached` record; the
    /// alert to raise, when this is the first of its kind.
    pub fn annotate(&mut self, rec: &mut Record) -> Option<Alert> {
        if rec.stage != "reached" {
            return None;
        }
        let mut alert = None;
        if let (Some(port), Some(proto)) = (rec.host_port, Proto::parse(rec.proto)) {
            let intent = if rec.exposure == "loopback_only" {
                let bound = rec.published.iter().find(|h| h.host_ip.is_loopback()).map(|h| h.host_ip);
                self.book.for_binding(bound.unwrap_or(IpAddr::from([127, 0, 0, 1])), port, proto, None)
            } else {
                self.book.for_port(port, proto, rec.family == "ipv6", None)
            };
            if let Some(intent) = intent {
                let denied = intent.action == Action::Deny;
                if denied && self.said.insert((port, rec.proto, intent.rule.clone())) {
                    alert = Some(port_alert(rec, port, &intent));
                }
                rec.contradiction = Some(denied);
                rec.intent = Some(intent);
            }
        }
        if let Some(ban) = self.book.ban_of(rec.src_ip) {
            rec.ban_bypassed = Some(ban.name.clone());
            rec.contradiction = Some(true);
            if self.bans_said.insert((ban.name.clone(), rec.host_port)) && alert.is_none() {
                alert = Some(ban_alert(rec, &ban.name));
            }
        }
        alert.map(|mut a| {
            a.priority = true;
            a
        })
    }
}

fn who(rec: &Record) -> String {
    match &rec.container {
        Some(c) => format!("container {}", escape_untrusted(&c.name)),
        None => format!("{}:{}", rec.dst_ip, rec.dst_port),
    }
}

/// "UFW denies 8080/tcp ([ 3] 8080/tcp DENY IN Anywhere), yet 198.18.3.2 reached
/// container web through 8080".
fn port_alert(rec: &Record, port: u16, intent: &Intent) -> Alert {
    let text = format!(
        "CONTRADICTION: {} denies {port}/{} ({}), yet {} reached {} through {port}",
        intent.source.display(),
        rec.proto,
        escape_untrusted(&intent.rule),
        rec.src_ip,
        who(rec)
    );
    Alert::new(AlertKind::Contradiction, text, Some(Arc::new(rec.clone())))
}

/// "fail2ban jail sshd bans 198.18.7.10 in INPUT, yet it reached container web
/// through 8080 (ban_bypassed)".
fn ban_alert(rec: &Record, ban: &str) -> Alert {
    let through = rec.host_port.map(|p| format!(" through {p}")).unwrap_or_default();
    let text = format!(
        "CONTRADICTION: {} bans {} in INPUT, yet it reached {}{through} by FORWARD (ban_bypassed)",
        escape_untrusted(ban),
        rec.src_ip,
        who(rec)
    );
    Alert::new(AlertKind::Contradiction, text, Some(Arc::new(rec.clone())))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{
        intent::{Ban, PortRule, Source},
        kernel::event::{Observation, Stage},
        output::record::ContainerRef,
    };

    fn book() -> IntentBook {
        let rule = |port: Option<u16>, action, text: &str| PortRule {
            intent: Intent { source: Source::Ufw, action, rule: text.into(), default_policy: false },
            ports: port.map(|p| vec![(p, p)]),
            proto: port.map(|_| Proto::Tcp),
            v6: None,
            from_any: true,
            iface: None,
        };
        IntentBook::from_rules(
            Some(Source::Ufw),
            "ufw".into(),
            vec![
                rule(Some(8080), Action::Deny, "[ 1] 8080/tcp DENY IN Anywhere"),
                rule(Some(9090), Action::Allow, "[ 2] 9090/tcp ALLOW IN Anywhere"),
                rule(None, Action::Deny, "default deny (incoming)"),
            ],
            vec![Ban { name: "ipset blocklist".into(), members: vec!["198.18.7.0/24".parse().unwrap()] }],
        )
    }

    fn reached(src: &str, port: u16) -> Record {
        let mut o = Observation::sample(Stage::Reached, Proto::Tcp, src, 40000, "172.17.0.2", 80);
        o.orig_dst = Some(("198.18.3.1".parse().unwrap(), port));
        let mut r = Record::from_observation(&o, Stage::Reached, SystemTime::UNIX_EPOCH, "docker0");
        r.container = Some(ContainerRef { name: "web".into(), ..Default::default() }.into());
        r.exposure = "published";
        r
    }

    #[test]
    fn a_denied_port_reached_carries_the_rule_and_alerts_once() {
        let mut c = Contradictions::new(Arc::new(book()));
        let mut r = reached("198.18.3.2", 8080);
        let alert = c.annotate(&mut r).expect("the first contradiction alerts");
        assert_eq!(alert.kind, AlertKind::Contradiction);
        assert!(alert.priority);
        assert_eq!(
            alert.text,
            "CONTRADICTION: UFW denies 8080/tcp ([ 1] 8080/tcp DENY IN Anywhere), yet 198.18.3.2 reached container web through 8080"
        );
        let v: serde_json::Value = serde_json::from_str(&r.to_json_line()).unwrap();
        assert_eq!(v["contradiction"], true);
        assert_eq!(
            v["intent"],
            serde_json::json!({"source": "ufw", "action": "deny", "rule": "[ 1] 8080/tcp DENY IN Anywhere"})
        );
        assert!(v.get("ban_bypassed").is_none());
        assert!(c.annotate(&mut reached("198.18.3.3", 8080)).is_none(), "once per port and rule");
        let mut other = reached("198.18.3.3", 7070);
        assert!(
            c.annotate(&mut other).unwrap().text.contains("(default deny (incoming))"),
            "the default speaks for other ports"
        );
    }

    #[test]
    fn an_allowed_port_says_no_contradiction_and_other_stages_are_left_alone() {
        let mut c = Contradictions::new(Arc::new(book()));
        let mut r = reached("198.18.3.2", 9090);
        assert!(c.annotate(&mut r).is_none());
        assert_eq!((r.contradiction, r.intent.as_ref().map(|i| i.action)), (Some(false), Some(Action::Allow)));
        let mut attempt = reached("198.18.3.2", 8080);
        attempt.stage = "attempted";
        assert!(c.annotate(&mut attempt).is_none());
        assert_eq!((attempt.contradiction, attempt.intent), (None, None));
        let mut none = Contradictions::new(Arc::new(IntentBook::default()));
        let mut r = reached("198.18.3.2", 8080);
        assert!(none.annotate(&mut r).is_none());
        assert!(!r.to_json_line().contains("contradiction"), "no firewall: no key, nothing invented");
    }

    #[test]
    fn a_banned_source_that_reaches_a_container_is_a_ban_bypassed() {
        let mut c = Contradictions::new(Arc::new(book()));
        let mut r = reached("198.18.7.9", 9090);
        let alert = c.annotate(&mut r).expect("alerted");
        assert_eq!(r.ban_bypassed.as_deref(), Some("ipset blocklist"));
        assert_eq!(r.contradiction, Some(true), "allowed port, banned source: still a contradiction");
        assert!(
            alert.text.contains("ipset blocklist bans 198.18.7.9 in INPUT") && alert.text.ends_with("(ban_bypassed)"),
            "{}",
            alert.text
        );
    }
}
