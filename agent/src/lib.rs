//! egressd: eBPF host agent that keeps a host's outbound connections inside allowlisted
//! regions.
//!
//! The crate is six layers, one folder each; a module may use its own layer and the layers
//! below it, never one above, and no modules use each other in a circle (checked by the
//! `layers` tests below, which read `src/`):
//!
//! | layer | owns | may use |
//! | --- | --- | --- |
//! | [`daemon`] | `egressd run` (run loop, reload, watch, last good policy, metrics, status, signals, notify, instance lock) and `check` | all below |
//! | [`events`] | ring buffer -> typed, enriched records, summaries, formats, pipeline + spool, sinks, audit chain, counters | kernel, policy, config, base |
//! | [`kernel`] | loader (maps, programs, attach, tc), pins, test runs, feature probes/coverage, cgroups, capabilities | policy, config, base |
//! | [`policy`] | pure compilation into map contents (the reference model), ids, explain, regions import | config, base |
//! | [`config`] | the TOML files: policy settings and the agent's output settings, with located errors | base |
//! | [`base`] | located errors, prefix parser, protocol names, trusted files, clock | nothing of the crate |
//!
//! `main.rs` (the `egressd` command line) stands on top. The layers are modules of one crate
//! rather than crates: one build script embeds the eBPF object, the tests, fuzz targets and
//! benches use one library, and a crate boundary would add little that the test does not
//! already enforce (see README "How it is built").
pub mod base;
pub mod config;
pub mod daemon;
pub mod events;
pub mod kernel;
pub mod policy;

/// The layer rule of the crate, checked on its source: a module may use its own layer and
/// those below it, never one above.
#[cfg(test)]
mod layers {
    use std::path::Path;

    /// Bottom to top; `main.rs` (the CLI) stands above all of them.
    const LAYERS: [&str; 6] = ["base", "config", "policy", "kernel", "events", "daemon"];

    /// Module paths named by `text` (`crate::x::y` gives `x::y`, `crate::{x, y::{z}}` gives
    /// `x` and `y`), comments ignored.
    fn used_paths(text: &str) -> Vec<String> {
        let code: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        let mut used = Vec::new();
        let mut rest = code.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // Items at the group's top level: the text up to each depth-1 comma.
                let mut depth = 1;
                let mut start = 0;
                for (j, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' | ',' if depth == 1 => {
                            used.push(path_of(&group[start..j]));
                            start = j + 1;
                            if c == '}' {
                                break;
                            }
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
            } else {
                used.push(path_of(rest));
            }
        }
        used.retain(|u| !u.is_empty());
        used
    }

    /// Top-level modules (layers) named by `text`.
    fn used_layers(text: &str) -> Vec<String> {
        used_paths(text)
            .into_iter()
            .map(|p| p.split("::").next().unwrap_or_default().to_owned())
            .collect()
    }

    /// The leading `a::b::c` of `s` (white space between segments ignored).
    fn path_of(s: &str) -> String {
        let p: String = s
            .chars()
            .filter(|c| !c.is_whitespace())
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        p.trim_end_matches(':').to_owned()
    }

    /// Every `.rs` file under `src` with its module path (`events::formats`), test files
    /// (`tests.rs`, `wal_tests.rs`), `lib.rs` and `main.rs` left out.
    fn modules(src: &Path) -> Vec<(String, std::path::PathBuf)> {
        let mut out = Vec::new();
        let mut stack = vec![src.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read src") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path
                    .strip_prefix(src)
                    .expect("under src")
                    .with_extension("");
                let mut segs: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                let name = segs.last().cloned().unwrap_or_default();
                if path.extension().is_none_or(|e| e != "rs")
                    || name.ends_with("tests")
                    || (segs.len() == 1 && (name == "lib" || name == "main"))
                {
                    continue;
                }
                if name == "mod" {
                    segs.pop();
                }
                out.push((segs.join("::"), path));
            }
        }
        out.sort();
        out
    }

    /// `text` without its trailing inline test module (`#[cfg(test)] mod tests { ... }`).
    fn without_tests(text: &str) -> &str {
        ["#[cfg(test)]\nmod ", "#[cfg(test)]\npub(crate) mod "]
            .iter()
            .filter_map(|m| text.find(m))
            .filter(|i| !text[*i..].lines().nth(1).unwrap_or_default().ends_with(';'))
            .min()
            .map_or(text, |i| &text[..i])
    }

    /// A cycle of module uses in production code, if any: an edge `a -> b` for each use in
    /// `a` of an item of module `b` (the longest module path the use names), except between
    /// a module and its own ancestors or descendants (a parent declares its children, which
    /// may use its items).
    fn module_cycle(src: &Path) -> Option<Vec<String>> {
        let mods = modules(src);
        let names: std::collections::BTreeSet<&str> =
            mods.iter().map(|(m, _)| m.as_str()).collect();
        let related = |a: &str, b: &str| {
            a == b || a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
        };
        let mut edges: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> =
            std::collections::BTreeMap::new();
        for (m, path) in &mods {
            let text = std::fs::read_to_string(path).expect("read file");
            for used in used_paths(without_tests(&text)) {
                let segs: Vec<&str> = used.split("::").collect();
                let target = (1..=segs.len())
                    .rev()
                    .map(|k| segs[..k].join("::"))
                    .find_map(|p| names.get(p.as_str()).copied());
                if let Some(t) = target.filter(|t| !related(m, t)) {
                    edges.entry(m.as_str()).or_default().insert(t);
                }
            }
        }
        // Depth-first search; a node on the stack reached again closes a cycle.
        fn visit<'a>(
            n: &'a str,
            edges: &std::collections::BTreeMap<&'a str, std::collections::BTreeSet<&'a str>>,
            done: &mut std::collections::BTreeSet<&'a str>,
            stack: &mut Vec<&'a str>,
        ) -> Option<Vec<String>> {
            if let Some(i) = stack.iter().position(|s| *s == n) {
                let mut cycle: Vec<String> = stack[i..].iter().map(|s| s.to_string()).collect();
                cycle.push(n.to_owned());
                return Some(cycle);
            }
            if !done.insert(n) {
                return None;
            }
            stack.push(n);
            for next in edges.get(n).into_iter().flatten() {
                if let Some(c) = visit(next, edges, done, stack) {
                    return Some(c);
                }
            }
            stack.pop();
            None
        }
        let mut done = std::collections::BTreeSet::new();
        names
            .iter()
            .find_map(|n| visit(n, &edges, &mut done, &mut Vec::new()))
    }

    /// `(file, layer, used layer)` for every use of a layer above the file's own.
    fn violations(src: &Path) -> Vec<(String, String, String)> {
        let rank = |name: &str| LAYERS.iter().position(|l| *l == name);
        let mut out = Vec::new();
        let mut stack = vec![src.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read src") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let rel = path.strip_prefix(src).expect("under src");
                let layer = rel
                    .components()
                    .next()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .unwrap_or_default();
                let Some(own) = rank(&layer) else {
                    continue;
                };
                let text = std::fs::read_to_string(&path).expect("read file");
                for used in used_layers(&text) {
                    if rank(&used).is_some_and(|r| r > own) {
                        out.push((rel.display().to_string(), layer.clone(), used));
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn layers_parse_uses() {
        let text = "use crate::{\n    base::safefs,\n    daemon::{a, b},\n};\n\
                    // crate::events in a comment\nlet x = crate::kernel::pin::X;\n";
        assert_eq!(used_layers(text), ["base", "daemon", "kernel"]);
    }

    #[test]
    fn layers_find_a_cycle() {
        let dir = std::env::temp_dir().join(format!("egressd-layers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("policy")).expect("mkdir");
        std::fs::write(dir.join("policy/mod.rs"), "pub mod a;\npub mod b;\n").expect("write");
        std::fs::write(dir.join("policy/a.rs"), "use crate::policy::b::X;\n").expect("write");
        let b = "use crate::policy::a::Y;\n#[cfg(test)]\nmod tests {\n}\n";
        std::fs::write(dir.join("policy/b.rs"), b).expect("write");
        let found = module_cycle(&dir);
        // Only a test module uses `a` back: no cycle.
        std::fs::write(
            dir.join("policy/b.rs"),
            "#[cfg(test)]\nmod tests {\nuse crate::policy::a::Y;\n}\n",
        )
        .expect("write");
        let none = module_cycle(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            found,
            Some(vec![
                "policy::a".into(),
                "policy::b".into(),
                "policy::a".into()
            ])
        );
        assert_eq!(none, None);
    }

    #[test]
    fn layers_module_graph_has_no_cycle() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        assert_eq!(module_cycle(&src), None, "a cycle of module uses");
    }

    #[test]
    fn layers_no_module_uses_a_layer_above_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        // Every file belongs to a layer (or is lib.rs / main.rs).
        for entry in std::fs::read_dir(&src).expect("read src") {
            let name = entry.expect("entry").file_name();
            let name = name.to_string_lossy();
            assert!(
                ["lib.rs", "main.rs"].contains(&name.as_ref()) || LAYERS.contains(&name.as_ref()),
                "agent/src/{name} is in no layer: put it in one of {LAYERS:?}"
            );
        }
        let bad = violations(&src);
        assert!(
            bad.is_empty(),
            "modules using a layer above their own (order {LAYERS:?}): {bad:#?}"
        );
    }
}
