//! Unit tests of lib.rs.

use super::*;

#[test]
fn published_port_indexes_do_not_collide_across_protocols() {
    assert_eq!(published_port_index(0, PROTO_TCP), 0);
    assert_eq!(published_port_index(65_535, PROTO_TCP), 65_535);
    assert_eq!(published_port_index(0, PROTO_UDP), 65_536);
    assert_eq!(published_port_index(65_535, PROTO_UDP), 2 * 65_536 - 1);
    assert_eq!(published_port_index(0, PROTO_SCTP), 2 * 65_536);
    assert_eq!(published_port_index(65_535, PROTO_SCTP), PUBLISHED_PORTS_LEN - 1);
}

#[test]
fn counters_are_listed_once_in_index_order() {
    for (i, c) in Counter::ALL.iter().enumerate() {
        assert_eq!(*c as usize, i);
    }
    let mut names: [&str; Counter::COUNT as usize] = Counter::ALL.map(Counter::name);
    names.sort_unstable();
    assert!(names.windows(2).all(|w| w[0] != w[1]), "counter names are unique");
}

#[test]
fn shared_types_have_no_padding_surprises() {
    assert_eq!(core::mem::size_of::<ConnEvent>(), 88);
    assert_eq!(core::mem::offset_of!(ConnEvent, seq), 72);
    assert_eq!(core::mem::offset_of!(ConnEvent, cpu), 76);
    assert_eq!(core::mem::offset_of!(ConnEvent, rec_seq), 80);
    assert_eq!(core::mem::offset_of!(ConnEvent, orig_dst_addr), 40);
    assert_eq!(core::mem::offset_of!(AttemptValue, seq), 8);
    assert_eq!(core::mem::offset_of!(AttemptValue, answered), 12);
    assert_eq!(core::mem::size_of::<FlowKey>(), 40);
}
