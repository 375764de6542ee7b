//! The last good policy: what `egressd run` falls back to when the policy on disk is invalid
//! at start, so that one bad file never leaves a host without enforcement.
//!
//! Every time the daemon puts a policy in force (at start and on each successful reload), it
//! writes the text of the main file and of every drop-in exactly as it read them
//! ([`crate::config::Sources`]), with the policy's digest and generation, to
//! `STATE_DIR/policy-<hash of the --config path>.json` ([`DEFAULT_STATE_DIR`] unless `run
//! --state-dir` says otherwise): one record per policy file, so daemons of several cgroups
//! sharing a state directory keep their own.
//! The directory is checked and created as [`crate::base::safefs`] says (owned by root, not
//! writable by others, created 0700), and the file is written atomically (a temporary file,
//! synced, renamed over the old one) with mode 0600.
//!
//! At start, when the files on disk fail validation, [`StateDir::restore`] reads that record
//! back and validates its text through the same [`crate::config::parse_set_all`] as a normal
//! load; the compiled policy must have the digest that was saved. A record saved for another
//! `--config` path is not used. A `policy.json` of an egressd from before the per-file
//! records is still read for the path it names, until that path's own record is written.
use std::{
    ffi::OsStr,
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;

use crate::{
    base::safefs::{FILE_MODE, TrustedDir},
    config::{self, Config, Output, Sources},
    policy::{self, Policy},
};

/// Where the last good policy is kept by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/egressd/last-good";

/// The single record of an egressd from before the per-file records ([`StateDir::file`]),
/// read when a path has no record of its own yet.
const LEGACY_FILE: &str = "policy.json";

/// Version of the record's layout; a record of another version is not used.
const FORMAT: u32 = 1;

/// The record kept in the state directory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastGood {
    /// Layout version ([`FORMAT`]).
    pub format: u32,
    /// The `--config` path it was loaded for (absolute).
    pub config: PathBuf,
    /// The policy's digest ([`Policy::digest`]).
    pub digest: String,
    /// The generation it was installed as.
    pub generation: u64,
    /// When it was installed, RFC 3339 UTC.
    pub saved_at: String,
    /// The text of every file, as read.
    pub sources: Sources,
}

/// A policy set restored from the state directory, validated and compiled.
#[derive(Debug)]
pub struct Restored {
    /// The validated configuration.
    pub cfg: Config,
    /// Its output settings (sinks, heartbeat, host labels).
    pub output: Output,
    /// The compiled policy; its digest is the one saved.
    pub policy: Arc<Policy>,
    /// The record it came from.
    pub record: LastGood,
    /// The file the record was read from (this path's own, or a legacy `policy.json`).
    pub file: PathBuf,
}

/// The state directory (`run --state-dir`).
#[derive(Clone, Debug)]
pub struct StateDir {
    /// Its path.
    pub path: PathBuf,
}

impl StateDir {
    /// The state directory at `path` (nothing is touched yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The name of `config`'s record: `policy-` and 16 hex digits of the FNV-1a hash of
    /// its absolute path, `.json` (the record itself names the path, and a record of
    /// another path is not used, so a collision costs a fallback, never a wrong policy).
    pub fn file_name(config: &Path) -> String {
        let h = crate::policy::fnv1a64(absolute(config).as_os_str().as_encoded_bytes());
        format!("policy-{h:016x}.json")
    }

    /// The path of `config`'s record.
    pub fn file(&self, config: &Path) -> PathBuf {
        self.path.join(Self::file_name(config))
    }

    /// Keeps `sources` (whose compiled policy has `digest`, installed as `generation`) as the
    /// last good policy for `config`: the directory is created (0700) if missing and the
    /// record replaced atomically.
    ///
    /// # Errors
    /// The directory fails the [`crate::base::safefs`] checks or cannot be created; a disk error.
    pub fn save(
        &self,
        config: &Path,
        sources: &Sources,
        digest: &str,
        generation: u64,
    ) -> anyhow::Result<()> {
        self.write(config, &mut |w| {
            Self::serialize(w, config, sources, digest, generation)
        })
    }

    /// [`StateDir::save`] of owned `sources`, freed as soon as they are written (before the
    /// file is synced): what the daemon keeps after `agent_start` holds their text no longer
    /// than it must.
    ///
    /// # Errors
    /// As [`StateDir::save`].
    pub fn save_owned(
        &self,
        config: &Path,
        sources: Sources,
        digest: &str,
        generation: u64,
    ) -> anyhow::Result<()> {
        let mut held = Some(sources);
        self.write(config, &mut |w| {
            let sources = held
                .take()
                .ok_or_else(|| io::Error::other("the last good policy written twice"))?;
            Self::serialize(w, config, &sources, digest, generation)
        })
    }

    /// The record of `sources` into `w`.
    fn serialize(
        w: &mut dyn io::Write,
        config: &Path,
        sources: &Sources,
        digest: &str,
        generation: u64,
    ) -> io::Result<()> {
        // [`LastGood`] with the sources borrowed: the text of a large policy is tens of MB,
        // written out as it is serialized rather than copied twice first.
        #[derive(serde::Serialize)]
        struct Record<'a> {
            format: u32,
            config: PathBuf,
            digest: &'a str,
            generation: u64,
            saved_at: String,
            sources: &'a Sources,
        }
        let record = Record {
            format: FORMAT,
            config: absolute(config),
            digest,
            generation,
            saved_at: crate::events::rfc3339(crate::base::clock::unix_now_ns()).to_string(),
            sources,
        };
        serde_json::to_writer_pretty(w, &record).map_err(io::Error::other)
    }

    /// Replaces `config`'s record with what `serialize` writes, synced, in the checked
    /// directory.
    fn write(
        &self,
        config: &Path,
        serialize: &mut dyn FnMut(&mut dyn io::Write) -> io::Result<()>,
    ) -> anyhow::Result<()> {
        let dir = TrustedDir::create(&self.path)
            .with_context(|| format!("state directory {}", self.path.display()))?;
        dir.replace_with(OsStr::new(&Self::file_name(config)), FILE_MODE, serialize)
            .and_then(|()| dir.sync())
            .with_context(|| format!("writing {}", self.file(config).display()))?;
        Ok(())
    }

    /// Reads `config`'s record, or (none yet) the legacy `policy.json` when it names
    /// `config`; returns it with the file it came from.
    ///
    /// # Errors
    /// The directory or file fails the [`crate::base::safefs`] checks, cannot be read or parsed.
    pub fn load(&self, config: &Path) -> anyhow::Result<Option<(LastGood, PathBuf)>> {
        if let Some(r) = self.load_file(&Self::file_name(config))? {
            return Ok(Some((r, self.file(config))));
        }
        Ok(self
            .load_file(LEGACY_FILE)?
            .filter(|r| r.config == absolute(config))
            .map(|r| (r, self.path.join(LEGACY_FILE))))
    }

    /// Reads the record `name` of the directory, if there is one.
    fn load_file(&self, name: &str) -> anyhow::Result<Option<LastGood>> {
        let path = self.path.join(name);
        let dir = match TrustedDir::open(&self.path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("state directory {}", self.path.display()));
            }
        };
        let file = match dir.read(OsStr::new(name)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let record: LastGood = serde_json::from_reader(io::BufReader::new(file))
            .with_context(|| format!("parsing {}", path.display()))?;
        Ok(Some(record))
    }

    /// The last good policy for `config`, validated like a normal load and compiled:
    /// `Ok(None)` when there is none for this path.
    ///
    /// # Errors
    /// The record cannot be read, has another layout version, no longer validates, or
    /// compiles to another digest than the one saved.
    pub fn restore(&self, config: &Path) -> anyhow::Result<Option<Restored>> {
        let Some((record, file)) = self.load(config)? else {
            return Ok(None);
        };
        if record.config != absolute(config) {
            tracing::warn!(
                state = %file.display(),
                saved_for = %record.config.display(),
                "the last good policy was kept for another --config path: not used"
            );
            return Ok(None);
        }
        anyhow::ensure!(
            record.format == FORMAT,
            "{}: layout version {} (this egressd reads {FORMAT})",
            file.display(),
            record.format
        );
        let (cfg, output) = config::Sources::parse(&record.sources)
            .with_context(|| format!("{}: the kept policy", file.display()))?;
        let policy = Arc::new(policy::compile(&cfg));
        anyhow::ensure!(
            policy.digest == record.digest,
            "{}: the kept policy compiles to digest {}, not the {} it was saved with",
            file.display(),
            policy.digest,
            record.digest
        );
        Ok(Some(Restored {
            cfg,
            output,
            policy,
            record,
            file,
        }))
    }
}

/// `path` made absolute against the working directory (unchanged if that fails).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::safefs::tests::Tmp;

    const GOOD: &str = "allowlist = [\"eu\"]\n[regions.eu]\nprefixes = [\"198.18.1.0/24\"]\n";

    fn sources(main: &Path, text: &str) -> Sources {
        Sources {
            main: main.to_path_buf(),
            text: text.into(),
            drop_ins: vec![(
                main.with_file_name("policy.d/us.toml"),
                "[regions.us]\nprefixes = [\"198.18.2.0/24\"]\n".into(),
            )],
        }
    }

    #[test]
    fn saves_and_restores_the_same_policy() {
        let t = Tmp::new("lastgood");
        let state = StateDir::new(t.0.join("state/last-good"));
        let main = t.0.join("policy.toml");
        assert!(state.restore(&main).expect("nothing kept").is_none());
        let src = sources(&main, GOOD);
        let (cfg, _) = src.parse().expect("valid");
        let digest = policy::compile(&cfg).digest;
        state.save(&main, &src, &digest, 7).expect("saved");
        let r = state.restore(&main).expect("restores").expect("kept");
        assert_eq!(r.policy.digest, digest);
        assert_eq!(r.record.generation, 7);
        assert_eq!(r.record.sources, src);
        assert_eq!(r.cfg.regions.len(), 2);
        // Another --config path: not used.
        assert!(
            state
                .restore(&t.0.join("other.toml"))
                .expect("reads")
                .is_none()
        );
        // Created 0700, the record 0600.
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0)
        };
        assert_eq!(mode(&state.path), 0o700);
        assert_eq!(mode(&state.file(&main)), 0o600);
    }

    /// Two daemons (two policy files) sharing a state directory keep a record each: the
    /// second's save does not replace the first's (it did with one `policy.json`).
    #[test]
    fn each_policy_file_keeps_its_own_record() {
        let t = Tmp::new("lastgood-two");
        let state = StateDir::new(t.0.join("last-good"));
        let (a, b) = (t.0.join("a.toml"), t.0.join("b.toml"));
        let (sa, sb) = (sources(&a, GOOD), sources(&b, GOOD));
        let digest = policy::compile(&sa.parse().expect("valid").0).digest;
        state.save(&a, &sa, &digest, 3).expect("saved");
        state.save(&b, &sb, &digest, 5).expect("saved");
        let ra = state.restore(&a).expect("restores").expect("a kept");
        assert_eq!((ra.record.config, ra.record.generation), (a.clone(), 3));
        let rb = state.restore(&b).expect("restores").expect("b kept");
        assert_eq!((rb.record.config, rb.record.generation), (b.clone(), 5));
        assert_ne!(state.file(&a), state.file(&b));
    }

    /// The single `policy.json` of an older egressd is restored for the path it names (and
    /// only for it) until that path's own record is written.
    #[test]
    fn a_legacy_record_is_read_for_its_own_path() {
        let t = Tmp::new("lastgood-legacy");
        let state = StateDir::new(t.0.join("last-good"));
        let main = t.0.join("policy.toml");
        let src = sources(&main, GOOD);
        let digest = policy::compile(&src.parse().expect("valid").0).digest;
        state.save(&main, &src, &digest, 4).expect("saved");
        std::fs::rename(state.file(&main), state.path.join(LEGACY_FILE)).expect("rename");
        let r = state
            .restore(&main)
            .expect("restores")
            .expect("legacy kept");
        assert_eq!(r.record.generation, 4);
        assert!(
            state
                .restore(&t.0.join("other.toml"))
                .expect("reads")
                .is_none()
        );
        state.save(&main, &src, &digest, 6).expect("saved");
        let r = state.restore(&main).expect("restores").expect("own record");
        assert_eq!(r.record.generation, 6, "its own record first");
    }

    /// The owned save (the daemon's, after `agent_start`) writes the same record and
    /// replaces the one kept before.
    #[test]
    fn owned_save_replaces_the_record() {
        let t = Tmp::new("lastgood-owned");
        let state = StateDir::new(t.0.join("last-good"));
        let main = t.0.join("policy.toml");
        let src = sources(&main, GOOD);
        let digest = policy::compile(&src.parse().expect("valid").0).digest;
        state.save(&main, &src, &digest, 1).expect("saved");
        state
            .save_owned(&main, src.clone(), &digest, 2)
            .expect("saved");
        let r = state.restore(&main).expect("restores").expect("kept");
        assert_eq!(r.record.generation, 2);
        assert_eq!(r.record.sources, src);
    }

    #[test]
    fn a_tampered_record_is_refused() {
        let t = Tmp::new("lastgood-bad");
        let state = StateDir::new(t.0.join("last-good"));
        let main = t.0.join("policy.toml");
        let src = sources(&main, GOOD);
        state.save(&main, &src, "0000", 1).expect("saved");
        let e = state.restore(&main).expect_err("digest differs");
        assert!(format!("{e:#}").contains("digest"), "{e:#}");
        let bad = sources(&main, "allowlist = [\"mars\"]\n");
        state.save(&main, &bad, "0000", 1).expect("saved");
        let e = state.restore(&main).expect_err("invalid");
        assert!(format!("{e:#}").contains("mars"), "{e:#}");
    }
}
