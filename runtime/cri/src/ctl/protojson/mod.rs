//! JSON for the CRI messages, driven by the compiled-in descriptors
//! ([`keelson_proto::FILE_DESCRIPTOR_SET`]) instead of serde derives, which the generated
//! prost types do not have.
//!
//! - Out: a message is encoded with prost, then its wire bytes are walked field by field
//!   along its descriptor. [`PROTOJSON`] is what crictl prints (Go's `protojson` with
//!   `EmitDefaultValues`): lowerCamelCase names, 64-bit integers as strings, enums by name,
//!   scalars, lists and maps also when empty, unset messages left out. [`GO_JSON`] is Go's
//!   `encoding/json` on the generated Go structs: snake_case names, numbers, `omitempty`.
//! - In: a JSON object is checked against the descriptor and written as wire bytes, which
//!   prost then decodes. Keys are the proto names (snake_case, what crictl's config files
//!   use) or the JSON names (lowerCamelCase); anything else is an error naming the key and
//!   where it is. Enums take their name or number, 64-bit integers a number or a string.

mod from_json;
mod to_json;

pub use from_json::from_json;
pub use to_json::to_json;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use std::collections::HashMap;
use std::sync::OnceLock;

/// How messages are written as JSON.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Field names as in the .proto file (else protoc's JSON names).
    pub proto_names: bool,
    /// Scalars equal to their default, empty lists and empty maps are written too.
    pub emit_defaults: bool,
    /// 64-bit integers as JSON strings.
    pub int64_strings: bool,
    /// Enums by value name (else by number).
    pub enum_names: bool,
}

/// Go's `protojson.MarshalOptions{EmitDefaultValues: true}`, crictl's output format.
pub const PROTOJSON: Style = Style {
    proto_names: false,
    emit_defaults: true,
    int64_strings: true,
    enum_names: true,
};

/// Go's `encoding/json` on the generated structs (`json:"snake_case,omitempty"` tags).
pub const GO_JSON: Style = Style {
    proto_names: true,
    emit_defaults: false,
    int64_strings: false,
    enum_names: false,
};

/// The messages and enums of the CRI descriptors by full name (`runtime.v1.PodSandboxConfig`).
pub(crate) struct Pool {
    messages: HashMap<String, DescriptorProto>,
    enums: HashMap<String, EnumDescriptorProto>,
}

pub(crate) fn pool() -> Result<&'static Pool, String> {
    static POOL: OnceLock<Result<Pool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        let set = FileDescriptorSet::decode(keelson_proto::FILE_DESCRIPTOR_SET)
            .map_err(|e| format!("the compiled-in CRI descriptors do not decode: {e}"))?;
        let mut pool = Pool {
            messages: HashMap::new(),
            enums: HashMap::new(),
        };
        fn add(pool: &mut Pool, prefix: &str, m: &DescriptorProto) {
            let name = format!("{prefix}.{}", m.name());
            for e in &m.enum_type {
                pool.enums.insert(format!("{name}.{}", e.name()), e.clone());
            }
            for n in &m.nested_type {
                add(pool, &name, n);
            }
            pool.messages.insert(name, m.clone());
        }
        for f in &set.file {
            for e in &f.enum_type {
                pool.enums
                    .insert(format!("{}.{}", f.package(), e.name()), e.clone());
            }
            for m in &f.message_type {
                add(&mut pool, f.package(), m);
            }
        }
        Ok(pool)
    })
    .as_ref()
    .map_err(Clone::clone)
}

impl Pool {
    pub(crate) fn message(&self, name: &str) -> Result<&DescriptorProto, String> {
        let name = name.trim_start_matches('.');
        self.messages
            .get(name)
            .ok_or_else(|| format!("no message {name} in the CRI descriptors"))
    }

    pub(crate) fn enumeration(&self, name: &str) -> Result<&EnumDescriptorProto, String> {
        let name = name.trim_start_matches('.');
        self.enums
            .get(name)
            .ok_or_else(|| format!("no enum {name} in the CRI descriptors"))
    }

    /// The key and value fields of a map field's entry message, when `f` is a map field.
    pub(crate) fn map_entry(&self, f: &FieldDescriptorProto) -> Option<&DescriptorProto> {
        if f.label() != Label::Repeated || f.r#type() != Type::Message {
            return None;
        }
        let m = self.message(f.type_name()).ok()?;
        m.options
            .as_ref()
            .is_some_and(|o| o.map_entry())
            .then_some(m)
    }
}

/// protoc's JSON name of a field: underscores dropped, the letter after one upper-cased.
pub(crate) fn json_name(f: &FieldDescriptorProto) -> String {
    if let Some(n) = &f.json_name {
        return n.clone();
    }
    let mut out = String::new();
    let mut upper = false;
    for c in f.name().chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) fn short(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_proto::runtime::v1 as pb;
    use serde_json::json;

    #[test]
    fn sandbox_config_from_snake_case_json() {
        let v = json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1", "attempt": 2},
            "hostname": "web",
            "log_directory": "/tmp/logs",
            "labels": {"app": "kt"},
            "port_mappings": [{"protocol": "UDP", "container_port": 53, "host_port": 1053}],
            "linux": {"security_context": {"namespace_options": {"network": 0, "pid": "CONTAINER"}},
                      "sysctls": {"net.ipv4.ip_forward": "1"}},
        });
        let c: pb::PodSandboxConfig = from_json(&v, "runtime.v1.PodSandboxConfig").unwrap();
        let m = c.metadata.as_ref().unwrap();
        assert_eq!((m.name.as_str(), m.attempt), ("web", 2));
        assert_eq!(c.log_directory, "/tmp/logs");
        assert_eq!(c.labels["app"], "kt");
        assert_eq!(c.port_mappings[0].protocol, pb::Protocol::Udp as i32);
        assert_eq!(c.port_mappings[0].host_port, 1053);
        let ns = c.linux.as_ref().unwrap().security_context.as_ref().unwrap();
        let ns = ns.namespace_options.as_ref().unwrap();
        assert_eq!(ns.pid, pb::NamespaceMode::Container as i32);
        assert_eq!(c.linux.unwrap().sysctls["net.ipv4.ip_forward"], "1");
    }

    #[test]
    fn camel_case_keys_are_taken_too() {
        let v = json!({"metadata": {"name": "c"}, "image": {"image": "busybox"},
                       "logPath": "c.log", "workingDir": "/"});
        let c: pb::ContainerConfig = from_json(&v, "runtime.v1.ContainerConfig").unwrap();
        assert_eq!(
            (c.log_path.as_str(), c.working_dir.as_str()),
            ("c.log", "/")
        );
    }

    #[test]
    fn unknown_keys_and_bad_types_name_the_place() {
        let v = json!({"metadata": {"name": "x", "nmespace": "default"}});
        let e = from_json::<pb::PodSandboxConfig>(&v, "runtime.v1.PodSandboxConfig").unwrap_err();
        assert!(
            e.contains("unknown field \"nmespace\" in \"metadata\""),
            "{e}"
        );
        let v = json!({"linux": {"security_context": {"namespace_options": {"pid": "NOPE"}}}});
        let e = from_json::<pb::PodSandboxConfig>(&v, "runtime.v1.PodSandboxConfig").unwrap_err();
        assert!(
            e.contains("linux.security_context.namespace_options.pid"),
            "{e}"
        );
        let v = json!({"metadata": {"attempt": "one"}});
        let e = from_json::<pb::PodSandboxConfig>(&v, "runtime.v1.PodSandboxConfig").unwrap_err();
        assert!(e.contains("metadata.attempt"), "{e}");
        let v = json!({"metadata": {"attempt": -1}});
        assert!(from_json::<pb::PodSandboxConfig>(&v, "runtime.v1.PodSandboxConfig").is_err());
    }

    #[test]
    fn protojson_output_has_camel_case_defaults_and_string_int64() {
        let st = pb::ContainerStatus {
            id: "abc".into(),
            state: pb::ContainerState::ContainerExited as i32,
            exit_code: 3,
            created_at: 1_700_000_000_000_000_000,
            labels: [("a".to_string(), "b".to_string())].into(),
            ..Default::default()
        };
        let v = to_json(&st, "runtime.v1.ContainerStatus", PROTOJSON).unwrap();
        assert_eq!(v["exitCode"], json!(3));
        assert_eq!(v["state"], json!("CONTAINER_EXITED"));
        assert_eq!(v["createdAt"], json!("1700000000000000000"));
        assert_eq!(v["finishedAt"], json!("0"));
        assert_eq!(v["logPath"], json!(""));
        assert_eq!(v["mounts"], json!([]));
        assert_eq!(v["labels"], json!({"a": "b"}));
        assert_eq!(v["annotations"], json!({}));
        assert!(v.get("metadata").is_none(), "unset messages stay out: {v}");
        assert!(v.get("log_path").is_none());
    }

    #[test]
    fn go_json_output_is_snake_case_and_omits_empty() {
        let h = pb::RuntimeHandler {
            name: String::new(),
            features: Some(pb::RuntimeHandlerFeatures {
                recursive_read_only_mounts: true,
                user_namespaces: false,
            }),
        };
        let v = to_json(&h, "runtime.v1.RuntimeHandler", GO_JSON).unwrap();
        assert_eq!(v, json!({"features": {"recursive_read_only_mounts": true}}));
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let c = pb::ContainerConfig {
            metadata: Some(pb::ContainerMetadata {
                name: "c".into(),
                attempt: 4,
            }),
            command: vec!["/bin/sh".into(), "-c".into(), "exit 3".into()],
            envs: vec![pb::KeyValue {
                key: "A".into(),
                value: "1".into(),
            }],
            linux: Some(pb::LinuxContainerConfig {
                resources: Some(pb::LinuxContainerResources {
                    memory_limit_in_bytes: 1 << 40,
                    oom_score_adj: -999,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        for style in [PROTOJSON, GO_JSON] {
            let v = to_json(&c, "runtime.v1.ContainerConfig", style).unwrap();
            let back: pb::ContainerConfig = from_json(&v, "runtime.v1.ContainerConfig").unwrap();
            assert_eq!(back, c, "{v}");
        }
    }
}
