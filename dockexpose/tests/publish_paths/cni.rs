//! A CNI runtime's publishing: the portmap plugin's hostPort, reported from the DNAT's
//! original destination.

use super::*;

/// Runs CNI plugin `plugin` (from /usr/lib/cni) as a container runtime does: the
/// command and the container in the environment, the network configuration on
/// stdin. Returns its result (JSON); panics with its error.
fn cni(command: &str, plugin: &str, container: &str, netns: &str, config: &Value) -> Value {
    use std::io::Write;
    let mut child = Command::new(format!("/usr/lib/cni/{plugin}"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("CNI plugin {plugin}: {e} (install containernetworking-plugins: `cargo xtask setup`)")
        });
    child.stdin.take().unwrap().write_all(config.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "CNI {command} {plugin}: {text}{}", String::from_utf8_lossy(&out.stderr));
    if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    }
}

#[test]
fn cni_portmap_hostport_is_reported_from_the_dnat_original_destination() {
    let test = "cni_portmap_hostport_is_reported_from_the_dnat_original_destination";
    if !docker::ready(test) {
        return;
    }
    if !std::path::Path::new("/usr/lib/cni/portmap").exists() {
        let why = "no CNI plugins in /usr/lib/cni (install containernetworking-plugins: `cargo xtask setup`)";
        assert!(
            std::env::var_os("DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS").is_none(),
            "{test}: SKIPPED: {why}, and DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS is set"
        );
        skip(test, why);
        return;
    }
    let n = n11();
    let outside = OutsideHost::with_n("11k", n);
    let (net, br, ctr, id) =
        (format!("dx11k{n}"), format!("dx11kb{n}"), format!("dx11kc{n}"), format!("dx11k-pod-{n}"));
    let subnet = format!("10.251.{n}.0/24");
    assert_unrouted(&subnet);
    let port = 18_900 + n as u16;
    let dir = std::env::temp_dir().join(format!("dx11-cni-{n}"));
    let mut undo = Undo::default();
    undo.push(&["rm", "-rf", dir.to_str().unwrap()]);
    // portmap's and bridge's top chains stay after the last container: remove them if new.
    let had = Command::new("iptables")
        .args(["-t", "nat", "-S", "CNI-HOSTPORT-DNAT"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !had {
        for cmd in [
            "-t nat -X CNI-HOSTPORT-SETMARK",
            "-t nat -X CNI-HOSTPORT-MASQ",
            "-t nat -X CNI-HOSTPORT-DNAT",
            "-t nat -F CNI-HOSTPORT-SETMARK",
            "-t nat -F CNI-HOSTPORT-MASQ",
            "-t nat -F CNI-HOSTPORT-DNAT",
            "-t nat -D POSTROUTING -m comment --comment CNI_portfwd_requiring_masquerade -j CNI-HOSTPORT-MASQ",
            "-t nat -D OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
            "-t nat -D PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
        ] {
            let mut args = vec!["iptables"];
            args.extend(cmd.split(' ').map(|a| {
                if a == "CNI_portfwd_requiring_masquerade" {
                    "CNI portfwd requiring masquerade"
                } else {
                    a
                }
            }));
            undo.push(&args);
        }
    }
    let had = Command::new("iptables").args(["-S", "CNI-FORWARD"]).output().is_ok_and(|o| o.status.success());
    if !had {
        for cmd in [
            "-X CNI-ADMIN",
            "-X CNI-FORWARD",
            "-F CNI-ADMIN",
            "-F CNI-FORWARD",
            "-D FORWARD -m comment --comment CNI_firewall_plugin_rules -j CNI-FORWARD",
        ] {
            let mut args = vec!["iptables"];
            args.extend(cmd.split(' ').map(|a| {
                if a == "CNI_firewall_plugin_rules" {
                    "CNI firewall plugin rules"
                } else {
                    a
                }
            }));
            undo.push(&args);
        }
    }
    undo.push(&["ip", "link", "del", &br]);
    sh_quiet(&["ip", "netns", "del", &ctr]);
    sh(&["ip", "netns", "add", &ctr]);
    undo.push(&["ip", "netns", "del", &ctr]);

    // The pod's network, as kubelet's runtime sets it up for a hostPort: the bridge
    // plugin, then portmap with the runtime's portMappings, then firewall (its
    // FORWARD accepts for the pod), each given the result before it.
    let bridge_conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": net, "type": "bridge", "bridge": br, "isGateway": true, "ipMasq": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": dir.join("ipam")},
    });
    let portmap_conf = |prev: &Value| {
        serde_json::json!({
            "cniVersion": "1.0.0", "name": net, "type": "portmap", "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]},
            "prevResult": prev,
        })
    };
    let result = cni("ADD", "bridge", &id, &ctr, &bridge_conf);
    let mut cni_undo = CniUndo { steps: vec![("bridge", bridge_conf.clone())], id: id.clone(), ctr: ctr.clone() };
    let result = cni("ADD", "portmap", &id, &ctr, &portmap_conf(&result));
    cni_undo.steps.push(("portmap", portmap_conf(&result)));
    let firewall_conf = serde_json::json!({"cniVersion": "1.0.0", "name": net, "type": "firewall", "backend": "iptables", "prevResult": result});
    cni("ADD", "firewall", &id, &ctr, &firewall_conf);
    cni_undo.steps.push(("firewall", firewall_conf));
    let cip = result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    assert!(sh(&["iptables", "-t", "nat", "-S"]).contains(&format!("--to-destination {cip}:80")), "portmap's DNAT");
    let _services = Services::start(&ctr, 80, 5300);
    // On a host where Docker runs, FORWARD's policy is DROP and the firewall plugin
    // accepts only the pod's own traffic and replies to it: a Kubernetes node's own
    // forward rules let the hostPort through.
    let rule = [
        "FORWARD",
        "-o",
        br.as_str(),
        "-m",
        "conntrack",
        "--ctstate",
        "DNAT",
        "-m",
        "comment",
        "--comment",
        "dx11 cni test",
        "-j",
        "ACCEPT",
    ];
    sh(&[&["iptables", "-I"][..], &rule[..]].concat());
    let mut accept = Undo::default();
    accept.push(&[&["iptables", "-D"][..], &rule[..]].concat());

    let mut w =
        Watcher::start(&["--bridge", &br, "--uplink", &outside.uplink, "--stats-interval", "0"], json_path("11cni"));
    w.wait_for_line(&format!("bridge {br} watched"), Duration::from_secs(5));
    let sport = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(port))
        .expect("the hostPort reachable from outside");
    std::thread::sleep(Duration::from_millis(500));
    let (records, status, _) = w.stop();
    assert!(status.success());
    let records = outside.own(records);
    let r = one(&records, "reached", "tcp", sport);
    assert_eq!(
        (r["iface"].as_str(), r["dst_ip"].as_str(), r["dst_port"].as_u64()),
        (Some(br.as_str()), Some(cip.as_str()), Some(80)),
        "{r:#}"
    );
    // The hostPort from the DNAT'd original destination: no runtime told it.
    assert_eq!(
        (r["host_ip"].as_str(), r["host_port"].as_u64()),
        (Some(outside.v4(1).as_str()), Some(port as u64)),
        "{r:#}"
    );
    assert!(r["container"].is_null() && r["exposure"] == "unknown", "no runtime API here: {r:#}");
    drop(accept);
    drop(cni_undo);
    drop(undo);
}

/// CNI DEL of the plugins added, last first (as a runtime tears a pod down).
struct CniUndo {
    steps: Vec<(&'static str, Value)>,
    id: String,
    ctr: String,
}

impl Drop for CniUndo {
    fn drop(&mut self) {
        while let Some((plugin, conf)) = self.steps.pop() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                cni("DEL", plugin, &self.id, &self.ctr, &conf)
            }));
        }
    }
}
