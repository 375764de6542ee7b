//! OCSF events checked against the compiled OCSF schema (`ocsf-1.3.0-schema.json`, the shape
//! the OCSF server exports): the class by `class_uid`, required attributes of the class and
//! of every object inside (recursively, counting profile attributes only for the profiles in
//! `metadata.profiles`), nothing outside the schema except under `unmapped` (type `object`),
//! attribute types (base types through `types`), enum values and their sibling captions
//! (free text allowed only for 99 `Other`), no deprecated attribute, `type_uid` =
//! `class_uid` * 100 + `activity_id`, `category_uid` of the class's category and
//! `metadata.version` of the schema.
use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// The compiled schema.
pub struct Schema(Value);

impl Schema {
    /// Reads `ocsf-1.3.0-schema.json` from `dir`.
    pub fn load(dir: &std::path::Path) -> Result<Self, String> {
        let path = dir.join("ocsf-1.3.0-schema.json");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if !v["classes"].is_object() || !v["objects"].is_object() || !v["types"].is_object() {
            return Err(format!(
                "{}: not a compiled OCSF schema (classes, objects, types)",
                path.display()
            ));
        }
        Ok(Self(v))
    }

    /// Every violation of `doc` (an OCSF event), each naming the attribute path.
    pub fn check(&self, doc: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        let Some(event) = doc.as_object() else {
            return vec!["not a JSON object".into()];
        };
        let Some(class_uid) = event.get("class_uid").and_then(Value::as_i64) else {
            return vec!["class_uid: missing or not an integer".into()];
        };
        let Some(class) = self.0["classes"]
            .as_object()
            .and_then(|c| c.values().find(|c| c["uid"].as_i64() == Some(class_uid)))
        else {
            return vec![format!("class_uid: {class_uid} is no class of the schema")];
        };
        let declared: BTreeSet<String> = event
            .get("metadata")
            .and_then(|m| m.get("profiles"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let allowed: BTreeSet<&str> = class["profiles"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for p in &declared {
            if !allowed.contains(p.as_str()) {
                errs.push(format!(
                    "metadata.profiles: `{p}` is not a profile of class {class_uid}"
                ));
            }
        }
        let cx = Cx {
            schema: &self.0,
            profiles: &declared,
        };
        cx.attrs("", &class["attributes"], event, &mut errs);
        let activity = event.get("activity_id").and_then(Value::as_i64);
        match (event.get("type_uid").and_then(Value::as_i64), activity) {
            (Some(t), Some(a)) if t == class_uid * 100 + a => {}
            (t, a) => errs.push(format!(
                "type_uid: {t:?} is not class_uid * 100 + activity_id ({class_uid} * 100 + {a:?})"
            )),
        }
        let category = class["category"].as_str().unwrap_or_default();
        let cat_uid = self.0["categories"][category]["uid"].as_i64();
        if cat_uid.is_none() {
            errs.push(format!(
                "class {class_uid}: category `{category}` not in the schema"
            ));
        } else if event.get("category_uid").and_then(Value::as_i64) != cat_uid {
            errs.push(format!(
                "category_uid: {:?}, the class's category `{category}` is {cat_uid:?}",
                event.get("category_uid")
            ));
        }
        let version = event
            .get("metadata")
            .and_then(|m| m.get("version"))
            .and_then(Value::as_str);
        if version != self.0["version"].as_str() {
            errs.push(format!(
                "metadata.version: {version:?}, the schema is {}",
                self.0["version"]
            ));
        }
        errs
    }
}

struct Cx<'a> {
    schema: &'a Value,
    profiles: &'a BTreeSet<String>,
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

impl Cx<'_> {
    /// Checks the members of one object against the attribute definitions `defs`.
    fn attrs(&self, path: &str, defs: &Value, obj: &Map<String, Value>, errs: &mut Vec<String>) {
        let Some(defs) = defs.as_object() else {
            errs.push(format!("{path}: the schema has no attributes here"));
            return;
        };
        for (name, def) in defs {
            let profile = def["profile"].as_str();
            let applies = profile.is_none_or(|p| self.profiles.contains(p));
            if def["requirement"] == "required" && applies && !obj.contains_key(name) {
                errs.push(format!(
                    "{}: required{} and missing",
                    join(path, name),
                    profile
                        .map(|p| format!(" (profile {p})"))
                        .unwrap_or_default()
                ));
            }
        }
        for (name, v) in obj {
            let here = join(path, name);
            let Some(def) = defs.get(name) else {
                errs.push(format!("{here}: not an attribute of the schema here"));
                continue;
            };
            if !def["deprecated"].is_null() {
                errs.push(format!(
                    "{here}: deprecated in the schema: {}",
                    def["deprecated"]
                ));
            }
            if let Some(p) = def["profile"].as_str()
                && !self.profiles.contains(p)
            {
                errs.push(format!(
                    "{here}: attribute of profile `{p}`, which metadata.profiles does not declare"
                ));
            }
            if def["is_array"] == true {
                match v.as_array() {
                    Some(items) => {
                        for (i, item) in items.iter().enumerate() {
                            self.value(&format!("{here}[{i}]"), def, item, errs);
                        }
                    }
                    None => errs.push(format!("{here}: must be an array")),
                }
            } else {
                self.value(&here, def, v, errs);
            }
            if let Some(e) = def["enum"].as_object() {
                let key = match v {
                    Value::Number(n) => n.to_string(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                match e.get(&key) {
                    None => errs.push(format!(
                        "{here}: {key} is not one of the enum values {:?}",
                        e.keys().collect::<Vec<_>>()
                    )),
                    Some(item) => {
                        if let Some(sib) = def["sibling"].as_str()
                            && let Some(got) = obj.get(sib)
                        {
                            let caption = item["caption"].as_str().unwrap_or_default();
                            // 99 is `Other`: the sibling holds the source's own term.
                            let other = key == "99";
                            let ok = if other {
                                got.as_str().is_some_and(|s| !s.is_empty())
                            } else {
                                got.as_str() == Some(caption)
                            };
                            if !ok {
                                errs.push(format!(
                                    "{}: {got} is not the caption of {name} {key} ({caption:?})",
                                    join(path, sib)
                                ));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Checks one value against its attribute's type.
    fn value(&self, here: &str, def: &Value, v: &Value, errs: &mut Vec<String>) {
        let t = def["type"].as_str().unwrap_or_default();
        if t == "object" {
            // `unmapped` and other free-form objects: anything inside.
            if !v.is_object() {
                errs.push(format!("{here}: must be a JSON object"));
            }
            return;
        }
        if let Some(obj_def) = self.schema["objects"].get(t) {
            match v.as_object() {
                Some(o) => self.attrs(here, &obj_def["attributes"], o, errs),
                None => errs.push(format!("{here}: must be a `{t}` object")),
            }
            return;
        }
        let Some(tdef) = self.schema["types"].get(t) else {
            errs.push(format!("{here}: unknown type `{t}` in the schema"));
            return;
        };
        let base = tdef["type"].as_str().unwrap_or(t);
        let ok = match base {
            "string_t" => v.is_string(),
            "integer_t" => v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
            "long_t" => v.is_i64() || v.is_u64(),
            "float_t" => v.is_number(),
            "boolean_t" => v.is_boolean(),
            "json_t" => true,
            other => {
                errs.push(format!("{here}: unknown base type `{other}`"));
                return;
            }
        };
        if !ok {
            errs.push(format!("{here}: {v} is not of type {t} ({base})"));
            return;
        }
        if let Some(max) = tdef["max_len"].as_u64()
            && v.as_str().is_some_and(|s| s.len() as u64 > max)
        {
            errs.push(format!("{here}: longer than {max} ({t})"));
        }
        if let Some(r) = tdef["range"].as_array()
            && let (Some(lo), Some(hi), Some(n)) = (r[0].as_i64(), r[1].as_i64(), v.as_i64())
            && !(lo..=hi).contains(&n)
        {
            errs.push(format!("{here}: {n} outside {lo}..={hi} ({t})"));
        }
        if let Some(values) = tdef["values"].as_array()
            && !values.contains(v)
        {
            errs.push(format!("{here}: {v} is not one of {values:?} ({t})"));
        }
        match t {
            "ip_t"
                if v.as_str()
                    .and_then(|s| s.parse::<std::net::IpAddr>().ok())
                    .is_none() =>
            {
                errs.push(format!("{here}: {v} is not an IP address"))
            }
            "port_t" if !v.as_i64().is_some_and(|n| (0..=65535).contains(&n)) => {
                errs.push(format!("{here}: {v} is not a port"))
            }
            _ => {}
        }
    }
}
