//! The verdict for one destination under the policy generation in force.
use aya_ebpf::maps::lpm_trie::Key;
use egressd_common::{REGION_LOCAL, REGION_UNKNOWN, Verdict, family, mode, set_of, unwrap};

use crate::{
    addr::{self, Dest},
    maps::*,
};

/// What the policy says of a destination.
pub struct Decision {
    /// Generation that decided.
    pub generation: u64,
    /// Region id of the (unwrapped) destination.
    pub region: u32,
    /// Allow, Deny or Audit.
    pub verdict: Verdict,
}

/// The generation in force (0 before the first policy: then set A, all zero, denies).
#[inline(always)]
pub fn generation() -> u64 {
    EGRESSD_GENERATION_V1.get(0).copied().unwrap_or(0)
}

/// Decides for `d` under `generation`; unwraps a NAT64 destination in place (RFC 6052: the
/// IPv4 address is the last 4 bytes of a /96).
#[inline(always)]
pub fn decide(d: &mut Dest, generation: u64) -> Decision {
    let set = set_of(generation);
    // Local before NAT64: a NAT64 address always goes to the translator, even one that
    // embeds 127.0.0.1, so only the region of the embedded address can allow it.
    if addr::is_local(d) {
        return Decision {
            generation,
            region: REGION_LOCAL,
            verdict: Verdict::Allow,
        };
    }
    if d.family == family::INET6 {
        let key = Key::new(128, d.addr);
        let nat64 = if set == 0 {
            EGRESSD_NAT64_A_V1.get(&key)
        } else {
            EGRESSD_NAT64_B_V1.get(&key)
        };
        if nat64.is_some() {
            let v4 = [d.addr[12], d.addr[13], d.addr[14], d.addr[15]];
            d.addr = [0; 16];
            d.addr[..4].copy_from_slice(&v4);
            d.family = family::INET;
            d.mapped = unwrap::NAT64;
        }
    }
    let audit = EGRESSD_SETTINGS_V1
        .get(set as u32)
        .is_some_and(|s| s.mode == mode::AUDIT);
    let region = lookup(d, set);
    let regions = if set == 0 {
        &EGRESSD_REGIONS_A_V1
    } else {
        &EGRESSD_REGIONS_B_V1
    };
    let allowed = regions.get(region).is_some_and(|r| r.allowed != 0);
    let verdict = if allowed {
        Verdict::Allow
    } else if audit {
        Verdict::Audit
    } else {
        Verdict::Deny
    };
    Decision {
        generation,
        region,
        verdict,
    }
}

/// Longest-prefix match in set `set`; [`REGION_UNKNOWN`] when no prefix covers `d`.
#[inline(always)]
fn lookup(d: &Dest, set: usize) -> u32 {
    let hit = if d.family == family::INET {
        let key = Key::new(32, [d.addr[0], d.addr[1], d.addr[2], d.addr[3]]);
        if set == 0 {
            EGRESSD_PREFIXES_V4_A_V1.get(&key)
        } else {
            EGRESSD_PREFIXES_V4_B_V1.get(&key)
        }
    } else {
        let key = Key::new(128, d.addr);
        if set == 0 {
            EGRESSD_PREFIXES_V6_A_V1.get(&key)
        } else {
            EGRESSD_PREFIXES_V6_B_V1.get(&key)
        }
    };
    hit.copied().unwrap_or(REGION_UNKNOWN)
}
