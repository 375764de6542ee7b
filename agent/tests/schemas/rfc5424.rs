//! RFC 5424 messages checked against the ABNF of its section 6 (and RFC 6587 octet-counting
//! framing): PRI 0-191, VERSION 1, TIMESTAMP (FULL-DATE "T" FULL-TIME, at most 6 fraction
//! digits, real calendar values), HOSTNAME / APP-NAME / PROCID / MSGID as PRINTUSASCII of
//! their maximum lengths or NILVALUE, STRUCTURED-DATA as NILVALUE or SD-ELEMENTs (SD-NAME,
//! escaped PARAM-VALUE), and MSG per section 6.4: MSG-UTF8 (BOM, then valid UTF-8) or
//! MSG-ANY (not starting with a BOM). egressd's rule on top: the BOM is there exactly when
//! MSG holds a non-ASCII byte (MSG is then UTF-8, which section 6.4 says MUST start with the
//! BOM; an ASCII MSG goes as MSG-ANY, which every receiver reads as it always did).

/// The UTF-8 byte order mark.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// SD-ELEMENTs: (SD-ID, [(PARAM-NAME, unescaped PARAM-VALUE)]).
pub type Sd = Vec<(String, Vec<(String, String)>)>;

/// A message's parts.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// PRIVAL.
    pub pri: u16,
    /// HOSTNAME, APP-NAME, PROCID, MSGID.
    pub fields: [&'a str; 4],
    /// STRUCTURED-DATA.
    pub sd: Sd,
    /// MSG without the BOM.
    pub msg: &'a [u8],
    /// Whether MSG started with the BOM.
    pub bom: bool,
}

fn digits(s: &str, n: usize, lo: u32, hi: u32, what: &str) -> Result<u32, String> {
    if s.len() != n || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what}: `{s}` is not {n} digits"));
    }
    let v: u32 = s.parse().map_err(|_| format!("{what}: `{s}`"))?;
    if !(lo..=hi).contains(&v) {
        return Err(format!("{what}: {v} outside {lo}-{hi}"));
    }
    Ok(v)
}

/// Checks `FULL-DATE "T" FULL-TIME` (RFC 3339 as RFC 5424 restricts it: `T` and `Z` upper
/// case, at most `max_frac` fraction digits).
pub fn date_time(s: &str, max_frac: usize) -> Result<(), String> {
    let (date, time) = s
        .split_once('T')
        .ok_or_else(|| format!("TIMESTAMP `{s}`: no `T`"))?;
    let d: Vec<&str> = date.split('-').collect();
    let [y, m, day] = d[..] else {
        return Err(format!("FULL-DATE `{date}`"));
    };
    let year = digits(y, 4, 0, 9999, "DATE-FULLYEAR")?;
    let month = digits(m, 2, 1, 12, "DATE-MONTH")?;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    digits(day, 2, 1, days, "DATE-MDAY")?;
    let (partial, offset) = if let Some(p) = time.strip_suffix('Z') {
        (p, None)
    } else {
        let i = time
            .rfind(['+', '-'])
            .ok_or_else(|| format!("TIME-OFFSET missing in `{time}`"))?;
        (&time[..i], Some(&time[i + 1..]))
    };
    if let Some(o) = offset {
        let (h, mi) = o
            .split_once(':')
            .ok_or_else(|| format!("TIME-NUMOFFSET `{o}`"))?;
        digits(h, 2, 0, 23, "TIME-HOUR")?;
        digits(mi, 2, 0, 59, "TIME-MINUTE")?;
    }
    let (hms, frac) = match partial.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (partial, None),
    };
    let t: Vec<&str> = hms.split(':').collect();
    let [h, mi, sec] = t[..] else {
        return Err(format!("PARTIAL-TIME `{partial}`"));
    };
    digits(h, 2, 0, 23, "TIME-HOUR")?;
    digits(mi, 2, 0, 59, "TIME-MINUTE")?;
    digits(sec, 2, 0, 59, "TIME-SECOND")?;
    if let Some(f) = frac
        && (f.is_empty() || f.len() > max_frac || !f.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("TIME-SECFRAC `.{f}`: 1 to {max_frac} digits"));
    }
    Ok(())
}

/// Takes one SP-terminated header field of 1..=max PRINTUSASCII octets (or `-`).
fn field<'a>(rest: &mut &'a [u8], max: usize, what: &str) -> Result<&'a str, String> {
    let end = rest
        .iter()
        .position(|&b| b == b' ')
        .ok_or_else(|| format!("{what}: no SP after it"))?;
    let (f, r) = rest.split_at(end);
    *rest = &r[1..];
    if f.is_empty() || f.len() > max || !f.iter().all(|b| (33..=126).contains(b)) {
        return Err(format!(
            "{what}: `{}` is not 1-{max} PRINTUSASCII",
            String::from_utf8_lossy(f)
        ));
    }
    Ok(std::str::from_utf8(f).unwrap_or_default())
}

/// SD-NAME: 1-32 PRINTUSASCII except `=`, SP, `]` and `"`.
fn sd_name(rest: &mut &[u8], what: &str) -> Result<String, String> {
    let n = rest
        .iter()
        .take_while(|&&b| (33..=126).contains(&b) && !matches!(b, b'=' | b']' | b'"'))
        .count();
    if n == 0 || n > 32 {
        return Err(format!("{what}: 1-32 characters expected"));
    }
    let s = String::from_utf8_lossy(&rest[..n]).into_owned();
    *rest = &rest[n..];
    Ok(s)
}

/// STRUCTURED-DATA and the SP before MSG (or the end).
fn structured(rest: &mut &[u8]) -> Result<Sd, String> {
    let mut out = Vec::new();
    if rest.first() == Some(&b'-') {
        *rest = &rest[1..];
    } else {
        while rest.first() == Some(&b'[') {
            *rest = &rest[1..];
            let id = sd_name(rest, "SD-ID")?;
            if !id.contains('@') && !matches!(id.as_str(), "timeQuality" | "origin" | "meta") {
                return Err(format!("SD-ID `{id}`: not IANA-registered and without `@`"));
            }
            let mut params = Vec::new();
            loop {
                match rest.first() {
                    Some(b']') => {
                        *rest = &rest[1..];
                        break;
                    }
                    Some(b' ') => {
                        *rest = &rest[1..];
                        let name = sd_name(rest, "PARAM-NAME")?;
                        if !rest.starts_with(b"=\"") {
                            return Err(format!("SD-PARAM `{name}`: `=\"` expected"));
                        }
                        *rest = &rest[2..];
                        let mut val = Vec::new();
                        loop {
                            match rest.first() {
                                None => return Err("PARAM-VALUE: no closing `\"`".into()),
                                Some(b'"') => break,
                                Some(b']') => return Err("PARAM-VALUE: unescaped `]`".into()),
                                Some(b'\\') if matches!(rest.get(1), Some(b'"' | b'\\' | b']')) => {
                                    val.push(rest[1]);
                                    *rest = &rest[2..];
                                }
                                Some(&b) => {
                                    val.push(b);
                                    *rest = &rest[1..];
                                }
                            }
                        }
                        *rest = &rest[1..];
                        let val = String::from_utf8(val)
                            .map_err(|_| format!("PARAM-VALUE of `{name}`: not UTF-8"))?;
                        params.push((name, val));
                    }
                    _ => return Err(format!("SD-ELEMENT `{id}`: SP or `]` expected")),
                }
            }
            out.push((id, params));
        }
        if out.is_empty() {
            return Err("STRUCTURED-DATA: `-` or `[` expected".into());
        }
    }
    match rest.first() {
        None => {}
        Some(b' ') => *rest = &rest[1..],
        Some(_) => return Err("SP expected after STRUCTURED-DATA".into()),
    }
    Ok(out)
}

/// Parses and checks one SYSLOG-MSG.
pub fn parse(m: &[u8]) -> Result<Parsed<'_>, String> {
    let mut rest = m;
    if rest.first() != Some(&b'<') {
        return Err("PRI: `<` expected".into());
    }
    let close = rest.iter().position(|&b| b == b'>').ok_or("PRI: no `>`")?;
    let prival = std::str::from_utf8(&rest[1..close]).map_err(|_| "PRIVAL")?;
    if prival.is_empty() || prival.len() > 3 || !prival.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("PRIVAL `{prival}`"));
    }
    let pri: u16 = prival.parse().map_err(|_| "PRIVAL")?;
    if pri > 191 || (prival.len() > 1 && prival.starts_with('0')) {
        return Err(format!("PRIVAL {prival}: 0-191 without leading zeros"));
    }
    rest = &rest[close + 1..];
    let version = field(&mut rest, 3, "VERSION")?;
    if version != "1" {
        return Err(format!("VERSION `{version}`: egressd writes 1"));
    }
    let ts = field(&mut rest, 64, "TIMESTAMP")?;
    if ts != "-" {
        date_time(ts, 6)?;
    }
    let hostname = field(&mut rest, 255, "HOSTNAME")?;
    let app = field(&mut rest, 48, "APP-NAME")?;
    let procid = field(&mut rest, 128, "PROCID")?;
    let msgid = field(&mut rest, 32, "MSGID")?;
    let sd = structured(&mut rest)?;
    let (msg, bom) = match rest.strip_prefix(BOM) {
        Some(utf8) => {
            std::str::from_utf8(utf8).map_err(|e| format!("MSG-UTF8: not UTF-8: {e}"))?;
            (utf8, true)
        }
        None => (rest, false),
    };
    Ok(Parsed {
        pri,
        fields: [hostname, app, procid, msgid],
        sd,
        msg,
        bom,
    })
}

/// egressd's rule: MSG-UTF8 (with BOM) exactly when MSG is not ASCII.
pub fn check_bom(p: &Parsed<'_>) -> Result<(), String> {
    match (p.bom, p.msg.is_ascii()) {
        (false, false) => Err(
            "MSG holds non-ASCII UTF-8 without the BOM (RFC 5424 section 6.4: MSG-UTF8 MUST start with %xEF.BB.BF)"
                .into(),
        ),
        (true, true) => Err("MSG is ASCII but carries a BOM (egressd sends ASCII as MSG-ANY)".into()),
        _ => Ok(()),
    }
}

/// RFC 6587 octet counting: `MSG-LEN SP SYSLOG-MSG`, MSG-LEN = NONZERO-DIGIT *DIGIT.
pub fn unframe(frame: &[u8]) -> Result<&[u8], String> {
    let sp = frame
        .iter()
        .position(|&b| b == b' ')
        .ok_or("octet counting: no SP")?;
    let len = std::str::from_utf8(&frame[..sp]).map_err(|_| "MSG-LEN")?;
    if len.starts_with('0') || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("MSG-LEN `{len}`"));
    }
    let n: usize = len.parse().map_err(|_| "MSG-LEN")?;
    let msg = &frame[sp + 1..];
    if n != msg.len() {
        return Err(format!("MSG-LEN {n}, the message has {} octets", msg.len()));
    }
    Ok(msg)
}
