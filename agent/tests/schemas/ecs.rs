//! ECS documents checked against the ECS field list (`ecs-8.11.0-flat.yml`, every field by
//! dotted name with its type, `normalize` and `allowed_values`): every leaf field exists
//! (except the custom `egressd.*` namespace; below an `object` field such as `labels` the
//! keys are free and the values of its `object_type`), its JSON value fits the field type,
//! `normalize: [array]` fields are arrays, categorization fields hold allowed values only,
//! every `event.type` is one the ECS lists as expected for each `event.category`, and the
//! required fields (`@timestamp`, `ecs.version`) are present.
use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

/// The custom namespace egressd puts what ECS has no field for under.
pub const CUSTOM: &str = "egressd";

/// One field of the flat field list.
#[derive(Debug, Default)]
pub struct Field {
    /// Elasticsearch type (`keyword`, `long`, `ip`, `date`, `object`, ...).
    pub kind: String,
    /// Type of the values of an `object` field (`labels`: `keyword`).
    pub object_type: Option<String>,
    /// Whether `normalize` lists `array`.
    pub array: bool,
    /// Allowed values and, per value, its expected event types (categories only).
    pub allowed: Option<BTreeMap<String, Vec<String>>>,
    /// `required: true`.
    pub required: bool,
}

/// The field list.
pub struct Schema(pub BTreeMap<String, Field>);

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl Schema {
    /// Reads `ecs-8.11.0-flat.yml` from `dir`.
    pub fn load(dir: &std::path::Path) -> Result<Self, String> {
        let path = dir.join("ecs-8.11.0-flat.yml");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let docs =
            YamlLoader::load_from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let Some(map) = docs.first().and_then(Yaml::as_hash) else {
            return Err(format!("{}: not a mapping of fields", path.display()));
        };
        let mut fields = BTreeMap::new();
        for (k, v) in map {
            let (Some(name), Some(kind)) = (k.as_str(), v["type"].as_str()) else {
                return Err(format!("{}: field {k:?} without a type", path.display()));
            };
            let allowed = v["allowed_values"].as_vec().map(|vals| {
                vals.iter()
                    .filter_map(|a| {
                        Some((
                            a["name"].as_str()?.to_owned(),
                            strings(&a["expected_event_types"]),
                        ))
                    })
                    .collect()
            });
            fields.insert(
                name.to_owned(),
                Field {
                    kind: kind.to_owned(),
                    object_type: v["object_type"].as_str().map(str::to_owned),
                    array: strings(&v["normalize"]).iter().any(|n| n == "array"),
                    allowed,
                    required: v["required"].as_bool() == Some(true),
                },
            );
        }
        if !fields.contains_key("event.category") {
            return Err(format!("{}: no event.category field", path.display()));
        }
        Ok(Self(fields))
    }

    /// Every violation of `doc` (an ECS document), each naming the field.
    pub fn check(&self, doc: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        let mut leaves = Vec::new();
        if !doc.is_object() {
            return vec!["not a JSON object".into()];
        }
        self.flatten("", doc, &mut leaves);
        let present: BTreeSet<&str> = leaves.iter().map(|(n, _)| n.as_str()).collect();
        for (name, f) in &self.0 {
            if f.required && !present.contains(name.as_str()) {
                errs.push(format!("{name}: required and missing"));
            }
        }
        for (name, v) in &leaves {
            if name == CUSTOM || name.starts_with(&format!("{CUSTOM}.")) {
                continue;
            }
            let Some(f) = self.0.get(name) else {
                errs.push(format!("{name}: not an ECS 8.11 field"));
                continue;
            };
            if f.kind == "object" {
                let inner = f.object_type.as_deref().unwrap_or("keyword");
                match v.as_object() {
                    Some(o) => {
                        for (k, x) in o {
                            if !type_ok(inner, x) {
                                errs.push(format!("{name}.{k}: {x} is not {inner}"));
                            }
                        }
                    }
                    None => errs.push(format!("{name}: must be an object")),
                }
                continue;
            }
            if f.array && !v.is_array() {
                errs.push(format!("{name}: must be an array (normalize: array)"));
            }
            let items: Vec<&Value> = match v {
                Value::Array(a) => a.iter().collect(),
                one => vec![one],
            };
            for x in &items {
                if !type_ok(&f.kind, x) {
                    errs.push(format!("{name}: {x} is not of type {}", f.kind));
                }
                if let Some(allowed) = &f.allowed
                    && !x.as_str().is_some_and(|s| allowed.contains_key(s))
                {
                    errs.push(format!(
                        "{name}: {x} is not an allowed value ({:?})",
                        allowed.keys().collect::<Vec<_>>()
                    ));
                }
            }
        }
        // event.type must be expected for every event.category of the document.
        let get = |n: &str| -> Vec<String> {
            leaves
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| match v {
                    Value::Array(a) => a
                        .iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect(),
                    Value::String(s) => vec![s.clone()],
                    _ => vec![],
                })
                .unwrap_or_default()
        };
        let categories = get("event.category");
        let types = get("event.type");
        if let Some(allowed) = self
            .0
            .get("event.category")
            .and_then(|f| f.allowed.as_ref())
        {
            for c in &categories {
                let Some(expected) = allowed.get(c) else {
                    continue;
                };
                for t in &types {
                    if !expected.contains(t) {
                        errs.push(format!(
                            "event.type: `{t}` is not expected for event.category `{c}` ({expected:?})"
                        ));
                    }
                }
            }
        }
        if !categories.is_empty() && types.is_empty() {
            errs.push("event.type: missing beside event.category".into());
        }
        errs
    }

    /// Dotted leaves of `v`; stops at fields of type `object`/`flattened`/`nested`.
    fn flatten(&self, prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(m)
                if prefix.is_empty()
                    || !self.0.get(prefix).is_some_and(|f| {
                        matches!(f.kind.as_str(), "object" | "flattened" | "nested")
                    }) =>
            {
                for (k, x) in m {
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    self.flatten(&name, x, out);
                }
            }
            other => out.push((prefix.to_owned(), other.clone())),
        }
    }
}

/// Whether a JSON value can be indexed as the Elasticsearch type `kind`.
fn type_ok(kind: &str, v: &Value) -> bool {
    match kind {
        "keyword" | "constant_keyword" | "wildcard" | "text" | "match_only_text" => v.is_string(),
        "long" | "integer" | "short" | "byte" => v.is_i64() || v.is_u64(),
        "unsigned_long" => v.is_u64(),
        "float" | "half_float" | "scaled_float" | "double" => v.is_number(),
        "boolean" => v.is_boolean(),
        "ip" => v
            .as_str()
            .is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok()),
        "date" => v
            .as_str()
            .is_some_and(|s| crate::rfc5424::date_time(s, 9).is_ok()),
        "object" | "flattened" | "nested" => v.is_object(),
        "geo_point" => v.is_object() || v.is_string() || v.is_array(),
        _ => false,
    }
}
