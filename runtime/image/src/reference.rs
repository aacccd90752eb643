//! Image references, normalized as containerd does (`busybox` →
//! `docker.io/library/busybox:latest`).

use std::str::FromStr;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// A normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses a reference; no tag and no digest means `:latest`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason: String| Error::InvalidReference {
            reference: s.to_string(),
            reason,
        };
        if s.is_empty() || s.len() > 4096 || s.chars().any(|c| c.is_whitespace()) {
            return Err(bad("empty, too long or contains whitespace".into()));
        }
        let r = oci_client::Reference::from_str(s).map_err(|e| bad(e.to_string()))?;
        if r.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("repository names must be lowercase".into()));
        }
        let digest = r.digest().map(Digest::parse).transpose()?;
        let tag = match (r.tag(), &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            registry: r.registry().to_string(),
            repository: r.repository().to_string(),
            tag,
            digest,
        })
    }

    /// `registry/repository`.
    pub fn repo(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag`, the repoTag this reference records (if it has a tag).
    pub fn tagged_name(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.repo()))
    }

    /// `registry/repository@digest`, a repoDigest.
    pub fn digest_name(&self, d: &Digest) -> String {
        format!("{}@{d}", self.repo())
    }

    /// The name as the user sees it (tag and/or digest).
    pub fn full(&self) -> String {
        let mut s = self.repo();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s
    }

    /// The host (without port) of a registry, to decide plain HTTP defaults.
    pub fn host_of(registry: &str) -> &str {
        if let Some(rest) = registry.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        registry.split(':').next().unwrap_or(registry)
    }

    /// The reference as oci-client wants it, against `host` (the registry or a mirror).
    pub fn to_oci(&self, host: &str) -> oci_client::Reference {
        match (&self.tag, &self.digest) {
            (_, Some(d)) => oci_client::Reference::with_digest(
                host.to_string(),
                self.repository.clone(),
                d.to_string(),
            ),
            (Some(t), None) => oci_client::Reference::with_tag(
                host.to_string(),
                self.repository.clone(),
                t.clone(),
            ),
            (None, None) => oci_client::Reference::with_tag(
                host.to_string(),
                self.repository.clone(),
                "latest".to_string(),
            ),
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_containerd() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.tagged_name().unwrap(), "docker.io/library/busybox:latest");
        let r = ImageRef::parse("quay.io/a/b:1").unwrap();
        assert_eq!(r.tagged_name().unwrap(), "quay.io/a/b:1");
        let r = ImageRef::parse("127.0.0.1:5000/x/y").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(ImageRef::host_of(&r.registry), "127.0.0.1");
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = ImageRef::parse(&format!("localhost:5000/x@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.unwrap().to_string(), d);
        for bad in ["", "UPPER/case", "a b", "x@sha256:zz"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }
}
