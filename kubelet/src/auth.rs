//! The kubelet server's `authentication` and `authorization` settings, standalone flavour.
//!
//! Upstream authenticates requests to :10250 with client certificates (`x509.clientCAFile`)
//! and bearer tokens checked by the apiserver (`webhook`), and authorizes them with
//! SubjectAccessReviews (`mode: Webhook`) or lets everything through (`AlwaysAllow`). A
//! kubelet without an apiserver can only do the latter: anonymous requests are allowed and
//! every request is authorized. Settings that need the apiserver are refused with a clear
//! error rather than silently ignored.
//!
//! Defaults: upstream's v1beta1 file defaults are `anonymous.enabled: false`,
//! `webhook.enabled: true`, `mode: Webhook` (secure defaults for a kubelet that has an
//! apiserver). A standalone kubelet has none, so keelson defaults to what upstream's
//! command-line defaults were (`--anonymous-auth=true`, `--authorization-mode=AlwaysAllow`).

use serde_json::Value;

fn unsupported(what: &str) -> String {
    format!(
        "{what} needs the apiserver (TokenReview/SubjectAccessReview), which this standalone kubelet does not use yet"
    )
}

/// (anonymous allowed, authorization mode) from the two config sections.
pub fn from_config(
    authentication: Option<&Value>,
    authorization: Option<&Value>,
) -> Result<(bool, String), String> {
    let mut anonymous = true;
    if let Some(a) = authentication {
        let obj = a
            .as_object()
            .ok_or("authentication: must be an object (x509, webhook, anonymous)")?;
        for (k, v) in obj {
            match k.as_str() {
                "anonymous" => {
                    if let Some(e) = v.get("enabled") {
                        anonymous = e
                            .as_bool()
                            .ok_or("authentication.anonymous.enabled: must be true or false")?;
                    }
                }
                "webhook" => {
                    if v.get("enabled").and_then(Value::as_bool) == Some(true) {
                        return Err(unsupported("authentication.webhook.enabled: true"));
                    }
                }
                "x509" => {
                    if v.get("clientCAFile")
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty())
                    {
                        return Err(
                            "authentication.x509.clientCAFile: client certificate authentication is not supported yet"
                                .into(),
                        );
                    }
                }
                other => return Err(format!("authentication: unknown field {other:?}")),
            }
        }
    }
    if !anonymous {
        // With no authenticator left, every request would be refused: upstream needs webhook
        // or x509 for that, both of which need what this kubelet does not have.
        return Err(
            "authentication.anonymous.enabled: false leaves no way to authenticate without the apiserver"
                .into(),
        );
    }
    let mut mode = "AlwaysAllow".to_string();
    if let Some(a) = authorization {
        let obj = a
            .as_object()
            .ok_or("authorization: must be an object (mode, webhook)")?;
        for (k, v) in obj {
            match k.as_str() {
                "mode" => {
                    mode = v
                        .as_str()
                        .ok_or("authorization.mode: must be a string")?
                        .to_string()
                }
                "webhook" => {}
                other => return Err(format!("authorization: unknown field {other:?}")),
            }
        }
    }
    match mode.as_str() {
        "AlwaysAllow" => Ok((anonymous, mode)),
        "Webhook" => Err(unsupported("authorization.mode: Webhook")),
        other => Err(format!(
            "authorization.mode {other:?}: must be \"AlwaysAllow\" or \"Webhook\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn standalone_modes() {
        assert_eq!(from_config(None, None), Ok((true, "AlwaysAllow".into())));
        assert_eq!(
            from_config(
                Some(&json!({"anonymous": {"enabled": true}, "webhook": {"enabled": false}})),
                Some(&json!({"mode": "AlwaysAllow"}))
            ),
            Ok((true, "AlwaysAllow".into()))
        );
        for (a, z, want) in [
            (json!({}), json!({"mode": "Webhook"}), "apiserver"),
            (
                json!({"webhook": {"enabled": true}}),
                json!({}),
                "apiserver",
            ),
            (
                json!({"anonymous": {"enabled": false}}),
                json!({}),
                "anonymous",
            ),
            (
                json!({"x509": {"clientCAFile": "/ca"}}),
                json!({}),
                "clientCAFile",
            ),
            (json!({}), json!({"mode": "RBAC"}), "RBAC"),
            (json!({"nope": 1}), json!({}), "nope"),
        ] {
            let e = from_config(Some(&a), Some(&z)).expect_err(want);
            assert!(e.contains(want), "{e}");
        }
    }
}
