//! Output formats: one [`Record`] in, one line of bytes out (no line terminator; sinks add
//! their framing: a newline for stdout and files, octet counting for syslog over TCP/TLS, one
//! datagram for UDP).
//!
//! | format | module | for |
//! | --- | --- | --- |
//! | `json` | [`json`] | the native JSON lines (default), field names after ECS where it has one |
//! | `ecs` | [`ecs`] | Elastic Common Schema 8.11 documents (Elasticsearch, Elastic Security) |
//! | `ocsf` | [`ocsf`] | OCSF 1.3.0 events (Network Activity 4001, Application Lifecycle 6002) |
//! | `cef` | [`cef`] | ArcSight Common Event Format version 0 (CEF:0) lines |
//!
//! Every format renders every record type (connection events and lifecycle records). Their
//! field mappings are documented in each module and illustrated by the golden files in
//! `agent/src/events/formats/golden/` (regenerate with `EGRESSD_BLESS=1 cargo test formats`); the
//! rule is the validation suite `agent/tests/schemas.rs`, which checks every sample record
//! in every format against OCSF 1.3.0, ECS 8.11, the CEF key dictionary and RFC 5424.
pub mod bound;
pub mod cef;
pub mod ecs;
pub mod json;
pub mod ocsf;

use crate::events::{ConnectionEvent, Record, summary::SummaryEvent};

pub use crate::config::output::Format;

/// Rendering lives here, beside the formats; the enum and its names live in the
/// configuration ([`crate::config::output`]), which must not depend on the formats.
impl Format {
    /// Renders one record: UTF-8 text without a trailing newline. JSON formats never contain
    /// a raw newline (serde_json escapes control characters); CEF escapes them as `\n`.
    pub fn render(self, record: &Record) -> Vec<u8> {
        match self {
            Format::Json => json::render(record),
            Format::Ecs => ecs::render(record),
            Format::Ocsf => ocsf::render(record),
            Format::Cef => cef::render(record).into_bytes(),
        }
    }
}

/// One-sentence description of a connection event shared by the formats' message fields,
/// e.g. `denied tcp connection to 198.18.2.2:8080 (region us, not allowlisted) by curl (pid
/// 21210, user alice)`; audit events say `would have denied ... (audit mode: let through)`.
pub fn message(ev: &ConnectionEvent) -> String {
    let who = match &ev.user.name {
        Some(n) => format!("user {n}"),
        None => format!("uid {}", ev.user.id),
    };
    let what = match ev.destination.ip {
        Some(ip) => {
            let dest = match ip {
                std::net::IpAddr::V6(ip) => format!("[{ip}]:{}", ev.destination.port),
                std::net::IpAddr::V4(ip) => format!("{ip}:{}", ev.destination.port),
            };
            format!(
                "{} connection to {dest} (region {}, not allowlisted) by {} (pid {}, {who})",
                ev.network.transport, ev.destination.region, ev.process.name, ev.process.pid
            )
        }
        None => format!(
            "{} {} socket at {} ({}) by {} (pid {}, {who})",
            ev.network.kind,
            ev.network.transport,
            ev.hook,
            why(ev),
            ev.process.name,
            ev.process.pid
        ),
    };
    let repeats = if ev.suppressed > 0 {
        format!("; {} similar attempts suppressed before it", ev.suppressed)
    } else {
        String::new()
    };
    if ev.verdict == "audit" {
        format!("would have denied {what} (audit mode: let through){repeats}")
    } else {
        format!("denied {what}{repeats}")
    }
}

/// One-sentence description of a `connection_summary` shared by the formats' message
/// fields, e.g. `denied 883412 attempts to 254 destinations (region us, not allowlisted) at
/// cgroup/sendmsg4 from cgroup 614 from 2026-...Z to 2026-...Z (aggregated by the kernel)`.
pub fn summary_message(s: &SummaryEvent) -> String {
    let what = format!(
        "{} attempts to {} destination{} (region {}, not allowlisted) at {} from cgroup {} \
         from {} to {} (aggregated by the kernel)",
        s.count,
        s.destination.distinct,
        if s.destination.distinct == 1 { "" } else { "s" },
        s.destination.region,
        s.hook,
        s.cgroup.id,
        s.start,
        s.end
    );
    if s.verdict == "audit" {
        format!("would have denied {what} (audit mode: let through)")
    } else {
        format!("denied {what}")
    }
}

/// Milliseconds since the Unix epoch (OCSF `time`, CEF `rt`).
pub fn unix_ms(unix_ns: i128) -> i64 {
    i64::try_from(unix_ns.div_euclid(1_000_000)).unwrap_or(0)
}

/// Why an event's attempt was denied or reported, in words: the destination's region, or
/// the `packet_sockets` setting for a packet socket.
pub fn why(ev: &ConnectionEvent) -> String {
    if ev.destination.ip.is_some() {
        format!(
            "destination region {} is not allowlisted",
            ev.destination.region
        )
    } else {
        "packet sockets are not allowed by policy packet_sockets".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::sample;

    fn golden_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/events/formats/golden")
    }

    /// Every format x every sample record, sealed as the first record of a hash chain
    /// ([`crate::events::audit::chain`]), against `golden/{format}/{sample}.txt`.
    /// `EGRESSD_BLESS=1` rewrites the files instead (review the diff).
    #[test]
    fn formats_match_golden_files() {
        let bless = std::env::var_os("EGRESSD_BLESS").is_some();
        let mut mismatches = Vec::new();
        for f in Format::ALL {
            let dir = golden_dir().join(f.as_str());
            for (name, rec) in sample::records() {
                // As a sink sends it: with the link of a chain's first record.
                let sealed = crate::events::audit::chain::Chain::new().seal(f, &f.render(&rec));
                let got = String::from_utf8(sealed).expect("UTF-8");
                assert!(!got.contains('\n'), "{f:?} {name}: raw newline in {got}");
                let path = dir.join(format!("{name}.txt"));
                if bless {
                    std::fs::create_dir_all(&dir).expect("mkdir golden");
                    std::fs::write(&path, format!("{got}\n")).expect("write golden");
                    continue;
                }
                let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                    panic!("{}: {e} (bless with EGRESSD_BLESS=1)", path.display())
                });
                if want.trim_end_matches('\n') != got {
                    mismatches.push(format!("{}:\n  want {want}  got  {got}", path.display()));
                }
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }

    #[test]
    fn names_round_trip() {
        for f in Format::ALL {
            assert_eq!(Format::from_name(f.as_str()), Some(f));
        }
        assert_eq!(Format::from_name("JSON"), None);
        assert_eq!(Format::default(), Format::Json);
    }

    #[test]
    fn messages() {
        let m = message(&sample::deny());
        assert_eq!(
            m,
            "denied tcp connection to 198.18.2.2:8080 (region us, not allowlisted) by curl \
             (pid 21210, user alice); 3 similar attempts suppressed before it"
        );
        let m = message(&sample::audit_exited());
        assert!(
            m.starts_with("would have denied udp connection to [2001:db8:2::2]:53"),
            "{m}"
        );
        assert!(
            m.contains("uid 0") && m.ends_with("(audit mode: let through)"),
            "{m}"
        );
    }

    #[test]
    fn ms() {
        assert_eq!(unix_ms(sample::T0), 1_795_945_374_018);
        assert_eq!(unix_ms(-1), -1);
    }
}
