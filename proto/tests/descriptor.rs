//! `FILE_DESCRIPTOR_SET` describes exactly the transcribed CRI surface:
//! package, services, every RPC (name, types, streaming), message and enum
//! counts, and the field options carried over from upstream.

use std::collections::BTreeSet;

use keelson_proto::FILE_DESCRIPTOR_SET;
use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet, ServiceDescriptorProto};

const RUNTIME_RPCS: [&str; 35] = [
    "Version",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "StreamPodSandboxes",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ListContainers",
    "StreamContainers",
    "ContainerStatus",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStats",
    "ListContainerStats",
    "StreamContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "StreamPodSandboxStats",
    "UpdateRuntimeConfig",
    "Status",
    "CheckpointContainer",
    "GetContainerEvents",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "StreamPodSandboxMetrics",
    "RuntimeConfig",
    "UpdatePodSandboxResources",
];

const IMAGE_RPCS: [&str; 6] = [
    "ListImages",
    "StreamImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
];

/// The RPCs whose responses are a server stream; none stream requests.
const SERVER_STREAMING: [&str; 7] = [
    "StreamPodSandboxes",
    "StreamContainers",
    "StreamContainerStats",
    "StreamPodSandboxStats",
    "GetContainerEvents",
    "StreamPodSandboxMetrics",
    "StreamImages",
];

fn api_file() -> FileDescriptorProto {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    assert_eq!(set.file.len(), 1, "one file, no imports");
    set.file.into_iter().next().unwrap()
}

fn service<'a>(file: &'a FileDescriptorProto, name: &str) -> &'a ServiceDescriptorProto {
    file.service
        .iter()
        .find(|s| s.name() == name)
        .unwrap_or_else(|| panic!("service {name} missing"))
}

fn rpc_names(svc: &ServiceDescriptorProto) -> Vec<&str> {
    svc.method.iter().map(|m| m.name()).collect()
}

#[test]
fn file_is_package_runtime_v1_without_go_leftovers() {
    let file = api_file();
    assert_eq!(file.name(), "cri/api.proto");
    assert_eq!(file.package(), "runtime.v1");
    assert_eq!(file.syntax(), "proto3");
    assert!(file.dependency.is_empty(), "no gogoproto import");
    let go_package = file.options.as_ref().and_then(|o| o.go_package.clone());
    assert_eq!(go_package, None);
}

#[test]
fn services_and_exact_rpc_lists() {
    let file = api_file();
    let services: Vec<_> = file
        .service
        .iter()
        .map(|s| format!("{}.{}", file.package(), s.name()))
        .collect();
    assert_eq!(
        services,
        ["runtime.v1.RuntimeService", "runtime.v1.ImageService"]
    );

    // Exact lists in declaration order (so also the exact sets).
    assert_eq!(rpc_names(service(&file, "RuntimeService")), RUNTIME_RPCS);
    assert_eq!(rpc_names(service(&file, "ImageService")), IMAGE_RPCS);
    let distinct: BTreeSet<_> = RUNTIME_RPCS.iter().chain(&IMAGE_RPCS).collect();
    assert_eq!(distinct.len(), 41);
}

#[test]
fn streaming_shape_of_every_rpc() {
    let file = api_file();
    let mut streaming = Vec::new();
    for svc in &file.service {
        for m in &svc.method {
            assert!(!m.client_streaming(), "{} streams requests", m.name());
            if m.server_streaming() {
                streaming.push(m.name());
            }
        }
    }
    assert_eq!(streaming, SERVER_STREAMING);
}

#[test]
fn rpc_types_resolve_and_follow_the_naming() {
    let file = api_file();
    let messages: BTreeSet<String> = file
        .message_type
        .iter()
        .map(|m| format!(".runtime.v1.{}", m.name()))
        .collect();
    for svc in &file.service {
        for m in &svc.method {
            assert!(messages.contains(m.input_type()), "{}", m.input_type());
            assert!(messages.contains(m.output_type()), "{}", m.output_type());
            // All but GetContainerEvents use <Rpc>Request / <Rpc>Response.
            if m.name() != "GetContainerEvents" {
                assert_eq!(m.input_type(), format!(".runtime.v1.{}Request", m.name()));
                assert_eq!(m.output_type(), format!(".runtime.v1.{}Response", m.name()));
            }
        }
    }
    let events = service(&file, "RuntimeService")
        .method
        .iter()
        .find(|m| m.name() == "GetContainerEvents")
        .unwrap();
    assert_eq!(events.input_type(), ".runtime.v1.GetEventsRequest");
    assert_eq!(events.output_type(), ".runtime.v1.ContainerEventResponse");
}

#[test]
fn message_and_enum_inventory() {
    let file = api_file();
    assert_eq!(file.message_type.len(), 170);
    let enums: Vec<_> = file.enum_type.iter().map(|e| e.name()).collect();
    assert_eq!(
        enums,
        [
            "Protocol",
            "MountPropagation",
            "NamespaceMode",
            "SupplementalGroupsPolicy",
            "PodSandboxState",
            "Signal",
            "ContainerState",
            "ContainerEventType",
            "MetricType",
            "CgroupDriver",
        ]
    );
    let signal = file
        .enum_type
        .iter()
        .find(|e| e.name() == "Signal")
        .unwrap();
    assert_eq!(signal.value.len(), 66);
    assert_eq!(signal.value.last().unwrap().name(), "SIGRTMAX");
    assert_eq!(signal.value.last().unwrap().number(), 65);

    // The only nested type upstream: SecurityProfile.ProfileType (maps
    // aside, which protobuf models as nested *Entry messages).
    for m in &file.message_type {
        let nested: Vec<_> = m
            .nested_type
            .iter()
            .filter(|n| !n.options.as_ref().is_some_and(|o| o.map_entry()))
            .collect();
        assert!(nested.is_empty(), "{} has nested messages", m.name());
        // This upstream revision has no oneof (and no proto3 `optional`).
        assert!(m.oneof_decl.is_empty(), "{} has a oneof", m.name());
        if m.name() == "SecurityProfile" {
            assert_eq!(m.enum_type.len(), 1);
            assert_eq!(m.enum_type[0].name(), "ProfileType");
        } else {
            assert!(m.enum_type.is_empty(), "{} has a nested enum", m.name());
        }
    }
}

#[test]
fn deprecated_fields_are_marked() {
    let file = api_file();
    let mut deprecated = BTreeSet::new();
    for m in &file.message_type {
        for f in &m.field {
            if f.options.as_ref().is_some_and(|o| o.deprecated()) {
                deprecated.insert(format!("{}.{}={}", m.name(), f.name(), f.number()));
            }
        }
    }
    let want: BTreeSet<String> = [
        "LinuxContainerSecurityContext.apparmor_profile=9",
        "LinuxContainerSecurityContext.seccomp_profile_path=10",
        "LinuxSandboxSecurityContext.seccomp_profile_path=7",
    ]
    .map(String::from)
    .into();
    assert_eq!(deprecated, want);
}

/// Just enough of descriptor.proto to read `FieldOptions.debug_redact`
/// (field 16), which prost-types' `FieldOptions` does not model.
mod lite {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Set {
        #[prost(message, repeated, tag = "1")]
        pub file: Vec<File>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct File {
        #[prost(message, repeated, tag = "4")]
        pub message_type: Vec<Msg>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Msg {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, repeated, tag = "2")]
        pub field: Vec<Field>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Field {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "8")]
        pub options: Option<Options>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Options {
        #[prost(bool, tag = "16")]
        pub debug_redact: bool,
    }
}

#[test]
fn auth_secrets_carry_debug_redact() {
    let set = lite::Set::decode(FILE_DESCRIPTOR_SET).unwrap();
    let mut redacted = BTreeSet::new();
    for m in &set.file[0].message_type {
        for f in &m.field {
            if f.options.as_ref().is_some_and(|o| o.debug_redact) {
                redacted.insert(format!("{}.{}", m.name, f.name));
            }
        }
    }
    let want: BTreeSet<String> = [
        "AuthConfig.auth",
        "AuthConfig.identity_token",
        "AuthConfig.password",
        "AuthConfig.registry_token",
    ]
    .map(String::from)
    .into();
    assert_eq!(redacted, want);
}

#[test]
fn a_few_field_numbers_from_the_descriptor() {
    let file = api_file();
    let field = |msg: &str, name: &str| {
        let m = file.message_type.iter().find(|m| m.name() == msg).unwrap();
        m.field.iter().find(|f| f.name() == name).unwrap().number()
    };
    assert_eq!(field("ImageSpec", "user_specified_image"), 18);
    assert_eq!(field("ImageSpec", "image_ref"), 20);
    assert_eq!(field("ContainerConfig", "CDI_devices"), 17);
    assert_eq!(field("ContainerStatus", "stop_signal"), 19);
    assert_eq!(field("Mount", "uidMappings"), 6);
    assert_eq!(field("Namespace", "options"), 2);
    assert_eq!(field("LinuxSandboxSecurityContext", "run_as_group"), 8);
    assert_eq!(field("PsiStats", "Some"), 2);
}
