//! Syslog over TLS (RFC 5425): octet-counted RFC 5424 messages inside a TLS connection made
//! with rustls (TLS 1.2 and 1.3, the `ring` provider).
//!
//! The server certificate must chain to a CA in `ca` (PEM; default: the system bundle
//! `/etc/ssl/certs/ca-certificates.crt`) and name `server_name` (default: the host part of
//! `address`; an IP address is matched against the certificate's IP SANs). With `cert` and
//! `key` (PEM: certificate chain; PKCS#8, PKCS#1 or SEC1 key) the client authenticates, as
//! RFC 5425 section 5.3 expects of mutually authenticated transports.
//!
//! The TLS I/O is driven by hand over a blocking socket so each frame's ciphertext length is
//! known: with `SIOCOUTQ` on the socket that tells which frames the server's TCP acknowledged
//! (see [`super::syslog`]). The handshake and every write have deadlines (see
//! [`super::syslog::Deadline`]); the close_notify at close gets 200 ms.
use std::{
    io::{self, Write as _},
    net::TcpStream,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use rustls::{
    ClientConfig, ClientConnection, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
};

use super::{
    SendError, Stop, Transport,
    syslog::{Deadline, Peek, SEND_TIMEOUT, connect, peek, unacked_bytes},
};
use crate::config::SyslogConfig;

/// System CA bundle used when a TLS sink names no `ca`.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Builds the rustls client configuration of a TLS sink.
///
/// # Errors
/// A CA, certificate or key file that cannot be read or holds no usable PEM item; a key
/// file others can read ([`check_key_mode`]).
pub fn client_config(cfg: &SyslogConfig) -> anyhow::Result<ClientConfig> {
    if let Some((_, key)) = &cfg.client_auth {
        check_key_mode(key)?;
    }
    let ca = cfg
        .ca
        .as_deref()
        .unwrap_or_else(|| Path::new(SYSTEM_CA_BUNDLE));
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("reading CA certificates from {}", ca.display()))?;
    for c in certs {
        let c = c.with_context(|| format!("parsing {}", ca.display()))?;
        roots
            .add(c)
            .with_context(|| format!("adding a CA certificate from {}", ca.display()))?;
    }
    if roots.is_empty() {
        anyhow::bail!("{}: no CA certificate found", ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    Ok(match &cfg.client_auth {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("reading client certificate {}", cert.display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("parsing {}", cert.display()))?;
            if chain.is_empty() {
                anyhow::bail!("{}: no certificate found", cert.display());
            }
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading private key {}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("client certificate and key do not match")?
        }
    })
}

/// Refuses a private key file that others could read or change: any access for others, or
/// for a group other than root's (like ssh with its keys; Debian's `ssl-cert` group
/// convention needs `chgrp root` or mode 0600 here).
///
/// # Errors
/// The key cannot be examined, or its mode or group lets others in (the error names the
/// file, its mode and the fix).
pub fn check_key_mode(key: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(key).with_context(|| format!("private key {}", key.display()))?;
    let mode = m.mode() & 0o7777;
    if mode & 0o007 != 0 || (mode & 0o070 != 0 && m.gid() != 0) {
        anyhow::bail!(
            "private key {} is accessible by {} (mode {mode:04o}, group {}): refusing to use \
             it; chmod 0600 it (or 0640 with group root)",
            key.display(),
            if mode & 0o007 != 0 {
                "others"
            } else {
                "its group"
            },
            m.gid()
        );
    }
    Ok(())
}

/// A TLS syslog connection.
pub struct Tls {
    address: String,
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
    conn: Option<(ClientConnection, TcpStream)>,
    stop: Arc<Stop>,
}

impl Tls {
    /// Reads the certificate files now (errors surface at start), connects later.
    ///
    /// # Errors
    /// See [`client_config`]; an invalid `server_name`.
    pub fn new(cfg: &SyslogConfig) -> anyhow::Result<Self> {
        let host = match &cfg.server_name {
            Some(n) => n.clone(),
            None => crate::config::host_port(&cfg.address)
                .map(|(h, _)| h)
                .with_context(|| format!("invalid address {}", cfg.address))?,
        };
        let name = ServerName::try_from(host.clone())
            .with_context(|| format!("invalid TLS server name {host}"))?;
        Ok(Self {
            address: cfg.address.clone(),
            name,
            config: Arc::new(client_config(cfg)?),
            conn: None,
            stop: Arc::default(),
        })
    }
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// How long the close_notify alert may take at close.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(200);

/// Writes everything rustls has queued, by `deadline` (or `stop`); returns the bytes
/// written.
fn push(
    conn: &mut ClientConnection,
    sock: &TcpStream,
    deadline: Instant,
    stop: Option<&Stop>,
) -> io::Result<u64> {
    let mut n = 0;
    let mut w = Deadline {
        sock,
        deadline,
        stop,
    };
    while conn.wants_write() {
        n += conn.write_tls(&mut w)? as u64;
    }
    Ok(n)
}

impl Transport for Tls {
    fn open(&mut self, deadline: Instant) -> io::Result<()> {
        let sock = connect(&self.address, deadline)?;
        let mut conn =
            ClientConnection::new(self.config.clone(), self.name.clone()).map_err(tls_err)?;
        // The whole handshake by the deadline: a server that trickles its answer is down.
        let mut io = Deadline {
            sock: &sock,
            deadline,
            stop: Some(&self.stop),
        };
        while conn.is_handshaking() {
            conn.complete_io(&mut io)?;
        }
        push(&mut conn, &sock, deadline, Some(&self.stop))?;
        self.conn = Some((conn, sock));
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    fn send(&mut self, frame: &[u8], deadline: Instant) -> Result<u64, SendError> {
        let (conn, sock) = self
            .conn
            .as_mut()
            .ok_or_else(|| SendError::Retry(io::Error::other("not connected")))?;
        conn.writer().write_all(frame).map_err(SendError::Retry)?;
        push(conn, sock, deadline, Some(&self.stop)).map_err(SendError::Retry)
    }

    fn unacked(&self) -> u64 {
        self.conn.as_ref().map_or(0, |(_, s)| unacked_bytes(s))
    }

    fn check(&mut self) -> io::Result<()> {
        let Some((conn, sock)) = self.conn.as_mut() else {
            return Ok(());
        };
        match peek(sock)? {
            Peek::Idle => Ok(()),
            Peek::Closed => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the receiver closed the connection",
            )),
            Peek::Data => {
                // Session tickets, key updates or an alert: let rustls process them.
                conn.read_tls(sock)?;
                let state = conn.process_new_packets().map_err(tls_err)?;
                if state.peer_has_closed() {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the receiver closed the TLS session",
                    ));
                }
                let mut sink = [0u8; 512];
                while let Ok(n) = io::Read::read(&mut conn.reader(), &mut sink) {
                    if n == 0 {
                        break;
                    }
                }
                push(conn, sock, Instant::now() + SEND_TIMEOUT, Some(&self.stop)).map(|_| ())
            }
        }
    }

    fn close(&mut self) {
        if let Some((mut conn, sock)) = self.conn.take() {
            conn.send_close_notify();
            let _ = push(&mut conn, &sock, Instant::now() + CLOSE_TIMEOUT, None);
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
    }

    fn acknowledges(&self) -> bool {
        true
    }

    fn set_stop(&mut self, stop: Arc<Stop>) {
        self.stop = stop;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// Issue 22 item 9: a client key readable by others (0644) is refused, naming it;
    /// 0600 and 0640 with group root pass the check.
    #[test]
    fn world_readable_client_key_is_refused() {
        let t = crate::base::safefs::tests::Tmp::new("tls-key");
        let key = t.0.join("client.key");
        std::fs::write(&key, "not a key").expect("write");
        let cfg = SyslogConfig {
            transport: crate::config::SyslogTransport::Tls,
            address: "127.0.0.1:6514".into(),
            server_name: None,
            ca: Some(t.0.join("no-ca.pem")),
            client_auth: Some((t.0.join("client.pem"), key.clone())),
            facility: 3,
            app_name: "egressd".into(),
        };
        for (mode, refused) in [(0o644, true), (0o604, true), (0o600, false)] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let e = client_config(&cfg)
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default();
            assert_eq!(e.contains("refusing to use it"), refused, "{mode:o}: {e}");
            if refused {
                assert!(e.contains(&key.display().to_string()), "{e}");
            }
        }
        if crate::base::safefs::euid() == 0 {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
            std::os::unix::fs::chown(&key, None, Some(0)).expect("chgrp");
            check_key_mode(&key).expect("0640 root:root");
            std::os::unix::fs::chown(&key, None, Some(65534)).expect("chgrp");
            check_key_mode(&key).expect_err("0640 with another group");
        }
    }
}
