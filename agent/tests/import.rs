//! `egressd regions import` on provider files, checked against what this test reads from the
//! same files independently with serde_json, and on small synthetic inputs for every error
//! path. Also the `egressd regions import` and `egressd explain` command lines, end to end.
//!
//! The file tests run twice: on the fixtures in `tests/data/providers` (small files in each
//! provider's format, always), and on the providers' full published files in the directory
//! named by `EGRESSD_PROVIDER_DATA` (CI: `../shared/data/cloud-ip-ranges`). Without that
//! variable the latter are reported as ignored, with the reason; with it, a missing file is a
//! failure. A custom main (libtest-mimic) so that a skip is decided at run time and says why.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use egressd::policy::import::{self, Format, Imported, Mapping, Options, RenderOptions};
use egressd::policy::{Policy, compile};
use ipnetwork::IpNetwork;
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use serde_json::Value;

/// The variable naming the directory of the providers' full files.
const DATA_ENV: &str = "EGRESSD_PROVIDER_DATA";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One directory of provider files (under the names of [`FILES`]) and what the tests expect
/// of it beyond what they compute from the files themselves.
#[derive(Clone, Debug)]
struct Data {
    /// `fixtures` or `provider_files`: the prefix of the test names.
    label: &'static str,
    dir: PathBuf,
    /// Lookups sample every `step`-th entry of a file.
    step: usize,
    /// `regions import` of the Oracle and Google Cloud files: (eu prefixes, IPv4, IPv6).
    oracle_gcp_eu: (usize, usize, usize),
}

impl Data {
    /// The fixtures the project owns.
    fn fixtures() -> Self {
        Self {
            label: "fixtures",
            dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/providers"),
            step: 1,
            oracle_gcp_eu: (8, 7, 1),
        }
    }

    /// The providers' full files, when `EGRESSD_PROVIDER_DATA` names their directory.
    fn provider_files() -> Result<Option<Self>, String> {
        let Some(dir) = std::env::var_os(DATA_ENV).filter(|d| !d.is_empty()) else {
            return Ok(None);
        };
        let dir = PathBuf::from(dir);
        if let Some((name, _, _)) = FILES.iter().find(|(n, _, _)| !dir.join(n).is_file()) {
            return Err(format!(
                "{DATA_ENV}={}: {name} is missing there (the providers' files, as in \
                 ../shared/data/cloud-ip-ranges, are expected under the names the tests use)",
                dir.display()
            ));
        }
        Ok(Some(Self {
            label: "provider_files",
            dir,
            step: 7,
            oracle_gcp_eu: (316, 305, 11),
        }))
    }

    fn read(&self, name: &str) -> (PathBuf, String) {
        let path = self.dir.join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        (path, text)
    }
}

/// Why the tests on the full files did not run.
fn skip_reason() -> String {
    format!(
        "{DATA_ENV} not set (the providers' full files, e.g. ../shared/data/cloud-ip-ranges); \
         the fixtures:: tests cover the same code"
    )
}

fn main() {
    let args = Arguments::from_args();
    // Tests on synthetic inputs and the command line.
    let plain: [(&str, fn()); 13] = [
        (
            "import_same_prefix_two_regions_is_an_error",
            import_same_prefix_two_regions_is_an_error,
        ),
        (
            "import_skipped_prefix_inside_mapped_is_an_error",
            import_skipped_prefix_inside_mapped_is_an_error,
        ),
        (
            "import_no_location_entries_are_skipped_even_inside_mapped",
            import_no_location_entries_are_skipped_even_inside_mapped,
        ),
        (
            "import_host_bits_and_bad_prefixes_are_located",
            import_host_bits_and_bad_prefixes_are_located,
        ),
        (
            "import_mixed_families_and_subdivisions",
            import_mixed_families_and_subdivisions,
        ),
        (
            "import_missing_section_and_unused_keys",
            import_missing_section_and_unused_keys,
        ),
        ("import_render_shape", import_render_shape),
        ("cli_explain_text_and_errors", cli_explain_text_and_errors),
        (
            "import_empty_source_is_an_error",
            import_empty_source_is_an_error,
        ),
        (
            "import_hostile_provider_text_is_refused",
            import_hostile_provider_text_is_refused,
        ),
        (
            "import_readback_refuses_what_was_not_written",
            import_readback_refuses_what_was_not_written,
        ),
        (
            "import_hostile_text_past_the_checks_stays_in_comments",
            import_hostile_text_past_the_checks_stays_in_comments,
        ),
        (
            "cli_hostile_provider_files_change_nothing",
            cli_hostile_provider_files_change_nothing,
        ),
    ];
    // Tests on a directory of provider files: the fixtures, and the full files.
    let on_files: [(&str, FileTest, bool); 6] = [
        (
            "import_files_match_source_counts",
            import_files_match_source_counts,
            true,
        ),
        (
            "import_all_files_known_lookups",
            import_all_files_known_lookups,
            true,
        ),
        (
            "import_unmapped_region_keeps_source_lpm",
            import_unmapped_region_keeps_source_lpm,
            true,
        ),
        ("import_is_deterministic", import_is_deterministic, true),
        (
            "cli_regions_import_writes_a_checkable_policy",
            cli_regions_import_writes_a_checkable_policy,
            true,
        ),
        // Timing: only meaningful on the full files.
        (
            "import_largest_file_is_fast",
            import_largest_file_is_fast,
            false,
        ),
    ];
    let mut tests: Vec<Trial> = plain
        .into_iter()
        .map(|(name, f)| {
            Trial::test(name, move || {
                f();
                Ok(())
            })
        })
        .collect();
    for (name, f, on_fixtures) in on_files {
        if on_fixtures {
            tests.push(Trial::test(format!("fixtures::{name}"), move || {
                f(&Data::fixtures());
                Ok(())
            }));
        }
        tests.push(Trial::ignorable_test(
            format!("provider_files::{name}"),
            move || match Data::provider_files() {
                Ok(Some(data)) => {
                    f(&data);
                    Ok(Completion::Completed)
                }
                Ok(None) => Ok(Completion::ignored_with(skip_reason())),
                Err(e) => Err(Failed::from(e)),
            },
        ));
    }
    libtest_mimic::run(&args, tests).exit();
}

/// A test on one directory of provider files.
type FileTest = fn(&Data);

fn eu_mapping() -> Mapping {
    import::mapping::load(&repo().join("configs/import/eu-mapping.toml")).expect("eu mapping")
}

/// Keys of `[format].eu` in the EU mapping, read as plain TOML (not through the importer).
fn eu_keys(format: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("configs/import/eu-mapping.toml"))
        .expect("read mapping");
    let v: toml::Value = toml::from_str(&text).expect("mapping is TOML");
    v[format]["eu"]
        .as_array()
        .expect("eu list")
        .iter()
        .map(|k| k.as_str().expect("string").to_string())
        .collect()
}

/// (prefix, key) of every entry, read from the file with serde_json / plain string splitting.
fn independent_entries(data: &Data, name: &str) -> Vec<(IpNetwork, String)> {
    let (_, text) = data.read(name);
    let net = |s: &str| -> IpNetwork {
        let n: IpNetwork = s.parse().unwrap_or_else(|e| panic!("{name}: {s}: {e}"));
        assert_eq!(n.ip(), n.network(), "{name}: {s} has host bits");
        n
    };
    let s = |v: &Value| v.as_str().expect("string").to_string();
    let mut out = Vec::new();
    if name.ends_with(".json") {
        let v: Value = serde_json::from_str(&text).expect("JSON");
        if name.starts_with("aws") {
            for p in v["prefixes"].as_array().expect("prefixes") {
                out.push((net(p["ip_prefix"].as_str().expect("ip")), s(&p["region"])));
            }
            for p in v["ipv6_prefixes"].as_array().expect("ipv6_prefixes") {
                out.push((net(p["ipv6_prefix"].as_str().expect("ip")), s(&p["region"])));
            }
        } else if name.starts_with("google") {
            for p in v["prefixes"].as_array().expect("prefixes") {
                let t = p["ipv4Prefix"]
                    .as_str()
                    .or_else(|| p["ipv6Prefix"].as_str())
                    .expect("prefix");
                out.push((net(t), s(&p["scope"])));
            }
        } else if name.contains("azure") {
            for t in v["values"].as_array().expect("values") {
                let region = s(&t["properties"]["region"]);
                for p in t["properties"]["addressPrefixes"]
                    .as_array()
                    .expect("prefixes")
                {
                    out.push((net(p.as_str().expect("str")), region.clone()));
                }
            }
        } else {
            for r in v["regions"].as_array().expect("regions") {
                for c in r["cidrs"].as_array().expect("cidrs") {
                    out.push((net(c["cidr"].as_str().expect("str")), s(&r["region"])));
                }
            }
        }
    } else {
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            out.push((net(f[0]), f[1].to_ascii_uppercase()));
        }
    }
    assert!(!out.is_empty(), "{name}: no entries");
    out
}

fn run_import(data: &Data, mapping: &Mapping, names: &[&str]) -> Imported {
    let texts: Vec<(PathBuf, String)> = names.iter().map(|n| data.read(n)).collect();
    import::import_texts(mapping, &texts, &Options::default())
        .unwrap_or_else(|e| panic!("import of {names:?} failed: {e}"))
}

/// A policy with the imported regions. Built from a small stub parsed by the real parser,
/// whose prefixes are then replaced (parsing every prefix is checked separately, and is slow
/// for large files in a debug build).
fn policy_of(imported: &Imported, allow: &[&str]) -> Policy {
    let quoted: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
    let mut text = format!("allowlist = [{}]\n", quoted.join(", "));
    for (name, r) in &imported.regions {
        text.push_str(&format!(
            "[regions.{name}]\nprefixes = [\"{}\"]\n",
            r.prefixes[0]
        ));
    }
    let mut cfg = egressd::config::parse(Path::new("stub.toml"), &text).expect("stub parses");
    for (region, (name, r)) in cfg.regions.iter_mut().zip(&imported.regions) {
        assert_eq!(&region.name, name);
        region.prefixes = r.prefixes.clone();
    }
    compile(&cfg)
}

const FILES: [(&str, Format, &str); 6] = [
    ("aws-ip-ranges.json", Format::Aws, "aws"),
    ("google-cloud-ip-ranges.json", Format::Gcp, "gcp"),
    ("microsoft-azure-ip-ranges.json", Format::Azure, "azure"),
    ("oracle-cloud-ip-ranges.json", Format::Oracle, "oracle"),
    ("digitalocean.csv", Format::Geofeed, "geofeed"),
    ("linode.txt", Format::Geofeed, "geofeed"),
];

/// Per file: the `eu` prefixes equal the distinct prefixes whose key is in the mapping's eu
/// list (computed here from the source), per family; the output parses as a policy and
/// compiles; sampled addresses land where the source says.
fn import_files_match_source_counts(data: &Data) {
    let mapping = eu_mapping();
    for (name, format, section) in FILES {
        let (path, text) = data.read(name);
        assert_eq!(import::detect_format(&text), Some(format), "{name}");
        let keys = eu_keys(section);
        let entries = independent_entries(data, name);
        let expected: BTreeSet<IpNetwork> = entries
            .iter()
            .filter(|(_, k)| keys.contains(k))
            .map(|(n, _)| *n)
            .collect();
        let (ev4, ev6) = (
            expected.iter().filter(|n| n.is_ipv4()).count(),
            expected.iter().filter(|n| n.is_ipv6()).count(),
        );
        assert!(!expected.is_empty(), "{name}: no EU prefix in the source?");

        let imported = run_import(data, &mapping, &[name]);
        let eu = &imported.regions["eu"];
        assert_eq!(imported.regions.len(), 1, "{name}");
        let got: BTreeSet<IpNetwork> = eu.prefixes.iter().copied().collect();
        assert_eq!(got.len(), eu.prefixes.len(), "{name}: duplicates in output");
        let (gv4, gv6) = (
            got.iter().filter(|n| n.is_ipv4()).count(),
            got.iter().filter(|n| n.is_ipv6()).count(),
        );
        eprintln!("{name}: eu {gv4} IPv4 + {gv6} IPv6 (source: {ev4} + {ev6})");
        assert_eq!((gv4, gv6), (ev4, ev6), "{name}: prefix counts per family");
        assert_eq!(got, expected, "{name}: prefix sets");
        let s = &imported.sources[0];
        assert_eq!(s.entries, entries.len(), "{name}");
        assert_eq!(
            s.mapped,
            entries.iter().filter(|(_, k)| keys.contains(k)).count(),
            "{name}"
        );
        assert_eq!(
            s.no_location,
            entries.iter().filter(|(_, k)| k.is_empty()).count(),
            "{name}"
        );
        assert_eq!(s.mapped + s.unmapped + s.no_location, s.entries, "{name}");

        // The rendered file is a valid policy with `--allowlist eu`; without, it is the same
        // minus that line (valid as a drop-in: see the render and CLI tests). Parsed once here
        // (parsing is slow on large files in a debug build).
        let complete = import::render(
            &imported,
            &RenderOptions {
                allowlist: Some(vec!["eu".into()]),
            },
        )
        .expect("render");
        let cfg = egressd::config::parse(&path, &complete).expect("complete output parses");
        assert_eq!(cfg.regions.len(), 1);
        assert_eq!(cfg.regions[0].name, "eu");
        assert_eq!(cfg.regions[0].prefixes, eu.prefixes, "{name}: file order");
        let fragment = import::render(&imported, &RenderOptions::default()).expect("render");
        assert_eq!(
            complete.replacen("allowlist = [\"eu\"]\n\n", "", 1),
            fragment,
            "the fragment is the complete file without its allowlist line"
        );
        let policy = compile(&cfg);
        assert_eq!(policy.regions, ["unknown", "eu"]);
        assert_eq!((policy.v4.len(), policy.v6.len()), (ev4, ev6));

        // Lookups: the first and last address of every `step`th entry (every 7th of the full
        // files, each of the fixtures). Those of an EU entry are
        // in eu. Those of another located entry are in eu exactly when an EU prefix contains
        // them (an EU prefix may be more specific than a non-EU one; the reverse, a non-EU
        // prefix inside an EU one, would have been refused by the import).
        let in_eu = |a: IpAddr| {
            let max = if a.is_ipv4() { 32 } else { 128 };
            (0..=max).any(|len| {
                IpNetwork::new(a, len)
                    .and_then(|n| IpNetwork::new(n.network(), len))
                    .is_ok_and(|n| expected.contains(&n))
            })
        };
        let mut checked = 0;
        for (n, k) in entries.iter().step_by(data.step) {
            for a in [n.network(), n.broadcast()] {
                let want = if keys.contains(k) || (!k.is_empty() && in_eu(a)) {
                    "eu"
                } else if k.is_empty() {
                    continue; // no location: either
                } else {
                    "unknown"
                };
                assert_eq!(
                    policy.region_name(policy.region_of(a)),
                    want,
                    "{name}: {n} ({k}) {a}"
                );
            }
            checked += 1;
        }
        assert!(checked >= entries.len().min(21), "{name}");
    }
}

/// Known prefixes from the files, looked up in the combined import of all six files.
fn import_all_files_known_lookups(data: &Data) {
    let names: Vec<&str> = FILES.iter().map(|(n, _, _)| *n).collect();
    let imported = run_import(data, &eu_mapping(), &names);
    let p = policy_of(&imported, &["eu"]);
    let region = |a: &str| -> String {
        let ip: IpAddr = a.parse().expect("ip");
        p.region_name(p.region_of(ip)).to_string()
    };
    for (addr, want, what) in [
        ("3.4.12.4", "eu", "AWS eu-west-1 3.4.12.4/32"),
        ("35.180.0.1", "eu", "AWS eu-west-3 35.180.0.0/16"),
        ("3.5.140.1", "unknown", "AWS ap-northeast-2 3.5.140.0/22"),
        ("15.230.221.7", "unknown", "AWS us-east-1 15.230.221.0/24"),
        (
            "52.93.153.170",
            "unknown",
            "AWS eu-west-2 (London) is not EU",
        ),
        ("34.35.0.1", "unknown", "Google africa-south1 34.35.0.0/16"),
        ("129.80.0.1", "unknown", "Oracle us-ashburn-1 129.80.0.0/16"),
        ("5.101.96.1", "eu", "DigitalOcean NL 5.101.96.0/21"),
        ("24.144.64.1", "unknown", "DigitalOcean US 24.144.64.0/22"),
        ("2a01:7e01::1", "eu", "Linode DE 2a01:7e01::/32"),
        ("2a01:7e00::1", "unknown", "Linode GB 2a01:7e00::/32"),
        ("2600:3c07::1", "eu", "Linode FR 2600:3c07::/32"),
        (
            "99.77.136.1",
            "eu",
            "AWS eu-central-1 99.77.136.0/24 inside GLOBAL 99.77.128.0/18",
        ),
        ("99.77.128.1", "unknown", "AWS GLOBAL 99.77.128.0/18"),
        (
            "13.69.109.133",
            "eu",
            "Azure global tag 13.69.109.132/30 (skipped) inside westeurope 13.69.0.0/17",
        ),
        ("4.158.0.1", "unknown", "Azure uksouth 4.158.0.0/15"),
        (
            "34.13.0.1",
            "unknown",
            "Google europe-west2 (London) is not EU",
        ),
        ("34.40.0.1", "eu", "Google europe-west3 34.40.0.0/17"),
        ("89.168.64.1", "eu", "Oracle eu-frankfurt-1 89.168.64.0/18"),
        ("79.72.64.1", "unknown", "Oracle uk-london-1 79.72.64.0/19"),
        ("46.101.68.1", "eu", "DigitalOcean DE 46.101.68.0/22"),
        ("46.101.0.1", "unknown", "DigitalOcean GB 46.101.0.0/18"),
        ("85.90.244.1", "eu", "Linode DE 85.90.244.0/24"),
        (
            "192.0.2.1",
            "unknown",
            "in no file (a geofeed line without a country)",
        ),
    ] {
        assert_eq!(region(addr), want, "{what}");
    }
    // One per provider from the files themselves: the first EU entry of each.
    for (name, _, section) in FILES {
        let keys = eu_keys(section);
        let (n, k) = independent_entries(data, name)
            .into_iter()
            .find(|(_, k)| keys.contains(k))
            .expect("an EU entry");
        assert_eq!(
            p.region_name(p.region_of(n.network())),
            "eu",
            "{name}: {n} ({k})"
        );
    }
    // Nothing was lost by combining: the union of the per-file results.
    let mut union: BTreeSet<IpNetwork> = BTreeSet::new();
    for name in &names {
        union.extend(
            run_import(data, &eu_mapping(), &[name]).regions["eu"]
                .prefixes
                .clone(),
        );
    }
    let combined: BTreeSet<IpNetwork> = imported.regions["eu"].prefixes.iter().copied().collect();
    assert_eq!(combined, union);
    eprintln!("all files: eu {} prefixes", combined.len());
}

/// With `unmapped_region`, every located prefix of the files is kept, and a lookup of any
/// published prefix gives the region of the longest source prefix that contains it
/// (computed here independently).
fn import_unmapped_region_keeps_source_lpm(data: &Data) {
    let text = format!(
        "unmapped_region = \"elsewhere\"\n{}",
        std::fs::read_to_string(repo().join("configs/import/eu-mapping.toml")).expect("read")
    );
    let mapping = Mapping::parse(Path::new("all.toml"), &text).expect("mapping");
    for (name, _, section) in FILES {
        let keys = eu_keys(section);
        let entries = independent_entries(data, name);
        let imported = run_import(data, &mapping, &[name]);
        let p = policy_of(&imported, &["eu"]);
        // Source LPM: (network, len) -> policy region.
        let mut table: HashMap<IpNetwork, &str> = HashMap::new();
        for (n, k) in &entries {
            if !k.is_empty() {
                let r = if keys.contains(k) { "eu" } else { "elsewhere" };
                assert!(
                    table.insert(*n, r).is_none_or(|old| old == r),
                    "{name}: {n} in two policy regions"
                );
            }
        }
        let total: usize = imported.regions.values().map(|r| r.prefixes.len()).sum();
        assert_eq!(total, table.len(), "{name}: every located prefix once");
        let lpm = |a: IpAddr| -> &str {
            let max = if a.is_ipv4() { 32 } else { 128 };
            (0..=max)
                .rev()
                .find_map(|len| {
                    let n = IpNetwork::new(a, len).ok()?;
                    let n = IpNetwork::new(n.network(), len).ok()?;
                    table.get(&n).copied()
                })
                .unwrap_or("unknown")
        };
        for (n, _) in entries.iter().step_by(3) {
            for a in [n.network(), n.broadcast()] {
                assert_eq!(p.region_name(p.region_of(a)), lpm(a), "{name}: {n} {a}");
            }
        }
    }
}

fn import_is_deterministic(data: &Data) {
    let mapping = eu_mapping();
    let a = run_import(
        data,
        &mapping,
        &["oracle-cloud-ip-ranges.json", "linode.txt"],
    );
    let b = run_import(
        data,
        &mapping,
        &["oracle-cloud-ip-ranges.json", "linode.txt"],
    );
    let c = run_import(
        data,
        &mapping,
        &["linode.txt", "oracle-cloud-ip-ranges.json"],
    );
    let ra = import::render(&a, &RenderOptions::default()).expect("render");
    assert_eq!(
        ra,
        import::render(&b, &RenderOptions::default()).expect("render")
    );
    assert_eq!(a.regions, c.regions, "source order does not matter");
    // Sorted: IPv4 then IPv6, by address then length.
    let eu = &a.regions["eu"].prefixes;
    let keys: Vec<(bool, u128, u8)> = eu
        .iter()
        .map(|n| match n {
            IpNetwork::V4(n) => (false, u128::from(u32::from(n.network())), n.prefix()),
            IpNetwork::V6(n) => (true, u128::from(n.network()), n.prefix()),
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(keys, sorted);
}

/// The largest file, timed (the bound is loose so a debug build on a busy CI host passes;
/// `egressd regions import` in release is what the README quotes).
fn import_largest_file_is_fast(data: &Data) {
    let mapping = eu_mapping();
    let texts = vec![
        data.read("microsoft-azure-ip-ranges.json"),
        data.read("aws-ip-ranges.json"),
    ];
    for t in texts {
        let start = Instant::now();
        let imported =
            import::import_texts(&mapping, std::slice::from_ref(&t), &Options::default())
                .expect("import");
        let text = import::render(&imported, &RenderOptions::default()).expect("render");
        let took = start.elapsed();
        eprintln!(
            "{}: import + render {:?} ({} bytes out)",
            t.0.display(),
            took,
            text.len()
        );
        assert!(took.as_secs() < 20, "{took:?}");
    }
}

// --- Synthetic inputs: rules and errors. ---

fn mapping(text: &str) -> Mapping {
    Mapping::parse(Path::new("m.toml"), text).expect("valid mapping")
}

fn try_import(m: &Mapping, files: &[(&str, &str)], mask: bool) -> Result<Imported, String> {
    let texts: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    import::import_texts(
        m,
        &texts,
        &Options {
            format: None,
            mask_host_bits: mask,
        },
    )
    .map_err(|e| e.to_string())
}

const AWS_MAP: &str = "[aws]\neu = [\"eu-west-1\"]\nus = [\"us-east-1\"]\n";

fn aws(entries: &[(&str, &str)]) -> String {
    let list: Vec<String> = entries
        .iter()
        .map(|(p, r)| format!("  {{\"ip_prefix\": \"{p}\", \"region\": \"{r}\"}}"))
        .collect();
    format!("{{\"prefixes\": [\n{}\n]}}\n", list.join(",\n"))
}

fn import_same_prefix_two_regions_is_an_error() {
    let m = mapping(AWS_MAP);
    let e = try_import(
        &m,
        &[(
            "a.json",
            &aws(&[("10.0.0.0/8", "eu-west-1"), ("10.0.0.0/8", "us-east-1")]),
        )],
        false,
    )
    .expect_err("conflict");
    assert_eq!(
        e,
        "a.json:3:17: prefixes[1].ip_prefix: prefix 10.0.0.0/8 is in aws region `us-east-1`, \
         mapped to `us` here, but in aws region `eu-west-1`, mapped to `eu` at a.json:2:17 \
         prefixes[0].ip_prefix; a prefix may belong to one policy region only: fix the mapping \
         (or the file)"
    );
    // Across files, and between a mapped and a skipped key.
    let e = try_import(
        &m,
        &[
            ("a.json", &aws(&[("10.0.0.0/8", "eu-west-1")])),
            ("b.json", &aws(&[("10.0.0.0/8", "ap-south-1")])),
        ],
        false,
    )
    .expect_err("conflict");
    assert!(
        e.starts_with("b.json:2:17: prefixes[0].ip_prefix: prefix 10.0.0.0/8 is in aws region `ap-south-1`, which the mapping does not map (skipped) here, but in aws region `eu-west-1`, mapped to `eu` at a.json:2:17"),
        "{e}"
    );
    // The same prefix twice in one region, or in two keys of one region: deduplicated.
    let m2 = mapping("[aws]\neu = [\"eu-west-1\", \"eu-west-3\"]\n");
    let ok = try_import(
        &m2,
        &[(
            "a.json",
            &aws(&[
                ("10.0.0.0/8", "eu-west-1"),
                ("10.0.0.0/8", "eu-west-1"),
                ("10.0.0.0/8", "eu-west-3"),
            ]),
        )],
        false,
    )
    .expect("duplicates are fine");
    assert_eq!(ok.regions["eu"].prefixes.len(), 1);
    assert_eq!(ok.sources[0].mapped, 3);
}

fn import_skipped_prefix_inside_mapped_is_an_error() {
    let m = mapping(AWS_MAP);
    let e = try_import(
        &m,
        &[(
            "a.json",
            &aws(&[("10.0.0.0/8", "eu-west-1"), ("10.1.0.0/16", "ap-south-1")]),
        )],
        false,
    )
    .expect_err("nested");
    assert!(
        e.starts_with(
            "a.json:3:17: prefixes[1].ip_prefix: prefix 10.1.0.0/16 (aws region `ap-south-1`, \
             not in the mapping) lies inside 10.0.0.0/8 (in aws region `eu-west-1`, mapped to \
             `eu`, at a.json:2:17 prefixes[0].ip_prefix): skipping it would judge its addresses \
             as `eu`"
        ),
        "{e}"
    );
    // Mapped inside skipped is fine (the outer range is unknown, i.e. not allowlisted), and
    // with unmapped_region everything is kept.
    let ok = try_import(
        &m,
        &[(
            "a.json",
            &aws(&[("10.0.0.0/8", "ap-south-1"), ("10.1.0.0/16", "eu-west-1")]),
        )],
        false,
    )
    .expect("eu inside skipped");
    assert_eq!(ok.regions.len(), 1);
    let m3 = mapping(&format!("unmapped_region = \"rest\"\n{AWS_MAP}"));
    let ok = try_import(
        &m3,
        &[(
            "a.json",
            &aws(&[("10.0.0.0/8", "eu-west-1"), ("10.1.0.0/16", "ap-south-1")]),
        )],
        false,
    )
    .expect("kept in rest");
    assert_eq!(
        ok.regions["rest"].prefixes,
        ["10.1.0.0/16".parse::<IpNetwork>().expect("net")]
    );
    assert!(!ok.warnings.iter().any(|w| w.contains("`rest`")));
}

fn import_no_location_entries_are_skipped_even_inside_mapped() {
    let m = mapping("[azure]\neu = [\"westeurope\"]\n");
    let text = r#"{"values": [
 {"name": "AzureCloud.westeurope", "properties": {"region": "westeurope", "addressPrefixes": ["20.0.0.0/16"]}},
 {"name": "Storage", "properties": {"region": "", "addressPrefixes": ["20.0.1.0/24", "20.0.0.0/16", "30.0.0.0/8"]}}
]}"#;
    let ok = try_import(&m, &[("z.json", text)], false).expect("global tags are skipped");
    assert_eq!(
        ok.regions["eu"].prefixes,
        ["20.0.0.0/16".parse::<IpNetwork>().expect("net")]
    );
    assert_eq!(ok.sources[0].no_location, 3);
}

fn import_host_bits_and_bad_prefixes_are_located() {
    let m = mapping(AWS_MAP);
    let e = try_import(
        &m,
        &[("a.json", &aws(&[("10.0.0.1/8", "eu-west-1")]))],
        false,
    )
    .expect_err("host bits");
    assert_eq!(
        e,
        "a.json:2:17: prefixes[0].ip_prefix: host bits set in `10.0.0.1/8`: the network would \
         be 10.0.0.0/8 (pass --mask-host-bits to accept such prefixes as their network)"
    );
    let ok = try_import(
        &m,
        &[("a.json", &aws(&[("10.0.0.1/8", "eu-west-1")]))],
        true,
    )
    .expect("masked");
    assert_eq!(ok.sources[0].masked, 1);
    assert_eq!(
        ok.warnings[0],
        "a.json: masked the host bits of 1 prefixes (--mask-host-bits)"
    );
    assert_eq!(
        ok.warnings[1],
        "policy region `us` received no prefix from these files; it is left out (the policy \
         rejects empty regions)"
    );

    let gm = mapping("[geofeed]\neu = [\"DE\"]\n");
    let e = try_import(
        &gm,
        &[(
            "g.csv",
            "# feed\n1.0.0.0/8,DE,,,\n\n1.2.3.0/33,DE,DE-BE,Berlin,\n",
        )],
        false,
    )
    .expect_err("bad length");
    assert_eq!(
        e,
        "g.csv:4:1: ip_prefix: malformed prefix `1.2.3.0/33`: prefix length `33` is not a \
         number 0-32"
    );
    let az = mapping("[azure]\neu = [\"westeurope\"]\n");
    let e = try_import(
        &az,
        &[(
            "z.json",
            "{\"values\": [{\"name\": \"T.westeurope\", \"properties\": {\"region\": \
             \"westeurope\",\n \"addressPrefixes\": [\"::ffff:1.2.3.0/120\"]}}]}",
        )],
        false,
    )
    .expect_err("mapped prefix");
    assert!(
        e.starts_with("z.json:2:22: values[0].properties.addressPrefixes[0]: IPv4-mapped"),
        "{e}"
    );
    assert!(e.ends_with("(in `T.westeurope`)"), "{e}");
    // JSON syntax and schema errors carry serde_json's position and the field path.
    let e = try_import(
        &m,
        &[(
            "a.json",
            "{\"prefixes\": [\n  {\"ip_prefix\": \"1.0.0.0/8\",}\n]}",
        )],
        false,
    )
    .expect_err("syntax");
    assert!(e.starts_with("a.json:2:"), "{e}");
    let e = try_import(
        &m,
        &[(
            "a.json",
            "{\"prefixes\": [\n  {\"ip_prefix\": \"1.0.0.0/8\", \"region\": 5}\n]}",
        )],
        false,
    )
    .expect_err("type");
    assert!(
        e.starts_with("a.json:2:")
            && e.contains(
                ": prefixes[0].region: not a valid aws range file: invalid type: integer `5`"
            ),
        "{e}"
    );
}

fn import_mixed_families_and_subdivisions() {
    // An IPv6 prefix in AWS's IPv4 list is accepted; a geofeed subdivision beats its country.
    let m = mapping(
        "[aws]\neu = [\"eu-west-1\"]\n[geofeed]\neu = [\"DE\"]\nus-west = [\"US-CA\"]\nus = [\"US\"]\n",
    );
    let ok = try_import(
        &m,
        &[
            ("a.json", &aws(&[("2a05:d000::/25", "eu-west-1")])),
            (
                "g.csv",
                "1.0.0.0/24,us,us-ca,,\n2.0.0.0/24,US,US-NY\n3.0.0.0/24,de\n4.0.0.0/24,,\n",
            ),
        ],
        false,
    )
    .expect("valid");
    let names: BTreeMap<&str, Vec<String>> = ok
        .regions
        .iter()
        .map(|(k, r)| {
            (
                k.as_str(),
                r.prefixes.iter().map(|p| p.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(
        names,
        BTreeMap::from([
            ("eu", vec!["3.0.0.0/24".into(), "2a05:d000::/25".into()]),
            ("us", vec!["2.0.0.0/24".into()]),
            ("us-west", vec!["1.0.0.0/24".into()]),
        ])
    );
    assert_eq!(ok.sources[1].no_location, 1);
}

fn import_missing_section_and_unused_keys() {
    let m = mapping("[gcp]\neu = [\"europe-west1\", \"europe-west99\"]\n");
    let e = try_import(
        &m,
        &[("a.json", &aws(&[("10.0.0.0/8", "eu-west-1")]))],
        false,
    )
    .expect_err("no [aws]");
    assert!(
        e.starts_with("a.json: the mapping m.toml has no [aws] section"),
        "{e}"
    );
    let gcp = r#"{"prefixes": [{"ipv4Prefix": "34.0.0.0/16", "scope": "europe-west1"}]}"#;
    let ok = try_import(&m, &[("g.json", gcp)], false).expect("valid");
    assert_eq!(
        ok.warnings,
        [
            "m.toml:2: [gcp] scope `europe-west99` matched no entry in the gcp files (a typo, or a \
          scope the provider no longer publishes?)"
        ]
    );
    let e = try_import(&m, &[("x.json", "{\"nothing\": 1}")], false).expect_err("unknown");
    assert!(e.contains("cannot tell the format"), "{e}");
}

fn import_render_shape() {
    let m = mapping(AWS_MAP);
    let ok = try_import(
        &m,
        &[(
            "a.json",
            &aws(&[
                ("2001:db8::/32", "us-east-1"),
                ("10.1.0.0/16", "eu-west-1"),
                ("10.0.0.0/8", "eu-west-1"),
                ("9.0.0.0/8", "us-east-1"),
            ]),
        )],
        false,
    )
    .expect("valid");
    let text = import::render(
        &ok,
        &RenderOptions {
            allowlist: Some(vec!["eu".into()]),
        },
    )
    .expect("render");
    let body = text
        .split_once("\nallowlist")
        .map(|(_, b)| format!("allowlist{b}"))
        .expect("allowlist line");
    assert_eq!(
        body,
        "allowlist = [\"eu\"]\n\
         \n\
         [regions.eu]\n\
         description = \"imported from aws: 2 IPv4 and 0 IPv6 prefixes\"\n\
         # aws region eu-west-1: 2 entries\n\
         prefixes = [\n    \"10.0.0.0/8\",\n    \"10.1.0.0/16\",\n]\n\
         \n\
         [regions.us]\n\
         description = \"imported from aws: 1 IPv4 and 1 IPv6 prefixes\"\n\
         # aws region us-east-1: 2 entries\n\
         prefixes = [\n    \"9.0.0.0/8\",\n    \"2001:db8::/32\",\n]\n"
    );
    assert!(text.starts_with("# Generated by `egressd regions import`"));
    import::validate_output(Path::new("out.toml"), &text, true).expect("valid policy");
    let fragment = import::render(&ok, &RenderOptions::default()).expect("render");
    assert!(!fragment.contains("allowlist"));
    let cfg = import::validate_output(Path::new("policy.d/x.toml"), &fragment, false)
        .expect("valid drop-in");
    assert_eq!(cfg.regions.len(), 2);
    let e = import::render(
        &ok,
        &RenderOptions {
            allowlist: Some(vec!["asia".into()]),
        },
    )
    .expect_err("unknown region");
    assert_eq!(
        e,
        "allowlist entry `asia` is not an imported region (imported: eu, us)"
    );
}

// --- The command line. ---

fn egressd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run egressd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli_regions_import_writes_a_checkable_policy(data: &Data) {
    let dir = std::env::temp_dir().join(format!(
        "egressd-import-test-{}-{}",
        data.label,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policy.d")).expect("tmp dir");
    let s = |p: &Path| p.to_str().expect("utf-8").to_string();
    let oracle = s(&data.dir.join("oracle-cloud-ip-ranges.json"));
    let gcp = s(&data.dir.join("google-cloud-ip-ranges.json"));
    let (eu, eu4, eu6) = data.oracle_gcp_eu;

    // A drop-in beside a main policy that allowlists eu.
    let main = dir.join("policy.toml");
    std::fs::write(&main, "allowlist = [\"eu\"]\n").expect("write main");
    let drop_in = dir.join("policy.d/eu-regions.toml");
    let (ok, stdout, stderr) = egressd(&[
        "regions",
        "import",
        "--mapping",
        "configs/import/eu-mapping.toml",
        "--output",
        &s(&drop_in),
        &oracle,
        &gcp,
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(&format!("egressd: region eu: {eu} prefixes")),
        "{stderr}"
    );
    let (ok, stdout, stderr) = egressd(&["check", "--config", &s(&main)]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("prefixes:  {eu4} IPv4, {eu6} IPv6")),
        "{stdout}"
    );
    // `explain` on it: an Oracle eu-frankfurt-1 address, and one in no region.
    let (ok, stdout, stderr) = egressd(&[
        "explain",
        "--config",
        &s(&main),
        "--json",
        "89.168.64.1:443/tcp",
        "[2001:db8::1]:53/udp",
    ]);
    assert!(ok, "{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["region"]["name"], "eu", "{stdout}");
    assert_eq!(lines[0]["region"]["prefix"], "89.168.64.0/18", "{stdout}");
    assert_eq!(lines[0]["verdict"], "allow");
    assert_eq!(lines[1]["region"]["name"], "unknown");
    assert_eq!(lines[1]["verdict"], "deny");
    assert_eq!(lines[1]["destination"]["protocol"], "udp");

    // A complete policy on stdout with --allowlist: the same bytes plus the allowlist line.
    let (ok, stdout, stderr) = egressd(&[
        "regions",
        "import",
        "--mapping",
        "configs/import/eu-mapping.toml",
        "--allowlist",
        "eu",
        &oracle,
        &gcp,
    ]);
    assert!(ok, "{stderr}");
    let fragment = std::fs::read_to_string(&drop_in).expect("read drop-in");
    assert_eq!(
        stdout.replacen("allowlist = [\"eu\"]\n\n", "", 1),
        fragment.replace(&s(&drop_in), "<stdout>")
    );
    // (Not beside policy.d/, whose drop-in would define `eu` a second time.)
    std::fs::create_dir_all(dir.join("standalone")).expect("mkdir");
    let complete = dir.join("standalone/complete.toml");
    std::fs::write(&complete, &stdout).expect("write");
    let (ok, _, stderr) = egressd(&["check", "--config", &s(&complete)]);
    assert!(ok, "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);

    // Errors: located, exit status 1, nothing written.
    let (ok, stdout, stderr) = egressd(&[
        "regions",
        "import",
        "--mapping",
        "configs/example.toml",
        &oracle,
    ]);
    assert!(!ok);
    assert!(stdout.is_empty());
    assert!(
        stderr.starts_with("egressd: error: configs/example.toml:")
            && stderr.contains(": unknown field `"),
        "{stderr}"
    );
    let (ok, _, stderr) = egressd(&[
        "regions",
        "import",
        "--mapping",
        "configs/import/eu-mapping.toml",
        "--allowlist",
        "asia",
        &oracle,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("--allowlist: allowlist entry `asia`"),
        "{stderr}"
    );
}

fn cli_explain_text_and_errors() {
    let (ok, stdout, stderr) = egressd(&[
        "explain",
        "--config",
        "configs/example.toml",
        "198.18.2.2:8080/tcp",
        "::ffff:198.18.1.2",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        "destination: 198.18.2.2:8080/tcp\n\
         judged as:   198.18.2.2\n\
         region:      us (id 2), prefix 198.18.2.0/24\n\
         mode:        enforce (policy)\n\
         verdict:     deny\n\
         why:         region `us` is not on the allowlist (allowlist: eu); in enforce mode (the \
         policy's) the connection fails with EPERM and is reported\n\
         note:        port and protocol do not change the verdict: no rule of this policy names \
         a protocol or ports\n\
         \n\
         destination: ::ffff:198.18.1.2\n\
         judged as:   198.18.1.2\n\
         region:      eu (id 1), prefix 198.18.1.0/24\n\
         mode:        enforce (policy)\n\
         verdict:     allow\n\
         why:         ::ffff:198.18.1.2 is IPv4-mapped and is judged as the IPv4 address \
         198.18.1.2; region `eu` is on the allowlist\n"
    );
    let (ok, _, stderr) = egressd(&[
        "explain",
        "--config",
        "configs/example.toml",
        "198.18.1.0/24",
    ]);
    assert!(!ok);
    assert!(stderr.contains("looks like a prefix"), "{stderr}");
}

/// An empty or truncated source (what a failed download leaves) is an error naming the
/// file, for every format, not an import without those regions.
fn import_empty_source_is_an_error() {
    let mapping = eu_mapping();
    for (name, text) in [
        ("empty.txt", ""),
        ("aws.json", "{\"prefixes\": [], \"ipv6_prefixes\": []}"),
    ] {
        let texts = vec![(PathBuf::from(name), text.to_owned())];
        let options = Options {
            format: name.ends_with(".json").then_some(Format::Aws),
            ..Options::default()
        };
        let e = import::import_texts(&mapping, &texts, &options).expect_err("empty source");
        let msg = e.to_string();
        assert!(
            msg.starts_with(name) && msg.contains("no prefixes"),
            "{msg}"
        );
    }
}

// --- Hostile provider files (issue #23): provider text never leaves its comment. ---

fn hostile(name: &str) -> (String, String) {
    let path = format!("agent/tests/data/hostile/{name}");
    let text = std::fs::read_to_string(repo().join(&path)).expect("hostile fixture");
    (path, text)
}

/// Every provider string that used to be copied into the output (version stamps, keys kept
/// by `unmapped_region`, geofeed fields) is checked against what the format allows: the
/// files of `tests/data/hostile` are refused, naming file, line and field.
fn import_hostile_provider_text_is_refused() {
    let m = mapping(
        "unmapped_region = \"elsewhere\"\n[aws]\neu = [\"eu-west-1\"]\n\
         [gcp]\neu = [\"europe-west1\"]\n[azure]\neu = [\"westeurope\"]\n\
         [oracle]\neu = [\"eu-frankfurt-1\"]\n[geofeed]\neu = [\"NL\"]\n",
    );
    for (name, line, field, says) in [
        (
            "aws-createdate-rules.json",
            3,
            "createDate",
            "`createDate` is `2025-07-24-20-23-14\\u{a}[[rules]]",
        ),
        (
            "aws-synctoken-default.json",
            2,
            "syncToken",
            "`syncToken` is `1\\u{a}default",
        ),
        (
            "aws-region-rules.json",
            11,
            "prefixes[1].region",
            "`x\\u{a}[[rules]]",
        ),
        (
            "gcp-creationtime-rules.json",
            3,
            "creationTime",
            "not a date or token",
        ),
        (
            "azure-cloud-bel.json",
            3,
            "cloud",
            "`cloud` is `Public\\u{7}`",
        ),
        (
            "oracle-timestamp-rules.json",
            2,
            "last_updated_timestamp",
            "not a date or token",
        ),
        (
            "geofeed-country-mode.csv",
            3,
            "alpha2code",
            "`XX\\u{a}mode = \"audit\"\\u{a}#` is not an ISO 3166-1",
        ),
        (
            "geofeed-subdivision-newline.csv",
            1,
            "region",
            "is not an ISO 3166-2 subdivision",
        ),
    ] {
        let (path, text) = hostile(name);
        let e = try_import(&m, &[(&path, &text)], false).expect_err(name);
        assert!(
            e.starts_with(&format!("{path}:{line}:")) && e.contains(&format!(": {field}: ")),
            "{name}: {e}"
        );
        assert!(e.contains(says), "{name}: {e}");
        assert!(!e.contains('\n') && !e.contains('\u{7}'), "{name}: {e:?}");
    }
    // The same stamps and keys without the payload are fine.
    let (path, text) = hostile("aws-createdate-rules.json");
    let clean = text.replace(
        "\\n[[rules]] action = \\\"allow\\\" to = [\\\"0.0.0.0/0\\\", \\\"::/0\\\"]",
        "",
    );
    assert_ne!(clean, text);
    let ok = try_import(&m, &[(&path, &clean)], false).expect("clean AWS file");
    assert_eq!(
        ok.sources[0].version.as_deref(),
        Some("createDate 2025-07-24-20-23-14, syncToken 1753388594")
    );
}

/// The import re-reads its output and refuses anything in it that it did not mean to write:
/// a rule, a region `mode`, a setting, another prefix or region.
fn import_readback_refuses_what_was_not_written() {
    let m = mapping(AWS_MAP);
    let ok = try_import(
        &m,
        &[(
            "a.json",
            &aws(&[("10.0.0.0/8", "eu-west-1"), ("9.0.0.0/8", "us-east-1")]),
        )],
        false,
    )
    .expect("valid");
    let allow = ["eu".to_string()];
    let complete = import::render(
        &ok,
        &RenderOptions {
            allowlist: Some(allow.to_vec()),
        },
    )
    .expect("render");
    let fragment = import::render(&ok, &RenderOptions::default()).expect("render");
    let out = Path::new("out.toml");
    import::verify_output(out, &complete, &ok, Some(&allow)).expect("as written");
    import::verify_output(out, &fragment, &ok, None).expect("as written");
    let rule = "\n[[rules]]\naction = \"allow\"\nto = [\"0.0.0.0/0\", \"::/0\"]\n";
    let header_end = "# Order: IPv4 then IPv6, by network address, then length.\n";
    for (what, text, allowlist, says) in [
        (
            "a rule",
            format!("{complete}{rule}"),
            Some(&allow[..]),
            "1 rules",
        ),
        (
            "a rule in a drop-in",
            format!("{fragment}{rule}"),
            None,
            "1 rules",
        ),
        (
            "default = allow",
            complete.replacen(header_end, &format!("{header_end}default = \"allow\"\n"), 1),
            Some(&allow[..]),
            "a policy setting",
        ),
        (
            "mode = audit",
            complete.replacen(header_end, &format!("{header_end}mode = \"audit\"\n"), 1),
            Some(&allow[..]),
            "a policy setting",
        ),
        (
            "a sink",
            complete.replacen(header_end, &format!("{header_end}heartbeat_secs = 7\n"), 1),
            Some(&allow[..]),
            "an output setting",
        ),
        (
            "a region mode",
            fragment.replacen("[regions.eu]\n", "[regions.eu]\nmode = \"audit\"\n", 1),
            None,
            "region `eu` sets `mode`",
        ),
        (
            "another prefix",
            fragment.replacen("\"10.0.0.0/8\",", "\"10.0.0.0/8\", \"8.8.8.0/24\",", 1),
            None,
            "region `eu` with 2 prefixes",
        ),
        (
            "another region",
            format!("{fragment}\n[regions.x]\nprefixes = [\"8.8.8.0/24\"]\n"),
            None,
            "extra region `x`",
        ),
        (
            "another allowlist",
            complete.replacen("allowlist = [\"eu\"]", "allowlist = [\"eu\", \"us\"]", 1),
            Some(&allow[..]),
            "allowlist",
        ),
    ] {
        assert_ne!(text, complete, "{what}");
        let e = import::verify_output(out, &text, &ok, allowlist)
            .expect_err(what)
            .to_string();
        assert!(
            e.contains("does not read back as what the import meant to write") && e.contains(says),
            "{what}: {e}"
        );
    }
}

/// An import result carrying hostile text (as if it had got past the readers' checks, and a
/// source file name with a newline) renders it inside comments: the output reads back as
/// written, and `egressd check` and `explain` on it still deny.
fn import_hostile_text_past_the_checks_stays_in_comments() {
    let m = mapping(AWS_MAP);
    let mut ok = try_import(
        &m,
        &[("a.json", &aws(&[("10.0.0.0/8", "eu-west-1")]))],
        false,
    )
    .expect("valid");
    let inject =
        "\n[[rules]] action = \"allow\" to = [\"0.0.0.0/0\", \"::/0\"]\ndefault = \"allow\"\n#";
    ok.sources[0].version = Some(format!("createDate 1{inject}\u{7}"));
    ok.sources[0].path = PathBuf::from(format!("a{inject}.json"));
    ok.mapping = PathBuf::from(format!("m{inject}.toml"));
    let eu = ok.regions.get_mut("eu").expect("eu");
    let n = eu
        .from
        .remove(&(Format::Aws, "eu-west-1".to_string()))
        .expect("key");
    eu.from.insert((Format::Aws, format!("eu{inject}")), n);
    let allow = vec!["eu".to_string()];
    let text = import::render(
        &ok,
        &RenderOptions {
            allowlist: Some(allow.clone()),
        },
    )
    .expect("render");
    assert!(
        text.contains("\\u{a}[[rules]]") && text.contains("\\u{7}"),
        "{text}"
    );
    assert!(
        text.lines()
            .all(|l| !l.starts_with("[[rules]]") && !l.starts_with("default"))
    );
    import::verify_output(Path::new("out.toml"), &text, &ok, Some(&allow)).expect("as written");
    let dir = std::env::temp_dir().join(format!("egressd-import-inert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, &text).expect("write");
    let p = policy.to_str().expect("utf-8");
    assert_still_denies(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `egressd check` accepts `policy` and `explain` denies 8.8.8.8:443/tcp and
/// [2001:4860::8888]:443/tcp under it.
fn assert_still_denies(policy: &str) {
    let (ok, stdout, stderr) = egressd(&["check", "--config", policy]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("rules:") || !stdout.is_empty(), "{stdout}");
    let (ok, stdout, stderr) = egressd(&[
        "explain",
        "--config",
        policy,
        "--json",
        "8.8.8.8:443/tcp",
        "[2001:4860::8888]:443/tcp",
    ]);
    assert!(ok, "{stderr}");
    for l in stdout.lines() {
        let v: Value = serde_json::from_str(l).expect("JSON line");
        assert_eq!(v["verdict"], "deny", "{stdout}");
    }
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
}

/// End to end: `egressd regions import` on the hostile files fails, located, and writes
/// nothing; a source file name holding a newline and a rule stays in its comment, and
/// `check` and `explain 8.8.8.8:443/tcp` on the output still deny.
fn cli_hostile_provider_files_change_nothing() {
    let dir = std::env::temp_dir().join(format!("egressd-import-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let s = |p: &Path| p.to_str().expect("utf-8").to_string();
    let map = dir.join("map.toml");
    std::fs::write(
        &map,
        "unmapped_region = \"elsewhere\"\n[aws]\neu = [\"eu-west-1\"]\n[geofeed]\neu = [\"NL\"]\n",
    )
    .expect("write mapping");
    let out = dir.join("out.toml");
    for (name, field) in [
        ("aws-createdate-rules.json", "createDate"),
        ("geofeed-country-mode.csv", "alpha2code"),
        ("azure-cloud-bel.json", "cloud"),
    ] {
        let src = repo().join("agent/tests/data/hostile").join(name);
        let (ok, stdout, stderr) = egressd(&[
            "regions",
            "import",
            "--mapping",
            &s(&map),
            "--allowlist",
            "eu",
            "--output",
            &s(&out),
            &s(&src),
        ]);
        assert!(!ok, "{name}: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(
            stderr.contains(&format!("{name}:")) && stderr.contains(&format!(": {field}: ")),
            "{name}: {stderr}"
        );
        assert!(!out.exists(), "{name}: output written");
    }
    // A file name is command-line text, not provider text, but lands in a comment as well.
    let (_, text) = hostile("aws-createdate-rules.json");
    let clean = text.replace(
        "\\n[[rules]] action = \\\"allow\\\" to = [\\\"0.0.0.0/0\\\", \\\"::/0\\\"]",
        "",
    );
    let odd = dir
        .join("a\n[[rules]]\naction = \"allow\"\nto = [\"8.8.8.8\"]\ndefault = \"allow\"\n#.json");
    std::fs::write(&odd, clean).expect("write source");
    let (ok, _, stderr) = egressd(&[
        "regions",
        "import",
        "--mapping",
        &s(&map),
        "--allowlist",
        "eu",
        "--output",
        &s(&out),
        &s(&odd),
    ]);
    assert!(ok, "{stderr}");
    let written = std::fs::read_to_string(&out).expect("output");
    assert!(written.contains("\\u{a}[[rules]]"), "{written}");
    assert_still_denies(&s(&out));
    let _ = std::fs::remove_dir_all(&dir);
}
