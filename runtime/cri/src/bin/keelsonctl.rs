//! keelsonctl: a client for CRI runtimes with crictl's commands, flags and output, for
//! people and tests driving keelsond (or containerd, CRI-O) over its gRPC socket.
//!
//! ```text
//! keelsonctl [-r ENDPOINT] [-i ENDPOINT] [-t DURATION] [-D] COMMAND [ARGS]
//!
//!   -r, --runtime-endpoint  default $CONTAINER_RUNTIME_ENDPOINT, else unix:///run/keelsond/keelsond.sock
//!   -i, --image-endpoint    default $IMAGE_SERVICE_ENDPOINT, else the runtime endpoint
//!   -t, --timeout           connecting and each request (default 2s; sandbox requests get twice
//!                           that, pulls and exec without --timeout none)
//!   -D, --debug             print requests and responses on stderr
//!
//! version                                   runtime name and versions
//! info [-q]                                 Status (verbose) as JSON
//! runp POD.json [-r HANDLER] [-T DUR]       run a pod, print its ID
//! pods [--id --name --namespace -s --label k=v -l -n N -q -v --no-trunc -o json|table]
//! inspectp ID... [-q -o json|table]         {"status": ..., "info": ...}
//! stopp ID...   rmp ID...|-a [-f]
//! create POD-ID CONTAINER.json POD.json [--with-pull --creds U:P --auth B64 -T DUR]
//! run CONTAINER.json POD.json               runp + create + start (pulls unless --no-pull)
//! start ID...   stop ID...|-a [-t SECONDS]   rm ID...|-a [-f] [-k]
//! ps [-a --id -p POD --name --namespace --image -s STATE --label k=v -l -n N -q -v --no-trunc -o]
//! inspect ID... [-q -o json|table]
//! exec [--timeout SECONDS] ID CMD [ARG...]  ExecSync: prints the output, exits with the command's code
//! logs ID [-f --tail N -t --since T|DUR -s stdout|stderr --limit-bytes N -p -r]
//! stats [ID] [-a --id -p POD --label k=v -s SECONDS -o json|table]
//! pull IMAGE [--creds U:P | --auth B64] [--pod-config POD.json] [-a k=v] [--pull-timeout DUR]
//! images [REPO[:TAG]] [-q --digests --no-trunc --pinned -v -o json|table]
//! inspecti ID... [-q -o json|table]   rmi ID...|-a|--prune   imagefsinfo [-o json|table]
//! ```
//!
//! Config files are crictl's: the CRI messages as JSON with the proto field names
//! (`{"metadata": {"name": "web", "namespace": "default", "uid": "..."}, "log_directory":
//! "/var/log/pods/...", "linux": {"security_context": {"namespace_options": {"pid": 1}}}}`);
//! enums take their name or number. Unknown keys are errors naming the key. YAML is not
//! read (no YAML parser in the workspace).
//!
//! Not available: `exec -i/-t`, `attach` and `port-forward` need the CRI streaming server;
//! they fail with a message saying so.
//!
//! JSON output follows crictl: protojson names (camelCase, 64-bit numbers as strings,
//! enums by name); `inspect*` print `{"status": ..., "info": ...}` with sorted keys and
//! RFC 3339 times. Failures print one line `keelsonctl: <message>` and exit 1.

fn main() -> std::process::ExitCode {
    keelson_cri::ctl::run()
}
