//! The sinks' handles, queues and retry policy, without a real server.

use super::*;
use crate::output::{
    alerts::AlertKind,
    formats::{Formatter, JsonFormat, Observer},
};

#[test]
fn backoff_doubles_from_250_ms_to_8_s() {
    let p = RetryPolicy::default();
    let waits: Vec<u128> = (1..=8).map(|n| p.delay(n, None).as_millis()).collect();
    assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 8000, 8000]);
    assert_eq!(p.delay(u32::MAX, None), Duration::from_secs(8), "no overflow");
}

#[test]
fn retry_after_is_honoured_up_to_60_s() {
    let p = RetryPolicy::default();
    assert_eq!(p.delay(1, Some(Duration::from_secs(1))), Duration::from_secs(1));
    assert_eq!(p.delay(1, Some(Duration::from_secs(3600))), Duration::from_secs(60));
    // Never shorter than the backoff: Retry-After: 0 does not mean hammering.
    assert_eq!(p.delay(3, Some(Duration::ZERO)), Duration::from_secs(1));
}

#[test]
fn config_defaults_and_unknown_keys() {
    let c: SinksConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(c, SinksConfig::default());
    let c: SinksConfig =
        serde_json::from_str(r#"{"journald": {}, "syslog": [{"address": "udp://127.0.0.1:514"}]}"#).unwrap();
    assert_eq!(c.journald, Some(JournaldConfig::default()));
    assert_eq!(c.syslog[0].queue, DEFAULT_QUEUE);
    assert_eq!(c.syslog[0].facility, "daemon");
    let err = serde_json::from_str::<SinksConfig>(r#"{"webhook": [{"url": "http://x", "header": {}}]}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `header`"), "{err}");
    let err =
        serde_json::from_str::<SinksConfig>(r#"{"webhook": [{"url": "http://x", "format": "teams"}]}"#).unwrap_err();
    assert!(err.to_string().contains("unknown variant `teams`"), "{err}");
}

fn start_err(json: &str) -> String {
    let c: SinksConfig = serde_json::from_str(json).unwrap();
    match start(&c, &Formatter::new(JsonFormat::Native, Observer::this_host())) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{json} started"),
    }
}

#[test]
fn bad_settings_name_the_key_and_the_fix() {
    let e = start_err(r#"{"webhook": [{"url": "http://a.example/ok"}, {"url": "ftp://x/"}]}"#);
    assert!(e.starts_with("invalid setting sinks.webhook[1].url = \"ftp://x/\""), "{e}");
    assert!(e.contains("Fix: "), "{e}");
    let e = start_err(r#"{"webhook": [{"url": "https://"}]}"#);
    assert!(e.contains("sinks.webhook[0].url"), "{e}");
    let e = start_err(r#"{"webhook": [{"url": "http://x/", "headers": {"Bad Name": "v"}}]}"#);
    assert!(e.contains("sinks.webhook[0].headers") && e.contains("Bad Name"), "{e}");
    let e = start_err(r#"{"webhook": [{"url": "http://x/", "headers": {"X-A": "line\nbreak"}}]}"#);
    assert!(e.contains("sinks.webhook[0].headers.X-A"), "{e}");
    let e = start_err(r#"{"syslog": [{"address": "127.0.0.1:514"}]}"#);
    assert!(e.contains("sinks.syslog[0].address") && e.contains("udp://"), "{e}");
    let e = start_err(r#"{"syslog": [{"address": "udp://127.0.0.1"}]}"#);
    assert!(e.contains("sinks.syslog[0].address") && e.contains("port"), "{e}");
    let e = start_err(r#"{"syslog": [{"address": "udp://127.0.0.1:514", "facility": "kernel"}]}"#);
    assert!(e.contains("sinks.syslog[0].facility") && e.contains("local0"), "{e}");
    let e = start_err(r#"{"syslog": [{"address": "unix://relative/log"}]}"#);
    assert!(e.contains("sinks.syslog[0].address"), "{e}");
    let e = start_err(r#"{"journald": {"kinds": ["reached", "exposed"]}}"#);
    assert!(e.contains("sinks.journald.kinds = \"exposed\"") && e.contains("loopback_only"), "{e}");
    let e = start_err(r#"{"journald": {"queue": 0}}"#);
    assert!(e.contains("sinks.journald.queue = \"0\""), "{e}");
    let e = start_err(r#"{"journald": {"socket": "journal.sock"}}"#);
    assert!(e.contains("sinks.journald.socket"), "{e}");
}

#[test]
fn kind_filters() {
    let only = KindSet::parse("k", Some(&["blocked".to_string(), "verified".to_string()])).unwrap();
    assert!(only.contains(AlertKind::Blocked) && only.contains(AlertKind::Verified));
    assert!(!only.contains(AlertKind::Reached) && !only.contains(AlertKind::Repeated));
    assert!(AlertKind::ALL.iter().all(|&k| KindSet::parse("k", None).unwrap().contains(k)));
    assert!(KindSet::parse("k", Some(&[])).is_err());
}

#[test]
fn control_characters_are_escaped() {
    assert_eq!(escape_controls("web"), "web");
    assert_eq!(escape_controls("a\nb\u{1b}"), "a\\u{a}b\\u{1b}");
}

/// A sink that fails as told, to see the worker count.
struct Scripted(Vec<Result<(), Failure>>, u32);

impl Deliver for Scripted {
    async fn deliver(&mut self, _: &Alert) -> Result<(), Failure> {
        if self.0.is_empty() {
            return Ok(());
        }
        self.0.remove(0)
    }
    fn reset(&mut self) {
        self.1 += 1;
    }
}

fn alert() -> Arc<Alert> {
    Arc::new(Alert::new(AlertKind::Reached, "EXPOSED x".into(), None))
}

#[tokio::test(start_paused = true)]
async fn the_worker_retries_gives_up_and_counts() {
    let retry = || Err(Failure::Retry { after: None, reason: "refused".into() });
    let script =
        vec![retry(), retry(), Ok(()), retry(), retry(), retry(), retry(), retry(), Err(Failure::GiveUp("404".into()))];
    let queue = Queue::new(8);
    let stats = Arc::new(Shared::default());
    for _ in 0..3 {
        queue.offer(alert());
    }
    queue.close();
    let t0 = tokio::time::Instant::now();
    run(Scripted(script, 0), queue, stats.clone(), RetryPolicy::default()).await;
    // Alert 1: two retries (250 + 500 ms) then delivered; alert 2: five attempts,
    // four waits (250 + 500 + 1000 + 2000 ms), dropped; alert 3: 404, dropped at once.
    assert_eq!(t0.elapsed(), Duration::from_millis(750 + 3750));
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 1);
    assert_eq!(stats.retries.load(Ordering::Relaxed), 2 + 4);
    assert_eq!(stats.dropped_failed.load(Ordering::Relaxed), 2);
    assert_eq!(stats.last_error.lock().unwrap().as_deref(), Some("404"));
}

/// A sink that never answers.
struct Stalled;

impl Deliver for Stalled {
    async fn deliver(&mut self, _: &Alert) -> Result<(), Failure> {
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn each_attempt_times_out_after_2_s() {
    let queue = Queue::new(8);
    let stats = Arc::new(Shared::default());
    queue.offer(alert());
    queue.close();
    let t0 = tokio::time::Instant::now();
    run(Stalled, queue, stats.clone(), RetryPolicy::default()).await;
    assert_eq!(t0.elapsed(), Duration::from_millis(5 * 2000 + 3750));
    assert_eq!(stats.timeouts.load(Ordering::Relaxed), 5);
    assert_eq!(stats.dropped_failed.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn stop_delivers_what_is_queued_with_one_attempt_each() {
    let h = SinkHandle::spawn("ok".into(), KindSet::ALL, 8, Scripted(vec![], 0));
    for _ in 0..5 {
        h.offer(&alert());
    }
    let shared = h.shared.clone();
    h.stop().await;
    assert_eq!(shared.delivered.load(Ordering::Relaxed), 5);
    // Failing while stopping: no backoff, one attempt, then dropped.
    let retry = || Err(Failure::Retry { after: None, reason: "refused".into() });
    let h = SinkHandle::spawn("failing".into(), KindSet::ALL, 8, Scripted(vec![retry(), retry(), retry()], 0));
    for _ in 0..3 {
        h.offer(&alert());
    }
    let shared = h.shared.clone();
    let t0 = tokio::time::Instant::now();
    h.stop().await;
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!((shared.dropped_failed.load(Ordering::Relaxed), shared.retries.load(Ordering::Relaxed)), (3, 0));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_handle_ends_its_worker_within_the_drain() {
    let h = SinkHandle::spawn("stalled".into(), KindSet::ALL, 4, Stalled);
    // Three attempts of 2 s each to drain, but the drain is cut at 2 s.
    for _ in 0..3 {
        h.offer(&alert());
    }
    tokio::task::yield_now().await;
    let shared = h.shared.clone();
    drop(h);
    tokio::time::sleep(DRAIN + Duration::from_millis(10)).await;
    assert_eq!(Arc::strong_count(&shared), 1, "the worker still runs");
}

/// A sink that keeps the text of what it delivered.
struct Keep(Arc<Mutex<Vec<String>>>);

impl Deliver for Keep {
    async fn deliver(&mut self, alert: &Alert) -> Result<(), Failure> {
        self.0.lock().unwrap().push(alert.text.clone());
        Ok(())
    }
}

/// A port scan of web (130 000 new exposures in one window) with db's first
/// connection in the middle, offered to a sink whose queue holds 4 and whose worker
/// has not run yet: the first alert of each container is delivered.
#[tokio::test(start_paused = true)]
async fn a_flood_never_pushes_the_first_alert_of_a_container_out_of_a_small_queue() {
    use crate::output::alerts::{tests::rec, Alerter};
    let kept = Arc::new(Mutex::new(Vec::new()));
    let h = SinkHandle::spawn("small".into(), KindSet::ALL, 4, Keep(kept.clone()));
    let window = Duration::from_secs(60);
    let mut alerter = Alerter::new(window);
    let t0 = std::time::Instant::now();
    let mut offered = 0u64;
    let mut offer = |a: Option<Alert>| {
        if let Some(a) = a {
            h.offer(&Arc::new(a));
            offered += 1;
        }
    };
    for i in 0..130_000u32 {
        let mut scan = rec("198.18.3.2", "172.17.0.2", (i % 65_000) as u16 + 1);
        (scan.host_ip, scan.host_port, scan.exposure) = (None, None, "unpublished");
        scan.proto = if i < 65_000 { "tcp" } else { "udp" };
        let at = t0 + Duration::from_micros(u64::from(i) * 300);
        offer(alerter.observe(&Arc::new(scan), at));
        if i == 65_000 {
            offer(alerter.observe(&Arc::new(rec("203.0.113.7", "172.17.0.3", 5432)), at));
        }
    }
    for a in alerter.flush(t0 + window + Duration::from_secs(1)) {
        offer(Some(a));
    }
    let stats = h.stats();
    let shared = h.shared.clone();
    h.stop().await;
    let kept = kept.lock().unwrap();
    let delivered = shared.delivered.load(Ordering::Relaxed);
    eprintln!("{offered} alerts offered, {delivered} delivered, {} dropped (queue full)", stats.dropped_full);
    assert_eq!(delivered + stats.dropped_full, offered, "every alert is delivered or counted");
    assert!(
        kept.iter().any(|t| t.starts_with("EXPOSED UNPUBLISHED PORT web (nginx:1.27) port 1/tcp")),
        "web's first: {kept:?}"
    );
    assert!(kept.iter().any(|t| t.starts_with("EXPOSED UNPUBLISHED PORT db (postgres)")), "db's first: {kept:?}");
    assert!(kept.iter().any(|t| t.contains("more ports of web (nginx:1.27) reached")), "the scan's summary: {kept:?}");
}

#[tokio::test(start_paused = true)]
async fn offer_drops_when_full_and_stop_is_bounded() {
    let h = SinkHandle::spawn("stalled".into(), KindSet::ALL, 4, Stalled);
    for _ in 0..10 {
        h.offer(&alert());
    }
    let s = h.stats();
    // The worker has not run yet (nothing awaited): the queue holds 4.
    assert_eq!((s.queued, s.capacity, s.dropped_full), (4, 4, 6));
    let filtered =
        SinkHandle::spawn("blocked only".into(), KindSet::parse("k", Some(&["blocked".into()])).unwrap(), 4, Stalled);
    filtered.offer(&alert());
    assert_eq!(filtered.stats().queued, 0, "a kind the sink does not take is not queued");
    let t0 = tokio::time::Instant::now();
    h.stop().await;
    assert!(t0.elapsed() <= DRAIN + Duration::from_millis(1), "{:?}", t0.elapsed());
}
