//! egressd: eBPF host agent that keeps a host's outbound connections inside allowlisted
//! regions.
//!
//! The crate is six layers, one folder each; a module may use its own layer and the layers
//! below it, never one above (checked by the `layers` test below, which reads `src/`):
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

    /// Top-level modules named by `text` (`crate::x`, `crate::{x, y::z}`), comments ignored.
    fn used_layers(text: &str) -> Vec<String> {
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
                            used.push(first_segment(&group[start..j]));
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
                used.push(first_segment(rest));
            }
        }
        used.retain(|u| !u.is_empty());
        used
    }

    fn first_segment(s: &str) -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
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
