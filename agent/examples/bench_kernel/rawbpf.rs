//! Raw `bpf(2)` for what the benchmark loads itself (aya is only used through egressd's
//! loader): maps, tiny hand-assembled programs and their bpf_links to a cgroup,
//! `BPF_PROG_TEST_RUN` via egressd, program run statistics, and map memory from
//! `/proc/self/fdinfo`.
//!
//! Layouts follow `include/uapi/linux/bpf.h`; every attribute struct is zero-initialised
//! and passed with its own size, so the kernel sees zeros in every field not named here.
use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;

/// `BPF_MAP_TYPE_ARRAY`.
pub const MAP_ARRAY: u32 = 2;
/// `BPF_MAP_TYPE_LPM_TRIE`.
pub const MAP_LPM_TRIE: u32 = 11;
/// `BPF_F_NO_PREALLOC` (required for LPM tries).
pub const F_NO_PREALLOC: u32 = 1;
/// `BPF_F_MMAPABLE`: array memory can be `mmap`ed and filled from userspace.
pub const F_MMAPABLE: u32 = 1 << 10;
/// `BPF_PROG_TYPE_CGROUP_SKB`.
pub const PROG_CGROUP_SKB: u32 = 8;
/// `BPF_PROG_TYPE_CGROUP_SOCK`.
pub const PROG_CGROUP_SOCK: u32 = 9;
/// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR`.
pub const PROG_CGROUP_SOCK_ADDR: u32 = 18;

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix of the size passed; pointers it
    // carries point to live buffers owned by the caller for the duration of the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this new descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// Creates a map.
pub fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
) -> io::Result<OwnedFd> {
    let mut a = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags: flags,
    };
    owned(sys_bpf(BPF_MAP_CREATE, &mut a)?)
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `BPF_MAP_UPDATE_ELEM` with `BPF_ANY`.
pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut a = MapElemAttr {
        map_fd: u32::try_from(map.as_raw_fd()).map_err(io::Error::other)?,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        ..Default::default()
    };
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads `insns` as a `BPF_PROG_TYPE_CGROUP_SKB` program named `name`; on rejection the
/// error carries the verifier log.
pub fn prog_load_skb(name: &str, insns: &[Insn]) -> io::Result<OwnedFd> {
    prog_load(PROG_CGROUP_SKB, 0, name, insns)
}

/// Loads `insns` as a program of type `prog_type` (`enum bpf_prog_type`) for
/// `expected_attach_type` (`enum bpf_attach_type`; 0 where the type needs none) named
/// `name`; on rejection the error carries the verifier log.
pub fn prog_load(
    prog_type: u32,
    expected_attach_type: u32,
    name: &str,
    insns: &[Insn],
) -> io::Result<OwnedFd> {
    let license = c"GPL";
    // Large enough for the log of a verified loop (level 1 logs every state).
    let mut log = vec![0u8; 1 << 24];
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let mut a = ProgLoadAttr {
        prog_type,
        insn_cnt: u32::try_from(insns.len()).map_err(io::Error::other)?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: u32::try_from(log.len()).map_err(io::Error::other)?,
        log_buf: log.as_mut_ptr() as u64,
        prog_name,
        expected_attach_type,
        ..Default::default()
    };
    match sys_bpf(BPF_PROG_LOAD, &mut a) {
        Ok(fd) => owned(fd),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            Err(io::Error::other(format!(
                "loading {name}: {e}\n{}",
                String::from_utf8_lossy(&log[..end])
            )))
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// Attaches `prog` to the cgroup open as `cgroup` at `attach_type` with a bpf_link (as aya
/// attaches egressd's programs: it coexists with every other program there); the program
/// stays attached until the returned link descriptor is closed.
pub fn link_create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut a = LinkCreateAttr {
        prog_fd: u32::try_from(prog.as_raw_fd()).map_err(io::Error::other)?,
        target_fd: u32::try_from(cgroup.as_raw_fd()).map_err(io::Error::other)?,
        attach_type,
        flags: 0,
    };
    owned(sys_bpf(BPF_LINK_CREATE, &mut a)?)
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// Cumulative run statistics of a program (counted while BPF stats are enabled).
#[derive(Clone, Copy, Debug, Default)]
pub struct RunStats {
    /// `run_time_ns`.
    pub run_time_ns: u64,
    /// `run_cnt`.
    pub run_cnt: u64,
}

/// `run_time_ns` and `run_cnt` of a program from `BPF_OBJ_GET_INFO_BY_FD` (`struct
/// bpf_prog_info`: `name` at byte 64, `run_time_ns` at 192, `run_cnt` at 200). The name is
/// checked against `expect_name` so a layout mismatch fails loudly.
pub fn prog_stats(prog: BorrowedFd<'_>, expect_name: &str) -> io::Result<RunStats> {
    let mut info = [0u64; 64];
    let mut a = InfoAttr {
        bpf_fd: u32::try_from(prog.as_raw_fd()).map_err(io::Error::other)?,
        info_len: u32::try_from(size_of_val(&info)).map_err(io::Error::other)?,
        info: info.as_mut_ptr() as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    let bytes: Vec<u8> = info.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let name = &bytes[64..80];
    let end = name.iter().position(|b| *b == 0).unwrap_or(16);
    let want = &expect_name.as_bytes()[..expect_name.len().min(15)];
    if &name[..end] != want {
        return Err(io::Error::other(format!(
            "bpf_prog_info layout mismatch: name {:?}, expected {expect_name:?}",
            String::from_utf8_lossy(&name[..end])
        )));
    }
    Ok(RunStats {
        run_time_ns: info[192 / 8],
        run_cnt: info[200 / 8],
    })
}

/// Kernel memory of the BPF maps this process holds open, from `memlock:` in
/// `/proc/self/fdinfo/*`: (all maps, LPM tries only, page arrays only: egressd's IPv4
/// tables), in bytes.
pub fn own_map_memory() -> io::Result<(u64, u64, u64)> {
    let (mut all, mut tries, mut tables) = (0u64, 0u64, 0u64);
    for entry in std::fs::read_dir("/proc/self/fdinfo")? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(kind), Some(memlock)) = (field("map_type:"), field("memlock:")) else {
            continue;
        };
        all += memlock;
        if kind == u64::from(MAP_LPM_TRIE) {
            tries += memlock;
        }
        if kind == u64::from(MAP_ARRAY) && field("value_size:") == Some(4096) {
            tables += memlock;
        }
    }
    Ok((all, tries, tables))
}

/// `VmRSS` and `VmHWM` of this process in KiB.
pub fn own_rss_kib() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    /// Sets the jump (or memory) offset, for jumps patched once their target is known.
    pub fn set_off(&mut self, off: i16) {
        self.off = off;
    }
}

/// A tiny assembler for the few instruction forms the benchmark programs use.
pub mod asm {
    use super::Insn;

    const ALU64: u8 = 0x07;
    const ALU: u8 = 0x04;
    const JMP: u8 = 0x05;
    const STX: u8 = 0x03;
    const ST: u8 = 0x02;
    const LDX: u8 = 0x01;
    const K: u8 = 0x00;
    const X: u8 = 0x08;
    const MEM: u8 = 0x60;
    const W: u8 = 0x00;
    const H: u8 = 0x08;
    const DW: u8 = 0x18;

    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: (src << 4) | (dst & 0x0f),
            off,
            imm,
        }
    }
    /// `dst = imm` (64-bit).
    pub fn mov_imm(dst: u8, imm: i32) -> Insn {
        insn(ALU64 | 0xb0 | K, dst, 0, 0, imm)
    }
    /// `dst = src` (64-bit).
    pub fn mov_reg(dst: u8, src: u8) -> Insn {
        insn(ALU64 | 0xb0 | X, dst, src, 0, 0)
    }
    /// `dst += imm`.
    pub fn add_imm(dst: u8, imm: i32) -> Insn {
        insn(ALU64 | K, dst, 0, 0, imm)
    }
    /// `dst += src`.
    pub fn add_reg(dst: u8, src: u8) -> Insn {
        insn(ALU64 | X, dst, src, 0, 0)
    }
    /// `dst >>= imm` (logical, 64-bit).
    pub fn rsh_imm(dst: u8, imm: i32) -> Insn {
        insn(ALU64 | 0x70 | K, dst, 0, 0, imm)
    }
    /// `dst <<= imm`.
    pub fn lsh_imm(dst: u8, imm: i32) -> Insn {
        insn(ALU64 | 0x60 | K, dst, 0, 0, imm)
    }
    /// `dst &= imm`.
    pub fn and_imm(dst: u8, imm: i32) -> Insn {
        insn(ALU64 | 0x50 | K, dst, 0, 0, imm)
    }
    /// `dst |= src`.
    pub fn or_reg(dst: u8, src: u8) -> Insn {
        insn(ALU64 | 0x40 | X, dst, src, 0, 0)
    }
    /// `dst = be32(dst)`: network to host order of the low 32 bits on a little-endian host.
    pub fn be32(dst: u8) -> Insn {
        insn(ALU | 0xd0 | X, dst, 0, 0, 32)
    }
    /// `*(u32 *)(dst + off) = imm`.
    pub fn st_w(dst: u8, off: i16, imm: i32) -> Insn {
        insn(ST | MEM | W, dst, 0, off, imm)
    }
    /// `*(u32 *)(dst + off) = src`.
    pub fn stx_w(dst: u8, off: i16, src: u8) -> Insn {
        insn(STX | MEM | W, dst, src, off, 0)
    }
    /// `dst = *(u32 *)(src + off)`.
    pub fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
        insn(LDX | MEM | W, dst, src, off, 0)
    }
    /// `*(u64 *)(dst + off) = src`.
    pub fn stx_dw(dst: u8, off: i16, src: u8) -> Insn {
        insn(STX | MEM | DW, dst, src, off, 0)
    }
    /// `dst = *(u64 *)(src + off)`.
    pub fn ldx_dw(dst: u8, src: u8, off: i16) -> Insn {
        insn(LDX | MEM | DW, dst, src, off, 0)
    }
    /// `dst = htobe64(dst)`.
    pub fn be64(dst: u8) -> Insn {
        insn(ALU | 0xd0 | X, dst, 0, 0, 64)
    }
    /// `if dst > src goto +off` (unsigned, 64 bits).
    pub fn jgt_reg(dst: u8, src: u8, off: i16) -> Insn {
        insn(JMP | 0x20 | X, dst, src, off, 0)
    }
    /// `if dst >= src goto +off` (unsigned, 64 bits).
    pub fn jge_reg(dst: u8, src: u8, off: i16) -> Insn {
        insn(JMP | 0x30 | X, dst, src, off, 0)
    }
    /// `dst = *(u16 *)(src + off)`.
    pub fn ldx_h(dst: u8, src: u8, off: i16) -> Insn {
        insn(LDX | MEM | H, dst, src, off, 0)
    }
    /// `dst = map fd` (two slots: `BPF_LD | BPF_DW | BPF_IMM` with `BPF_PSEUDO_MAP_FD`).
    pub fn ld_map_fd(dst: u8, fd: i32) -> [Insn; 2] {
        [insn(0x18, dst, 1, 0, fd), insn(0, 0, 0, 0, 0)]
    }
    /// `call helper`.
    pub fn call(helper: i32) -> Insn {
        insn(JMP | 0x80, 0, 0, 0, helper)
    }
    /// `if dst == imm goto +off`.
    pub fn jeq_imm(dst: u8, imm: i32, off: i16) -> Insn {
        insn(JMP | 0x10 | K, dst, 0, off, imm)
    }
    /// `if dst != imm goto +off`.
    pub fn jne_imm(dst: u8, imm: i32, off: i16) -> Insn {
        insn(JMP | 0x50 | K, dst, 0, off, imm)
    }
    /// `if dst >= imm goto +off` (unsigned).
    pub fn jge_imm(dst: u8, imm: i32, off: i16) -> Insn {
        insn(JMP | 0x30 | K, dst, 0, off, imm)
    }
    /// `goto +off`.
    pub fn ja(off: i16) -> Insn {
        insn(JMP, 0, 0, off, 0)
    }
    /// `exit`.
    pub fn exit() -> Insn {
        insn(JMP | 0x90, 0, 0, 0, 0)
    }
}
