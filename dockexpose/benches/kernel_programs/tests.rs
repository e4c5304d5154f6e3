//! Unit tests of kernel_programs.rs.

use super::*;

#[allow(dead_code, reason = "used by some of the tests only")]
const TCP_FLAGS_AT: usize = ETH_HLEN + IPV4_HLEN + 13;

#[allow(dead_code, reason = "used by some of the tests only")]
fn ethertype(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[12], f[13]])
}

#[test]
fn tcp_frames_have_the_right_shape() {
    for (kind, flags, dst) in [
        (FrameKind::SynRecord, TCP_SYN, CONTAINER),
        (FrameKind::AckFastpath, TCP_ACK, CONTAINER),
        (FrameKind::SynUnpublished, TCP_SYN, HOST_UNPUBLISHED),
    ] {
        let f = kind.build();
        assert_eq!(f.len(), 54, "{}", kind.name());
        assert_eq!(ethertype(&f), ETH_P_IP);
        let ip = &f[ETH_HLEN..ETH_HLEN + IPV4_HLEN];
        assert_eq!(ip[0], 0x45);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 40);
        assert_eq!(ip[9], 6);
        assert_eq!(ip[12..16], [198, 18, 0, 2]);
        assert_eq!(ip[16..20], dst.ip().octets());
        let tcp = &f[ETH_HLEN + IPV4_HLEN..];
        assert_eq!(tcp.len(), TCP_HLEN);
        assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 40_000);
        assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), dst.port());
        assert_eq!(tcp[12] >> 4, 5, "data offset: 20 bytes, no options");
        assert_eq!(f[TCP_FLAGS_AT], flags);
    }
}

#[test]
fn ip_checksum_verifies() {
    let f = FrameKind::SynRecord.build();
    // Summing a header including its checksum gives 0xffff, i.e. 0 once inverted.
    assert_eq!(ipv4_checksum(&f[ETH_HLEN..ETH_HLEN + IPV4_HLEN]), 0);
    // RFC 1071 example-style check on a known header.
    let h = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00,
        0xc7,
    ];
    assert_eq!(ipv4_checksum(&h), 0xb861);
}

#[test]
fn arp_frame_is_not_ip() {
    let f = FrameKind::NonIp.build();
    assert_eq!(f.len(), ETH_HLEN + ARP_PAYLOAD_LEN);
    assert_eq!(f.len(), 42);
    assert_eq!(ethertype(&f), ETH_P_ARP);
    assert_eq!(u16::from_be_bytes([f[14], f[15]]), 1);
    assert_eq!(u16::from_be_bytes([f[16], f[17]]), ETH_P_IP);
}

#[test]
fn medians() {
    assert_eq!(median(&[]), None);
    assert_eq!(median(&[3.0]), Some(3.0));
    assert_eq!(median(&[9.0, 1.0, 5.0]), Some(5.0));
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
}

#[test]
fn weighted_means_and_batches() {
    assert_eq!(weighted_mean(&[]), None);
    assert_eq!(weighted_mean(&[(10.0, 3), (20.0, 1)]), Some(12.5));
    assert_eq!(batches(20_000, 8_192).collect::<Vec<_>>(), [8_192, 8_192, 3_616]);
    assert_eq!(batches(8_192, 8_192).collect::<Vec<_>>(), [8_192]);
    assert_eq!(batches(5, 8_192).collect::<Vec<_>>(), [5]);
    assert_eq!(batches(1_000_000, SYN_BATCH).map(u64::from).sum::<u64>(), 1_000_000);
    // Under what the ring holds: 1 MiB / (72-byte record + 8-byte header).
    assert!(u64::from(SYN_BATCH) < u64::from(dockexpose_common::EVENTS_RING_BYTES) / 80);
}

#[test]
fn rounds_alternate_empty_and_real() {
    let figs = figures();
    for r in 0..2 {
        let order = round_order(r);
        assert_eq!(order.len(), 10);
        // Every real figure sits next to its own baseline.
        for (pos, &i) in order.iter().enumerate() {
            if let Some(b) = figs[i].baseline {
                let prev = pos.checked_sub(1).map(|p| order[p]);
                let next = order.get(pos + 1).copied();
                assert!(prev == Some(b) || next == Some(b), "round {r}: {} without its baseline", figs[i].program);
            }
        }
    }
}

#[test]
fn ratios() {
    assert_eq!(ratio(15.0, 10.0), Some(1.5));
    assert_eq!(ratio(15.0, 0.0), None);
}
