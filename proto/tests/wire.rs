//! Wire format of the generated messages: exact bytes worked out by hand
//! from the field numbers and types in `cri/api.proto`, and round trips
//! through nested messages, maps, repeated fields and enums.
//!
//! Wire-format reminders used below: a key is `(field_number << 3) |
//! wire_type` as a varint; wire type 0 = varint, 1 = 64-bit, 2 =
//! length-delimited. Proto3 does not write fields holding their default.

use std::collections::HashMap;

use keelson_proto::runtime::v1 as cri;
use prost::Message;

fn encode<M: Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

#[test]
fn version_request_bytes() {
    let m = cri::VersionRequest {
        version: "v1".into(),
    };
    // field 1, LEN (0x0a), 2 bytes, "v1"
    let want = [0x0a, 0x02, b'v', b'1'];
    assert_eq!(encode(&m), want);
    assert_eq!(cri::VersionRequest::decode(&want[..]).unwrap(), m);
}

#[test]
fn pod_sandbox_metadata_bytes() {
    let m = cri::PodSandboxMetadata {
        name: "nginx".into(),
        uid: "u1".into(),
        namespace: "default".into(),
        attempt: 3,
    };
    let mut want = vec![0x0a, 5]; // 1: name
    want.extend_from_slice(b"nginx");
    want.extend_from_slice(&[0x12, 2]); // 2: uid
    want.extend_from_slice(b"u1");
    want.extend_from_slice(&[0x1a, 7]); // 3: namespace
    want.extend_from_slice(b"default");
    want.extend_from_slice(&[0x20, 3]); // 4: attempt, varint
    assert_eq!(encode(&m), want);
    assert_eq!(cri::PodSandboxMetadata::decode(&want[..]).unwrap(), m);
}

#[test]
fn enum_and_multibyte_varint_bytes() {
    let m = cri::PortMapping {
        protocol: cri::Protocol::Sctp as i32,
        container_port: 80,
        host_port: 8080,
        host_ip: "::1".into(),
    };
    let want = [
        0x08, 0x02, // 1: protocol = SCTP (2)
        0x10, 0x50, // 2: container_port = 80
        0x18, 0x90, 0x3f, // 3: host_port = 8080 = 0x10 | 0x3f << 7
        0x22, 0x03, b':', b':', b'1', // 4: host_ip
    ];
    assert_eq!(encode(&m), want);
    let back = cri::PortMapping::decode(&want[..]).unwrap();
    assert_eq!(back.protocol(), cri::Protocol::Sctp);
    assert_eq!(back, m);
}

#[test]
fn nested_message_bytes() {
    let m = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "c".into(),
            attempt: 1,
        }),
        ..Default::default()
    };
    // 1: metadata, LEN 5 = { 1: name "c", 2: attempt 1 }
    let want = [0x0a, 0x05, 0x0a, 0x01, b'c', 0x10, 0x01];
    assert_eq!(encode(&m), want);
    assert_eq!(cri::ContainerConfig::decode(&want[..]).unwrap(), m);
}

#[test]
fn map_entry_bytes() {
    let m = cri::PodSandboxFilter {
        label_selector: HashMap::from([("a".to_string(), "b".to_string())]),
        ..Default::default()
    };
    // 3: label_selector, one entry of 6 bytes = { 1: key "a", 2: value "b" }
    let want = [0x1a, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, b'b'];
    assert_eq!(encode(&m), want);
    assert_eq!(cri::PodSandboxFilter::decode(&want[..]).unwrap(), m);
}

#[test]
fn two_byte_keys_for_high_field_numbers() {
    // ImageSpec.user_specified_image is field 18: key (18 << 3) | 2 = 146.
    let spec = cri::ImageSpec {
        user_specified_image: "x".into(),
        ..Default::default()
    };
    assert_eq!(encode(&spec), [0x92, 0x01, 0x01, b'x']);

    // ContainerStatus.stop_signal is field 19, an enum: key (19 << 3) | 0 = 152.
    let status = cri::ContainerStatus {
        stop_signal: cri::Signal::Sigkill as i32,
        ..Default::default()
    };
    assert_eq!(cri::Signal::Sigkill as i32, 13);
    assert_eq!(encode(&status), [0x98, 0x01, 13]);
}

#[test]
fn negative_int64_and_double_bytes() {
    // int64 -1 is a ten-byte varint (two's complement, not zigzag).
    let m = cri::Int64Value { value: -1 };
    let mut want = vec![0x08];
    want.extend_from_slice(&[0xff; 9]);
    want.push(0x01);
    assert_eq!(encode(&m), want);
    assert_eq!(cri::Int64Value::decode(&want[..]).unwrap(), m);

    // PsiData.Avg10 is field 2, a double: key 0x11, 8 bytes little endian.
    let psi = cri::PsiData {
        avg10: 1.5,
        ..Default::default()
    };
    let mut want = vec![0x11];
    want.extend_from_slice(&1.5f64.to_le_bytes());
    assert_eq!(encode(&psi), want);
}

#[test]
fn unknown_fields_and_enum_values_are_tolerated() {
    // A newer peer may send fields this revision lacks: they are skipped.
    // VersionRequest { version: "v1", field 99: varint 7 }; key 99 << 3 = 792.
    let bytes = [0x0a, 0x02, b'v', b'1', 0x98, 0x06, 0x07];
    let m = cri::VersionRequest::decode(&bytes[..]).unwrap();
    assert_eq!(m.version, "v1");

    // Open enums: an unknown value survives as its number.
    let bytes = [0x08, 0x09]; // PortMapping.protocol = 9
    let m = cri::PortMapping::decode(&bytes[..]).unwrap();
    assert_eq!(m.protocol, 9);
    assert!(cri::Protocol::try_from(m.protocol).is_err());
    assert_eq!(encode(&m), bytes);
}

fn sample_create_container() -> cri::CreateContainerRequest {
    let labels = HashMap::from([
        ("io.kubernetes.pod.name".to_string(), "web".to_string()),
        ("tier".to_string(), "front".to_string()),
    ]);
    cri::CreateContainerRequest {
        pod_sandbox_id: "sb-1".into(),
        config: Some(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 2,
            }),
            image: Some(cri::ImageSpec {
                image: "docker.io/library/nginx:1.27".into(),
                annotations: HashMap::from([("k".into(), "v".into())]),
                user_specified_image: "nginx:1.27".into(),
                runtime_handler: "runc".into(),
                image_ref: String::new(),
            }),
            command: vec!["/bin/sh".into(), "-c".into()],
            args: vec!["exec nginx".into()],
            working_dir: "/".into(),
            envs: vec![cri::KeyValue {
                key: "PATH".into(),
                value: "/usr/bin".into(),
            }],
            mounts: vec![cri::Mount {
                container_path: "/data".into(),
                host_path: "/var/lib/data".into(),
                readonly: true,
                propagation: cri::MountPropagation::PropagationHostToContainer as i32,
                uid_mappings: vec![cri::IdMapping {
                    host_id: 100_000,
                    container_id: 0,
                    length: 65_536,
                }],
                ..Default::default()
            }],
            labels: labels.clone(),
            annotations: labels,
            log_path: "app/2.log".into(),
            tty: true,
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    cpu_quota: 50_000,
                    cpu_period: 100_000,
                    memory_limit_in_bytes: 256 << 20,
                    oom_score_adj: -997,
                    unified: HashMap::from([("memory.high".into(), "200M".into())]),
                    ..Default::default()
                }),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    capabilities: Some(cri::Capability {
                        add_capabilities: vec!["NET_BIND_SERVICE".into()],
                        drop_capabilities: vec!["ALL".into()],
                        ..Default::default()
                    }),
                    run_as_user: Some(cri::Int64Value { value: 101 }),
                    seccomp: Some(cri::SecurityProfile {
                        profile_type: cri::security_profile::ProfileType::Localhost as i32,
                        localhost_ref: "/profiles/nginx.json".into(),
                    }),
                    namespace_options: Some(cri::NamespaceOption {
                        pid: cri::NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            cdi_devices: vec![cri::CdiDevice {
                name: "vendor.com/gpu=0".into(),
            }],
            stop_signal: cri::Signal::Sigquit as i32,
            ..Default::default()
        }),
        sandbox_config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                uid: "1234".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            port_mappings: vec![cri::PortMapping {
                protocol: cri::Protocol::Udp as i32,
                container_port: 53,
                host_port: 0,
                host_ip: String::new(),
            }],
            ..Default::default()
        }),
    }
}

#[test]
fn create_container_request_round_trip() {
    let m = sample_create_container();
    let bytes = encode(&m);
    assert_eq!(bytes.len(), m.encoded_len());
    let back = cri::CreateContainerRequest::decode(&bytes[..]).unwrap();
    assert_eq!(back, m);

    let config = back.config.unwrap();
    assert_eq!(config.stop_signal(), cri::Signal::Sigquit);
    assert_eq!(
        config.mounts[0].propagation(),
        cri::MountPropagation::PropagationHostToContainer
    );
    let seccomp = config.linux.unwrap().security_context.unwrap().seccomp;
    assert_eq!(
        seccomp.unwrap().profile_type(),
        cri::security_profile::ProfileType::Localhost
    );
}

#[test]
fn streamed_and_event_responses_round_trip() {
    let status = cri::PodSandboxStatus {
        id: "sb-1".into(),
        state: cri::PodSandboxState::SandboxNotready as i32,
        created_at: 1_700_000_000_000_000_000,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: "10.0.0.2".into(),
            additional_ips: vec![cri::PodIp {
                ip: "fd00::2".into(),
            }],
        }),
        ..Default::default()
    };
    let event = cri::ContainerEventResponse {
        container_id: "c-1".into(),
        container_event_type: cri::ContainerEventType::ContainerStoppedEvent as i32,
        created_at: 42,
        pod_sandbox_status: Some(status),
        containers_statuses: vec![cri::ContainerStatus {
            id: "c-1".into(),
            state: cri::ContainerState::ContainerExited as i32,
            exit_code: 137,
            reason: "OOMKilled".into(),
            ..Default::default()
        }],
    };
    let back = cri::ContainerEventResponse::decode(&encode(&event)[..]).unwrap();
    assert_eq!(back, event);

    let stats = cri::StreamContainerStatsResponse {
        container_stats: vec![cri::ContainerStats {
            cpu: Some(cri::CpuUsage {
                timestamp: 1,
                usage_core_nano_seconds: Some(cri::UInt64Value { value: u64::MAX }),
                psi: Some(cri::PsiStats {
                    full: Some(cri::PsiData {
                        total: 7,
                        avg10: 0.25,
                        avg60: 0.5,
                        avg300: 0.75,
                    }),
                    some: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }],
    };
    let back = cri::StreamContainerStatsResponse::decode(&encode(&stats)[..]).unwrap();
    assert_eq!(back, stats);
}
