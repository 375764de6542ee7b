//! `BPF_PROG_TEST_RUN` for the packet programs: runs a loaded program on a crafted packet
//! without attaching it (used by the differential test and the benchmarks).
//!
//! aya 0.14 has no public API for it, so this issues `bpf(2)` directly with the `test` member
//! of `union bpf_attr` (`include/uapi/linux/bpf.h`). For `cgroup_skb` programs the input must
//! start with an Ethernet header; the kernel strips it and runs the program with the data
//! starting at the IP header, as at the real hook.
use std::{
    net::IpAddr,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// `BPF_PROG_TEST_RUN` command number.
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Outcome of a test run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The program's return value (for `cgroup_skb`: 1 pass, 0 drop).
    pub retval: u32,
    /// Average run time per repetition in nanoseconds, as measured by the kernel.
    pub duration_ns: u32,
}

/// Runs program `prog` on `packet` `repeat` times (at least once).
///
/// Errors: the `bpf(2)` errno (e.g. `EINVAL` for a packet shorter than an Ethernet header,
/// `ENOTSUPP` on kernels without test runs for this program type).
pub fn run(prog: BorrowedFd<'_>, packet: &[u8], repeat: u32) -> std::io::Result<Outcome> {
    let mut attr = TestRunAttr {
        prog_fd: u32::try_from(prog.as_raw_fd()).map_err(std::io::Error::other)?,
        data_size_in: u32::try_from(packet.len()).map_err(std::io::Error::other)?,
        data_in: packet.as_ptr() as u64,
        repeat: repeat.max(1),
        ..Default::default()
    };
    // SAFETY: `attr` is a valid bpf_attr prefix of the size passed; `packet` outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &raw mut attr,
            size_of::<TestRunAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Outcome {
        retval: attr.retval,
        duration_ns: attr.duration,
    })
}

/// An Ethernet frame carrying an IPv4 or IPv6 UDP datagram from a documentation address to
/// `dst`:`port` with `payload` bytes of zeros. Checksums are left zero (the programs do not
/// read them). An IPv4-mapped `dst` is sent as an IPv6 packet to that address.
pub fn udp_frame(dst: IpAddr, port: u16, payload: usize) -> Vec<u8> {
    frame(dst, 17, port, payload)
}

/// As [`udp_frame`] with IP protocol `protocol` in the IP header. The 8 bytes after the IP
/// header are laid out as a UDP header (source port, destination port `port`, length,
/// checksum), which is also where TCP keeps its ports; for other protocols the program
/// reads no port.
pub fn frame(dst: IpAddr, protocol: u8, port: u16, payload: usize) -> Vec<u8> {
    shaped_frame(dst, protocol, port, payload, &Shape::default())
}

/// What sits between the fixed IP header and the upper-layer header of a crafted packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// IPv4 option bytes (padded with end-of-list to a multiple of 4; at most 40).
    pub v4_options: Vec<u8>,
    /// IPv4 fragment offset in 8-byte units (non-zero: a later fragment).
    pub v4_fragment_offset: u16,
    /// IPv6 extension headers in order, as (header type, bytes after its first two); the
    /// builder fills in the next-header and length bytes and pads to the header's unit
    /// (8 bytes; 4 for AH, RFC 4302).
    pub v6_ext: Vec<(u8, Vec<u8>)>,
}

/// As [`frame`], with IPv4 options, a fragment offset or IPv6 extension headers (`shape`).
pub fn shaped_frame(
    dst: IpAddr,
    protocol: u8,
    port: u16,
    payload: usize,
    shape: &Shape,
) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    let udp_len = 8 + payload;
    match dst {
        IpAddr::V4(d) => {
            let mut opts = shape.v4_options.clone();
            opts.resize(opts.len().div_ceil(4) * 4, 0);
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let ihl = 20 + opts.len();
            let total = u16::try_from(ihl + udp_len).unwrap_or(u16::MAX);
            f.extend_from_slice(&[0x40 | u8::try_from(ihl / 4).unwrap_or(15), 0]);
            f.extend_from_slice(&total.to_be_bytes());
            f.extend_from_slice(&[0, 0]);
            f.extend_from_slice(&(shape.v4_fragment_offset & 0x1fff).to_be_bytes());
            f.extend_from_slice(&[64, protocol, 0, 0]);
            f.extend_from_slice(&[198, 18, 0, 1]);
            f.extend_from_slice(&d.octets());
            f.extend_from_slice(&opts);
        }
        IpAddr::V6(d) => {
            let mut ext = Vec::new();
            let types: Vec<u8> = shape.v6_ext.iter().map(|(t, _)| *t).collect();
            for (i, (kind, body)) in shape.v6_ext.iter().enumerate() {
                let next = types.get(i + 1).copied().unwrap_or(protocol);
                let unit = if *kind == 51 { 4 } else { 8 };
                let mut h = vec![next, 0];
                h.extend_from_slice(body);
                h.resize((h.len().max(8)).div_ceil(unit) * unit, 0);
                let len = if *kind == 51 {
                    h.len() / 4 - 2
                } else if *kind == 44 {
                    0
                } else {
                    h.len() / 8 - 1
                };
                h[1] = u8::try_from(len).unwrap_or(u8::MAX);
                ext.extend_from_slice(&h);
            }
            f.extend_from_slice(&0x86DDu16.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(
                &u16::try_from(ext.len() + udp_len)
                    .unwrap_or(u16::MAX)
                    .to_be_bytes(),
            );
            f.extend_from_slice(&[types.first().copied().unwrap_or(protocol), 64]);
            f.extend_from_slice(&std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets());
            f.extend_from_slice(&d.octets());
            f.extend_from_slice(&ext);
        }
    }
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&u16::try_from(udp_len).unwrap_or(u16::MAX).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(f.len() + payload, 0);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_right_shape() {
        let f = udp_frame("198.18.2.2".parse().expect("ip"), 53, 4);
        assert_eq!(f.len(), 14 + 20 + 8 + 4);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(&f[30..34], &[198, 18, 2, 2]);
        assert_eq!(&f[36..38], &53u16.to_be_bytes());
        let f = udp_frame("2001:db8:2::2".parse().expect("ip"), 443, 0);
        assert_eq!(f.len(), 14 + 40 + 8);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(f[20], 17);
        assert_eq!(&f[56..58], &443u16.to_be_bytes());
    }
}
