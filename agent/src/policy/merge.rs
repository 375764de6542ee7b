//! Merging of prefixes that decide the same, before any lookup structure is built.
//!
//! Region maps have few distinct decisions (entry ids), and providers publish their ranges as
//! runs of adjacent prefixes and as prefixes nested in larger ones of the same region. Two
//! rules, applied until nothing changes, keep the longest-prefix-match answer of every
//! address:
//! - *siblings*: the two halves of a prefix with the same entry id become that prefix (which
//!   they cover completely, so whatever the prefix itself decided was never seen);
//! - *nesting*: a prefix whose nearest covering prefix has the same entry id (or, without
//!   one, entry 0, what uncovered addresses read) is dropped.
//!
//! Not the minimal set (ORTC, Draves et al., INFOCOM 1999, also splits prefixes), but linear
//! after one sort per prefix length, and it keeps every result prefix one of the input or a
//! union of input prefixes.

/// One prefix of an address family `width` bits wide (32 or 128), as (network, length,
/// entry id); the network is right-aligned in the `u128` (an IPv4 network is its `u32`).
pub type Item = (u128, u8, u32);

/// The prefixes of `items` (each prefix once, any order) merged by the rules of the module
/// documentation, sorted by (network, length). Every address gets the same entry id from
/// the result as from `items`.
pub fn merge(items: Vec<Item>, width: u8) -> Vec<Item> {
    debug_assert!(width == 32 || width == 128);
    let mut by_len: Vec<Vec<(u128, u32, bool)>> = vec![Vec::new(); usize::from(width) + 1];
    for (net, len, id) in items {
        by_len[usize::from(len)].push((net, id, false));
    }
    let mut out: Vec<Item> = Vec::new();
    for len in (0..=width).rev() {
        let mut level = std::mem::take(&mut by_len[usize::from(len)]);
        // A prefix made of its two halves replaces the listed one: sort it first, keep it.
        level.sort_unstable_by_key(|&(net, _, merged)| (net, !merged));
        level.dedup_by_key(|e| e.0);
        let bit = if len == 0 { 0 } else { 1u128 << (width - len) };
        let mut i = 0;
        while i < level.len() {
            let (net, id, _) = level[i];
            if len > 0
                && net & bit == 0
                && level
                    .get(i + 1)
                    .is_some_and(|&(next, nid, _)| next == net | bit && nid == id)
            {
                by_len[usize::from(len - 1)].push((net, id, true));
                i += 2;
            } else {
                out.push((net, len, id));
                i += 1;
            }
        }
    }
    out.sort_unstable_by_key(|&(net, len, _)| (net, len));
    // Nesting: drop what its nearest kept cover already decides.
    let mut stack: Vec<Item> = Vec::new();
    let mut kept = Vec::with_capacity(out.len());
    for (net, len, id) in out {
        while let Some(&(top, top_len, _)) = stack.last() {
            if contains(top, top_len, net, width) {
                break;
            }
            stack.pop();
        }
        if stack.last().map_or(0, |&(_, _, cover)| cover) == id {
            continue;
        }
        stack.push((net, len, id));
        kept.push((net, len, id));
    }
    kept
}

/// Whether prefix `net`/`len` contains address `a` (`width`-bit family).
fn contains(net: u128, len: u8, a: u128, width: u8) -> bool {
    let host = u32::from(width - len);
    a.checked_shr(host) == net.checked_shr(host) || host >= 128
}

/// [`merge`] of IPv4 (prefix, entry id) pairs.
pub fn merge_v4(v: &[(ipnetwork::Ipv4Network, u32)]) -> Vec<(ipnetwork::Ipv4Network, u32)> {
    let items = v
        .iter()
        .map(|(n, id)| (u128::from(u32::from(n.network())), n.prefix(), *id))
        .collect();
    merge(items, 32)
        .into_iter()
        .filter_map(|(net, len, id)| {
            let a = std::net::Ipv4Addr::from(u32::try_from(net).ok()?);
            Some((ipnetwork::Ipv4Network::new(a, len).ok()?, id))
        })
        .collect()
}

/// [`merge`] of IPv6 (prefix, entry id) pairs.
pub fn merge_v6(v: &[(ipnetwork::Ipv6Network, u32)]) -> Vec<(ipnetwork::Ipv6Network, u32)> {
    let items = v
        .iter()
        .map(|(n, id)| (u128::from(n.network()), n.prefix(), *id))
        .collect();
    merge(items, 128)
        .into_iter()
        .filter_map(|(net, len, id)| {
            let n = ipnetwork::Ipv6Network::new(std::net::Ipv6Addr::from(net), len).ok()?;
            Some((n, id))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Longest match by brute force.
    fn lpm(items: &[Item], a: u128, width: u8) -> u32 {
        items
            .iter()
            .filter(|&&(n, l, _)| contains(n, l, a, width))
            .max_by_key(|&&(_, l, _)| l)
            .map_or(0, |&(_, _, id)| id)
    }

    fn v4(s: &str) -> (u128, u8) {
        let n: ipnetwork::Ipv4Network = s.parse().expect("valid CIDR");
        (u128::from(u32::from(n.network())), n.prefix())
    }

    #[test]
    fn adjacent_and_nested_prefixes_merge() {
        let items: Vec<Item> = [
            ("10.0.0.0/25", 1),
            ("10.0.0.128/25", 1),
            ("10.0.1.0/24", 1),
            ("10.0.0.0/16", 1),
            ("10.0.5.0/24", 2),
            ("192.0.2.0/24", 0),
        ]
        .iter()
        .map(|(s, id)| {
            let (n, l) = v4(s);
            (n, l, *id)
        })
        .collect();
        let got = merge(items, 32);
        let want: Vec<Item> = [("10.0.0.0/16", 1), ("10.0.5.0/24", 2)]
            .iter()
            .map(|(s, id)| {
                let (n, l) = v4(s);
                (n, l, *id)
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn halves_replace_a_listed_parent_they_cover() {
        let items: Vec<Item> = [("10.0.0.0/8", 2), ("10.0.0.0/9", 1), ("10.128.0.0/9", 1)]
            .iter()
            .map(|(s, id)| {
                let (n, l) = v4(s);
                (n, l, *id)
            })
            .collect();
        assert_eq!(merge(items, 32), vec![(v4("10.0.0.0/8").0, 8, 1)]);
    }

    #[test]
    fn random_sets_keep_every_answer() {
        let mut rng = fastrand::Rng::with_seed(0x3e29e);
        for width in [32u8, 128] {
            for _ in 0..200 {
                let mut seen = std::collections::HashSet::new();
                let mut items = Vec::new();
                // Clustered in a /20 (of the top of the family) so prefixes nest and touch.
                let base = 0x0a00_0000u128 << (width - 32);
                for _ in 0..rng.usize(1..60) {
                    let len = rng.u8(12..=24.min(width));
                    let host = width - len;
                    let net =
                        (base | (rng.u128(..) & ((1u128 << (width - 12)) - 1))) >> host << host;
                    if seen.insert((net, len)) {
                        items.push((net, len, rng.u32(0..3)));
                    }
                }
                let merged = merge(items.clone(), width);
                assert!(merged.len() <= items.len());
                for _ in 0..500 {
                    let a = base | (rng.u128(..) & ((1u128 << (width - 12)) - 1));
                    assert_eq!(lpm(&merged, a, width), lpm(&items, a, width), "{a:#x}");
                }
                for &(n, _, _) in &items {
                    assert_eq!(lpm(&merged, n, width), lpm(&items, n, width), "{n:#x}");
                }
            }
        }
    }
}
