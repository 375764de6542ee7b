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

/// An address family's network type: `u32` for IPv4 (12-byte items for a million
/// prefixes rather than 32), `u128` for IPv6.
pub trait Bits:
    Copy
    + Ord
    + std::ops::BitAnd<Output = Self>
    + std::ops::BitOr<Output = Self>
    + std::ops::Shl<u32, Output = Self>
{
    /// Width in bits.
    const WIDTH: u8;
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// `self >> n`, `None` when `n` is the width or more.
    fn shr(self, n: u32) -> Option<Self>;
}

impl Bits for u32 {
    const WIDTH: u8 = 32;
    const ZERO: Self = 0;
    const ONE: Self = 1;
    fn shr(self, n: u32) -> Option<Self> {
        self.checked_shr(n)
    }
}

impl Bits for u128 {
    const WIDTH: u8 = 128;
    const ZERO: Self = 0;
    const ONE: Self = 1;
    fn shr(self, n: u32) -> Option<Self> {
        self.checked_shr(n)
    }
}

/// The prefixes of `items` (each prefix once, any order) merged by the rules of the module
/// documentation, sorted by (network, length). Every address gets the same entry id from
/// the result as from `items`.
pub fn merge(items: Vec<Item>, width: u8) -> Vec<Item> {
    debug_assert!(width == 32 || width == 128);
    if width == 32 {
        let v4: Vec<(u32, u8, u32)> = items
            .into_iter()
            .map(|(n, l, id)| (u32::try_from(n).unwrap_or(u32::MAX), l, id))
            .collect();
        return merge_bits(v4)
            .into_iter()
            .map(|(n, l, id)| (u128::from(n), l, id))
            .collect();
    }
    merge_bits(items)
}

/// [`merge`] for the family of `T`.
pub fn merge_bits<T: Bits>(items: Vec<(T, u8, u32)>) -> Vec<(T, u8, u32)> {
    let width = T::WIDTH;
    let mut by_len: Vec<Vec<(T, u32, bool)>> = vec![Vec::new(); usize::from(width) + 1];
    for (net, len, id) in items {
        by_len[usize::from(len)].push((net, id, false));
    }
    let mut out: Vec<(T, u8, u32)> = Vec::new();
    for len in (0..=width).rev() {
        let mut level = std::mem::take(&mut by_len[usize::from(len)]);
        // A prefix made of its two halves replaces the listed one: sort it first, keep it.
        level.sort_unstable_by_key(|&(net, _, merged)| (net, !merged));
        level.dedup_by_key(|e| e.0);
        let bit = if len == 0 {
            T::ZERO
        } else {
            T::ONE << u32::from(width - len)
        };
        let mut i = 0;
        while i < level.len() {
            let (net, id, _) = level[i];
            if len > 0
                && net & bit == T::ZERO
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
    drop(by_len);
    out.sort_unstable_by_key(|&(net, len, _)| (net, len));
    // Nesting: drop what its nearest kept cover already decides (in place).
    let mut stack: Vec<(T, u8, u32)> = Vec::new();
    let mut kept = 0;
    for i in 0..out.len() {
        let (net, len, id) = out[i];
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
        out[kept] = (net, len, id);
        kept += 1;
    }
    out.truncate(kept);
    out.shrink_to_fit();
    out
}

/// Whether prefix `net`/`len` contains address `a` (`width`-bit family).
fn contains<T: Bits>(net: T, len: u8, a: T, width: u8) -> bool {
    let host = u32::from(width - len);
    a.shr(host) == net.shr(host) || host >= u32::from(width)
}

/// [`merge`] of IPv4 (prefix, entry id) pairs.
pub fn merge_v4(v: &[(ipnetwork::Ipv4Network, u32)]) -> Vec<(ipnetwork::Ipv4Network, u32)> {
    let items = v
        .iter()
        .map(|(n, id)| (u32::from(n.network()), n.prefix(), *id))
        .collect();
    merge_bits(items)
        .into_iter()
        .filter_map(|(net, len, id)| {
            let a = std::net::Ipv4Addr::from(net);
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
    merge_bits::<u128>(items)
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
