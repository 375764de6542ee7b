//! CEF lines checked against the ArcSight "Implementing ArcSight CEF" standard (revision
//! 25): `CEF:0|` and seven header fields (only `\|` and `\\` escaped; severity 0-10 or
//! Low/Medium/High/Very-High), extension keys from the standard's key dictionary or vendor
//! keys (`egressd` + letters/digits), each key once, every `csN`/`cnN`/`c6aN` with its
//! `...Label`, values of the right type (integers, ms timestamps, IPv4 in `dst`, IPv6 in
//! `c6aN`), and escapes limited to the standard's `\\`, `\=`, `\n`, `\r` in values (plus
//! `\uXXXX`, egressd's documented escape of other control characters); no raw control
//! character anywhere. The parser here is independent of `egressd::events::formats::cef::parse`.

/// The standard's extension dictionary: short (`CEF Key Name`) and full names.
pub const DICTIONARY: &[&str] = &[
    "act",
    "app",
    "c6a1",
    "c6a1Label",
    "c6a3",
    "c6a3Label",
    "c6a4",
    "c6a4Label",
    "cat",
    "cfp1",
    "cfp1Label",
    "cfp2",
    "cfp2Label",
    "cfp3",
    "cfp3Label",
    "cfp4",
    "cfp4Label",
    "cn1",
    "cn1Label",
    "cn2",
    "cn2Label",
    "cn3",
    "cn3Label",
    "cnt",
    "cs1",
    "cs1Label",
    "cs2",
    "cs2Label",
    "cs3",
    "cs3Label",
    "cs4",
    "cs4Label",
    "cs5",
    "cs5Label",
    "cs6",
    "cs6Label",
    "destinationDnsDomain",
    "destinationServiceName",
    "destinationTranslatedAddress",
    "destinationTranslatedPort",
    "deviceCustomDate1",
    "deviceCustomDate1Label",
    "deviceCustomDate2",
    "deviceCustomDate2Label",
    "deviceDirection",
    "deviceDnsDomain",
    "deviceExternalId",
    "deviceFacility",
    "deviceInboundInterface",
    "deviceNtDomain",
    "deviceOutboundInterface",
    "devicePayloadId",
    "deviceProcessName",
    "deviceTranslatedAddress",
    "dhost",
    "dmac",
    "dntdom",
    "dpid",
    "dpriv",
    "dproc",
    "dpt",
    "dst",
    "dtz",
    "duid",
    "duser",
    "dvc",
    "dvchost",
    "dvcmac",
    "dvcpid",
    "end",
    "externalId",
    "fileCreateTime",
    "fileHash",
    "fileId",
    "fileModificationTime",
    "filePath",
    "filePermission",
    "fileType",
    "flexDate1",
    "flexDate1Label",
    "flexString1",
    "flexString1Label",
    "flexString2",
    "flexString2Label",
    "fname",
    "fsize",
    "in",
    "msg",
    "oldFileCreateTime",
    "oldFileHash",
    "oldFileId",
    "oldFileModificationTime",
    "oldFileName",
    "oldFilePath",
    "oldFilePermission",
    "oldFileSize",
    "oldFileType",
    "out",
    "outcome",
    "proto",
    "reason",
    "request",
    "requestClientApplication",
    "requestContext",
    "requestCookies",
    "requestMethod",
    "rt",
    "shost",
    "smac",
    "sntdom",
    "sourceDnsDomain",
    "sourceServiceName",
    "sourceTranslatedAddress",
    "sourceTranslatedPort",
    "spid",
    "spriv",
    "sproc",
    "spt",
    "src",
    "start",
    "suid",
    "suser",
    "type",
    "agentDnsDomain",
    "agentNtDomain",
    "agentTranslatedAddress",
    "agentTranslatedZoneExternalID",
    "agentTranslatedZoneURI",
    "agentZoneExternalID",
    "agentZoneURI",
    "agt",
    "ahost",
    "aid",
    "amac",
    "art",
    "at",
    "atz",
    "av",
    "customerExternalID",
    "customerURI",
    "destinationTranslatedZoneExternalID",
    "destinationTranslatedZoneURI",
    "destinationZoneExternalID",
    "destinationZoneURI",
    "deviceTranslatedZoneExternalID",
    "deviceTranslatedZoneURI",
    "deviceZoneExternalID",
    "deviceZoneURI",
    "dlat",
    "dlong",
    "eventId",
    "rawEvent",
    "slat",
    "slong",
    "sourceTranslatedZoneExternalID",
    "sourceTranslatedZoneURI",
    "sourceZoneExternalID",
    "sourceZoneURI",
];

/// Vendor keys: this prefix and letters or digits.
pub const VENDOR_PREFIX: &str = "egressd";

/// A parsed line: 7 header fields (the first is `CEF:0`) and the extension pairs.
pub type Parsed = (Vec<String>, Vec<(String, String)>);

fn no_control(s: &str, what: &str) -> Result<(), String> {
    match s
        .chars()
        .find(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
    {
        Some(c) => Err(format!(
            "{what}: raw control character U+{:04X}",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

/// Parses a line strictly.
pub fn parse(line: &str) -> Result<Parsed, String> {
    no_control(line, "line")?;
    if !line.starts_with("CEF:0|") {
        return Err("line does not start with `CEF:0|`".into());
    }
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.char_indices();
    let mut ext_at = None;
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, e @ ('\\' | '|'))) => cur.push(e),
                other => {
                    return Err(format!(
                        "header field {}: escape `\\{other:?}`",
                        fields.len()
                    ));
                }
            },
            '|' => {
                fields.push(std::mem::take(&mut cur));
                if fields.len() == 7 {
                    ext_at = Some(i + 1);
                    break;
                }
            }
            c => cur.push(c),
        }
    }
    let ext = &line[ext_at.ok_or("fewer than 7 header fields")?..];
    let sev = &fields[6];
    let sev_ok = sev.parse::<u8>().is_ok_and(|n| n <= 10)
        || matches!(sev.as_str(), "Low" | "Medium" | "High" | "Very-High");
    if !sev_ok {
        return Err(format!(
            "Severity `{sev}`: 0-10 or Low/Medium/High/Very-High"
        ));
    }
    Ok((fields, extension(ext)?))
}

/// Whether `s` starts with `key=` (a key: ASCII letters, digits, `_`).
fn key_at(s: &str) -> Option<usize> {
    let n = s
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    (n > 0 && s.as_bytes().get(n) == Some(&b'=')).then_some(n)
}

fn extension(ext: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut rest = ext;
    while !rest.is_empty() {
        let n = key_at(rest).ok_or_else(|| format!("extension: `key=` expected at `{rest}`"))?;
        let key = rest[..n].to_owned();
        rest = &rest[n + 1..];
        let mut val = String::new();
        let mut chars = rest.char_indices().peekable();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, '\\')) => val.push('\\'),
                    Some((_, '=')) => val.push('='),
                    Some((_, 'n')) => val.push('\n'),
                    Some((_, 'r')) => val.push('\r'),
                    Some((j, 'u')) => {
                        let hex = rest.get(j + 1..j + 5).ok_or("`\\u` without 4 digits")?;
                        let c = u32::from_str_radix(hex, 16)
                            .ok()
                            .filter(|_| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                            .and_then(char::from_u32)
                            .ok_or_else(|| format!("{key}: `\\u{hex}`"))?;
                        if !c.is_control() && !matches!(c, '\u{2028}' | '\u{2029}') {
                            return Err(format!("{key}: `\\u{hex}` escapes a printable character"));
                        }
                        val.push(c);
                        for _ in 0..4 {
                            chars.next();
                        }
                    }
                    other => return Err(format!("{key}: escape `\\{other:?}` in a value")),
                },
                '=' => return Err(format!("{key}: unescaped `=` in its value")),
                ' ' if key_at(&rest[i + 1..]).is_some() => {
                    end = i;
                    break;
                }
                c => val.push(c),
            }
        }
        rest = if end < rest.len() {
            &rest[end + 1..]
        } else {
            ""
        };
        pairs.push((key, val));
    }
    Ok(pairs)
}

/// Every violation of the dictionary rules in `pairs`.
pub fn check(pairs: &[(String, String)]) -> Vec<String> {
    let mut errs = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (k, v) in pairs {
        if !seen.insert(k.as_str()) {
            errs.push(format!("{k}: twice"));
        }
        let vendor = k
            .strip_prefix(VENDOR_PREFIX)
            .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric()));
        if !DICTIONARY.contains(&k.as_str()) && !vendor {
            errs.push(format!(
                "{k}: neither in the CEF key dictionary nor a vendor key"
            ));
        }
        let int = |lo: i64, hi: i64| v.parse::<i64>().is_ok_and(|n| (lo..=hi).contains(&n));
        let ok = match k.as_str() {
            "rt" | "end" | "start" | "art" => int(0, i64::MAX),
            "spid" | "dpid" | "dvcpid" | "cnt" => int(0, i64::from(i32::MAX)),
            "dpt" | "spt" => int(0, 65535),
            "deviceDirection" => v == "0" || v == "1",
            "cn1" | "cn2" | "cn3" => int(i64::MIN, i64::MAX),
            "dst" | "src" | "dvc" => v.parse::<std::net::Ipv4Addr>().is_ok(),
            "c6a1" | "c6a3" | "c6a4" => v.parse::<std::net::Ipv6Addr>().is_ok(),
            _ => true,
        };
        if !ok {
            errs.push(format!("{k}: `{v}` is not of the key's type"));
        }
        let custom = [
            "cs",
            "cn",
            "c6a",
            "cfp",
            "deviceCustomDate",
            "flexString",
            "flexDate",
        ];
        if custom.iter().any(|p| {
            k.strip_prefix(p)
                .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
        }) && !pairs.iter().any(|(l, _)| *l == format!("{k}Label"))
        {
            errs.push(format!("{k}: without {k}Label"));
        }
        if let Some(base) = k.strip_suffix("Label")
            && !pairs.iter().any(|(b, _)| b == base)
        {
            errs.push(format!("{k}: a label without {base}"));
        }
    }
    errs
}
