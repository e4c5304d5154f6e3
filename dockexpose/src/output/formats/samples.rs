//! Records for the formats' tests: every key of the contract set.

use std::{sync::Arc, time::Duration, time::SystemTime};

use super::Observer;
use crate::{
    intent::{Action, Intent, Source},
    output::record::{ContainerRef, HostSide, Record},
};

pub fn observer() -> Observer {
    Observer { hostname: "web-01".into(), host_id: Some("0123abcd".into()), version: "0.1.0" }
}

/// 2026-11-29T07:20:34.123456Z.
pub fn at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_936_834_123_456)
}

/// A reached record of web (nginx:1.27, compose shop/web) through 198.18.3.1:8080,
/// with every optional key set.
pub fn reached() -> Record {
    let mut rec = crate::output::alerts::tests::rec("198.18.3.2", "172.17.0.2", 80);
    rec.ts = crate::output::record::Timestamp(at());
    rec.src_port = 40112;
    rec.community_id = Some("1:q56dCzNiETsI+i/gyEbUFrETGt0=".into());
    rec.container = Some(Arc::new(ContainerRef {
        id: "4f1e2d3c4b5a".into(),
        name: "web".into(),
        image: "nginx:1.27".into(),
        compose_project: Some("shop".into()),
        compose_service: Some("web".into()),
        swarm_service: Some("shop_web".into()),
        swarm_task: Some("shop_web.1.abc".into()),
    }));
    rec.exposure = "published";
    rec.published = vec![HostSide { host_ip: "0.0.0.0".parse().unwrap(), host_port: 8080 }];
    rec.shape = vec!["vlan"];
    rec.intent = Some(Intent {
        source: Source::Ufw,
        action: Action::Deny,
        rule: "[ 3] 8080/tcp DENY IN Anywhere".into(),
        default_policy: false,
    });
    rec.contradiction = Some(true);
    rec.ban_bypassed = Some("ipset blocklist".into());
    rec.boot_id = Some("cc02aa2a-0000");
    rec.cpu = Some(1);
    rec.kseq = Some(77);
    rec.record_id = Some(crate::output::record_id::of_kernel("cc02aa2a-0000", 1, 77, "reached"));
    (rec.host, rec.host_id) = (Some("web-01".into()), Some("0123abcd".into()));
    rec
}

/// The same connection at another stage, with no host side known.
pub fn without_host_side(stage: &'static str) -> Record {
    let mut rec = reached();
    rec.stage = stage;
    rec.host_ip = None;
    rec.host_port = None;
    rec
}

/// A verified record: a probe's verdict and why.
pub fn verified(verdict: &'static str) -> Record {
    let mut rec = reached();
    rec.stage = crate::output::record::STAGE_VERIFIED;
    rec.intent = None;
    rec.contradiction = None;
    rec.verdict = Some(verdict);
    rec.why = Some("dropped by ip filter DOCKER-USER: iifname \"eth0\" drop".into());
    rec
}
