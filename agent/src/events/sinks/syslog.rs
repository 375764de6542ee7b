//! Syslog (RFC 5424 messages) over UDP (RFC 5426) and TCP (RFC 6587, octet counting).
//!
//! Message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG` where PRI is
//! `facility * 8 + severity`, TIMESTAMP is the record's time in UTC with microseconds (RFC 5424
//! allows at most 6 fractional digits), PROCID is the agent's pid, MSGID the record type
//! (`connection`, `agent_start`, ...), STRUCTURED-DATA is empty (`-`: egressd has no IANA
//! enterprise number to name SD-IDs with), and MSG is the formatted record (the JSON formats
//! escape control characters, CEF escapes line breaks).
//!
//! MSG encoding (RFC 5424 section 6.4): a record holding any non-ASCII character (a process
//! named `Zürich`) is UTF-8 and goes as MSG-UTF8, i.e. after the byte order mark `EF BB BF`
//! the RFC requires there; an all-ASCII record (almost all of them) goes as MSG-ANY, without
//! it. Not always adding the BOM keeps the usual message byte for byte what receivers and
//! CEF parsers read today: rsyslog, for one, keeps the BOM in `%msg%` (checked by
//! `agent/tests/sinks.rs`), and a parser that anchors at `CEF:` or hands MSG to a JSON parser
//! must skip it. Receivers that read non-ASCII records should strip a leading BOM.
//!
//! Severity: a denial (or a `connection_summary` of denials) is 4 (warning), an audit event
//! (or summary) 5 (notice), `reload_failed`,
//! `policy_fallback` and `tamper_repaired` 3 (error),
//! `agent_stop` and `heartbeat` 4 when they count lost records, else 5 (start, stop, policy)
//! or 6 (heartbeat, informational).
//!
//! Delivery over TCP: before each write the socket is checked for a close by the peer (a
//! receiver that restarted closed it), and frames stay "in flight" until the kernel reports
//! their bytes acknowledged by the peer's TCP (`SIOCOUTQ`); if the connection fails first they
//! are sent again on the next one. Loss is then limited to data the receiver acknowledged and
//! did not process before dying. Every write has a deadline (the pipeline gives each frame
//! [`SEND_TIMEOUT`]; the socket's timeout is set to the time left before each call), so a
//! receiver that stops reading or trickles counts as down: the connection is closed and
//! what was not acknowledged is sent again later, from the spool. UDP has no
//! acknowledgement: a datagram sent while the receiver is down is lost (only local send
//! errors are retried).
use std::{
    io::{self, Write as _},
    net::{SocketAddr, TcpStream, ToSocketAddrs as _, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use super::{SendError, Stop, Transport};
use crate::events::{LifecycleBody, Record};

/// Connect timeout per address.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time a receiver gets to take one whole frame (the pipeline's send deadline): one that
/// stops reading, or trickles (a byte every few seconds), is treated as down when a frame
/// is not written by then, however much each single write progressed.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection (TCP connect, TLS handshake) gets to open.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Fixed header fields of a sink's messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderFields {
    /// Facility code 0-23.
    pub facility: u8,
    /// HOSTNAME (printable ASCII, at most 255).
    pub hostname: String,
    /// APP-NAME.
    pub app_name: String,
    /// PROCID.
    pub procid: String,
}

/// Replaces characters outside printable ASCII (33-126) by `_` and bounds the length; `-` when
/// empty (the RFC 5424 NILVALUE).
pub fn printable(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    if out.is_empty() { "-".into() } else { out }
}

/// RFC 5424 severity of a record (see the module docs).
pub fn severity(record: &Record) -> u8 {
    match record {
        Record::Connection(c) => {
            if c.verdict == "audit" {
                5
            } else {
                4
            }
        }
        Record::Summary(s) => {
            if s.verdict == "audit" {
                5
            } else {
                4
            }
        }
        Record::Lifecycle(l) => match &l.body {
            LifecycleBody::ReloadFailed { .. }
            | LifecycleBody::PolicyFallback { .. }
            | LifecycleBody::TamperRepaired { .. } => 3,
            LifecycleBody::Stop { counters, .. } if counters.lost.total() > 0 => 4,
            LifecycleBody::Heartbeat { counters, .. } if counters.lost.total() > 0 => 4,
            LifecycleBody::Heartbeat { .. } => 6,
            _ => 5,
        },
    }
}

/// RFC 3339 UTC with microseconds, as RFC 5424 TIMESTAMP allows.
pub fn timestamp(unix_ns: i128) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    t.format(&fmt).unwrap_or_else(|_| "-".into())
}

/// The UTF-8 byte order mark that starts a MSG-UTF8 (RFC 5424 section 6.4).
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Octets [`message`] adds before `body` beyond the header: [`BOM`] when `body` is not ASCII.
pub fn bom_len(body: &[u8]) -> usize {
    if body.is_ascii() { 0 } else { BOM.len() }
}

/// The RFC 5424 message (without transport framing) carrying `body`, which starts with
/// [`BOM`] when `body` holds non-ASCII UTF-8 (see the module docs).
pub fn message(h: &HeaderFields, record: &Record, body: &[u8]) -> Vec<u8> {
    let header = record.header();
    let pri = u16::from(h.facility) * 8 + u16::from(severity(record));
    let mut v = format!(
        "<{pri}>1 {} {} {} {} {} - ",
        timestamp(header.unix_ns),
        h.hostname,
        h.app_name,
        h.procid,
        printable(header.kind, 32)
    )
    .into_bytes();
    if bom_len(body) > 0 {
        v.extend_from_slice(BOM);
    }
    v.extend_from_slice(body);
    v
}

/// Resolves `HOST:PORT` (each attempt, so DNS changes are followed) and connects to the first
/// address that answers, giving up at `deadline`.
///
/// # Errors
/// No address answered before `deadline` (`TimedOut` once it passed).
pub fn connect(address: &str, deadline: Instant) -> io::Result<TcpStream> {
    let mut last = io::Error::other(format!("{address}: no address"));
    for addr in address.to_socket_addrs()? {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{address}: no connection before the deadline"),
            ));
        }
        match TcpStream::connect_timeout(&addr, left.min(CONNECT_TIMEOUT)) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = io::Error::new(e.kind(), format!("{addr}: {e}")),
        }
    }
    Err(last)
}

/// The error of a write or read that did not finish by its deadline.
pub fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "{what} did not finish before its deadline: the receiver is not reading (or too slowly)"
        ),
    )
}

/// Longest single blocking call of a [`Deadline`] socket, so a [`Stop`] is noticed soon.
const SLICE: Duration = Duration::from_millis(100);

/// A socket whose reads and writes give up at a deadline (or at the pipeline's [`Stop`]),
/// whatever each single call progressed: calls block at most [`SLICE`] at a time.
pub struct Deadline<'a> {
    /// The socket.
    pub sock: &'a TcpStream,
    /// When the whole operation must be done.
    pub deadline: Instant,
    /// The pipeline's stop, if any.
    pub stop: Option<&'a Stop>,
}

impl Deadline<'_> {
    /// Runs `op` with the socket's timeout set to at most [`SLICE`], again while it times
    /// out and time is left.
    fn run(
        &mut self,
        what: &str,
        op: impl Fn(&TcpStream, Duration) -> io::Result<usize>,
    ) -> io::Result<usize> {
        loop {
            // Read each time: the stop may be set while this call waits.
            let until = match self.stop.and_then(Stop::get) {
                Some(s) => s.min(self.deadline),
                None => self.deadline,
            };
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out(what));
            }
            match op(self.sock, left.min(SLICE)) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                r => return r,
            }
        }
    }
}

impl io::Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.run("a write", |s, t| {
            s.set_write_timeout(Some(t))?;
            let mut s = s;
            s.write(buf)
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // `Fn` cannot hand out `buf` mutably: read through a raw pointer's length instead.
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        self.run("a read", |s, t| {
            s.set_read_timeout(Some(t))?;
            // SAFETY: `ptr`/`len` describe `buf`, borrowed mutably for this whole call and
            // used by no one else meanwhile.
            let b = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
            let mut s = s;
            io::Read::read(&mut s, b)
        })
    }
}

/// Bytes in the socket's send queue not yet acknowledged by the peer (`SIOCOUTQ`, see
/// `tcp(7)`); `u64::MAX` when the ioctl fails (nothing counts as acknowledged then).
pub fn unacked_bytes(s: &TcpStream) -> u64 {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (== SIOCOUTQ) writes one int.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc == 0 {
        u64::try_from(n).unwrap_or(0)
    } else {
        u64::MAX
    }
}

/// What a non-blocking peek at a stream says.
pub enum Peek {
    /// Nothing to read: the connection looks fine.
    Idle,
    /// The peer sent data (TLS records from the server).
    Data,
    /// The peer closed the connection.
    Closed,
}

/// Peeks at the socket without blocking or consuming.
pub fn peek(s: &TcpStream) -> io::Result<Peek> {
    let mut b = [0u8; 1];
    // SAFETY: reads at most one byte into `b`; MSG_PEEK leaves it in the socket.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Ok(Peek::Closed),
        n if n > 0 => Ok(Peek::Data),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                Ok(Peek::Idle)
            } else {
                Err(e)
            }
        }
    }
}

/// Syslog over TCP with octet counting.
pub struct Tcp {
    address: String,
    stream: Option<TcpStream>,
    stop: std::sync::Arc<Stop>,
}

impl Tcp {
    /// A sink for `HOST:PORT` (connected on first use).
    pub fn new(address: String) -> Self {
        Self {
            address,
            stream: None,
            stop: std::sync::Arc::default(),
        }
    }
}

impl Transport for Tcp {
    fn open(&mut self, deadline: Instant) -> io::Result<()> {
        self.stream = Some(connect(&self.address, deadline)?);
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    fn send(&mut self, frame: &[u8], deadline: Instant) -> Result<u64, SendError> {
        let sock = self
            .stream
            .as_ref()
            .ok_or_else(|| SendError::Retry(io::Error::other("not connected")))?;
        Deadline {
            sock,
            deadline,
            stop: Some(&self.stop),
        }
        .write_all(frame)
        .map_err(SendError::Retry)?;
        Ok(frame.len() as u64)
    }

    fn unacked(&self) -> u64 {
        self.stream.as_ref().map_or(0, unacked_bytes)
    }

    fn check(&mut self) -> io::Result<()> {
        match self.stream.as_ref().map(peek).transpose()? {
            Some(Peek::Closed) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the receiver closed the connection",
            )),
            // A syslog receiver sends nothing; ignore anything it does send.
            _ => Ok(()),
        }
    }

    fn close(&mut self) {
        if let Some(s) = self.stream.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn acknowledges(&self) -> bool {
        true
    }

    fn set_stop(&mut self, stop: std::sync::Arc<Stop>) {
        self.stop = stop;
    }
}

/// Syslog over UDP, one message per datagram.
pub struct Udp {
    address: String,
    sock: Option<UdpSocket>,
}

impl Udp {
    /// A sink for `HOST:PORT`.
    pub fn new(address: String) -> Self {
        Self {
            address,
            sock: None,
        }
    }
}

impl Transport for Udp {
    fn open(&mut self, _deadline: Instant) -> io::Result<()> {
        let addr: SocketAddr = self
            .address
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::other(format!("{}: no address", self.address)))?;
        let bind: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let s = UdpSocket::bind(bind)?;
        s.connect(addr)?;
        s.set_write_timeout(Some(SEND_TIMEOUT))?;
        self.sock = Some(s);
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.sock.is_some()
    }

    fn send(&mut self, frame: &[u8], _deadline: Instant) -> Result<u64, SendError> {
        let s = self
            .sock
            .as_ref()
            .ok_or_else(|| SendError::Retry(io::Error::other("not open")))?;
        match s.send(frame) {
            Ok(_) => Ok(frame.len() as u64),
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => Err(SendError::Reject(e)),
            Err(e) => Err(SendError::Retry(e)),
        }
    }

    fn close(&mut self) {
        self.sock = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::sample;

    #[test]
    fn header_fields_and_severities() {
        let h = HeaderFields {
            facility: 16,
            hostname: printable("storage eu\n1", 255),
            app_name: "egressd".into(),
            procid: "42".into(),
        };
        assert_eq!(h.hostname, "storage_eu_1");
        let deny = Record::Connection(Box::new(sample::deny()));
        let msg = String::from_utf8(message(&h, &deny, b"{}")).expect("UTF-8");
        assert_eq!(
            msg,
            "<132>1 2026-11-29T09:42:54.018030Z storage_eu_1 egressd 42 connection - {}"
        );
        let audit = Record::Connection(Box::new(sample::audit_exited()));
        assert_eq!(severity(&audit), 5);
        let sev: Vec<u8> = sample::lifecycle()
            .into_iter()
            .map(|l| severity(&Record::Lifecycle(Box::new(l))))
            .collect();
        // start, policy loaded, heartbeat with losses, stop with losses, reload failed,
        // policy fallback, tamper repaired
        assert_eq!(sev, [5, 5, 4, 4, 3, 3, 3]);
        let utf8 = message(&h, &deny, "{\"n\":\"Zürich\"}".as_bytes());
        let at = utf8.len() - "{\"n\":\"Zürich\"}".len();
        assert_eq!(
            &utf8[at - 5..at],
            b"- \xEF\xBB\xBF",
            "BOM right after the SP"
        );
        assert_eq!(printable("", 3), "-");
        assert_eq!(printable("abcdef", 3), "abc");
    }
}
