//! Sinks: where formatted records go. One file per destination kind:
//!
//! | sink | module | framing |
//! | --- | --- | --- |
//! | stdout | [`stdout`] | one record per line (`\n`) |
//! | file | [`file`] | one record per line, appended; reopened on SIGUSR1 (logrotate) |
//! | syslog over UDP | [`syslog`] | RFC 5424 message, one per datagram (RFC 5426) |
//! | syslog over TCP | [`syslog`] | RFC 5424 message with RFC 6587 octet counting (`LEN SP MSG`) |
//! | syslog over TLS | [`syslog`], [`tls`] | as TCP, inside TLS (RFC 5425), rustls with CA and client certificate options |
//!
//! A sink is an [`Encoder`] (format + framing, applied on the reader thread so the spool
//! stores wire-ready frames) and a [`Transport`] (blocking I/O, driven by the sink's own
//! worker thread in [`crate::events::pipeline`], which adds the queue, spool, retries and counters).
pub mod buffered;
pub mod file;
pub mod stdout;
pub mod syslog;
pub mod tls;

use std::io;

use crate::{
    config::{SinkConfig, SinkKind, SyslogTransport},
    events::Record,
    events::formats::Format,
};

/// Why a frame could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// The destination is unavailable (connection refused or lost, disk error): close,
    /// back off, reopen, send the frame again.
    Retry(io::Error),
    /// This frame can never be sent (larger than a datagram): drop it and go on.
    Reject(io::Error),
}

/// When a sink must give up whatever it is doing: set by the pipeline at shutdown and
/// consulted by network transports between slices of at most 100 ms of every blocking
/// read or write, so a write to a receiver that trickles cannot outlast the shutdown.
#[derive(Debug, Default)]
pub struct Stop(std::sync::Mutex<Option<std::time::Instant>>);

impl Stop {
    /// Asks for everything to be over by `at`.
    pub fn set(&self, at: std::time::Instant) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(at);
    }

    /// The stop deadline, once set.
    pub fn get(&self) -> Option<std::time::Instant> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Blocking I/O to one destination. Implementations never panic; the pipeline worker owns
/// the transport and calls it from one thread.
pub trait Transport: Send {
    /// Opens the destination: connects (and handshakes), or opens the file, giving up at
    /// `deadline`. An error means "down, try again later".
    fn open(&mut self, deadline: std::time::Instant) -> io::Result<()>;
    /// Whether [`Self::open`] succeeded and nothing failed since.
    fn is_open(&self) -> bool;
    /// Writes one frame by `deadline` (a network peer that has not taken it by then is down:
    /// [`SendError::Retry`]); returns how many bytes it put on the wire (the TLS record
    /// overhead included), used with [`Self::unacked`] to tell which frames the peer has
    /// received.
    fn send(&mut self, frame: &[u8], deadline: std::time::Instant) -> Result<u64, SendError>;
    /// Pushes out buffered bytes (stdout, files); called when the queue runs empty.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Bytes written and not yet acknowledged by the peer (`SIOCOUTQ` for TCP streams); 0
    /// for destinations without acknowledgements.
    fn unacked(&self) -> u64 {
        0
    }
    /// Checks, before writing, that the connection is still usable: a stream whose peer has
    /// closed it must be reopened *before* a frame is written into it and lost.
    fn check(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Closes (TLS close_notify, TCP shutdown, file close). The next send needs `open`.
    fn close(&mut self);
    /// Whether sends are acknowledged through [`Self::unacked`] (TCP, TLS).
    fn acknowledges(&self) -> bool {
        false
    }
    /// Gives the transport the pipeline's [`Stop`]: blocking I/O ends once it is due.
    fn set_stop(&mut self, _stop: std::sync::Arc<Stop>) {}
    /// Records [`Self::send`] took that will never be written, counted once: those given up
    /// since the last call, and with `give_up` (at exit) those still held (a buffer a failed
    /// close kept for the next open).
    fn lost(&mut self, _give_up: bool) -> u64 {
        0
    }
    /// The caller sends again every frame a failed write or close did not take (a sink with
    /// a spool resends from it): the transport keeps nothing across a close, which would
    /// write those frames twice.
    fn set_resends(&mut self) {}
    /// Whether a record counts as delivered when [`Self::settled`] reports it written out
    /// (the buffered local sinks), not when [`Self::send`] takes it.
    fn settles(&self) -> bool {
        false
    }
    /// Records [`Self::send`] took whose last byte has been written out since the last call
    /// (with [`Self::settles`]; a record given up is in [`Self::lost`] instead).
    fn settled(&mut self) -> u64 {
        0
    }
}

/// How records become frames.
#[derive(Clone, Debug)]
pub enum Framing {
    /// Record + `\n`.
    Line,
    /// RFC 5424 message; `octet_counting` prefixes `LEN SP` (RFC 6587 section 3.4.1).
    Syslog {
        /// Header fields.
        header: syslog::HeaderFields,
        /// TCP and TLS: true; UDP: false.
        octet_counting: bool,
    },
}

/// Format and framing of one sink.
#[derive(Clone, Debug)]
pub struct Encoder {
    /// Record format.
    pub format: Format,
    /// Framing.
    pub framing: Framing,
    /// Longest message (syslog: the RFC 5424 message; lines: the record and its newline);
    /// 0: no limit. See [`crate::events::formats::bound`].
    pub max_bytes: usize,
}

/// One encoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Ready for [`Transport::send`].
    pub frame: Vec<u8>,
    /// The record was longer than [`Encoder::max_bytes`] and was truncated.
    pub truncated: bool,
}

impl Encoder {
    /// The encoder a sink config asks for; `host` is the HOSTNAME of syslog messages.
    pub fn for_sink(cfg: &SinkConfig, host: &str) -> Self {
        let framing = match &cfg.kind {
            SinkKind::Stdout | SinkKind::File { .. } => Framing::Line,
            SinkKind::Syslog(s) => Framing::Syslog {
                header: syslog::HeaderFields {
                    facility: s.facility,
                    hostname: syslog::printable(host, 255),
                    app_name: s.app_name.clone(),
                    procid: std::process::id().to_string(),
                },
                octet_counting: s.transport != SyslogTransport::Udp,
            },
        };
        Self {
            format: cfg.format,
            framing,
            max_bytes: cfg.max_message_bytes,
        }
    }

    /// One frame, ready for [`Transport::send`].
    pub fn encode(&self, record: &Record) -> Vec<u8> {
        self.encode_counted(record).frame
    }

    /// One frame, and whether the record had to be truncated to fit [`Self::max_bytes`].
    /// Workload-controlled fields are capped first, whatever the limit
    /// ([`crate::events::formats::bound::cap_record`]).
    pub fn encode_counted(&self, record: &Record) -> Encoded {
        self.encode_with(record, None, None)
    }

    /// As [`Self::encode_counted`], with the next link of `chain` added to the record
    /// ([`crate::events::audit::chain`]); the size bound leaves room for it.
    pub fn encode_sealed(
        &self,
        record: &Record,
        chain: &mut crate::events::audit::chain::Chain,
    ) -> Encoded {
        self.encode_with(record, Some(chain), None)
    }

    /// As [`Self::encode_sealed`], the frame written into `buf` (cleared first; a frame
    /// already sent, handed back by the sink): no allocation per record in a flood.
    pub fn encode_sealed_in(
        &self,
        record: &Record,
        chain: &mut crate::events::audit::chain::Chain,
        buf: Vec<u8>,
    ) -> Encoded {
        self.encode_with(record, Some(chain), Some(buf))
    }

    fn encode_with(
        &self,
        record: &Record,
        chain: Option<&mut crate::events::audit::chain::Chain>,
        buf: Option<Vec<u8>>,
    ) -> Encoded {
        use crate::events::formats::json;
        let capped = crate::events::formats::bound::cap_record(record);
        let record = capped.as_ref().unwrap_or(record);
        let mut body = if self.format == Format::Json {
            // The native format is written in place (into `buf` when given).
            let mut b = buf.unwrap_or_else(|| Vec::with_capacity(json::RECORD_BYTES));
            b.clear();
            json::render_into(record, &mut b);
            b
        } else {
            self.format.render(record)
        };
        let mut truncated = false;
        let link = if chain.is_some() {
            crate::events::audit::chain::MAX_OVERHEAD
        } else {
            0
        };
        let overhead = link
            + match &self.framing {
                Framing::Line => 1,
                // The BOM a non-ASCII body takes counts against the limit too.
                Framing::Syslog { header, .. } => {
                    syslog::message(header, record, b"").len() + syslog::bom_len(&body)
                }
            };
        if self.max_bytes > 0 && body.len() + overhead > self.max_bytes {
            let room = self.max_bytes.saturating_sub(overhead);
            if let Some(b) = crate::events::formats::bound::fit(self.format, &body, room) {
                body = b;
                truncated = true;
            }
        }
        if let Some(c) = chain {
            body = match record {
                // The hot path: the body is its own canonical form, hashed as it is.
                Record::Connection(ev)
                    if self.format == Format::Json
                        && !truncated
                        && json::write::is_canonical(ev) =>
                {
                    c.seal_canonical(body)
                }
                _ => c.seal(self.format, &body),
            };
        }
        let frame = match &self.framing {
            Framing::Line => {
                let mut v = body;
                v.push(b'\n');
                v
            }
            Framing::Syslog {
                header,
                octet_counting,
            } => {
                let msg = syslog::message(header, record, &body);
                if *octet_counting {
                    let mut v = format!("{} ", msg.len()).into_bytes();
                    v.extend_from_slice(&msg);
                    v
                } else {
                    msg
                }
            }
        };
        Encoded { frame, truncated }
    }
}

/// Creates the transport a sink config asks for. Only reads local files (TLS certificates
/// and keys) and opens a file sink's file once to check it; connecting happens later, in
/// [`Transport::open`].
///
/// # Errors
/// Unreadable or invalid CA, certificate or key files; a file sink's path that
/// [`crate::base::safefs`] refuses (a link, a directory others can write, a file others own).
pub fn transport(cfg: &SinkConfig) -> anyhow::Result<Box<dyn Transport>> {
    Ok(match &cfg.kind {
        SinkKind::Stdout => Box::new(stdout::Stdout::new()),
        SinkKind::File { path, mode } => {
            // Refuse an untrusted path at start, not at the first record.
            crate::base::safefs::open_append(path, *mode)?;
            Box::new(file::File::with_mode(path.clone(), *mode))
        }
        SinkKind::Syslog(s) => match s.transport {
            SyslogTransport::Udp => Box::new(syslog::Udp::new(s.address.clone())),
            SyslogTransport::Tcp => Box::new(syslog::Tcp::new(s.address.clone())),
            SyslogTransport::Tls => Box::new(tls::Tls::new(s)?),
        },
    })
}

/// Whether `cfg` names files of its own that [`preflight`] reads: a file sink's path, a TLS
/// sink's certificates and key, a spool.
pub fn has_files(cfg: &SinkConfig) -> bool {
    cfg.spool.is_some()
        || matches!(
            &cfg.kind,
            SinkKind::File { .. }
                | SinkKind::Syslog(crate::config::SyslogConfig {
                    transport: SyslogTransport::Tls,
                    ..
                })
        )
}

/// What [`transport`] and the spool would refuse at `egressd run`, found without changing
/// anything (`egressd check`): a file sink's directory and existing file as
/// [`crate::base::safefs`] judges them (the file is not created), a TLS sink's CA,
/// certificate and key files read and parsed ([`tls::client_config`]), an existing spool
/// directory trusted. Errors name the sink.
///
/// # Errors
/// The first sink that would not start, with why.
pub fn preflight(sinks: &[SinkConfig]) -> anyhow::Result<()> {
    use crate::base::safefs::TrustedDir;
    use anyhow::Context as _;
    for cfg in sinks {
        let name = &cfg.name;
        match &cfg.kind {
            SinkKind::File { path, .. } => {
                let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
                    anyhow::bail!("sink '{name}': {}: not a file path", path.display());
                };
                let dir = TrustedDir::open(dir).with_context(|| format!("sink '{name}'"))?;
                match dir.check_writable(file) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("sink '{name}'")),
                }
            }
            SinkKind::Syslog(s) if s.transport == SyslogTransport::Tls => {
                tls::client_config(s).with_context(|| format!("sink '{name}'"))?;
            }
            SinkKind::Stdout | SinkKind::Syslog(_) => {}
        }
        // A spool directory not made yet is made by `run` under ancestors it judges as
        // such (a sticky /tmp passes there, not as the holding directory): not judged here.
        if let Some(spool) = cfg.spool.as_ref().filter(|s| s.dir.exists()) {
            TrustedDir::open(&spool.dir).with_context(|| format!("sink '{name}': spool"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::sample;

    #[test]
    fn preflight_refuses_what_run_refuses() {
        let t = crate::base::safefs::tests::Tmp::new("preflight");
        let file = |name: &str| {
            let mut cfg = crate::config::SinkConfig::stdout();
            cfg.name = "f".into();
            cfg.kind = SinkKind::File {
                path: t.0.join(name),
                mode: crate::base::safefs::FILE_MODE,
            };
            cfg
        };
        preflight(&[file("new.log")]).expect("a file not made yet");
        std::fs::write(t.0.join("own.log"), "x\n").expect("write");
        preflight(&[file("own.log")]).expect("a file of its own");
        // A second name of another file, and a symbolic link: refused as `run` refuses them.
        std::fs::hard_link(t.0.join("own.log"), t.0.join("hard.log")).expect("link");
        let e = preflight(&[file("hard.log")]).expect_err("hard link");
        assert!(format!("{e:#}").contains("2 hard links"), "{e:#}");
        assert!(format!("{e:#}").starts_with("sink 'f'"), "{e:#}");
        std::os::unix::fs::symlink(t.0.join("new.log"), t.0.join("sym.log")).expect("symlink");
        let e = preflight(&[file("sym.log")]).expect_err("symlink");
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
    }

    #[test]
    fn sinks_example_config_is_valid() {
        let (_, out) = crate::config::parse_all(
            std::path::Path::new("configs/sinks.toml"),
            include_str!("../../../../configs/sinks.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = out.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["stdout", "archive", "siem"]);
        assert_eq!(out.host_labels.len(), 3);
        assert_eq!(out.sinks[2].format, Format::Cef);
        assert!(out.sinks[2].spool.is_some());
    }

    #[test]
    fn line_and_octet_counted_frames() {
        let rec = Record::Connection(Box::new(sample::deny()));
        let mut cfg = crate::config::SinkConfig::stdout();
        let line = Encoder::for_sink(&cfg, "h").encode(&rec);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        cfg.kind = SinkKind::Syslog(crate::config::SyslogConfig {
            transport: SyslogTransport::Tcp,
            address: "127.0.0.1:514".into(),
            server_name: None,
            ca: None,
            client_auth: None,
            facility: 3,
            app_name: "egressd".into(),
        });
        cfg.format = Format::Cef;
        let frame = Encoder::for_sink(&cfg, "storage-eu-1").encode(&rec);
        let text = String::from_utf8(frame).expect("UTF-8");
        let (len, msg) = text.split_once(' ').expect("LEN SP MSG");
        assert_eq!(len.parse::<usize>().expect("number"), msg.len());
        assert!(
            msg.starts_with("<28>1 2026-11-29T09:42:54.018030Z storage-eu-1 egressd "),
            "{msg}"
        );
        assert!(msg.contains(" connection - CEF:0|egressd|"), "{msg}");
    }

    #[test]
    fn message_and_queue_limits_from_the_config() {
        let text = |extra: &str| {
            format!(
                "allowlist = []\n[[sinks]]\ntype = \"syslog\"\naddress = \"127.0.0.1:514\"\n{extra}\n\
                 [[sinks]]\ntype = \"file\"\npath = \"/var/log/e.json\"\n"
            )
        };
        let p = std::path::Path::new("t.toml");
        let (_, out) = crate::config::parse_all(p, &text("")).expect("valid");
        assert_eq!(out.sinks[0].max_message_bytes, 8192);
        assert_eq!(out.sinks[1].max_message_bytes, 0);
        assert_eq!(out.sinks[0].queue_bytes, crate::config::DEFAULT_QUEUE_BYTES);
        let (_, out) = crate::config::parse_all(p, &text("max_message_bytes = 0")).expect("0");
        assert_eq!(out.sinks[0].max_message_bytes, 0);
        let e = crate::config::parse_all(p, &text("max_message_bytes = 100")).expect_err("small");
        assert!(e.to_string().contains("at least 1024"), "{e}");
        let e = crate::config::parse_all(p, &text("queue_bytes = 10")).expect_err("small");
        assert!(e.to_string().contains("queue_bytes"), "{e}");
    }
}
