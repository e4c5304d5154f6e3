//! Which rule dropped a probe: netfilter's trace. A table of the project's own
//! (`inet dockexpose_verify_<pidns>_<pid>`, see `owner`), hooked on prerouting before the raw table, sets
//! `nftrace` on the probe sources' packets only; every nftables chain they then cross
//! (iptables-nft's too) reports itself to `nft monitor trace`, read back here and
//! matched to each probe by its source address and port. Nothing is added to another
//! tool's tables, and one `nft delete table` removes it all: at the end of the run,
//! and at the start of any later one for the table of a run that was killed. Where
//! tracing cannot be had (no `nft`), a HELD says only "dropped before reaching the
//! container".

use std::{
    io::{BufRead, BufReader},
    net::IpAddr,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

/// A running `nft monitor trace` and the table of ours that feeds it.
pub struct Tracer {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// The commands that delete the rules added.
    undo: Vec<Vec<String>>,
}

/// Runs `nft ARGS` (with `stdin` fed to it); true when it succeeded.
fn nft(args: &[&str], stdin: Option<&str>) -> bool {
    use std::io::Write;
    let Ok(mut child) =
        Command::new("nft").args(args).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()
    else {
        return false;
    };
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes());
    }
    child.wait().is_ok_and(|s| s.success())
}

/// Deletes the trace tables of verify runs whose process is gone (killed before
/// their cleanup); returns how many.
pub fn remove_stale_tables() -> usize {
    let Ok(out) = Command::new("nft").args(["list", "tables"]).stderr(Stdio::null()).output() else { return 0 };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("table inet dockexpose_verify_"))
        .filter_map(|tag| super::owner::Owner::parse(tag.trim()))
        .filter(|owner| owner.is_gone())
        .filter(|owner| nft(&["delete", "table", "inet", &format!("dockexpose_verify_{}", owner.tag())], None))
        .count()
}

impl Tracer {
    /// Starts tracing the probe sources' packets; None where it is not possible.
    pub fn start(sources: &[IpAddr]) -> Option<Tracer> {
        remove_stale_tables();
        let mut child =
            Command::new("nft").args(["monitor", "trace"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().ok()?;
        let stdout = child.stdout.take()?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("not poisoned").push(line);
            }
        });
        let mut tracer = Tracer { child, lines, reader: Some(reader), undo: Vec::new() };
        let table = format!("dockexpose_verify_{}", super::owner::Owner::me().tag());
        let (v4, v6): (Vec<String>, Vec<String>) = (
            sources.iter().filter(|s| s.is_ipv4()).map(|s| s.to_string()).collect(),
            sources.iter().filter(|s| s.is_ipv6()).map(|s| s.to_string()).collect(),
        );
        let mut rules = String::new();
        if !v4.is_empty() {
            rules.push_str(&format!("    ip saddr {{ {} }} meta nftrace set 1\n", v4.join(", ")));
        }
        if !v6.is_empty() {
            rules.push_str(&format!("    ip6 saddr {{ {} }} meta nftrace set 1\n", v6.join(", ")));
        }
        // Before the raw table (-300) and conntrack (-200): the whole path is traced.
        let script = format!(
            "table inet {table} {{\n  chain trace {{\n    type filter hook prerouting priority -350; policy accept;\n{rules}  }}\n}}\n"
        );
        if !nft(&["-f", "-"], Some(&script)) {
            return None; // dropped: the monitor is stopped
        }
        tracer.undo.push(["nft", "delete", "table", "inet", &table].map(String::from).to_vec());
        // Let the monitor subscribe before the first probe.
        std::thread::sleep(Duration::from_millis(200));
        Some(tracer)
    }

    /// Stops tracing; the trace lines seen.
    pub fn finish(mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(50));
        self.stop();
        std::mem::take(&mut *self.lines.lock().expect("not poisoned"))
    }

    fn stop(&mut self) {
        for cmd in self.undo.drain(..) {
            let _ = Command::new(&cmd[0]).args(&cmd[1..]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The rule (or chain policy) that dropped the packet from `src` port `sport`, from
/// `nft monitor trace` lines: "ip filter DOCKER-USER: iifname \"eth0\" ... drop".
pub fn drop_of(lines: &[String], src: IpAddr, sport: u16) -> Option<String> {
    verdict_of(lines, src, sport, "drop", None)
}

/// The rule (or policy) of a forwarding filter chain that accepted the probe from
/// `src`:`sport`, e.g. "ip filter FORWARD: policy accept".
pub fn accept_of(lines: &[String], src: IpAddr, sport: u16) -> Option<String> {
    verdict_of(lines, src, sport, "accept", Some("filter"))
}

/// The nat rule that rewrote the probe's destination, e.g. "ip nat DOCKER: iifname !=
/// \"docker0\" tcp dport 8080 dnat to 172.17.0.2:80": the first rule of the packet's
/// trace that says `dnat`.
pub fn dnat_of(lines: &[String], src: IpAddr, sport: u16) -> Option<String> {
    let id = packet_id(lines, src, sport)?;
    let prefix = format!("trace id {id} ");
    lines.iter().filter_map(|l| l.strip_prefix(&prefix)).find_map(|l| {
        let words: Vec<&str> = l.splitn(4, ' ').collect();
        let [family, table, chain, rest] = words[..] else { return None };
        let rule = rest.strip_prefix("rule ")?;
        let rule = rule.rsplit_once(" (verdict ").map_or(rule, |(r, _)| r);
        rule.contains(" dnat ").then(|| format!("{family} {table} {chain}: {}", without_counters(rule)))
    })
}

/// The trace id of the probe's packet (from `src`:`sport`).
fn packet_id(lines: &[String], src: IpAddr, sport: u16) -> Option<String> {
    let (saddr, port) = (format!(" saddr {src} "), format!(" sport {sport} "));
    lines.iter().find_map(|l| {
        let rest = l.strip_prefix("trace id ")?;
        let packet = format!("{} ", l.split(" packet: ").nth(1)?);
        (packet.contains(&saddr) && packet.contains(&port))
            .then(|| rest.split_whitespace().next().map(str::to_string))?
    })
}

/// The first rule or policy whose verdict was `verdict` for the probe's packet.
fn verdict_of(lines: &[String], src: IpAddr, sport: u16, verdict: &str, in_table: Option<&str>) -> Option<String> {
    let (rule_end, policy) = (format!(" (verdict {verdict})"), format!("policy {verdict}"));
    let id = packet_id(lines, src, sport)?;
    let prefix = format!("trace id {id} ");
    lines.iter().filter_map(|l| l.strip_prefix(&prefix)).find_map(|l| {
        let words: Vec<&str> = l.splitn(4, ' ').collect();
        let [family, table, chain, rest] = words[..] else { return None };
        if in_table.is_some_and(|t| t != table) {
            return None;
        }
        let what = if let Some(rule) = rest.strip_prefix("rule ").and_then(|r| r.strip_suffix(rule_end.as_str())) {
            rule.to_string()
        } else if rest == policy || rest.starts_with(&format!("{policy} ")) {
            // The kernel may append what it knows of the packet ("meta mark 0x...").
            policy.clone()
        } else {
            return None;
        };
        Some(format!("{family} {table} {chain}: {}", without_counters(&what)))
    })
}

/// A rule's text without its "counter packets N bytes N" (they change, say nothing).
fn without_counters(rule: &str) -> String {
    let words: Vec<&str> = rule.split(' ').collect();
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        if words[i] == "counter" && words.get(i + 1) == Some(&"packets") && words.get(i + 3) == Some(&"bytes") {
            i += 5;
            continue;
        }
        out.push(words[i]);
        i += 1;
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn finds_the_rule_that_dropped_a_probe() {
        let trace = lines(
            r#"trace id 1a2b ip raw PREROUTING packet: iif "dxu1" ip saddr 198.18.3.77 ip daddr 198.18.3.1 ip protocol tcp tcp sport 40001 tcp dport 8080 tcp flags == syn
trace id 1a2b ip raw PREROUTING rule ip saddr 198.18.3.77 counter packets 1 bytes 60 meta nftrace set 1 (verdict continue)
trace id 1a2b ip nat PREROUTING rule fib daddr type local counter packets 1 bytes 60 jump DOCKER (verdict jump DOCKER)
trace id 1a2b ip filter DOCKER-USER rule iifname "dxu1" counter packets 1 bytes 60 drop (verdict drop)
trace id 3c4d ip raw PREROUTING packet: iif "dxu1" ip saddr 198.18.3.77 ip daddr 198.18.3.1 udp sport 40002 udp dport 5300
trace id 3c4d ip filter INPUT policy drop"#,
        );
        let src: IpAddr = "198.18.3.77".parse().unwrap();
        assert_eq!(drop_of(&trace, src, 40001).as_deref(), Some(r#"ip filter DOCKER-USER: iifname "dxu1" drop"#));
        assert_eq!(drop_of(&trace, src, 40002).as_deref(), Some("ip filter INPUT: policy drop"));
        assert_eq!(drop_of(&trace, src, 40003), None, "no trace of that probe");
        assert_eq!(drop_of(&trace, "198.18.3.78".parse().unwrap(), 40001), None, "another source");
    }

    #[test]
    fn a_probe_that_was_accepted_has_no_drop() {
        let trace = lines(
            "trace id 9 ip raw PREROUTING packet: ip saddr 10.0.0.1 ip daddr 10.0.0.2 tcp sport 1000 tcp dport 80\ntrace id 9 ip filter FORWARD rule accept (verdict accept)",
        );
        assert_eq!(drop_of(&trace, "10.0.0.1".parse().unwrap(), 1000), None);
    }

    #[test]
    fn a_direct_probe_names_the_forwarding_rule_or_policy_that_let_it_through() {
        let trace = lines(
            r#"trace id 7 ip raw PREROUTING packet: iif "dxu1" ip saddr 198.18.3.77 ip daddr 172.17.0.2 tcp sport 41000 tcp dport 80
trace id 7 ip nat PREROUTING policy accept
trace id 7 ip filter FORWARD rule counter packets 5 bytes 300 jump DOCKER-USER (verdict jump DOCKER-USER)
trace id 7 ip filter DOCKER-USER rule iifname "dxu1" counter packets 1 bytes 60 accept (verdict accept)
trace id 8 ip raw PREROUTING packet: iif "dxu1" ip saddr 198.18.3.77 ip daddr 172.17.0.2 tcp sport 41001 tcp dport 80
trace id 8 ip nat PREROUTING policy accept
trace id 8 ip filter FORWARD policy accept meta mark 0x00000001 "#,
        );
        let src: IpAddr = "198.18.3.77".parse().unwrap();
        assert_eq!(accept_of(&trace, src, 41000).as_deref(), Some(r#"ip filter DOCKER-USER: iifname "dxu1" accept"#));
        assert_eq!(
            accept_of(&trace, src, 41001).as_deref(),
            Some("ip filter FORWARD: policy accept"),
            "nat's policy is not the answer"
        );
        assert_eq!(drop_of(&trace, src, 41001), None);
    }

    #[test]
    fn names_the_nat_rule_that_rewrote_the_destination() {
        let trace = lines(
            r#"trace id 5 ip raw PREROUTING packet: iif "dxu1" ip saddr 198.18.3.77 ip daddr 198.18.3.1 tcp sport 42000 tcp dport 8080
trace id 5 ip nat PREROUTING rule fib daddr type local counter packets 1 bytes 60 jump DOCKER (verdict jump DOCKER)
trace id 5 ip nat DOCKER rule iifname != "docker0" meta l4proto tcp tcp dport 8080 counter packets 1 bytes 60 dnat to 172.17.0.2:80 (verdict accept)
trace id 5 ip filter DOCKER rule ip daddr 172.17.0.2 oifname "docker0" tcp dport 80 counter packets 3 bytes 180 accept (verdict accept)"#,
        );
        let src: IpAddr = "198.18.3.77".parse().unwrap();
        assert_eq!(
            dnat_of(&trace, src, 42000).as_deref(),
            Some(r#"ip nat DOCKER: iifname != "docker0" meta l4proto tcp tcp dport 8080 dnat to 172.17.0.2:80"#)
        );
        assert_eq!(
            accept_of(&trace, src, 42000).as_deref(),
            Some(r#"ip filter DOCKER: ip daddr 172.17.0.2 oifname "docker0" tcp dport 80 accept"#)
        );
        assert_eq!(dnat_of(&trace, src, 42001), None);
    }
}
