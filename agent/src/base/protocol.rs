//! IANA protocol numbers (<https://www.iana.org/assignments/protocol-numbers>) and the names
//! egressd's policy, `explain`, `check` and events use for them: one table, so that every
//! place spells and reads a protocol the same way.

/// Names accepted in a policy's `protocol` and in `explain`'s `/PROTO`, with their IANA
/// numbers. The first name of a number is the one egressd prints (ECS `network.transport`
/// uses the same lowercase IANA keywords).
pub const NAMES: &[(&str, u8)] = &[
    ("tcp", 6),
    ("udp", 17),
    ("icmp", 1),
    ("ipv6-icmp", 58),
    ("icmpv6", 58),
    ("sctp", 132),
    ("udplite", 136),
];

/// The IANA number of a protocol name from [`NAMES`] (ASCII case-insensitive).
pub fn by_name(name: &str) -> Option<u8> {
    NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, p)| p)
}

/// The printed name of IANA protocol `number`: its keyword from [`NAMES`], else the
/// number in decimal.
pub fn name(number: u8) -> String {
    NAMES
        .iter()
        .find(|&&(_, p)| p == number)
        .map_or_else(|| number.to_string(), |(n, _)| (*n).to_owned())
}

/// The names of [`NAMES`], comma-separated, for error messages.
pub fn names_list() -> String {
    NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// Whether the kernel reads a destination port for `number`: protocols whose upper-layer
/// header starts with the source and destination ports (TCP RFC 9293, UDP RFC 768, SCTP
/// RFC 9260, UDP-Lite RFC 3828). Every other protocol is judged with port 0.
pub const fn has_ports(number: u8) -> bool {
    matches!(number, 6 | 17 | 132 | 136)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &(n, p) in NAMES {
            assert_eq!(by_name(n), Some(p));
            assert_eq!(by_name(&n.to_ascii_uppercase()), Some(p));
            assert_eq!(by_name(&name(p)), Some(p), "{n}");
        }
        assert_eq!(name(58), "ipv6-icmp");
        assert_eq!(name(47), "47");
        assert_eq!(by_name("gre"), None);
    }
}
