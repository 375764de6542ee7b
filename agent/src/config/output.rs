//! The agent's output half of the configuration: `heartbeat_secs`, `chain_key_file`,
//! `[host]` labels and `[[sinks]]` ([`Output`]), and their validation.
use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::{ConfigError, Ctx, RawConfig, RawSink};
use crate::base::located::toml::join;

/// A configured output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// Native JSON ([`crate::events::formats::json`]).
    #[default]
    Json,
    /// Elastic Common Schema ([`crate::events::formats::ecs`]).
    Ecs,
    /// OCSF ([`crate::events::formats::ocsf`]).
    Ocsf,
    /// CEF ([`crate::events::formats::cef`]).
    Cef,
}

impl Format {
    /// Every format, in documentation order.
    pub const ALL: [Format; 4] = [Format::Json, Format::Ecs, Format::Ocsf, Format::Cef];

    /// The name used in the config file: `json`, `ecs`, `ocsf`, `cef`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Ecs => "ecs",
            Format::Ocsf => "ocsf",
            Format::Cef => "cef",
        }
    }

    /// Parses a config name (exact, lowercase); `None` for anything else.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == name)
    }
}

/// Smallest `max_message_bytes` a sink accepts (a record's fixed part must fit).
pub const MIN_MESSAGE_BYTES: usize = 1024;

/// When appended frames are forced to disk (`fdatasync(2)`); config key `spool_fsync`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fsync {
    /// `"batch"`: before a frame is sent, the frames appended so far are synced (one
    /// `fdatasync` covers every frame appended while the previous one ran). Survives power
    /// loss and kernel crashes.
    #[default]
    Batch,
    /// `"interval"`: synced once a second with the head. A process crash loses nothing; a
    /// power loss or kernel crash can lose the last second of records.
    Interval,
}

/// What a sink without a working spool does when its memory queue is full; config key
/// `when_full` (named after Vector's buffer setting). Default: `"drop_newest"` for stdout
/// (journald: every local user can slow it), `"block"` for files and syslog.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenFull {
    /// `"block"`: the ring-buffer reader takes no more records than the queue has room for
    /// ([`crate::events::pipeline::Pipeline::room`]); in a flood the kernel aggregates the rest
    /// into `connection_summary` counts instead of the queue dropping records. All sinks
    /// then get the same, aggregated stream. It does not block (its full queue drops,
    /// counted) while the sink is down or has written nothing for 2 s, and the records of
    /// a reload's or the stop's last read of the ring buffer are not held back.
    #[default]
    Block,
    /// `"drop_newest"`: this sink never holds the reader back; what its full queue cannot
    /// take is dropped and counted (`dropped_queue_full`). For a sink whose detail matters
    /// less than the others' (stdout into journald, a local debug file).
    DropNewest,
}

/// Shortest key accepted from a key file, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// Reads the chain key: the bytes of `path`, as they are. The file must be root's (or
/// this user's), a regular file, not a link, and readable by its owner only.
///
/// # Errors
/// The file is missing, fails those checks, or holds fewer than [`MIN_KEY_BYTES`] bytes;
/// the message names it.
pub fn load_key(path: &std::path::Path) -> anyhow::Result<std::sync::Arc<[u8]>> {
    use std::{io::Read, os::unix::fs::MetadataExt};
    let what =
        |e: &dyn std::fmt::Display| anyhow::anyhow!("chain_key_file {}: {e}", path.display());
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(what(&"not a file path"));
    };
    let mut f = crate::base::safefs::TrustedDir::open(dir)
        .and_then(|d| d.read(name))
        .map_err(|e| what(&e))?;
    let mode = f.metadata().map_err(|e| what(&e))?.mode();
    if mode & 0o077 != 0 {
        return Err(what(&format!(
            "mode {:04o}: a secret must be readable by its owner only (chmod 0600)",
            mode & 0o7777
        )));
    }
    let mut key = Vec::new();
    f.read_to_end(&mut key).map_err(|e| what(&e))?;
    if key.len() < MIN_KEY_BYTES {
        return Err(what(&format!(
            "{} bytes: a key needs at least {MIN_KEY_BYTES} (e.g. head -c 32 /dev/urandom)",
            key.len()
        )));
    }
    Ok(key.into())
}

/// Default `heartbeat_secs`.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 60;
/// Largest `heartbeat_secs` (one hour). `egressd audit verify` bounds a run's silence by
/// the period its `agent_start` states, so a longer one would let a killed daemon pass as
/// enforcing for that long; verify caps a stated period at this value too.
pub const MAX_HEARTBEAT_SECS: u64 = 3600;
/// Default per-sink in-memory queue, in records.
pub const DEFAULT_QUEUE: usize = 10_000;
/// Default per-sink in-memory queue, in bytes (16 MiB).
pub const DEFAULT_QUEUE_BYTES: usize = 16 << 20;
/// Default longest message of a syslog sink, in bytes (rsyslog's default `maxMessageSize`).
pub const DEFAULT_SYSLOG_MESSAGE_BYTES: usize = 8 << 10;
/// Default spool size limit per sink, in bytes (64 MiB).
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 << 20;
/// Default longest wait between reconnection attempts, in milliseconds.
pub const DEFAULT_RETRY_MAX_MS: u64 = 30_000;
/// Directory under which syslog sinks spool by default (`{dir}/{sink name}`).
pub const DEFAULT_SPOOL_ROOT: &str = "/var/lib/egressd/spool";

/// Where and how the agent reports: host labels, heartbeat and sinks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// `[host] labels`: key/value pairs added to every record (`host.labels`).
    pub host_labels: BTreeMap<String, String>,
    /// `heartbeat_secs`: interval of the `heartbeat` record in seconds, 0 disables it;
    /// [`DEFAULT_HEARTBEAT_SECS`] when absent.
    pub heartbeat_secs: u64,
    /// `chain_key_file`: absolute path of the secret that keys the records' hash chain
    /// (HMAC-SHA-256, [`crate::events::audit::chain`]), read once at start; unkeyed SHA-256 when
    /// absent.
    pub chain_key_file: Option<PathBuf>,
    /// `[[sinks]]` in file order; one stdout sink with the native JSON format when absent.
    pub sinks: Vec<SinkConfig>,
}

impl Default for Output {
    fn default() -> Self {
        Self {
            host_labels: BTreeMap::new(),
            heartbeat_secs: DEFAULT_HEARTBEAT_SECS,
            chain_key_file: None,
            sinks: vec![SinkConfig::stdout()],
        }
    }
}

/// One `[[sinks]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkConfig {
    /// `name`: unique among the sinks; names its counters and its spool directory. Default:
    /// the type (`stdout`, `file`, `syslog`).
    pub name: String,
    /// `type` and its options.
    pub kind: SinkKind,
    /// `format`: `json` (default), `ecs`, `ocsf` or `cef`.
    pub format: Format,
    /// `queue`: in-memory queue in records ([`DEFAULT_QUEUE`]).
    pub queue: usize,
    /// `queue_bytes`: in-memory queue in bytes ([`DEFAULT_QUEUE_BYTES`]); whichever of
    /// `queue` and `queue_bytes` is reached first makes the queue full.
    pub queue_bytes: usize,
    /// `max_message_bytes`: longest record the destination takes (for syslog, the RFC 5424
    /// message with its header; for lines, with the newline); a longer one is truncated so
    /// it stays parseable, marked and counted ([`crate::events::formats::bound`]). 0: no limit.
    /// Default [`DEFAULT_SYSLOG_MESSAGE_BYTES`] for syslog sinks, 0 for others; at least
    /// [`crate::events::formats::bound::MIN_MESSAGE_BYTES`] when set.
    pub max_message_bytes: usize,
    /// `when_full`: what a full memory queue does ([`WhenFull`]; default `"drop_newest"` for
    /// stdout, `"block"` for files and syslog).
    pub when_full: WhenFull,
    /// On-disk spool used while the sink is down or slow; `None` disables it.
    pub spool: Option<SpoolConfig>,
    /// `retry_max_ms`: longest wait between reconnection attempts ([`DEFAULT_RETRY_MAX_MS`]);
    /// waits start at 100 ms and double.
    pub retry_max_ms: u64,
}

impl SinkConfig {
    /// The default sink: native JSON lines on stdout, no spool.
    pub fn stdout() -> Self {
        Self {
            name: "stdout".into(),
            kind: SinkKind::Stdout,
            format: Format::Json,
            queue: DEFAULT_QUEUE,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            max_message_bytes: 0,
            when_full: WhenFull::DropNewest,
            spool: None,
            retry_max_ms: DEFAULT_RETRY_MAX_MS,
        }
    }
}

/// What a sink writes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkKind {
    /// `type = "stdout"`: one record per line on standard output.
    Stdout,
    /// `type = "file"`: one record per line appended to `path`, reopened on SIGUSR1.
    File {
        /// `path`: absolute file path.
        path: PathBuf,
        /// `mode`: octal permission bits the file is created with (`"0640"`);
        /// [`crate::base::safefs::FILE_MODE`] (0600) when absent. Never writable by group or
        /// others.
        mode: u32,
    },
    /// `type = "syslog"`: RFC 5424 messages.
    Syslog(SyslogConfig),
}

/// Options of a syslog sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyslogConfig {
    /// `transport`: `udp` (RFC 5426), `tcp` (RFC 6587 octet counting, default) or `tls`
    /// (RFC 5425).
    pub transport: SyslogTransport,
    /// `address`: `HOST:PORT` (IPv6 as `[ADDR]:PORT`), resolved at each connection attempt.
    pub address: String,
    /// `server_name`: name the TLS server certificate must carry; default: the host part of
    /// `address`.
    pub server_name: Option<String>,
    /// `ca`: PEM file of the CA certificates that may sign the server's certificate;
    /// default: the system's (`/etc/ssl/certs/ca-certificates.crt`).
    pub ca: Option<PathBuf>,
    /// `cert` and `key`: PEM client certificate chain and private key, for servers that
    /// require client authentication.
    pub client_auth: Option<(PathBuf, PathBuf)>,
    /// `facility`: syslog facility code (0-23); name in the file (`daemon` default, `local0`
    /// ... `local7`, `auth`, `authpriv`, `security`, `user`, ...).
    pub facility: u8,
    /// `app_name`: APP-NAME field (`egressd` default; 1-48 printable ASCII characters).
    pub app_name: String,
}

/// Syslog transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyslogTransport {
    /// One message per datagram; no delivery guarantee.
    Udp,
    /// Octet-counted messages on a TCP stream.
    Tcp,
    /// Octet-counted messages on a TLS stream.
    Tls,
}

/// A sink's on-disk spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolConfig {
    /// `spool`: directory (created if missing); default for syslog sinks
    /// `{DEFAULT_SPOOL_ROOT}/{name}`.
    pub dir: PathBuf,
    /// `spool_max_bytes`: size limit ([`DEFAULT_SPOOL_MAX_BYTES`]); 0 disables the spool.
    pub max_bytes: u64,
    /// `spool_fsync`: `"batch"` (default) or `"interval"`; see
    /// [`Fsync`].
    pub fsync: Fsync,
}

/// Syslog facility names (RFC 5424 section 6.2.1) and their codes.
const FACILITIES: [(&str, u8); 24] = [
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("ntp", 12),
    ("security", 13),
    ("console", 14),
    ("solaris-cron", 15),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

impl Ctx<'_> {
    /// Validates the output settings of `raw`, pushing errors; returns what is valid.
    pub(super) fn output(&self, raw: &RawConfig, errors: &mut Vec<ConfigError>) -> Output {
        let mut out = Output::default();
        if let Some(h) = &raw.heartbeat_secs {
            match u64::try_from(*h.get_ref()) {
                Ok(v) if v <= MAX_HEARTBEAT_SECS => out.heartbeat_secs = v,
                _ => errors.push(self.err(
                    h.span(),
                    "heartbeat_secs",
                    format!(
                        "heartbeat_secs must be 0 (off) or a number of seconds up to \
                         {MAX_HEARTBEAT_SECS}"
                    ),
                )),
            }
        }
        if let Some(k) = &raw.chain_key_file {
            let p = PathBuf::from(k.get_ref());
            if p.is_absolute() {
                // Read now, as `run` will: `check` (config management's validator) and a
                // reload must refuse a key the next start would refuse.
                if let Err(e) = load_key(&p) {
                    errors.push(self.err(k.span(), "chain_key_file", format!("{e:#}")));
                }
                out.chain_key_file = Some(p);
            } else {
                errors.push(self.err(
                    k.span(),
                    "chain_key_file",
                    format!(
                        "`chain_key_file` must be an absolute path, got `{}`",
                        k.get_ref()
                    ),
                ));
            }
        }
        if let Some(labels) = raw.host.as_ref().and_then(|h| h.get_ref().labels.as_ref()) {
            for (k, v) in labels {
                let key = k.get_ref();
                let field = join("host.labels", key);
                let key_ok = !key.is_empty()
                    && key.len() <= 64
                    && key
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c));
                if !key_ok {
                    errors.push(self.err(
                        k.span(),
                        field,
                        format!(
                            "invalid label name `{key}`: use 1-64 characters from a-z, A-Z, \
                             0-9, `_`, `.` and `-`"
                        ),
                    ));
                } else if v.get_ref().len() > 256 || v.get_ref().chars().any(char::is_control) {
                    errors.push(self.err(
                        v.span(),
                        field,
                        "label values are at most 256 bytes, without control characters",
                    ));
                } else {
                    out.host_labels.insert(key.clone(), v.get_ref().clone());
                }
            }
        }
        if let Some(sinks) = &raw.sinks {
            out.sinks.clear();
            for (i, s) in sinks.iter().enumerate() {
                if let Some(sink) = self.sink(i, s, errors) {
                    if let Some(first) = out.sinks.iter().position(|o| o.name == sink.name) {
                        errors.push(self.err(
                            s.span(),
                            format!("sinks[{i}].name"),
                            format!(
                                "duplicate sink name `{}` (also sinks[{first}]); give each sink \
                                 its own `name`",
                                sink.name
                            ),
                        ));
                    }
                    out.sinks.push(sink);
                }
            }
        }
        out
    }

    fn sink(
        &self,
        i: usize,
        s: &Spanned<RawSink>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<SinkConfig> {
        let raw = s.get_ref();
        let f = |name: &str| format!("sinks[{i}].{name}");
        let before = errors.len();
        let abs_path = |v: &Spanned<String>, name: &str, errors: &mut Vec<ConfigError>| {
            let p = PathBuf::from(v.get_ref());
            if !p.is_absolute() {
                errors.push(self.err(
                    v.span(),
                    f(name),
                    format!("`{name}` must be an absolute path, got `{}`", v.get_ref()),
                ));
            }
            p
        };
        let Some(kind_s) = &raw.kind else {
            errors.push(self.err(
                s.span(),
                f("type"),
                "missing field `type`: `stdout`, `file` or `syslog`",
            ));
            return None;
        };
        let format = match &raw.format {
            None => Format::Json,
            Some(v) => Format::from_name(v.get_ref()).unwrap_or_else(|| {
                errors.push(self.err(
                    v.span(),
                    f("format"),
                    format!(
                        "unknown format `{}`: expected `json`, `ecs`, `ocsf` or `cef`",
                        v.get_ref()
                    ),
                ));
                Format::Json
            }),
        };
        let only_for = |opt: &Option<Spanned<String>>,
                        name: &str,
                        what: &str,
                        errors: &mut Vec<ConfigError>| {
            if let Some(v) = opt {
                errors.push(self.err(
                    v.span(),
                    f(name),
                    format!("`{name}` only applies to {what}"),
                ));
            }
        };
        let kind = match kind_s.get_ref().as_str() {
            "stdout" => {
                only_for(&raw.path, "path", "file sinks", errors);
                only_for(&raw.mode, "mode", "file sinks", errors);
                SinkKind::Stdout
            }
            "file" => match &raw.path {
                Some(p) => SinkKind::File {
                    path: abs_path(p, "path", errors),
                    mode: match &raw.mode {
                        None => crate::base::safefs::FILE_MODE,
                        Some(m) => match u32::from_str_radix(m.get_ref(), 8) {
                            Ok(v) if v <= 0o777 && v & 0o022 == 0 && v & 0o600 == 0o600 => v,
                            _ => {
                                errors.push(self.err(
                                    m.span(),
                                    f("mode"),
                                    format!(
                                        "`mode` must be octal permission bits that let the \
                                         owner read and write and nobody else write, such as \
                                         \"0600\" or \"0640\", got `{}`",
                                        m.get_ref()
                                    ),
                                ));
                                crate::base::safefs::FILE_MODE
                            }
                        },
                    },
                },
                None => {
                    errors.push(self.err(
                        s.span(),
                        f("path"),
                        "a file sink needs `path` (absolute)",
                    ));
                    return None;
                }
            },
            "syslog" => {
                only_for(&raw.path, "path", "file sinks", errors);
                only_for(&raw.mode, "mode", "file sinks", errors);
                let transport = match raw.transport.as_ref().map(|t| (t, t.get_ref().as_str())) {
                    None | Some((_, "tcp")) => SyslogTransport::Tcp,
                    Some((_, "udp")) => SyslogTransport::Udp,
                    Some((_, "tls")) => SyslogTransport::Tls,
                    Some((t, other)) => {
                        errors.push(self.err(
                            t.span(),
                            f("transport"),
                            format!("unknown transport `{other}`: expected `udp`, `tcp` or `tls`"),
                        ));
                        SyslogTransport::Tcp
                    }
                };
                let Some(address) = &raw.address else {
                    errors.push(self.err(
                        s.span(),
                        f("address"),
                        "a syslog sink needs `address = \"HOST:PORT\"`",
                    ));
                    return None;
                };
                if host_port(address.get_ref()).is_none() {
                    errors.push(self.err(
                        address.span(),
                        f("address"),
                        format!(
                            "invalid address `{}`: expected HOST:PORT, e.g. \
                             `siem.example.com:6514` or `[2001:db8::1]:514`",
                            address.get_ref()
                        ),
                    ));
                }
                if transport != SyslogTransport::Tls {
                    for (opt, name) in [
                        (&raw.ca, "ca"),
                        (&raw.cert, "cert"),
                        (&raw.key, "key"),
                        (&raw.server_name, "server_name"),
                    ] {
                        only_for(opt, name, "`transport = \"tls\"`", errors);
                    }
                }
                let client_auth = match (&raw.cert, &raw.key) {
                    (Some(c), Some(k)) => {
                        Some((abs_path(c, "cert", errors), abs_path(k, "key", errors)))
                    }
                    (Some(c), None) => {
                        errors.push(self.err(c.span(), f("cert"), "`cert` needs `key`"));
                        None
                    }
                    (None, Some(k)) => {
                        errors.push(self.err(k.span(), f("key"), "`key` needs `cert`"));
                        None
                    }
                    (None, None) => None,
                };
                let facility = match &raw.facility {
                    None => 3,
                    Some(v) => FACILITIES
                        .iter()
                        .find(|(n, _)| *n == v.get_ref())
                        .map(|(_, c)| *c)
                        .unwrap_or_else(|| {
                            errors.push(self.err(
                                v.span(),
                                f("facility"),
                                format!(
                                    "unknown facility `{}`: expected one of {}",
                                    v.get_ref(),
                                    FACILITIES.map(|(n, _)| n).join(", ")
                                ),
                            ));
                            3
                        }),
                };
                let app_name = match &raw.app_name {
                    None => "egressd".to_string(),
                    Some(v) => {
                        let a = v.get_ref();
                        if a.is_empty()
                            || a.len() > 48
                            || !a.bytes().all(|c| (33..=126).contains(&c))
                        {
                            errors.push(self.err(
                                v.span(),
                                f("app_name"),
                                "app_name must be 1-48 printable ASCII characters without spaces \
                                 (RFC 5424 APP-NAME)",
                            ));
                        }
                        a.clone()
                    }
                };
                SinkKind::Syslog(SyslogConfig {
                    transport,
                    address: address.get_ref().clone(),
                    server_name: raw.server_name.as_ref().map(|v| v.get_ref().clone()),
                    ca: raw.ca.as_ref().map(|v| abs_path(v, "ca", errors)),
                    client_auth,
                    facility,
                    app_name,
                })
            }
            other => {
                errors.push(self.err(
                    kind_s.span(),
                    f("type"),
                    format!("unknown sink type `{other}`: expected `stdout`, `file` or `syslog`"),
                ));
                return None;
            }
        };
        if !matches!(kind, SinkKind::Syslog(_)) {
            for (opt, name) in [
                (&raw.transport, "transport"),
                (&raw.address, "address"),
                (&raw.ca, "ca"),
                (&raw.cert, "cert"),
                (&raw.key, "key"),
                (&raw.server_name, "server_name"),
                (&raw.facility, "facility"),
                (&raw.app_name, "app_name"),
            ] {
                only_for(opt, name, "syslog sinks", errors);
            }
        }
        let name = match &raw.name {
            Some(n) => {
                let ok = !n.get_ref().is_empty()
                    && n.get_ref().len() <= 63
                    && n.get_ref()
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
                if !ok {
                    errors.push(self.err(
                        n.span(),
                        f("name"),
                        "sink names are 1-63 characters from a-z, A-Z, 0-9, `_` and `-`",
                    ));
                }
                n.get_ref().clone()
            }
            None => kind_s.get_ref().clone(),
        };
        let positive = |v: &Option<Spanned<i64>>,
                        name: &str,
                        min: i64,
                        default: u64,
                        errors: &mut Vec<ConfigError>|
         -> u64 {
            match v {
                None => default,
                Some(n) if *n.get_ref() >= min => u64::try_from(*n.get_ref()).unwrap_or(default),
                Some(n) => {
                    errors.push(self.err(
                        n.span(),
                        f(name),
                        format!("`{name}` must be at least {min}"),
                    ));
                    default
                }
            }
        };
        let queue = positive(&raw.queue, "queue", 1, DEFAULT_QUEUE as u64, errors);
        let queue_bytes = positive(
            &raw.queue_bytes,
            "queue_bytes",
            64 << 10,
            DEFAULT_QUEUE_BYTES as u64,
            errors,
        );
        let default_message = match kind {
            SinkKind::Syslog(_) => DEFAULT_SYSLOG_MESSAGE_BYTES as u64,
            _ => 0,
        };
        let max_message_bytes = match &raw.max_message_bytes {
            Some(v) if *v.get_ref() == 0 => 0,
            other => positive(
                other,
                "max_message_bytes",
                MIN_MESSAGE_BYTES as i64,
                default_message,
                errors,
            ),
        };
        let retry_max_ms = positive(
            &raw.retry_max_ms,
            "retry_max_ms",
            1,
            DEFAULT_RETRY_MAX_MS,
            errors,
        );
        let max_bytes = positive(
            &raw.spool_max_bytes,
            "spool_max_bytes",
            0,
            DEFAULT_SPOOL_MAX_BYTES,
            errors,
        );
        let fsync = match &raw.spool_fsync {
            None => Fsync::default(),
            Some(v) => match v.get_ref().as_str() {
                "batch" => Fsync::Batch,
                "interval" => Fsync::Interval,
                other => {
                    errors.push(self.err(
                        v.span(),
                        f("spool_fsync"),
                        format!("`{other}`: expected \"batch\" or \"interval\""),
                    ));
                    Fsync::default()
                }
            },
        };
        let when_full = match &raw.when_full {
            None if matches!(kind, SinkKind::Stdout) => WhenFull::DropNewest,
            None => WhenFull::Block,
            Some(v) => match v.get_ref().as_str() {
                "block" => WhenFull::Block,
                "drop_newest" => WhenFull::DropNewest,
                other => {
                    errors.push(self.err(
                        v.span(),
                        f("when_full"),
                        format!("`{other}`: expected \"block\" or \"drop_newest\""),
                    ));
                    WhenFull::default()
                }
            },
        };
        let spool_dir = match &raw.spool {
            Some(d) => Some(abs_path(d, "spool", errors)),
            None if matches!(kind, SinkKind::Syslog(_)) => {
                Some(Path::new(DEFAULT_SPOOL_ROOT).join(&name))
            }
            None => None,
        };
        if errors.len() > before {
            return None;
        }
        Some(SinkConfig {
            name,
            kind,
            format,
            queue: usize::try_from(queue).unwrap_or(DEFAULT_QUEUE),
            queue_bytes: usize::try_from(queue_bytes).unwrap_or(DEFAULT_QUEUE_BYTES),
            max_message_bytes: usize::try_from(max_message_bytes).unwrap_or(0),
            when_full,
            spool: spool_dir.filter(|_| max_bytes > 0).map(|dir| SpoolConfig {
                dir,
                max_bytes,
                fsync,
            }),
            retry_max_ms,
        })
    }
}

/// Splits `HOST:PORT` / `[V6]:PORT`; `None` when malformed.
pub fn host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    if let Some(h) = host.strip_prefix('[') {
        let h = h.strip_suffix(']')?;
        h.parse::<Ipv6Addr>().ok()?;
        return Some((h.to_owned(), port));
    }
    // A bare IPv6 address must be bracketed.
    if host.is_empty() || host.contains([':', '[', ']', ' ', '/']) {
        return None;
    }
    Some((host.to_owned(), port))
}
