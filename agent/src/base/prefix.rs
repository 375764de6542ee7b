//! The one parser of IP prefixes (`ADDR/LEN` or a bare `ADDR`), used by the policy
//! ([`crate::config`]) and by `egressd regions import` ([`crate::policy::import`]), and the netmasks
//! both use. Strict: no netmask notation, no shortened IPv4 forms, a decimal length of at most
//! three digits, no IPv4-mapped IPv6 prefixes (mapped destinations are judged as IPv4).
//! Uses nothing else in the crate.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

/// Why a prefix was rejected. [`PrefixError::policy_message`] and
/// [`PrefixError::import_message`] say it for a policy file and for a provider file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrefixError {
    /// The part before `/` is not an IP address.
    NotAddress {
        /// The prefix as written.
        input: String,
        /// The part before `/`.
        addr: String,
    },
    /// The length is not 1-3 decimal digits.
    BadLength {
        /// The prefix as written.
        input: String,
        /// The part after `/`.
        len: String,
        /// 32 (IPv4) or 128 (IPv6).
        max: u8,
    },
    /// The length is a number above `max`.
    OutOfRange {
        /// The prefix as written.
        input: String,
        /// The part after `/`.
        len: String,
        /// 32 (IPv4) or 128 (IPv6).
        max: u8,
    },
    /// An IPv4-mapped IPv6 prefix (`::ffff:0:0/96` or inside it).
    Mapped {
        /// The prefix as written.
        input: String,
        /// The IPv4 network it maps.
        v4: Ipv4Addr,
        /// Its IPv4 length (the IPv6 length minus 96).
        v4_len: u8,
    },
    /// Host bits are set and masking was not asked for.
    HostBits {
        /// The prefix as written.
        input: String,
        /// The network the prefix would be with its host bits cleared.
        net: IpNetwork,
    },
    /// The network could not be built (not expected after the checks above).
    Invalid {
        /// The prefix as written.
        input: String,
        /// `ipnetwork`'s message.
        message: String,
    },
}

const EXAMPLE: &str = "expected e.g. 198.18.1.0/24 or 2001:db8::/48";

impl PrefixError {
    /// The message in a policy file (`regions.NAME.prefixes`, `to`, `nat64_prefixes`).
    pub fn policy_message(&self) -> String {
        match self {
            Self::NotAddress { input, addr } => {
                format!("malformed prefix `{input}`: `{addr}` is not an IP address ({EXAMPLE})")
            }
            Self::BadLength { input, len, max } => format!(
                "malformed prefix `{input}`: prefix length `{len}` is not a number 0-{max} ({EXAMPLE})"
            ),
            Self::OutOfRange { input, len, max } => format!(
                "malformed prefix `{input}`: prefix length /{len} is out of range for {} (0-{max})",
                if *max == 32 { "IPv4" } else { "IPv6" }
            ),
            Self::Mapped { input, v4, v4_len } => format!(
                "IPv4-mapped prefix `{input}` would never match: mapped destinations are judged \
                 as IPv4, write {v4}/{v4_len} instead"
            ),
            Self::HostBits { input, net } => format!(
                "host bits set in `{input}`: the network would be {net}; write that (or fix the length)"
            ),
            Self::Invalid { message, .. } => message.clone(),
        }
    }

    /// The message in a provider file read by `egressd regions import` (which can mask host
    /// bits with `--mask-host-bits`).
    pub fn import_message(&self) -> String {
        match self {
            Self::NotAddress { input, addr } => {
                format!("malformed prefix `{input}`: `{addr}` is not an IP address")
            }
            Self::BadLength { input, len, max } | Self::OutOfRange { input, len, max } => {
                format!("malformed prefix `{input}`: prefix length `{len}` is not a number 0-{max}")
            }
            Self::Mapped { input, .. } => format!(
                "IPv4-mapped prefix `{input}`: the policy judges mapped destinations as IPv4 and \
                 rejects such prefixes"
            ),
            Self::HostBits { input, net } => format!(
                "host bits set in `{input}`: the network would be {net} (pass --mask-host-bits to \
                 accept such prefixes as their network)"
            ),
            Self::Invalid { message, .. } => message.clone(),
        }
    }
}

/// Parses `ADDR/LEN` or a bare `ADDR` (a /32 or /128). Returns the network and whether host
/// bits were cleared, which happens only when `mask_host_bits` is set.
///
/// # Errors
/// The first problem found, in the order of [`PrefixError`]'s variants.
pub fn parse(s: &str, mask_host_bits: bool) -> Result<(IpNetwork, bool), PrefixError> {
    let (addr_s, len_s) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr_s.parse().map_err(|_| PrefixError::NotAddress {
        input: s.to_owned(),
        addr: addr_s.to_owned(),
    })?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len_s {
        None => max,
        Some(l) => {
            if l.is_empty() || l.len() > 3 || !l.bytes().all(|c| c.is_ascii_digit()) {
                return Err(PrefixError::BadLength {
                    input: s.to_owned(),
                    len: l.to_owned(),
                    max,
                });
            }
            match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(PrefixError::OutOfRange {
                        input: s.to_owned(),
                        len: l.to_owned(),
                        max,
                    });
                }
            }
        }
    };
    let invalid = |e: ipnetwork::IpNetworkError| PrefixError::Invalid {
        input: s.to_owned(),
        message: e.to_string(),
    };
    let net = match addr {
        IpAddr::V4(a) => {
            let network = Ipv4Addr::from(u32::from(a) & mask_u32(len));
            IpNetwork::V4(Ipv4Network::new(network, len).map_err(invalid)?)
        }
        IpAddr::V6(a) => {
            let network = Ipv6Addr::from(u128::from(a) & mask_u128(len));
            if len >= 96 && (u128::from(network) >> 32) == 0xffff {
                return Err(PrefixError::Mapped {
                    input: s.to_owned(),
                    v4: Ipv4Addr::from((u128::from(network) & 0xffff_ffff) as u32),
                    v4_len: len - 96,
                });
            }
            IpNetwork::V6(Ipv6Network::new(network, len).map_err(invalid)?)
        }
    };
    if net.ip() != addr {
        if mask_host_bits {
            return Ok((net, true));
        }
        return Err(PrefixError::HostBits {
            input: s.to_owned(),
            net,
        });
    }
    Ok((net, false))
}

/// IPv4 netmask of `len` leading ones (`len` <= 32).
pub fn mask_u32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

/// IPv6 netmask of `len` leading ones (`len` <= 128).
pub fn mask_u128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}
