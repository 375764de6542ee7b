//! The Ansible role (`configs/ansible`) run for real: ansible-core, installed from PyPI by
//! `cargo xtask setup` into `TARGET/ansible/venv`, runs the role against this host
//! (`connection: local`) with the service left alone (`egressd_manage_service: false`), the
//! policy directory replaced by a temporary one (`egressd_config_dir`; the machine's
//! `/etc` is never touched) and a reload command that appends a line to a file the test
//! reads. `egressd_binary` is the `egressd` this test was built with.
//!
//! Each test is one of issue 19's cases, and fails on the role as it was before it
//! (README: "Ansible"). A custom main (libtest-mimic) so that, when ansible-core is not
//! installed, the tests are listed as skipped with the reason instead of failing; CI
//! installs it (`cargo xtask setup` in `.ci/run`).
//!
//! `EGRESSD_ANSIBLE_BIN` names the directory of `ansible-playbook` and `ansible-lint`
//! (default: `ansible/venv/bin` in the target directory holding this test binary);
//! `EGRESSD_ANSIBLE_DIR` the directory holding `roles/` and `site.yml` (default:
//! `configs/ansible`), to run the same tests on another version of the role.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::{Arguments, Completion, Trial};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The role and example playbook under test.
fn ansible_dir() -> PathBuf {
    std::env::var_os("EGRESSD_ANSIBLE_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| repo().join("configs/ansible"), PathBuf::from)
}

/// The directory holding `ansible-playbook` and `ansible-lint`, or why there is none.
fn ansible_bin() -> Result<PathBuf, String> {
    let dir = match std::env::var_os("EGRESSD_ANSIBLE_BIN").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        // TARGET/debug/deps/ansible-HASH -> TARGET/ansible/venv/bin
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
            .ok_or("cannot find the target directory of this test binary")?
            .join("ansible/venv/bin"),
    };
    if dir.join("ansible-playbook").is_file() && dir.join("ansible-lint").is_file() {
        Ok(dir)
    } else {
        Err(format!(
            "ansible-core and ansible-lint are not installed in {} (`cargo xtask setup` \
             installs them)",
            dir.display()
        ))
    }
}

/// One test, given the directory of the ansible tools.
type RoleTest = fn(&Path);

fn main() {
    let args = Arguments::from_args();
    let tests: [(&str, RoleTest); 9] = [
        (
            "role_rejects_bad_drop_ins_and_changes_nothing",
            role_rejects_bad_drop_ins_and_changes_nothing,
        ),
        (
            "role_removing_a_bad_drop_in_repairs",
            role_removing_a_bad_drop_in_repairs,
        ),
        (
            "role_fixes_drop_in_and_main_file_in_one_run",
            role_fixes_drop_in_and_main_file_in_one_run,
        ),
        (
            "role_allowlisting_a_new_drop_in_region_converges",
            role_allowlisting_a_new_drop_in_region_converges,
        ),
        (
            "role_reload_survives_a_later_failure",
            role_reload_survives_a_later_failure,
        ),
        (
            "role_failed_reload_is_retried_by_the_next_run",
            role_failed_reload_is_retried_by_the_next_run,
        ),
        ("role_check_mode_validates", role_check_mode_validates),
        (
            "example_playbook_audits_and_refuses_to_enforce",
            example_playbook_audits_and_refuses_to_enforce,
        ),
        (
            "ansible_lint_production_profile",
            ansible_lint_production_profile,
        ),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            Trial::ignorable_test(name, move || match ansible_bin() {
                Ok(bin) => {
                    f(&bin);
                    Ok(Completion::Completed)
                }
                Err(reason) => Ok(Completion::ignored_with(reason)),
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

/// What the role writes when given [`Host::base_vars`] alone.
const MAIN_REGIONS: &str = "\n[regions.eu]\nprefixes = [\"198.18.1.0/24\"]\n";

/// The three bad drop-ins of issue 19: each is refused by `egressd check` only together
/// with the main file.
const BAD_DROP_INS: [(&str, &str); 3] = [
    (
        "redefines region eu",
        "[regions.eu]\nprefixes = [\"198.18.7.0/24\"]\n",
    ),
    (
        "repeats a prefix of region us",
        "[regions.apac]\nprefixes = [\"198.18.2.0/24\"]\n",
    ),
    ("sets mode", "mode = \"audit\"\n"),
];

/// A drop-in that defines a new region.
const NTP: &str = "[regions.ntp]\nprefixes = [\"198.18.9.0/28\"]\n";

/// One temporary host: the policy directory the role manages, the reload log and the
/// files of the runs. Removed on drop.
struct Host {
    base: PathBuf,
    bin: PathBuf,
}

/// The outcome of one `ansible-playbook` run.
#[derive(Debug)]
struct Run {
    /// `failed=0` and `unreachable=0` in the recap, and exit code 0.
    ok: bool,
    /// `changed=N` of the recap.
    changed: u64,
    /// The `msg` of every failed task.
    failures: Vec<String>,
    /// Everything printed, for assertion messages.
    output: String,
}

impl Run {
    fn failure_text(&self) -> String {
        self.failures.join("\n")
    }
}

impl Host {
    fn new(name: &str, bin: &Path) -> Self {
        let base = std::env::temp_dir().join(format!(
            "egressd-ansible-{name}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(base.join("work")).expect("create the test directory");
        Self {
            base,
            bin: bin.to_path_buf(),
        }
    }

    /// The directory the role manages (`egressd_config_dir`).
    fn etc(&self) -> PathBuf {
        self.base.join("etc/egressd")
    }

    fn reload_log(&self) -> PathBuf {
        self.base.join("reloads.log")
    }

    fn marker(&self) -> PathBuf {
        self.etc().join(".ansible-reload-pending")
    }

    /// Reloads recorded so far.
    fn reloads(&self) -> usize {
        std::fs::read_to_string(self.reload_log()).map_or(0, |s| s.lines().count())
    }

    /// Variables every run gets: the temporary root, this build's egressd, no service, a
    /// reload that is recorded, and a policy of its own (audit mode).
    fn base_vars(&self) -> Value {
        json!({
            "egressd_config_dir": self.etc(),
            "egressd_binary": env!("CARGO_BIN_EXE_egressd"),
            "egressd_manage_service": false,
            "egressd_reload_command": [
                "/bin/sh", "-c", format!("echo reloaded >> '{}'", self.reload_log().display())
            ],
            "egressd_mode": "audit",
            "egressd_allowlist": ["eu"],
            "egressd_regions": {"eu": ["198.18.1.0/24"], "us": ["198.18.2.0/24"]},
            "egressd_drop_ins": {},
        })
    }

    /// Runs the role with [`Self::base_vars`] overridden by `vars`.
    fn role(&self, vars: Value, extra_args: &[&str]) -> Run {
        self.play(vars, extra_args, &[])
    }

    /// Runs the role, then the tasks `after` (YAML list items) in the same play.
    fn play(&self, vars: Value, extra_args: &[&str], after: &[&str]) -> Run {
        let mut all = self.base_vars();
        if let (Some(all), Value::Object(vars)) = (all.as_object_mut(), vars) {
            all.extend(vars);
        }
        // The role and the later tasks in one section: handlers notified by the role run
        // only at its end (or not at all when a task fails first).
        let mut play = String::from(
            "- name: Role under test\n  hosts: localhost\n  connection: local\n  \
             gather_facts: false\n  tasks:\n    - name: The role\n      \
             ansible.builtin.import_role:\n        name: egressd\n",
        );
        for t in after {
            play.push_str(&format!("    - {t}\n"));
        }
        let file = self.base.join("work/play.yml");
        std::fs::write(&file, play).expect("write the playbook");
        self.playbook(&file, "localhost,", &all, extra_args)
    }

    /// Runs `ansible-playbook PLAYBOOK` on `inventory` with `vars` as extra variables.
    fn playbook(&self, playbook: &Path, inventory: &str, vars: &Value, extra: &[&str]) -> Run {
        let vars_file = self.base.join("work/vars.json");
        std::fs::write(&vars_file, vars.to_string()).expect("write the variables");
        let tmp = self.base.join("work/tmp");
        // Settings of its own: no ansible.cfg of the user or the working directory applies.
        let cfg = self.base.join("work/ansible.cfg");
        std::fs::write(&cfg, "[defaults]\n").expect("write ansible.cfg");
        let out = Command::new(self.bin.join("ansible-playbook"))
            .arg("-i")
            .arg(inventory)
            .arg("-e")
            .arg(format!(
                "ansible_python_interpreter={}",
                self.bin.join("python3").display()
            ))
            .arg("-e")
            .arg(format!("@{}", vars_file.display()))
            .args(extra)
            .arg(playbook)
            .env("ANSIBLE_ROLES_PATH", ansible_dir().join("roles"))
            .env("ANSIBLE_LOCAL_TEMP", tmp.join("local"))
            .env("ANSIBLE_REMOTE_TEMP", tmp.join("remote"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_PIPELINING", "1")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
            .env("ANSIBLE_CONFIG", &cfg)
            .output()
            .expect("spawn ansible-playbook");
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let recap = output
            .lines()
            .rev()
            .find(|l| l.starts_with("localhost") && l.contains("changed="))
            .unwrap_or_else(|| panic!("no play recap in:\n{output}"));
        let count = |key: &str| -> u64 {
            recap
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {recap:?}"))
        };
        let failures = output
            .lines()
            .filter_map(|l| l.split_once("FAILED! => ").map(|(_, j)| j))
            .map(|j| {
                serde_json::from_str::<Value>(j)
                    .ok()
                    .and_then(|v| v["msg"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| j.to_owned())
            })
            .collect();
        Run {
            ok: out.status.success() && count("failed=") == 0 && count("unreachable=") == 0,
            changed: count("changed="),
            failures,
            output,
        }
    }

    /// Every file under the policy directory (hidden ones too) with its content.
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.insert(p.clone(), std::fs::read_to_string(&p).unwrap_or_default());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.etc(), &mut out);
        out
    }

    /// `egressd check` of the set on disk, as the daemon would load it.
    fn check(&self) -> Result<(), String> {
        let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
            .arg("check")
            .arg("--config")
            .arg(self.etc().join("policy.toml"))
            .output()
            .expect("spawn egressd check");
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Writes a drop-in directly, as another team (or an earlier role) would have.
    fn put_drop_in(&self, name: &str, text: &str) {
        let dir = self.etc().join("policy.d");
        std::fs::create_dir_all(&dir).expect("create policy.d");
        std::fs::write(dir.join(format!("{name}.toml")), text).expect("write a drop-in");
    }

    /// A first run from nothing: a valid set installed and reloaded once.
    fn install_good(&self) {
        let r = self.role(json!({}), &[]);
        assert!(r.ok, "the first run failed:\n{}", r.output);
        assert!(self.check().is_ok(), "{:?}", self.check());
        assert!(
            std::fs::read_to_string(self.etc().join("policy.toml"))
                .expect("policy.toml written")
                .contains(MAIN_REGIONS),
            "the main file holds the variables' regions"
        );
        assert_eq!(self.reloads(), 1, "one reload after the first install");
        assert!(!self.marker().exists(), "no reload pending after it");
    }

    /// The set on disk passes `egressd check` and nothing is left pending.
    fn assert_valid(&self, what: &str) {
        if let Err(e) = self.check() {
            panic!("{what}: the set on disk fails egressd check: {e}");
        }
    }

    /// A second run with the same variables changes nothing and reloads nothing.
    fn assert_idempotent(&self, vars: Value) {
        let before = (self.snapshot(), self.reloads());
        let r = self.role(vars, &[]);
        assert!(r.ok, "the repeated run failed:\n{}", r.output);
        assert_eq!(
            r.changed, 0,
            "the repeated run changed something:\n{}",
            r.output
        );
        assert_eq!((self.snapshot(), self.reloads()), before);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Issue 19 item 1 and 7: each bad drop-in is refused before anything is written, with an
/// error naming the file it would have been, and the set on disk stays valid.
fn role_rejects_bad_drop_ins_and_changes_nothing(bin: &Path) {
    let h = Host::new("bad", bin);
    h.install_good();
    let before = h.snapshot();
    let dest = h.etc().join("policy.d/team.toml");
    for (what, text) in BAD_DROP_INS {
        let r = h.role(json!({"egressd_drop_ins": {"team": text}}), &[]);
        assert!(!r.ok, "a drop-in that {what} was accepted:\n{}", r.output);
        let msg = r.failure_text();
        assert!(
            msg.contains(&dest.display().to_string()),
            "the error for a drop-in that {what} does not name {}: {msg}",
            dest.display()
        );
        assert!(
            !msg.contains(".source") && !msg.contains("egressd-stage"),
            "the error names a temporary file: {msg}"
        );
        assert_eq!(
            h.snapshot(),
            before,
            "a drop-in that {what} changed the disk"
        );
        assert_eq!(h.reloads(), 1, "a drop-in that {what} was reloaded");
        h.assert_valid(what);
    }
    // A bad main file (an allowlisted region nobody defines) names the main file.
    let r = h.role(json!({"egressd_allowlist": ["eu", "mars"]}), &[]);
    assert!(!r.ok, "an unknown allowlisted region was accepted");
    let main = h.etc().join("policy.toml").display().to_string();
    assert!(
        r.failure_text().contains(&main) && r.failure_text().contains("mars"),
        "the error does not name {main} and the region: {}",
        r.failure_text()
    );
    assert_eq!(h.snapshot(), before);
}

/// Issue 19 item 2: a bad drop-in already on disk is removed by marking it absent, and the
/// host is repaired in that run.
fn role_removing_a_bad_drop_in_repairs(bin: &Path) {
    let h = Host::new("absent", bin);
    h.install_good();
    h.put_drop_in("team", BAD_DROP_INS[0].1);
    assert!(h.check().is_err(), "the planted drop-in is bad");
    let vars = json!({"egressd_drop_ins": {"team": {"state": "absent"}}});
    let r = h.role(vars.clone(), &[]);
    assert!(r.ok, "removing the bad drop-in failed:\n{}", r.output);
    assert!(
        !h.etc().join("policy.d/team.toml").exists(),
        "the drop-in is still there"
    );
    h.assert_valid("after the removal");
    assert_eq!(h.reloads(), 2, "the repair was reloaded");
    h.assert_idempotent(vars);
}

/// Issue 19 item 2: a bad drop-in on disk is fixed together with a main-file change that
/// needs the fixed version, in one run.
fn role_fixes_drop_in_and_main_file_in_one_run(bin: &Path) {
    let h = Host::new("fix", bin);
    h.install_good();
    h.put_drop_in("team", BAD_DROP_INS[0].1);
    let vars = json!({
        "egressd_drop_ins": {"team": {"content": NTP}},
        "egressd_allowlist": ["eu", "ntp"],
    });
    let r = h.role(vars.clone(), &[]);
    assert!(r.ok, "fixing drop-in and main file failed:\n{}", r.output);
    h.assert_valid("after the fix");
    assert_eq!(
        std::fs::read_to_string(h.etc().join("policy.d/team.toml"))
            .ok()
            .as_deref(),
        Some(NTP)
    );
    assert_eq!(h.reloads(), 2);
    h.assert_idempotent(vars);
}

/// Issue 19 item 3: the main file allowlists a region that a new drop-in defines: one run.
/// Another team's drop-in on disk is kept and checked with the rest.
fn role_allowlisting_a_new_drop_in_region_converges(bin: &Path) {
    let h = Host::new("converge", bin);
    h.install_good();
    h.put_drop_in(
        "other-team",
        "[regions.backup]\nprefixes = [\"198.18.8.0/24\"]\n",
    );
    let vars = json!({
        "egressd_drop_ins": {"ntp": NTP},
        "egressd_allowlist": ["eu", "ntp", "backup"],
    });
    let r = h.role(vars.clone(), &[]);
    assert!(r.ok, "did not converge in one run:\n{}", r.output);
    h.assert_valid("after the run");
    assert!(h.etc().join("policy.d/other-team.toml").exists());
    let main = std::fs::read_to_string(h.etc().join("policy.toml")).expect("main file");
    assert!(
        main.contains("allowlist = [\"eu\", \"ntp\", \"backup\"]"),
        "{main}"
    );
    assert_eq!(h.reloads(), 2);
    h.assert_idempotent(vars);
}

/// Issue 19 item 4: a task after the role fails; the policy change was still reloaded.
fn role_reload_survives_a_later_failure(bin: &Path) {
    let h = Host::new("later", bin);
    h.install_good();
    let vars = json!({"egressd_allowlist": ["eu", "us"]});
    let r = h.play(
        vars.clone(),
        &[],
        &["name: A later task fails\n      ansible.builtin.fail:\n        msg: later failure"],
    );
    assert!(!r.ok, "the later task did not fail:\n{}", r.output);
    assert!(
        r.failure_text().contains("later failure"),
        "{}",
        r.failure_text()
    );
    h.assert_valid("after the run");
    // Reloaded, or still marked pending for the next run: never lost.
    if h.reloads() == 1 {
        assert!(
            h.marker().exists(),
            "the change was neither reloaded nor marked pending"
        );
        let r = h.role(vars.clone(), &[]);
        assert!(r.ok, "{}", r.output);
    }
    assert_eq!(h.reloads(), 2, "the change was not reloaded");
    assert!(!h.marker().exists(), "a reload is still marked pending");
    h.assert_idempotent(vars);
}

/// Issue 19 item 4: the reload itself fails (the daemon was down, the run was cut): the
/// marker stays, and the next run, with nothing left to change, reloads.
fn role_failed_reload_is_retried_by_the_next_run(bin: &Path) {
    let h = Host::new("retry", bin);
    h.install_good();
    let vars = json!({"egressd_allowlist": ["eu", "us"]});
    let mut failing = vars.clone();
    failing["egressd_reload_command"] = json!(["/bin/sh", "-c", "exit 3"]);
    let r = h.role(failing, &[]);
    assert!(!r.ok, "the failing reload was not reported:\n{}", r.output);
    assert!(
        std::fs::read_to_string(h.etc().join("policy.toml"))
            .expect("main file")
            .contains("\"us\""),
        "the policy was not installed"
    );
    assert!(
        h.marker().exists(),
        "no reload is marked pending after a failed one"
    );
    assert_eq!(h.reloads(), 1);
    let r = h.role(vars.clone(), &[]);
    assert!(r.ok, "the next run failed:\n{}", r.output);
    assert_eq!(h.reloads(), 2, "the next run did not reload");
    assert!(!h.marker().exists(), "the marker outlived the reload");
    h.assert_idempotent(vars);
}

/// Issue 19 item 5: `--check --diff` validates the staged set: a bad policy fails, a good
/// change is reported, and neither touches the disk.
fn role_check_mode_validates(bin: &Path) {
    let h = Host::new("check", bin);
    h.install_good();
    let before = h.snapshot();
    for (what, text) in BAD_DROP_INS {
        let r = h.role(
            json!({"egressd_drop_ins": {"team": text}}),
            &["--check", "--diff"],
        );
        assert!(
            !r.ok,
            "--check accepted a drop-in that {what}:\n{}",
            r.output
        );
        assert!(
            r.failure_text()
                .contains(&h.etc().join("policy.d/team.toml").display().to_string()),
            "{}",
            r.failure_text()
        );
    }
    let r = h.role(
        json!({"egressd_allowlist": ["mars"]}),
        &["--check", "--diff"],
    );
    assert!(
        !r.ok,
        "--check accepted an unknown allowlisted region:\n{}",
        r.output
    );
    let r = h.role(
        json!({"egressd_drop_ins": {"ntp": NTP}, "egressd_allowlist": ["eu", "ntp"]}),
        &["--check", "--diff"],
    );
    assert!(r.ok, "--check refused a good change:\n{}", r.output);
    assert!(r.changed > 0, "--check reported no change");
    assert!(
        r.output.contains("+allowlist = [\"eu\", \"ntp\"]"),
        "--diff does not show the change:\n{}",
        r.output
    );
    assert_eq!(h.snapshot(), before, "check mode changed the disk");
    assert_eq!(h.reloads(), 1, "check mode reloaded");
    h.assert_idempotent(json!({}));
}

/// Issue 19 item 6: the example playbook starts in audit mode and refuses to enforce the
/// example's test ranges.
fn example_playbook_audits_and_refuses_to_enforce(bin: &Path) {
    let h = Host::new("site", bin);
    let inventory = h.base.join("work/hosts.ini");
    std::fs::write(
        &inventory,
        "[eu_storage]\nlocalhost ansible_connection=local\n",
    )
    .expect("write the inventory");
    let site = ansible_dir().join("site.yml");
    // The playbook's own policy variables; the test's root, binary and reload only.
    let mut vars = h.base_vars();
    for key in [
        "egressd_mode",
        "egressd_allowlist",
        "egressd_regions",
        "egressd_drop_ins",
    ] {
        vars.as_object_mut().map(|v| v.remove(key));
    }
    // Root already: no sudo.
    vars["ansible_become"] = json!(false);
    let r = h.playbook(&site, &inventory.display().to_string(), &vars, &[]);
    assert!(r.ok, "the example playbook failed:\n{}", r.output);
    let main = std::fs::read_to_string(h.etc().join("policy.toml")).expect("main file");
    assert!(
        main.contains("mode = \"audit\""),
        "not in audit mode:\n{main}"
    );
    h.assert_valid("the example");
    let before = h.snapshot();
    vars["egressd_mode"] = json!("enforce");
    let r = h.playbook(&site, &inventory.display().to_string(), &vars, &[]);
    assert!(!r.ok, "the example enforced its test ranges:\n{}", r.output);
    assert!(
        r.failure_text().contains("egressd_regions"),
        "the refusal does not say what to set: {}",
        r.failure_text()
    );
    assert_eq!(h.snapshot(), before, "the refused run changed the disk");
}

/// ansible-lint with the production profile passes on the role and the example playbook.
fn ansible_lint_production_profile(bin: &Path) {
    let out = Command::new(bin.join("ansible-lint"))
        .args(["--offline", "--nocolor", "--profile", "production"])
        .current_dir(ansible_dir())
        // ansible-lint runs ansible-playbook --syntax-check from PATH.
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("NO_COLOR", "1")
        .output()
        .expect("spawn ansible-lint");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "ansible-lint failed:\n{text}");
    assert!(
        text.contains("Profile 'production' was required, and it passed"),
        "{text}"
    );
}
