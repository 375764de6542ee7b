//! Azure service tags (`ServiceTags_Public_YYYYMMDD.json`, published weekly; documented at
//! <https://learn.microsoft.com/azure/virtual-network/service-tags-overview>):
//!
//! ```json
//! {"changeNumber": 363, "cloud": "Public",
//!  "values": [{"name": "AzureCloud.westeurope", "id": "AzureCloud.westeurope",
//!              "properties": {"region": "westeurope", "regionId": 18,
//!                             "addressPrefixes": ["13.69.0.0/17", "2603:1020:200::/46"],
//!                             ...}}]}
//! ```
//!
//! Key: `properties.region`, lower case (`westeurope`). Global service tags (`AzureCloud`,
//! `Storage`, ...) have an empty region: their prefixes carry no location and are skipped;
//! the same addresses appear in the regional tags (`AzureCloud.westeurope`). A prefix is
//! listed in several tags; the import deduplicates. Messages name the tag.

use std::borrow::Cow;

use serde::Deserialize;

use super::{Entry, Format, ImportError, JsonStr, Parsed, Source};

#[derive(Deserialize)]
struct File<'a> {
    #[serde(rename = "changeNumber", default)]
    change_number: Option<u64>,
    #[serde(borrow, default)]
    cloud: Option<Cow<'a, str>>,
    #[serde(borrow)]
    values: Vec<Tag<'a>>,
}

#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    properties: Properties<'a>,
}

#[derive(Deserialize)]
struct Properties<'a> {
    #[serde(borrow)]
    region: Cow<'a, str>,
    #[serde(rename = "addressPrefixes", borrow)]
    address_prefixes: Vec<JsonStr<'a>>,
}

/// Read an Azure service tags file.
///
/// # Errors
/// JSON syntax, a missing `values`, `name`, `properties`, `region` or `addressPrefixes`, a
/// field of the wrong type; located.
pub fn read<'a>(src: &Source<'a>) -> Result<Parsed<'a>, ImportError> {
    let file: File<'a> = src.json(Format::Azure)?;
    let mut entries = Vec::new();
    for (i, tag) in file.values.into_iter().enumerate() {
        for (j, JsonStr(p)) in tag.properties.address_prefixes.into_iter().enumerate() {
            entries.push(Entry {
                offset: src.offset_of(&p),
                text: p,
                key: tag.properties.region.clone(),
                subdivision: None,
                field: format!("values[{i}].properties.addressPrefixes[{j}]"),
                context: Some(tag.name.clone()),
            });
        }
    }
    let cloud = src.stamp(Format::Azure, "cloud", file.cloud)?;
    let version = match (cloud, file.change_number) {
        (Some(c), Some(n)) => Some(format!("cloud {c}, changeNumber {n}")),
        (None, Some(n)) => Some(format!("changeNumber {n}")),
        (Some(c), None) => Some(format!("cloud {c}")),
        (None, None) => None,
    };
    Ok(Parsed { entries, version })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn azure_reads_tags() {
        let text = r#"{"changeNumber": 3, "cloud": "Public", "values": [
 {"name": "AzureCloud", "id": "AzureCloud", "properties": {"region": "", "addressPrefixes": ["1.0.0.0/8"]}},
 {"name": "AzureCloud.westeurope", "properties": {"region": "westeurope", "regionId": 18,
  "addressPrefixes": ["1.0.0.0/8", "2603:1020:200::/46"]}}]}"#;
        let p = read(&Source {
            path: Path::new("z.json"),
            text,
        })
        .expect("valid");
        assert_eq!(p.version.as_deref(), Some("cloud Public, changeNumber 3"));
        let got: Vec<(&str, &str)> = p.entries.iter().map(|e| (&*e.text, &*e.key)).collect();
        assert_eq!(
            got,
            [
                ("1.0.0.0/8", ""),
                ("1.0.0.0/8", "westeurope"),
                ("2603:1020:200::/46", "westeurope")
            ]
        );
        assert_eq!(
            p.entries[2].context.as_deref(),
            Some("AzureCloud.westeurope")
        );
        assert_eq!(
            p.entries[2].field,
            "values[1].properties.addressPrefixes[1]"
        );
        assert!(
            p.entries.iter().all(|e| e.offset.is_some()),
            "borrowed, located"
        );
    }
}
