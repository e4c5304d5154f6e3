use std::{cell::RefCell, rc::Rc};

use super::*;
use crate::inventory::model::tests::sample;

struct Collect(Rc<RefCell<Vec<Arc<Alert>>>>);
impl AlertOut for Collect {
    fn alert(&mut self, alert: &Arc<Alert>) {
        self.0.borrow_mut().push(alert.clone());
    }
}

/// Until the writer wrote all that was handed.
fn settle(out: &mut Outputs, rx: &mut tokio::sync::mpsc::UnboundedReceiver<Report>) {
    loop {
        out.audit.wake_on_write();
        if out.audit.written() >= out.audit.handed() {
            out.audit_report(Report::Written { seq: out.audit.written() });
            return;
        }
        out.audit_report(rx.blocking_recv().unwrap());
    }
}

fn reached(src: &str) -> Record {
    crate::output::alerts::tests::rec(src, "172.17.0.2", 80)
}

#[test]
fn every_record_reaches_the_audit_log_the_status_state_and_the_alert_outputs() {
    let dir = std::env::temp_dir().join(format!("dockexpose-fanout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audit.jsonl");
    let _ = std::fs::remove_file(&path);
    let seen = Rc::new(RefCell::new(Vec::new()));
    let stage = AlertStage::new(Duration::from_secs(60), vec![Box::new(Collect(seen.clone()))]);
    let mut out = Outputs::new(AuditLog::open(Some(&path), None).unwrap(), true, stage, KernelClock::now());
    let mut rx = out.audit.take_reports().unwrap();
    out.exposures.sync(&sample());
    out.connection(reached("198.18.3.2"), None);
    out.connection(reached("198.18.3.2"), None);
    out.connection(reached("198.18.3.3"), None);
    out.flush();
    settle(&mut out, &mut rx);
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3, "every record in the audit log");
    let web = out.exposures.rows().into_iter().find(|r| r.host_port == Some(8080)).unwrap();
    assert_eq!((web.reached, web.distinct_sources), (3, 2));
    assert_eq!(seen.borrow().len(), 2, "one alert per new source");
    assert_eq!(out.alert_counts().iter().find(|(k, _)| *k == AlertKind::Reached).unwrap().1, 2);
    assert_eq!(out.records(), 3);
}

#[test]
fn without_an_audit_log_the_latency_is_measured_at_once_and_nothing_is_kept() {
    let stage = AlertStage::new(Duration::from_secs(60), Vec::new());
    let mut out = Outputs::new(AuditLog::open(None, None).unwrap(), true, stage, KernelClock::now());
    let mut ev = dockexpose_common::ConnEvent::zeroed();
    (ev.family, ev.proto, ev.stage) =
        (dockexpose_common::FAMILY_IPV4, dockexpose_common::PROTO_TCP, dockexpose_common::STAGE_REACHED);
    let obs = Observation::from_event(&ev).unwrap();
    for _ in 0..3 {
        out.connection(reached("198.18.3.2"), Some(&obs));
        out.flush();
    }
    assert!(out.unwritten.is_empty(), "nothing waits for an acknowledgement that never comes");
    assert!(out.latencies().0.p50_us > 0);
}

#[test]
fn every_record_written_carries_its_community_id() {
    let dir = std::env::temp_dir().join(format!("dockexpose-fanout-cid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audit.jsonl");
    let _ = std::fs::remove_file(&path);
    let stage = AlertStage::new(Duration::from_secs(60), Vec::new());
    let mut out = Outputs::new(AuditLog::open(Some(&path), None).unwrap(), true, stage, KernelClock::now());
    let mut rx = out.audit.take_reports().unwrap();
    out.connection(reached("198.18.3.2"), None);
    let verified =
        Record { stage: crate::output::record::STAGE_VERIFIED, verdict: Some("EXPOSED"), ..reached("198.18.3.2") };
    out.verified(verified, Some(80));
    let mut unnamed = reached("198.18.3.2");
    (unnamed.host_ip, unnamed.host_port) = (None, None);
    out.connection(unnamed, None);
    out.flush();
    settle(&mut out, &mut rx);
    let text = std::fs::read_to_string(&path).unwrap();
    let ids: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["community_id"].as_str().unwrap().to_owned())
        .collect();
    // python3 -c "import communityid as c; cid=c.CommunityID();
    //   print(cid.calc(c.FlowTuple.make_tcp('198.18.3.2','198.18.3.1',1,8080)))"
    assert_eq!(ids[..2], ["1:xWGxx2v8RSjyYuOhc+vwckM335E=", "1:xWGxx2v8RSjyYuOhc+vwckM335E="], "the host side");
    let observed =
        super::community_id::community_id_v1(6, "198.18.3.2".parse().unwrap(), 1, "172.17.0.2".parse().unwrap(), 80);
    assert_eq!(ids[2], observed, "no host side: the tuple observed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failing_audit_log_is_a_health_alert_for_every_output() {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let stage = AlertStage::new(Duration::from_secs(60), vec![Box::new(Collect(seen.clone()))]);
    // /dev/full: every write fails with ENOSPC.
    let mut out = Outputs::new(
        AuditLog::open(Some(std::path::Path::new("/dev/full")), None).unwrap(),
        true,
        stage,
        KernelClock::now(),
    );
    let mut rx = out.audit.take_reports().unwrap();
    out.connection(reached("198.18.3.2"), None);
    out.flush();
    out.audit_report(rx.blocking_recv().unwrap());
    out.connection(reached("198.18.3.3"), None);
    out.flush();
    // A few retries of the writer: still failing, not said again.
    std::thread::sleep(Duration::from_millis(1500));
    while let Ok(r) = rx.try_recv() {
        out.audit_report(r);
    }
    let health: Vec<_> = seen.borrow().iter().filter(|a| a.kind == AlertKind::Health).cloned().collect();
    assert_eq!(health.len(), 1, "the first at once, then held: {health:?}");
    let h = health[0].health.as_ref().unwrap();
    assert_eq!((h.condition, h.state), (HealthCondition::AuditLog, crate::output::alerts::HealthState::Failing));
    assert!(health[0].text.starts_with("WARNING: writing the audit log /dev/full failed"), "{}", health[0].text);
    assert_eq!(health[0].severity(), 3);
}
