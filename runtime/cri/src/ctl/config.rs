//! Pod and container config files, in crictl's format: the CRI messages as JSON with the
//! proto field names (`{"metadata": {"name": ..}, "log_directory": .., "linux": {..}}`).
//!
//! Stricter than crictl: an unknown key is an error naming it (crictl ignores it). YAML is
//! not read: keelsonctl has no YAML parser, and a `.yaml` file that is not also JSON is
//! refused with a message saying so.

use super::protojson;
use anyhow::{Context, Result, anyhow, bail};
use keelson_proto::runtime::v1 as pb;
use serde_json::Value;
use std::path::Path;

/// The JSON document in `path`, with its name in every error.
fn read_json(path: &Path) -> Result<Value> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("config at {} not found", path.display())
        }
        Err(e) => return Err(anyhow!("reading {}: {e}", path.display())),
    };
    serde_json::from_slice(&data).map_err(|e| {
        let yaml = path
            .extension()
            .is_some_and(|x| x == "yaml" || x == "yml");
        if yaml {
            anyhow!(
                "{}: {e} (keelsonctl reads JSON only: it has no YAML parser; write the config as JSON)",
                path.display()
            )
        } else {
            anyhow!("{}: {e}", path.display())
        }
    })
}

fn parse<M: prost::Message + Default>(path: &Path, type_name: &str) -> Result<M> {
    let v = read_json(path)?;
    protojson::from_json(&v, type_name).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// A random version 4 UUID (crictl fills in a missing pod UID with one).
fn uuid_v4() -> Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .context("reading /dev/urandom")?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A pod sandbox config file: metadata with a name and a namespace is required, a missing
/// UID becomes a random one.
pub fn load_pod_config(path: &Path) -> Result<pb::PodSandboxConfig> {
    let mut c: pb::PodSandboxConfig = parse(path, "runtime.v1.PodSandboxConfig")?;
    let Some(m) = c.metadata.as_mut() else {
        bail!("{}: metadata is not set", path.display());
    };
    if m.uid.is_empty() {
        m.uid = uuid_v4()?;
    }
    if m.name.is_empty() || m.namespace.is_empty() {
        bail!(
            "{}: name or namespace is not in metadata (name {:?}, namespace {:?})",
            path.display(),
            m.name,
            m.namespace
        );
    }
    Ok(c)
}

/// A container config file: metadata with a name and an image are required.
pub fn load_container_config(path: &Path) -> Result<pb::ContainerConfig> {
    let c: pb::ContainerConfig = parse(path, "runtime.v1.ContainerConfig")?;
    let Some(m) = c.metadata.as_ref() else {
        bail!("{}: metadata is not set", path.display());
    };
    if m.name.is_empty() {
        bail!("{}: name is not in metadata", path.display());
    }
    match c.image.as_ref() {
        None => bail!("{}: image is not set", path.display()),
        Some(i) if i.image.is_empty() => {
            bail!("{}: image field is not set in image", path.display())
        }
        Some(_) => {}
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn pod_config_needs_name_and_namespace_and_gets_a_uid() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "pod.json",
            r#"{"metadata": {"name": "a", "namespace": "default"}, "log_directory": "/tmp"}"#,
        );
        let c = load_pod_config(&p).unwrap();
        let uid = &c.metadata.unwrap().uid;
        assert_eq!(uid.len(), 36, "{uid}");
        assert_eq!(&uid[14..15], "4");
        let p = write(d.path(), "nons.json", r#"{"metadata": {"name": "a"}}"#);
        let e = load_pod_config(&p).unwrap_err().to_string();
        assert!(e.contains("nons.json") && e.contains("namespace"), "{e}");
        let p = write(d.path(), "none.json", r#"{}"#);
        assert!(
            load_pod_config(&p)
                .unwrap_err()
                .to_string()
                .contains("metadata is not set")
        );
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "bad.json", "{\"metadata\": {\"name\": \"a\",}");
        let e = load_pod_config(&p).unwrap_err().to_string();
        assert!(e.contains("bad.json") && e.contains("line 1"), "{e}");
        let p = write(
            d.path(),
            "key.json",
            r#"{"metadata": {"name": "c"}, "image": {"image": "i"}, "comand": ["x"]}"#,
        );
        let e = load_container_config(&p).unwrap_err().to_string();
        assert!(e.contains("key.json") && e.contains("\"comand\""), "{e}");
        let p = write(d.path(), "c.yaml", "metadata:\n  name: c\n");
        let e = load_container_config(&p).unwrap_err().to_string();
        assert!(e.contains("JSON only"), "{e}");
        let e = load_container_config(&d.path().join("absent.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("absent.json not found"), "{e}");
        let p = write(d.path(), "noimage.json", r#"{"metadata": {"name": "c"}}"#);
        let e = load_container_config(&p).unwrap_err().to_string();
        assert!(e.contains("image is not set"), "{e}");
    }
}
