//! The validation suite: every sample record type (`egressd::events::sample::records`:
//! connection deny, audit and a non-ASCII deny; every lifecycle kind) in every format,
//! checked against each format's own definition rather than against egressd's own
//! expectations (the golden files are examples; this is the rule):
//!
//! - `ocsf::*`: the OCSF 1.3.0 schema ([`ocsf`]),
//! - `ecs::*`: the ECS 8.11 field list ([`ecs`]),
//! - `cef::*`: the CEF key dictionary with an exact round trip of every value that carries
//!   text from the record, through the strict parser in [`cef`],
//! - `rfc5424::*`: every format as the syslog sinks frame it (TCP/TLS octet counting, and a
//!   UDP datagram cut to 600 bytes), against the ABNF of RFC 5424 ([`rfc5424`]),
//! - `self_check::*`: each validator rejects a record with a planted fault, so a pass means
//!   something.
//!
//! The official schema files are read from the directory named by `EGRESSD_SCHEMAS` (CI:
//! `../shared/data/schemas`); without it the OCSF and ECS tests are listed as ignored, with
//! the reason, and with it a missing or unreadable file is a failure.
#[path = "schemas/cef.rs"]
mod cef;
#[path = "schemas/ecs.rs"]
mod ecs;
#[path = "schemas/ocsf.rs"]
mod ocsf;
#[path = "schemas/rfc5424.rs"]
mod rfc5424;

use std::{path::PathBuf, sync::OnceLock};

use egressd::{
    events::formats::{self, Format},
    events::sinks::{Encoder, Framing, syslog},
    events::{Record, sample},
};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use serde_json::{Value, json};

/// The variable naming the directory of the official schema files.
const SCHEMAS_ENV: &str = "EGRESSD_SCHEMAS";

fn skip_reason() -> String {
    format!(
        "{SCHEMAS_ENV} not set (the official OCSF and ECS schema files, e.g. \
         ../shared/data/schemas)"
    )
}

fn schema_dir() -> Option<PathBuf> {
    std::env::var_os(SCHEMAS_ENV)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

fn ocsf_schema() -> Option<&'static Result<ocsf::Schema, String>> {
    static S: OnceLock<Result<ocsf::Schema, String>> = OnceLock::new();
    let dir = schema_dir()?;
    Some(S.get_or_init(|| ocsf::Schema::load(&dir)))
}

fn ecs_schema() -> Option<&'static Result<ecs::Schema, String>> {
    static S: OnceLock<Result<ecs::Schema, String>> = OnceLock::new();
    let dir = schema_dir()?;
    Some(S.get_or_init(|| ecs::Schema::load(&dir)))
}

/// `r` in format `f` as a sink sends it: with its hash chain link (the chain's first).
fn sealed(f: Format, r: &Record) -> Vec<u8> {
    egressd::events::audit::chain::Chain::new().seal(f, &f.render(r))
}

fn doc(f: Format, r: &Record) -> Value {
    serde_json::from_slice(&sealed(f, r)).expect("the format renders JSON")
}

fn verdict(errs: Vec<String>, what: &str) -> Result<(), Failed> {
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}:\n  {}", errs.join("\n  ")).into())
    }
}

/// Runs `f` with a loaded schema, or reports the test ignored when there is none.
fn with_schema<S: 'static>(
    schema: Option<&'static Result<S, String>>,
    f: impl FnOnce(&S) -> Result<(), Failed>,
) -> Result<Completion, Failed> {
    match schema {
        None => Ok(Completion::ignored_with(skip_reason())),
        Some(Err(e)) => Err(e.clone().into()),
        Some(Ok(s)) => f(s).map(|()| Completion::Completed),
    }
}

/// The CEF values that carry text from the record, as the record holds it: what an
/// independent parser must give back exactly.
fn cef_expected(r: &Record) -> Vec<(&'static str, String)> {
    let h = r.header();
    let mut v = vec![
        ("externalId", h.id.to_string()),
        ("dvchost", h.host.name.clone()),
        ("egressdSeq", h.sequence.to_string()),
        ("rt", formats::unix_ms(h.unix_ns).to_string()),
    ];
    match r {
        Record::Connection(c) => {
            v.push(("msg", formats::message(c)));
            v.push(("shost", h.host.name.clone()));
            v.push(("sproc", c.process.name.to_string()));
            v.push(("spid", c.process.pid.to_string()));
            v.push(("suid", c.user.id.to_string()));
            if c.destination.ip.is_some() {
                v.push(("dpt", c.destination.port.to_string()));
            }
            v.push(("cs1", c.destination.region.to_string()));
            v.push(("cs2", c.policy.digest.to_string()));
            v.push(("egressdHook", c.hook.to_owned()));
            v.push(("egressdProcessDetails", c.process.details.to_owned()));
            for (k, x) in [
                ("suser", c.user.name.as_deref()),
                ("cs4", c.cgroup.path.as_deref()),
                ("cs5", c.container.as_ref().map(|c| &*c.id)),
                ("cs6", c.process.command_line.as_deref()),
                ("egressdExe", c.process.executable.as_deref()),
                ("egressdUnit", c.cgroup.systemd_unit.as_deref()),
            ] {
                if let Some(x) = x {
                    v.push((k, x.to_owned()));
                }
            }
            match c.destination.ip {
                Some(std::net::IpAddr::V4(ip)) => v.push(("dst", ip.to_string())),
                Some(std::net::IpAddr::V6(ip)) => v.push(("c6a3", ip.to_string())),
                None => {}
            }
        }
        Record::Lifecycle(l) => v.push(("msg", l.body.message())),
        Record::Summary(s) => {
            v.push(("msg", formats::summary_message(s)));
            v.push(("cnt", s.count.to_string()));
            v.push(("start", formats::unix_ms(s.start_ns).to_string()));
            v.push(("end", formats::unix_ms(h.unix_ns).to_string()));
            v.push(("cs1", s.destination.region.clone()));
            v.push(("egressdHook", s.hook.to_owned()));
        }
    }
    v
}

fn cef_test(r: &Record) -> Result<(), Failed> {
    let line = String::from_utf8(sealed(Format::Cef, r)).expect("UTF-8");
    let (header, pairs) = cef::parse(&line).map_err(|e| format!("{e}\n  in {line}"))?;
    let mut errs = cef::check(&pairs);
    let h = r.header();
    let want_header = ["CEF:0", "egressd", "egressd", h.agent.version.as_str()];
    if header[..4] != want_header {
        errs.push(format!("header {:?}, want {want_header:?}", &header[..4]));
    }
    for (k, want) in cef_expected(r) {
        match pairs.iter().find(|(key, _)| key == k) {
            None => errs.push(format!("{k}: missing (want {want:?})")),
            Some((_, got)) if *got != want => errs.push(format!(
                "{k}: round trip gives {got:?}, the record holds {want:?}"
            )),
            Some(_) => {}
        }
    }
    verdict(errs, &line)
}

fn header_fields() -> syslog::HeaderFields {
    syslog::HeaderFields {
        facility: 16,
        hostname: syslog::printable("storage-eu-1", 255),
        app_name: "egressd".into(),
        procid: "4242".into(),
    }
}

/// One record in format `f` as a syslog sink frames it, checked: with `max_bytes` 0 as TCP
/// and TLS send it (RFC 6587 octet counting), else as one UDP datagram cut to `max_bytes`.
fn rfc5424_test(f: Format, r: &Record, max_bytes: usize) -> Result<(), Failed> {
    let octet_counting = max_bytes == 0;
    let enc = Encoder {
        format: f,
        framing: Framing::Syslog {
            header: header_fields(),
            octet_counting,
        },
        max_bytes,
    };
    let encoded = enc.encode_sealed(r, &mut egressd::events::audit::chain::Chain::new());
    let m = if octet_counting {
        rfc5424::unframe(&encoded.frame)?
    } else {
        &encoded.frame[..]
    };
    let shown = String::from_utf8_lossy(m).into_owned();
    let p = rfc5424::parse(m).map_err(|e| format!("{e}\n  in {shown}"))?;
    let mut errs = Vec::new();
    if let Err(e) = rfc5424::check_bom(&p) {
        errs.push(e);
    }
    let want_pri = 16 * 8 + u16::from(syslog::severity(r));
    if p.pri != want_pri {
        errs.push(format!("PRI {}, want {want_pri}", p.pri));
    }
    let want = ["storage-eu-1", "egressd", "4242", r.header().kind];
    if p.fields != want {
        errs.push(format!("header fields {:?}, want {want:?}", p.fields));
    }
    if !p.sd.is_empty() {
        errs.push(format!("STRUCTURED-DATA {:?}: egressd sends `-`", p.sd));
    }
    // A record that cannot be cut that small goes whole (`bound::fit`), and says so.
    if encoded.truncated && m.len() > max_bytes {
        errs.push(format!("{} octets, the limit is {max_bytes}", m.len()));
    }
    if max_bytes == 0 && p.msg != sealed(f, r).as_slice() {
        errs.push("MSG is not the rendered record".into());
    }
    if !encoded.truncated && p.msg != sealed(f, r).as_slice() {
        errs.push("MSG differs from the rendered record though not truncated".into());
    }
    verdict(errs, &shown)
}

fn expect_rejected(what: &str, errs: Vec<String>) -> Result<(), Failed> {
    if errs.is_empty() {
        Err(format!("the validator accepted {what}").into())
    } else {
        Ok(())
    }
}

/// Each validator must reject a record with a planted fault.
fn self_checks() -> Vec<Trial> {
    let deny = || Record::Connection(Box::new(sample::deny()));
    let other = || {
        let l = sample::lifecycle()
            .into_iter()
            .find(|l| l.header.kind == "policy_loaded")
            .expect("a policy_loaded sample");
        Record::Lifecycle(Box::new(l))
    };
    let mut v = vec![
        Trial::ignorable_test("self_check::ocsf_rejects_planted_faults", move || {
            with_schema(ocsf_schema(), |s| {
                type Plant = fn(&mut Value);
                let plants: [(&str, Record, Plant); 6] = [
                    ("a device without type_id", deny(), |d| {
                        d["device"].as_object_mut().map(|o| o.remove("type_id"));
                    }),
                    ("an attribute outside the schema", deny(), |d| {
                        d["device"]["rack"] = json!("r1");
                    }),
                    ("a wrong enum caption", deny(), |d| {
                        d["action"] = json!("Blocked")
                    }),
                    (
                        "a type_name other than the caption of type_uid",
                        other(),
                        |d| d["type_name"] = json!("Application Lifecycle: Policy Loaded"),
                    ),
                    ("a string where an integer belongs", deny(), |d| {
                        d["actor"]["process"]["pid"] = json!("21210")
                    }),
                    ("a type_uid that is not class*100+activity", deny(), |d| {
                        d["type_uid"] = json!(400101)
                    }),
                ];
                for (what, r, plant) in plants {
                    let mut d = doc(Format::Ocsf, &r);
                    plant(&mut d);
                    expect_rejected(what, s.check(&d))?;
                }
                Ok(())
            })
        }),
        Trial::ignorable_test("self_check::ecs_rejects_planted_faults", move || {
            with_schema(ecs_schema(), |s| {
                type Plant = fn(&mut Value);
                let plants: [(&str, Plant); 5] = [
                    ("an unknown field", |d| {
                        d["process"]["colour"] = json!("red")
                    }),
                    ("a string where a long belongs", |d| {
                        d["process"]["pid"] = json!("21210")
                    }),
                    ("an event.type not expected for the category", |d| {
                        d["event"]["type"] = json!(["creation"])
                    }),
                    ("a value outside event.kind's allowed values", |d| {
                        d["event"]["kind"] = json!("connection")
                    }),
                    ("a scalar event.category", |d| {
                        d["event"]["category"] = json!("network")
                    }),
                ];
                for (what, plant) in plants {
                    let mut d = doc(Format::Ecs, &deny());
                    plant(&mut d);
                    expect_rejected(what, s.check(&d))?;
                }
                Ok(())
            })
        }),
    ];
    v.push(Trial::test(
        "self_check::cef_rejects_planted_faults",
        || {
            let line = formats::cef::render(&Record::Connection(Box::new(sample::deny())));
            for (what, bad) in [
                ("an unknown key", line.replace(" act=", " action=")),
                ("an unescaped `=`", line.replace("cs1=us", "cs1=u=s")),
                ("an unknown escape", line.replace("cs1=us", "cs1=u\\ts")),
                ("a label without its value", line.replace(" cs1=us", "")),
                ("a raw line feed", line.replace("\\n", "\n")),
                (
                    "an IPv6 address in dst",
                    line.replace("dst=198.18.2.2", "dst=2001:db8::2"),
                ),
            ] {
                let errs = match cef::parse(&bad) {
                    Err(e) => vec![e],
                    Ok((_, pairs)) => cef::check(&pairs),
                };
                expect_rejected(what, errs)?;
            }
            // A value that does not come back as the record holds it.
            let mut ev = sample::deny();
            ev.process.name = egressd::events::Comm::from("cu=rl").expect("fits");
            let wrong =
                formats::cef::render(&Record::Connection(Box::new(ev))).replace("cu\\=rl", "curl");
            let (_, pairs) = cef::parse(&wrong).map_err(Failed::from)?;
            if pairs.iter().any(|(k, v)| k == "sproc" && v == "cu=rl") {
                return Err("round trip check has nothing to compare".into());
            }
            Ok(())
        },
    ));
    v.push(Trial::test(
        "self_check::rfc5424_rejects_planted_faults",
        || {
            let good = b"<132>1 2026-11-29T09:42:54.018030Z h egressd 1 connection - x".to_vec();
            rfc5424::parse(&good).map_err(Failed::from)?;
            let utf8 = "<132>1 2026-11-29T09:42:54.018030Z h egressd 1 connection - Zürich";
            let p = rfc5424::parse(utf8.as_bytes()).map_err(Failed::from)?;
            expect_rejected(
                "non-ASCII MSG without BOM",
                rfc5424::check_bom(&p).err().into_iter().collect(),
            )?;
            for (what, bad) in [
                (
                    "9 fraction digits",
                    "<132>1 2026-11-29T09:42:54.018030447Z h a 1 m - x",
                ),
                ("PRI above 191", "<192>1 2026-11-29T09:42:54Z h a 1 m - x"),
                ("February 30th", "<13>1 2026-02-30T09:42:54Z h a 1 m - x"),
                ("a space in HOSTNAME", "<13>1 - h h a 1 m - x"),
                ("an SD-ID without @", "<13>1 - h a 1 m [x a=\"b\"] x"),
                (
                    "an unescaped ] in PARAM-VALUE",
                    "<13>1 - h a 1 m [x@1 a=\"]\"] x",
                ),
                (
                    "a MSGID of 33 octets",
                    "<13>1 - h a 1 mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm - x",
                ),
            ] {
                expect_rejected(
                    what,
                    rfc5424::parse(bad.as_bytes()).err().into_iter().collect(),
                )?;
            }
            let mut bad_utf8 = b"<13>1 - h a 1 m - ".to_vec();
            bad_utf8.extend_from_slice(rfc5424::BOM);
            bad_utf8.extend_from_slice(b"\xC3\x28");
            expect_rejected(
                "BOM then invalid UTF-8",
                rfc5424::parse(&bad_utf8).err().into_iter().collect(),
            )?;
            Ok(())
        },
    ));
    v
}

fn main() {
    let args = Arguments::from_args();
    let mut tests = Vec::new();
    for (name, rec) in sample::records() {
        let r = rec.clone();
        tests.push(Trial::ignorable_test(format!("ocsf::{name}"), move || {
            with_schema(ocsf_schema(), |s| {
                verdict(s.check(&doc(Format::Ocsf, &r)), "OCSF")
            })
        }));
        let r = rec.clone();
        tests.push(Trial::ignorable_test(format!("ecs::{name}"), move || {
            with_schema(ecs_schema(), |s| {
                verdict(s.check(&doc(Format::Ecs, &r)), "ECS")
            })
        }));
        let r = rec.clone();
        tests.push(Trial::test(format!("cef::{name}"), move || cef_test(&r)));
        for f in Format::ALL {
            let r = rec.clone();
            tests.push(Trial::test(
                format!("rfc5424::{}::{name}", f.as_str()),
                move || rfc5424_test(f, &r, 0),
            ));
            let r = rec.clone();
            tests.push(Trial::test(
                format!("rfc5424::{}::{name}::udp_600", f.as_str()),
                move || rfc5424_test(f, &r, 600),
            ));
        }
    }
    tests.extend(self_checks());
    libtest_mimic::run(&args, tests).exit();
}
