//! A fail2ban jail read as a ban.

use super::*;

#[test]
fn intent_fail2ban_jail_in_a_namespace_is_a_ban() {
    let test = "intent_fail2ban_jail_in_a_namespace_is_a_ban";
    if !support::privileged(test) {
        return;
    }
    if !have("fail2ban-server") || !have("fail2ban-client") || !Path::new("/etc/fail2ban/jail.conf").exists() {
        skip(test, "fail2ban is not installed");
        return;
    }
    let mut bed = Bed::new("f2b");
    // A private configuration: Debian's files, its jail.d (which enables sshd) left out.
    let conf = bed.dir.join("conf");
    sh(&["cp", "-a", "/etc/fail2ban", &conf.to_string_lossy()]);
    for e in std::fs::read_dir(conf.join("jail.d")).unwrap().flatten() {
        std::fs::remove_file(e.path()).unwrap();
    }
    let log = bed.dir.join("dxi.log");
    std::fs::write(&log, "").unwrap();
    std::fs::write(conf.join("fail2ban.local"), "[Definition]\ndbfile = :memory:\n").unwrap();
    std::fs::write(
        conf.join("jail.local"),
        format!(
            "[DEFAULT]\nbackend = polling\nbanaction = iptables-multiport\n\n[dxi]\nenabled = true\nfilter = sshd\nport = 8080\nlogpath = {}\n",
            log.display()
        ),
    )
    .unwrap();
    let sock = bed.dir.join("f2b.sock");
    let (sock_s, pid, srv_log) =
        (sock.to_string_lossy().into_owned(), bed.dir.join("f2b.pid"), bed.dir.join("server.log"));
    bed.f2b_sock = Some(sock.clone());
    bed.exec(&[
        "fail2ban-server",
        "-c",
        &conf.to_string_lossy(),
        "-s",
        &sock_s,
        "-p",
        &pid.to_string_lossy(),
        "--logtarget",
        &srv_log.to_string_lossy(),
        "-x",
        "-b",
    ]);
    sh(&["fail2ban-client", "-s", &sock_s, "set", "dxi", "banip", "198.18.7.10"]);
    // The action inserts its chain when the ban is carried out: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !bed.exec(&["iptables-save", "-t", "filter"]).contains("-A f2b-dxi -s 198.18.7.10/32") {
        assert!(
            std::time::Instant::now() < deadline,
            "fail2ban did not ban: {}",
            std::fs::read_to_string(&srv_log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let book = bed.read(&bed.dir);
    let ban = book.ban_of("198.18.7.10".parse().unwrap()).unwrap_or_else(|| panic!("no ban: {:?}", book.bans));
    assert_eq!(ban.name, "fail2ban jail dxi");
    assert!(book.ban_of("198.18.7.11".parse().unwrap()).is_none());
}
