//! The test containers' only program: greets TCP connections with "ok" and echoes
//! UDP datagrams. Built static by the tests (`rustc -C target-feature=+crt-static`)
//! and imported as an image, since no image registry is reachable here.
//! Usage: echo_server TCP_PORT UDP_PORT

use std::{
    io::Write,
    net::{TcpListener, UdpSocket},
    thread,
};

fn main() {
    let args: Vec<u16> = std::env::args().skip(1).map(|a| a.parse().expect("a port number")).collect();
    let (tcp, udp) = (args.first().copied().unwrap_or(80), args.get(1).copied().unwrap_or(5300));
    let udp_thread = thread::spawn(move || {
        let sock = UdpSocket::bind(("0.0.0.0", udp)).expect("bind udp");
        let mut buf = [0u8; 1500];
        loop {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    let listener = TcpListener::bind(("0.0.0.0", tcp)).expect("bind tcp");
    for mut conn in listener.incoming().flatten() {
        let _ = conn.write_all(b"ok");
    }
    let _ = udp_thread.join();
}
