//! How an exec or attach ended, as the error channel/stream tells the client.
//!
//! Protocol v4 and later (`v4.channel.k8s.io`, `v5.channel.k8s.io`, SPDY `v4.channel.k8s.io`)
//! send one JSON `metav1.Status`: `{"metadata":{},"status":"Success"}`, or for a non-zero exit
//! `status: Failure`, `reason: NonZeroExitCode` and a cause `{"reason":"ExitCode","message":"<code>"}`
//! (what client-go turns into an exit code), or an `InternalError` with code 500. Older
//! protocols send nothing on success and the status message as plain text otherwise.

use serde::Serialize;

/// The end of an exec or attach session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Ended normally (exit code 0 for exec).
    Success,
    /// The command exited with a non-zero code (128 + signal for a death by signal).
    ExitCode(i32),
    /// The runtime failed (the message says where).
    Failure(String),
    /// The client went away: nothing is reported.
    ClientGone,
}

#[derive(Serialize)]
struct Meta {}

#[derive(Serialize)]
struct Cause<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    message: &'a str,
}

#[derive(Serialize)]
struct Details<'a> {
    causes: Vec<Cause<'a>>,
}

/// `metav1.Status`, its fields in Go's order.
#[derive(Serialize)]
struct Status<'a> {
    metadata: Meta,
    status: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
}

/// The message of a non-success outcome (also the v1 protocol's error text).
pub fn message(o: &Outcome) -> Option<String> {
    match o {
        Outcome::Success | Outcome::ClientGone => None,
        Outcome::ExitCode(c) => Some(format!(
            "command terminated with non-zero exit code: exit status {c}"
        )),
        Outcome::Failure(m) => Some(format!("Internal error occurred: {m}")),
    }
}

/// The v4 error-channel payload (`None` for [`Outcome::ClientGone`]).
pub fn v4_json(o: &Outcome) -> Option<Vec<u8>> {
    let msg = message(o).unwrap_or_default();
    let code_text;
    let s = match o {
        Outcome::ClientGone => return None,
        Outcome::Success => Status {
            metadata: Meta {},
            status: "Success",
            message: "",
            reason: "",
            details: None,
            code: None,
        },
        Outcome::ExitCode(c) => {
            code_text = c.to_string();
            Status {
                metadata: Meta {},
                status: "Failure",
                message: &msg,
                reason: "NonZeroExitCode",
                details: Some(Details {
                    causes: vec![Cause {
                        reason: Some("ExitCode"),
                        message: &code_text,
                    }],
                }),
                code: None,
            }
        }
        Outcome::Failure(m) => Status {
            metadata: Meta {},
            status: "Failure",
            message: &msg,
            reason: "InternalError",
            details: Some(Details {
                causes: vec![Cause {
                    reason: None,
                    message: m,
                }],
            }),
            code: Some(500),
        },
    };
    serde_json::to_vec(&s).ok()
}

/// The pre-v4 error-channel payload: the message of a failure, nothing on success.
pub fn v1_text(o: &Outcome) -> Option<Vec<u8>> {
    message(o).map(String::into_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(o: &Outcome) -> serde_json::Value {
        serde_json::from_slice(&v4_json(o).expect("payload")).expect("json")
    }

    #[test]
    fn v4_statuses_have_upstreams_shape() {
        assert_eq!(
            String::from_utf8(v4_json(&Outcome::Success).expect("payload")).expect("utf8"),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let v = json(&Outcome::ExitCode(3));
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        assert!(v.get("code").is_none());
        let v = json(&Outcome::Failure("boom".into()));
        assert_eq!(v["reason"], "InternalError");
        assert_eq!(v["code"], 500);
        assert_eq!(v["message"], "Internal error occurred: boom");
        assert_eq!(v["details"]["causes"][0]["message"], "boom");
        assert!(v4_json(&Outcome::ClientGone).is_none());
    }

    #[test]
    fn v1_sends_only_failures_as_text() {
        assert!(v1_text(&Outcome::Success).is_none());
        assert_eq!(
            v1_text(&Outcome::ExitCode(2)).expect("text"),
            b"command terminated with non-zero exit code: exit status 2"
        );
    }
}
