//! The OCI / Docker schema 2 documents the store reads: manifests, indexes, image configs.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result, malformed};
use crate::unpack::Compression;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// What a registry may answer for an image reference.
pub const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// linux/<this machine's architecture in Go's names>.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            other => other,
        };
        Self {
            architecture: arch.to_string(),
            os: "linux".to_string(),
            variant: if arch == "arm64" {
                Some("v8".into())
            } else {
                None
            },
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Self {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Self {
                    os: os.to_string(),
                    architecture: arch.to_string(),
                    variant: Some(variant.to_string()),
                })
            }
            _ => Err(malformed(
                "platform",
                format!("{s:?} is not os/arch[/variant]"),
            )),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// A parsed manifest document.
#[derive(Debug, Clone)]
pub enum Document {
    Manifest(Box<Manifest>),
    Index(Index),
}

/// Parses a manifest or index, checking the schema and the media types it names.
pub fn parse_document(what: &str, data: &[u8], content_type: Option<&str>) -> Result<Document> {
    let v: serde_json::Value = serde_json::from_slice(data).map_err(|e| malformed(what, e))?;
    let mt = v
        .get("mediaType")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .or_else(|| content_type.map(str::to_string));
    let is_index = match mt.as_deref() {
        Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) if other.starts_with("application/vnd.docker.distribution.manifest.v1") => {
            return Err(Error::UnsupportedMediaType(format!(
                "{other} (Docker schema 1 is not supported)"
            )));
        }
        Some(other) if !other.is_empty() && content_type.is_none() => {
            return Err(Error::UnsupportedMediaType(other.to_string()));
        }
        _ => v.get("manifests").is_some(),
    };
    if is_index {
        let idx: Index = serde_json::from_value(v).map_err(|e| malformed(what, e))?;
        if idx.schema_version != 2 {
            return Err(malformed(
                what,
                format!("schemaVersion {} (want 2)", idx.schema_version),
            ));
        }
        Ok(Document::Index(idx))
    } else {
        let m: Manifest = serde_json::from_value(v).map_err(|e| malformed(what, e))?;
        if m.schema_version != 2 {
            return Err(malformed(
                what,
                format!("schemaVersion {} (want 2)", m.schema_version),
            ));
        }
        if m.config.media_type != OCI_CONFIG && m.config.media_type != DOCKER_CONFIG {
            return Err(Error::UnsupportedMediaType(format!(
                "{} (config of {what}; not a container image)",
                m.config.media_type
            )));
        }
        for l in &m.layers {
            if Compression::from_media_type(&l.media_type).is_none() {
                return Err(Error::UnsupportedMediaType(format!(
                    "{} (layer {} of {what})",
                    l.media_type, l.digest
                )));
            }
        }
        Ok(Document::Manifest(Box::new(m)))
    }
}

/// Picks the manifest for `want` from an index: same os and architecture, the requested
/// variant if there is one (else the first entry without a variant, else any).
pub fn select_platform<'a>(idx: &'a Index, want: &Platform) -> Option<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = idx
        .manifests
        .iter()
        .filter(|d| {
            matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST)
                && d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == want.os && p.architecture == want.architecture)
        })
        .collect();
    let variant_of = |d: &Descriptor| d.platform.as_ref().and_then(|p| p.variant.clone());
    if let Some(v) = &want.variant
        && let Some(d) = candidates
            .iter()
            .find(|d| variant_of(d).as_deref() == Some(v))
    {
        return Some(d);
    }
    candidates
        .iter()
        .find(|d| variant_of(d).is_none())
        .or_else(|| candidates.first())
        .copied()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

/// Parses an image config and checks it against the manifest's layers.
pub fn parse_config(what: &str, data: &[u8], layers: usize) -> Result<ImageConfig> {
    let c: ImageConfig = serde_json::from_slice(data).map_err(|e| malformed(what, e))?;
    if c.rootfs.kind != "layers" {
        return Err(malformed(
            what,
            format!("rootfs.type {:?} (want \"layers\")", c.rootfs.kind),
        ));
    }
    if c.rootfs.diff_ids.len() != layers {
        return Err(malformed(
            what,
            format!("{} diff_ids for {layers} layers", c.rootfs.diff_ids.len()),
        ));
    }
    Ok(c)
}

/// The uid (numeric USER) or user name (named USER) an image runs as, as CRI reports them.
pub fn user_of(c: &ImageConfig) -> (Option<i64>, String) {
    let user = c
        .config
        .as_ref()
        .and_then(|r| r.user.clone())
        .unwrap_or_default();
    let name = user.split(':').next().unwrap_or("");
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        let mk = |u: &str| ImageConfig {
            config: Some(RunConfig {
                user: Some(u.into()),
            }),
            ..Default::default()
        };
        assert_eq!(user_of(&mk("1000:1000")), (Some(1000), String::new()));
        assert_eq!(user_of(&mk("nobody")), (None, "nobody".into()));
        assert_eq!(user_of(&mk("")), (None, String::new()));
    }

    #[test]
    fn schema1_refused() {
        let e = parse_document(
            "m",
            br#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws"}"#,
            None,
        )
        .unwrap_err();
        assert!(matches!(e, Error::UnsupportedMediaType(_)));
    }
}
