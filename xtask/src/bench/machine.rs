//! What the numbers were measured on: CPU, kernel, cores, memory, load, tool versions.
use std::process::Command;

/// Description of the machine at the start of the run.
pub struct Machine {
    /// `model name` from `/proc/cpuinfo`.
    pub cpu: String,
    /// Online CPUs.
    pub cores: usize,
    /// `uname -r` and `-v`.
    pub kernel: String,
    /// `MemTotal`.
    pub memory: String,
    /// Hypervisor, if any (`lscpu`).
    pub hypervisor: String,
    /// nft, iptables, ipset versions.
    pub tools: Vec<String>,
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> (f64, f64, f64) {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|x| x.parse().unwrap_or(f64::NAN));
    (
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    )
}

impl Machine {
    /// Reads `/proc` and asks the tools for their versions.
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
            .unwrap_or_default();
        let lscpu =
            first_line(Command::new("sh").args(["-c", "lscpu | grep '^Hypervisor vendor'"]));
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: format!(
                "{} ({})",
                first_line(Command::new("uname").arg("-r")),
                first_line(Command::new("uname").arg("-v"))
            ),
            memory,
            hypervisor: lscpu
                .split(':')
                .nth(1)
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "none".into()),
            tools: vec![
                first_line(Command::new("nft").arg("--version")),
                first_line(Command::new("iptables").arg("--version")),
                first_line(Command::new("ipset").arg("--version")),
            ],
        }
    }
}
