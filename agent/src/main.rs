//! `egressd`: command-line entry point. See `egressd --help`.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// eBPF host agent that keeps outbound connections inside allowlisted regions.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the policy, attach the kernel programs and stream deny/audit events as JSON
    /// lines on stdout until SIGINT or SIGTERM.
    Run {
        /// Policy file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// cgroup v2 directory to attach to; overrides the file's `cgroup` (default: the
        /// cgroup2 root, i.e. the whole host).
        #[arg(long, value_name = "DIR")]
        cgroup: Option<PathBuf>,
        /// Pin maps and links under this bpffs directory (bare `--pin-dir`:
        /// /sys/fs/bpf/egressd; bpffs is mounted at /sys/fs/bpf if needed) and adopt what is
        /// pinned there: enforcement then survives restarts and SIGTERM, counters and the
        /// policy generation continue, and tampering is detected and repaired. Without it,
        /// nothing is pinned and the programs are detached at exit.
        #[arg(long, value_name = "DIR", num_args = 0..=1,
              default_missing_value = egressd::kernel::pin::DEFAULT_PIN_DIR)]
        pin_dir: Option<PathBuf>,
        /// Serve Prometheus metrics on http://ADDR/metrics and health on /healthz
        /// (e.g. 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Also reload when the policy file or a drop-in file changes on disk (debounced;
        /// the same as SIGHUP).
        #[arg(long)]
        watch: bool,
        /// Keep the last policy put in force (the text of the main file and every drop-in,
        /// its digest and generation) in DIR/policy-<hash of the --config path>.json, one per
        /// policy file (root's, 0700; written atomically).
        /// When the policy on disk is invalid at start, egressd enforces that last good
        /// policy instead, reports it (`policy_fallback` record, `egressd_policy_fallback 1`,
        /// `/healthz` "degraded"), and leaves that state at the first reload (SIGHUP,
        /// --watch) of a valid set; with no last good policy it refuses to start.
        #[arg(long, value_name = "DIR", env = "EGRESSD_STATE_DIR",
              default_value = egressd::daemon::lastgood::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Directory of the per-cgroup locks (root's, 0700): `DIR/<cgroup id>.lock` is
        /// held while egressd runs, so a second `egressd run` on the same cgroup refuses to
        /// start and names the first (pid, pin directory).
        #[arg(long, value_name = "DIR", env = "EGRESSD_RUN_DIR",
              default_value = egressd::daemon::instance::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Probe the running kernel and print which egress paths egressd enforces on it (the
    /// same report `agent_start`, `status` and /metrics carry). Probing needs CAP_BPF; without
    /// it the answers are "unknown".
    Coverage {
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Show pinned enforcement: hooks and whether they are attached, policy generation and
    /// digest, counters. Reads the pins, so it works whether or not the daemon runs.
    Status {
        /// Pin directory given to `run --pin-dir`.
        #[arg(long, value_name = "DIR", default_value = egressd::kernel::pin::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove everything `run --pin-dir` pinned: detach the hooks (also from a running
    /// daemon) and unpin the maps. Enforcement ends.
    Detach {
        /// Pin directory given to `run --pin-dir`.
        #[arg(long, value_name = "DIR", default_value = egressd::kernel::pin::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Validate the policy exactly as `run` would load it and print a summary; exits 1
    /// with `file:line:column: field: message` on bad input. Needs no privileges.
    Check {
        /// Policy file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Read the drop-in files from DIR instead of the file's own drop-in directory: to
        /// check a copy kept elsewhere (Ansible's `validate` gets a temporary file) with the
        /// drop-ins it will run with, e.g. `--drop-in-dir /etc/egressd/policy.d`.
        #[arg(long, value_name = "DIR")]
        drop_in_dir: Option<PathBuf>,
    },
    /// Print what the policy decides for destinations, and why: region and matching prefix,
    /// mode, verdict. Computed by the code that fills the kernel maps. Needs no privileges.
    Explain {
        /// Policy file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Print one JSON object per destination (JSON lines) instead of text.
        #[arg(long)]
        json: bool,
        /// Destinations: ADDR, ADDR:PORT or [IPv6]:PORT, optionally followed by /PROTO: a
        /// protocol name (tcp, udp, sctp, udplite, icmp, ipv6-icmp) or proto-N for IANA
        /// number N (e.g. 198.18.1.2:443/tcp, [2001:db8::1]:53/udp, 198.18.1.2/proto-47).
        #[arg(value_name = "ADDR[:PORT][/PROTO]", required = true)]
        destinations: Vec<String>,
    },
    /// Audit exported records: prove continuous enforcement from what the SIEM stored.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Region files from cloud providers' published IP ranges.
    Regions {
        #[command(subcommand)]
        command: RegionsCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Read exported records (JSON lines in the native, ECS or OCSF format, CEF lines, each
    /// alone or behind a syslog header), check their sequence numbers and hash chain, and
    /// report per host and agent run the enforcement intervals, policies in force, gaps,
    /// tamper repairs, reload failures, losses and flow totals. Exit status 0 only when
    /// continuous enforcement over the window is proven for every host, 1 otherwise.
    Verify {
        /// Files of exported records (`-`: standard input), in the order they were stored.
        #[arg(value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
        /// Window start (RFC 3339); default: the first run's agent_start.
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// Window end (RFC 3339): runs may still be running then. Default: the last run's
        /// end, and every run must have ended with agent_stop.
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        /// The policy digest that must be in force throughout the window.
        #[arg(long, value_name = "DIGEST")]
        expect_digest: Option<String>,
        /// Longest allowed silence between two lifecycle records of a run, in seconds;
        /// default: max(2 x heartbeat interval, heartbeat interval + 5).
        #[arg(long, value_name = "SECS")]
        max_gap: Option<f64>,
        /// Accept a run's records in any order (an export sorted by time): reordering is
        /// then not reported.
        #[arg(long)]
        any_order: bool,
        /// Count the time between a run that ended (stopped with its programs pinned, or
        /// killed, or crashed) and the next run as enforced when that run adopted the
        /// pinned enforcement with the generation the first had in force: the kernel kept
        /// enforcing, though no record covers that time.
        #[arg(long)]
        trust_adoption: bool,
        /// Key file of an HMAC chain (`hmac-sha256:` links): its bytes are the key.
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// Only this host (repeat for several); default: every host in the input.
        #[arg(long, value_name = "NAME")]
        host: Vec<String>,
        /// Print the report as one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RegionsCommand {
    /// Build `[regions.NAME]` tables from AWS, Google Cloud, Azure and Oracle range files and
    /// RFC 8805 geofeeds, mapping provider regions and countries to policy regions.
    /// Deterministic; conflicts are errors. Writes to stdout unless --output is given.
    Import {
        /// Mapping file (TOML): policy region -> provider regions / ISO 3166 codes, per
        /// format; see configs/import/eu-mapping.toml.
        #[arg(short, long, value_name = "FILE")]
        mapping: PathBuf,
        /// Format of every SOURCE; default: detected per file from its content.
        #[arg(short, long, value_enum)]
        format: Option<egressd::policy::import::Format>,
        /// Write here (atomically: a temporary file in the same directory, then renamed)
        /// instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Start the output with `allowlist = [...]` naming these imported regions, making
        /// it a complete policy file; repeat or separate with commas.
        #[arg(long, value_name = "REGION", value_delimiter = ',')]
        allowlist: Option<Vec<String>>,
        /// Accept prefixes with host bits set (10.0.0.1/24) as their network (10.0.0.0/24)
        /// instead of rejecting them.
        #[arg(long)]
        mask_host_bits: bool,
        /// Provider range files (JSON) or geofeeds (CSV).
        #[arg(value_name = "SOURCE", required = true)]
        sources: Vec<PathBuf>,
    },
    /// Download the providers' published range files that the mapping names (AWS, Google
    /// Cloud, Oracle, Azure service tags, geofeeds; URLs in its [fetch] section) into DIR,
    /// with conditional requests (ETag, Last-Modified). Each file must parse, hold
    /// prefixes and be no older than the one on disk; on any failure nothing is written
    /// and the exit status is 1. Then run `regions import` on the files.
    Fetch {
        /// Mapping file (TOML), as for `import`.
        #[arg(short, long, value_name = "FILE")]
        mapping: PathBuf,
        /// Directory of the files (root's, created 0700 if missing).
        #[arg(short, long, value_name = "DIR")]
        dir: PathBuf,
        /// Time limit of each download, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 120)]
        timeout: u64,
    },
}

/// Blocks SIGHUP and SIGUSR1 before `main` runs: a constructor in `.init_array`, which the
/// C runtime calls before `main` (and so before the Rust runtime's own set-up). `run`
/// unblocks them once its handlers are installed, the other subcommands at once; see
/// [`egressd::daemon::signals`].
extern "C" fn block_early_signals() {
    egressd::daemon::signals::block_early();
}

#[used]
#[unsafe(link_section = ".init_array")]
static BLOCK_EARLY_SIGNALS: extern "C" fn() = block_early_signals;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // Only the daemon has handlers for them: elsewhere their default action stands.
        egressd::daemon::signals::unblock_early();
        // A report piped into `head` ends quietly, as other tools do, instead of a panic
        // on EPIPE (Rust ignores SIGPIPE). The daemon keeps ignoring it: a closed stdout
        // sink is an error it counts, not a reason to stop enforcing.
        // SAFETY: restoring a default disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // No colour codes in files and journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_env("EGRESSD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let res = match cli.command {
        Command::Run {
            config,
            cgroup,
            pin_dir,
            metrics,
            watch,
            state_dir,
            run_dir,
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(egressd::daemon::run_with(
                    &config,
                    egressd::daemon::RunOptions {
                        cgroup,
                        pin_dir,
                        metrics,
                        watch,
                        state_dir: Some(state_dir),
                        run_dir: Some(run_dir),
                    },
                ))
            }),
        Command::Coverage { json } => {
            let c = egressd::kernel::coverage::probe();
            let text = if json {
                format!("{}\n", serde_json::to_string(&c).unwrap_or_default())
            } else {
                c.table()
            };
            // A closed pipe (`| head`) ends the output, not the process with a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
            Ok(())
        }
        Command::Status { pin_dir, json } => egressd::daemon::status::status(&pin_dir).map(|s| {
            if json {
                println!("{}", serde_json::to_string(&s).unwrap_or_default());
            } else {
                print!("{}", s.to_text());
            }
        }),
        Command::Detach { pin_dir } => {
            let dir = egressd::kernel::pin::PinDir::new(&pin_dir);
            if let Err(e) = dir.check_access() {
                Err(e)
            } else if dir.exists() {
                // The tc/egress fallback first: its TCX pins live under DIR/tc, its netlink
                // filters (kernels without TCX) on the interfaces of this network namespace.
                let cgroup = dir
                    .read_state()
                    .ok()
                    .map(|s| std::path::PathBuf::from(s.cgroup));
                egressd::kernel::loader::tc::detach(&dir.root, cgroup.as_deref())
                    .and_then(|tc| dir.remove_all().map(|removed| (removed, tc)))
                    .map(|(removed, tc)| {
                        eprintln!(
                            "egressd: detached; removed {} pins under {}{}",
                            removed.len(),
                            pin_dir.display(),
                            if tc.is_empty() {
                                String::new()
                            } else {
                                format!(" and {}", tc.join(", "))
                            }
                        );
                    })
            } else {
                Err(anyhow::anyhow!(
                    "nothing is pinned under {}",
                    pin_dir.display()
                ))
            }
        }
        Command::Check {
            config,
            drop_in_dir,
        } => check(&config, drop_in_dir.as_deref()),
        Command::Explain {
            config,
            json,
            destinations,
        } => explain(&config, json, &destinations),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    files,
                    from,
                    to,
                    expect_digest,
                    max_gap,
                    any_order,
                    trust_adoption,
                    key_file,
                    host,
                    json,
                },
        } => {
            let opts = (|| {
                let time = |s: Option<String>, what: &str| {
                    s.map(|s| {
                        time::OffsetDateTime::parse(
                            &s,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .map(time::OffsetDateTime::unix_timestamp_nanos)
                        .map_err(|e| anyhow::anyhow!("--{what} `{s}`: not an RFC 3339 time: {e}"))
                    })
                    .transpose()
                };
                let max_gap = match max_gap {
                    Some(s) if !(s.is_finite() && s > 0.0) => {
                        anyhow::bail!("--max-gap {s}: must be a positive number of seconds")
                    }
                    #[expect(
                        clippy::cast_possible_truncation,
                        reason = "checked positive; saturates"
                    )]
                    Some(s) => Some((s * 1e9) as i128),
                    None => None,
                };
                let key = key_file
                    .map(|p| {
                        std::fs::read(&p)
                            .map_err(|e| anyhow::anyhow!("--key-file {}: {e}", p.display()))
                    })
                    .transpose()?;
                Ok(egressd::events::audit::verify::Options {
                    from: time(from, "from")?,
                    to: time(to, "to")?,
                    expect_digest,
                    max_gap,
                    any_order,
                    key,
                    hosts: host,
                    trust_adoption,
                })
            })();
            match opts.and_then(|o| egressd::events::audit::verify_files(&files, &o)) {
                Ok(report) => {
                    let text = if json {
                        format!("{}\n", serde_json::to_string(&report).unwrap_or_default())
                    } else {
                        egressd::events::audit::verify::text(&report)
                    };
                    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
                    return if report.proven {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    };
                }
                Err(e) => Err(e),
            }
        }
        Command::Regions {
            command:
                RegionsCommand::Import {
                    mapping,
                    format,
                    output,
                    allowlist,
                    mask_host_bits,
                    sources,
                },
        } => regions_import(
            &mapping,
            format,
            output.as_deref(),
            allowlist,
            mask_host_bits,
            &sources,
        ),
        Command::Regions {
            command:
                RegionsCommand::Fetch {
                    mapping,
                    dir,
                    timeout,
                },
        } => regions_fetch(&mapping, &dir, timeout),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egressd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path, drop_ins: Option<&std::path::Path>) -> anyhow::Result<()> {
    let (cfg, output) = egressd::config::load_all_with_drop_ins(path, drop_ins)?;
    let policy = egressd::policy::compile(&cfg);
    if let Some(first) = egressd::daemon::check::errors(&policy).first() {
        anyhow::bail!("{}: {first}", path.display());
    }
    // What `run` reads besides the policy: the sinks' files and the chain key. Their files
    // are root's, so an unprivileged check says it could not look.
    if egressd::base::safefs::euid() == 0 {
        egressd::events::sinks::preflight(&output.sinks)
            .map_err(|e| e.context(path.display().to_string()))?;
        if let Some(key) = output.chain_key_file.as_deref() {
            egressd::events::audit::chain::load_key(key)
                .map_err(|e| e.context(path.display().to_string()))?;
        }
    } else if output.sinks.iter().any(egressd::events::sinks::has_files) {
        eprintln!(
            "egressd: note: {}: the sinks' files (file paths, TLS certificates and keys, \
             spools) are not checked without root (egressd run reads them as root)",
            path.display()
        );
    }
    for w in egressd::daemon::check::warnings(&cfg, &policy) {
        eprintln!("egressd: warning: {}: {w}", path.display());
    }
    print!("{}", egressd::daemon::check::summary(&cfg, &policy));
    // What this machine's kernel covers of it (probes need root; unknown otherwise).
    let coverage = egressd::kernel::coverage::probe();
    for p in coverage
        .paths
        .iter()
        .filter(|p| p.path == "packet_socket" || p.path == "raw_next_hop")
    {
        println!(
            "coverage:  {} {} on this kernel ({}): {}",
            p.path,
            p.status.label(),
            coverage.kernel,
            p.note
        );
    }
    Ok(())
}

fn explain(path: &std::path::Path, json: bool, destinations: &[String]) -> anyhow::Result<()> {
    let parsed: Vec<egressd::policy::explain::Destination> = destinations
        .iter()
        .map(|d| egressd::policy::explain::parse_destination(d))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    let cfg = egressd::config::load(path)?;
    let policy = egressd::policy::compile(&cfg);
    let mut out = String::new();
    for (i, d) in parsed.into_iter().enumerate() {
        let e = egressd::policy::explain::explain(&policy, d);
        if json {
            out.push_str(&e.to_json().to_string());
            out.push('\n');
        } else {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&e.to_text());
        }
    }
    print!("{out}");
    Ok(())
}

fn regions_import(
    mapping: &std::path::Path,
    format: Option<egressd::policy::import::Format>,
    output: Option<&std::path::Path>,
    allowlist: Option<Vec<String>>,
    mask_host_bits: bool,
    sources: &[PathBuf],
) -> anyhow::Result<()> {
    use egressd::policy::import;
    let mapping = import::mapping::load(mapping)?;
    let options = import::Options {
        format,
        mask_host_bits,
    };
    let imported = import::import(&mapping, sources, &options)?;
    for w in &imported.warnings {
        eprintln!("egressd: warning: {w}");
    }
    let options = import::RenderOptions { allowlist };
    let text =
        import::render(&imported, &options).map_err(|m| anyhow::anyhow!("--allowlist: {m}"))?;
    // Written only if it reads back as exactly the regions meant, and nothing else.
    import::verify_output(
        output.unwrap_or(std::path::Path::new("<stdout>")),
        &text,
        &imported,
        options.allowlist.as_deref(),
    )?;
    for (name, r) in &imported.regions {
        let v4 = r.prefixes.iter().filter(|p| p.is_ipv4()).count();
        eprintln!(
            "egressd: region {name}: {} prefixes ({v4} IPv4, {} IPv6)",
            r.prefixes.len(),
            r.prefixes.len() - v4
        );
    }
    let skipped: usize = imported.unmapped_keys.values().sum();
    if skipped > 0 {
        eprintln!(
            "egressd: skipped {skipped} entries of {} provider regions/countries the mapping does \
             not name",
            imported.unmapped_keys.len()
        );
    }
    match output {
        None => print!("{text}"),
        Some(path) => import::write_atomically(path, &text)?,
    }
    Ok(())
}

fn regions_fetch(
    mapping: &std::path::Path,
    dir: &std::path::Path,
    timeout: u64,
) -> anyhow::Result<()> {
    use egressd::policy::import;
    let mapping = import::mapping::load(mapping)?;
    let options = import::fetch::Options {
        timeout: std::time::Duration::from_secs(timeout),
    };
    for o in import::fetch::fetch(&mapping, dir, &options)? {
        println!(
            "{}: {} {}{}",
            o.format,
            o.status.replace('_', " "),
            o.file.display(),
            o.version.map(|v| format!(" ({v})")).unwrap_or_default()
        );
    }
    Ok(())
}
