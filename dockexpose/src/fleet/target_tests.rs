use super::*;

fn clickhouse(url: &str) -> ClickHouseTarget {
    match parse(url) {
        Ok(StoreTarget::ClickHouse(t)) => t,
        other => panic!("{url}: {other:?}"),
    }
}

#[test]
fn clickhouse_urls_name_scheme_host_port_database_and_table() {
    let t = clickhouse("clickhouse+http://127.0.0.1:18123/dockexpose.records");
    assert_eq!((t.https, t.host.as_str(), t.port), (false, "127.0.0.1", 18123));
    assert_eq!((t.database.as_str(), t.table.as_str()), ("dockexpose", "records"));
    assert!(t.is_loopback());
    assert_eq!(t.to_string(), "clickhouse+http://127.0.0.1:18123/dockexpose.records");
    let t = clickhouse("clickhouse+https://store.example:8443/fleet.conn_2026");
    assert!(t.https && !t.is_loopback());
    assert_eq!(clickhouse("clickhouse+http://[::1]/d.t").port, 8123, "the default port");
    assert!(clickhouse("clickhouse+http://[::1]:9/d.t").is_loopback());
}

#[test]
fn nats_urls_name_a_subject() {
    let Ok(StoreTarget::Nats(t)) = parse("nats://127.0.0.1/dockexpose.records") else { panic!() };
    assert_eq!((t.port, t.subject.as_str()), (4222, "dockexpose.records"));
}

#[test]
fn bad_urls_say_what_is_wrong() {
    for (url, why) in [
        ("clickhouse+http://u:p@127.0.0.1:8123/d.t", "credentials in the URL"),
        ("http://127.0.0.1:8123/d.t", "the scheme must be"),
        ("clickhouse+http://127.0.0.1:8123/records", "DATABASE.TABLE"),
        ("clickhouse+http://127.0.0.1:8123/d.t;DROP TABLE x", "letters, digits and _"),
        ("clickhouse+http://127.0.0.1:8123/d.`t`", "letters, digits and _"),
        ("clickhouse+http://127.0.0.1:0/d.t", "port"),
        ("clickhouse+http://127.0.0.1:99999/d.t", "port"),
        ("clickhouse+http:///d.t", "no host"),
        ("nats://127.0.0.1:4222/records.>", "without wildcards"),
        ("nats://127.0.0.1:4222/", "without wildcards"),
        ("127.0.0.1:8123", "no scheme"),
    ] {
        let err = parse(url).expect_err(url);
        assert!(err.contains(why), "{url}: {err}");
    }
}

#[test]
fn credentials_never_print_the_password() {
    let c = Credentials { user: "shipper".into(), password: "s3cret".into() };
    assert!(!format!("{c:?}").contains("s3cret"));
}
