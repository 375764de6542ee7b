//! Field offsets of the running kernel's structures for the LSM programs, read from its BTF
//! (`/sys/kernel/btf/vmlinux`, with btf-rs): the Rust eBPF toolchain emits no CO-RE
//! relocations, so userspace resolves each field by name, as libbpf's CO-RE would, and
//! passes the result as a read-only global ([`egressd_common::KernelOffsets`]). Nothing is
//! hard-coded per kernel version; a kernel whose structures lack a field gets no LSM
//! programs, and the coverage report says why.
use anyhow::{Context as _, anyhow, bail};
use btf_rs::{Backend, Btf, Type};
use egressd_common::KernelOffsets;

/// Where the kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Offsets of the fields the LSM programs read, from the running kernel's BTF.
///
/// # Errors
/// No kernel BTF (`CONFIG_DEBUG_INFO_BTF`), or a structure or field is not found (named in
/// the error).
pub fn kernel_offsets() -> anyhow::Result<KernelOffsets> {
    // Once per process: the coverage probe and the loader both ask.
    static ONCE: std::sync::OnceLock<Result<KernelOffsets, String>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let btf = open().map_err(|e| format!("{e:#}"))?;
        of(&btf).map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// The kernel's BTF, mapped rather than parsed up front (btf-rs' cached backend indexes all
/// of its ~100,000 types first: half a second natively, many seconds under emulation). Kernels
/// before 6.15 cannot map `/sys/kernel/btf/vmlinux`; its bytes are then copied into a memfd,
/// which can.
fn open() -> anyhow::Result<Btf> {
    if let Ok(btf) = Btf::from_file_with_backend(VMLINUX_BTF, Backend::Mmap) {
        return Ok(btf);
    }
    let bytes = std::fs::read(VMLINUX_BTF).with_context(|| format!("reading {VMLINUX_BTF}"))?;
    // SAFETY: plain syscall with a static NUL-terminated name; the fd is owned below.
    let fd = unsafe { libc::memfd_create(c"egressd-btf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("memfd_create");
    }
    // SAFETY: a fresh descriptor we own.
    let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    std::io::Write::write_all(&mut file, &bytes).context("copying the kernel BTF")?;
    let path = format!("/proc/self/fd/{fd}");
    Btf::from_file_with_backend(&path, Backend::Mmap)
        .map_err(|e| anyhow!("reading {VMLINUX_BTF} (copied): {e}"))
}

/// As [`kernel_offsets`] for a parsed BTF.
fn of(btf: &Btf) -> anyhow::Result<KernelOffsets> {
    let byte = |s: &str, f: &str| -> anyhow::Result<u16> {
        let (bits, bitfield) = member(btf, s, f)?;
        if bitfield.is_some_and(|b| b != 0) || bits % 8 != 0 {
            bail!("struct {s} field {f} is a bit field");
        }
        u16::try_from(bits / 8).with_context(|| format!("struct {s} field {f} lies too far"))
    };
    let sk_common = byte("sock", "__sk_common")?;
    let (hdrincl_byte, hdrincl_mask) = hdrincl(btf)?;
    Ok(KernelOffsets {
        valid: 1,
        socket_type: byte("socket", "type")?,
        socket_sk: byte("socket", "sk")?,
        skc_family: sk_common + byte("sock_common", "skc_family")?,
        skc_daddr: sk_common + byte("sock_common", "skc_daddr")?,
        skc_v6_daddr: sk_common + byte("sock_common", "skc_v6_daddr")?,
        sk_protocol: byte("sock", "sk_protocol")?,
        hdrincl_byte,
        hdrincl_mask,
        _pad: 0,
        msg_name: byte("msghdr", "msg_name")?,
        msg_namelen: byte("msghdr", "msg_namelen")?,
        task_mm: byte("task_struct", "mm")?,
        mm_exe_file: byte("mm_struct", "exe_file")?,
        file_inode: byte("file", "f_inode")?,
        inode_ino: byte("inode", "i_ino")?,
        inode_sb: byte("inode", "i_sb")?,
        sb_dev: byte("super_block", "s_dev")?,
    })
}

/// The header-include flag of `struct inet_sock`: the bit field `hdrincl` (before 6.6) or
/// bit `INET_FLAGS_HDRINCL` of `inet_flags` (6.6 and later), as (byte, mask).
fn hdrincl(btf: &Btf) -> anyhow::Result<(u16, u8)> {
    let bit = match member(btf, "inet_sock", "hdrincl") {
        Ok((bits, _)) => bits,
        Err(_) => {
            let (flags, _) = member(btf, "inet_sock", "inet_flags")
                .context("struct inet_sock has neither hdrincl nor inet_flags")?;
            flags + enum_value(btf, "INET_FLAGS_HDRINCL")?
        }
    };
    // Little-endian bit numbering: bit n of a field lies in byte n / 8, at n % 8.
    Ok((u16::try_from(bit / 8)?, 1u8 << (bit % 8)))
}

/// (bit offset, bit-field size) of field `field` in struct `name`, looking through
/// anonymous structs and unions.
fn member(btf: &Btf, name: &str, field: &str) -> anyhow::Result<(u32, Option<u32>)> {
    let types = btf
        .resolve_types_by_name(name)
        .map_err(|e| anyhow!("struct {name} not in the kernel BTF: {e}"))?;
    for t in types {
        if let Type::Struct(s) = t
            && let Some(found) = find(btf, &s, field, 0)
        {
            return Ok(found);
        }
    }
    bail!("struct {name} has no field {field} in the kernel BTF")
}

fn find(btf: &Btf, s: &btf_rs::Struct, field: &str, base: u32) -> Option<(u32, Option<u32>)> {
    for m in &s.members {
        let name = btf.resolve_name(m).ok()?;
        if name == field {
            return Some((base + m.bit_offset(), m.bitfield_size()));
        }
        if name.is_empty()
            && let Ok(Type::Struct(inner) | Type::Union(inner)) = btf.resolve_chained_type(m)
            && let Some(found) = find(btf, &inner, field, base + m.bit_offset())
        {
            return Some(found);
        }
    }
    None
}

/// The value of enumerator `name` (enumerators are not types: every enum is searched).
fn enum_value(btf: &Btf, name: &str) -> anyhow::Result<u32> {
    let (first, last) = btf.base().type_id_range();
    for id in first..=last {
        if let Ok(Type::Enum(e)) = btf.resolve_type_by_id(id) {
            for m in &e.members {
                if btf.resolve_name(m).is_ok_and(|n| n == name) {
                    return Ok(m.val());
                }
            }
        }
    }
    bail!("enumerator {name} not in the kernel BTF")
}

#[cfg(test)]
mod tests {
    /// Every field resolves on the machine's kernel (skipped without kernel BTF).
    #[test]
    fn offsets_of_this_kernel() {
        if !std::path::Path::new(super::VMLINUX_BTF).exists() {
            return;
        }
        let o = super::kernel_offsets().expect("offsets");
        assert_eq!(o.valid, 1);
        // sk_common is the first member of struct sock; the daddr pair comes first in it.
        assert_eq!(o.skc_daddr, 0);
        assert!(o.skc_v6_daddr > o.skc_family);
        assert_ne!(o.hdrincl_mask, 0);
        assert!(o.msg_namelen > o.msg_name);
    }
}
