//! The property the kernel relies on: for a valid policy, the compiled tables (LPM entries
//! and decision tables, evaluated as the eBPF programs do) decide every destination, protocol
//! and port exactly as the reference model `Policy::decide` does.
#![no_main]
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use egressd_fuzz::{GenPolicy, check_policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (GenPolicy, Vec<(u32, u64, bool, u8, u16)>)| {
    let (mut g, probes) = input;
    g.sloppy = false;
    let text = g.to_toml();
    let Ok(cfg) = egressd::config::parse(Path::new("policy.toml"), &text) else {
        return;
    };
    let extra: Vec<(IpAddr, u8, u16)> = probes
        .into_iter()
        .take(64)
        .map(|(a4, a6, v6, proto, port)| {
            let ip = if v6 {
                IpAddr::V6(Ipv6Addr::from(
                    (0x2001_0db8u128 << 96) | (u128::from(a6) << 32) | u128::from(a4),
                ))
            } else {
                IpAddr::V4(Ipv4Addr::from(a4))
            };
            (ip, proto, port)
        })
        .collect();
    check_policy(&cfg, &extra);
});
