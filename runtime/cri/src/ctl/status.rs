//! `version`, `info`, and the JSON shape crictl gives every status (`info`, `inspect*`,
//! `imagefsinfo`): `{"status": <message>, <info key>: <info value>...}` with sorted keys,
//! one object for one status and a list for several.

use super::cli::InfoArgs;
use super::display::{pretty, sorted};
use super::protojson::{GO_JSON, PROTOJSON, to_json};
use super::{Ctl, Output, out, output_format};
use anyhow::{Context, Result, anyhow, bail};
use keelson_proto::runtime::v1 as pb;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// One status as crictl assembles it for output.
#[derive(Debug, Default)]
pub struct StatusData {
    pub status: Option<Value>,
    pub runtime_handlers: Option<Value>,
    pub features: Option<Value>,
    pub info: HashMap<String, String>,
}

/// The JSON of `statuses`: info values that are JSON objects are embedded as objects, other
/// values as strings without their quotes.
pub fn render_statuses(statuses: Vec<StatusData>) -> Result<String> {
    let mut all = Vec::new();
    for s in statuses {
        let mut m = Map::new();
        if let Some(v) = s.status {
            m.insert("status".into(), v);
        }
        if let Some(v) = s.runtime_handlers {
            m.insert("runtimeHandlers".into(), v);
        }
        if let Some(v) = s.features {
            m.insert("features".into(), v);
        }
        for (k, v) in s.info {
            let value = if v.starts_with('{') {
                serde_json::from_str::<Value>(&v)
                    .map_err(|e| anyhow!("the runtime's info {k:?} is not JSON: {e}"))?
            } else {
                Value::String(v.trim_matches('"').to_string())
            };
            m.insert(k, value);
        }
        all.push(Value::Object(m));
    }
    let v = if all.len() == 1 {
        all.pop().unwrap_or(Value::Null)
    } else {
        Value::Array(all)
    };
    Ok(format!("{}\n", pretty(&sorted(v))))
}

pub async fn version(ctl: &Ctl) -> Result<()> {
    let t = Some(ctl.timeout);
    let mut c = ctl.runtime().await?;
    let msg = pb::VersionRequest {
        version: "v1".into(),
    };
    let r = ctl
        .call("Version", t, c.version(ctl.req("Version", msg, t)))
        .await
        .context("getting the runtime version")?;
    out(&format!(
        "Version:  {}\nRuntimeName:  {}\nRuntimeVersion:  {}\nRuntimeApiVersion:  {}\n",
        r.version, r.runtime_name, r.runtime_version, r.runtime_api_version
    ))
}

pub async fn info(ctl: &Ctl, a: &InfoArgs) -> Result<()> {
    if output_format(&a.output)? != Output::Json {
        bail!(
            "info: output format {:?} is not supported (json only)",
            a.output
        );
    }
    let t = Some(ctl.timeout);
    let mut c = ctl.runtime().await?;
    let msg = pb::StatusRequest { verbose: !a.quiet };
    let r = ctl
        .call("Status", t, c.status(ctl.req("Status", msg, t)))
        .await
        .context("getting status of runtime")?;
    let status = r
        .status
        .as_ref()
        .map(|s| to_json(s, "runtime.v1.RuntimeStatus", PROTOJSON))
        .transpose()
        .map_err(|e| anyhow!(e))?;
    // crictl writes these two with Go's encoding/json: snake_case, empty fields left out.
    let handlers = if r.runtime_handlers.is_empty() {
        None
    } else {
        let list: Result<Vec<Value>, String> = r
            .runtime_handlers
            .iter()
            .map(|h| to_json(h, "runtime.v1.RuntimeHandler", GO_JSON))
            .collect();
        Some(Value::Array(list.map_err(|e| anyhow!(e))?))
    };
    let features = r
        .features
        .as_ref()
        .map(|f| to_json(f, "runtime.v1.RuntimeFeatures", GO_JSON))
        .transpose()
        .map_err(|e| anyhow!(e))?;
    out(&render_statuses(vec![StatusData {
        status,
        runtime_handlers: handlers,
        features,
        info: r.info,
    }])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statuses_embed_info_objects_and_sort_keys() {
        let one = StatusData {
            status: Some(json!({"id": "a", "createdAt": "x"})),
            info: [
                ("info".to_string(), r#"{"pid": 7, "b": 1}"#.to_string()),
                ("note".to_string(), "\"plain\"".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let s = render_statuses(vec![one]).unwrap();
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["info"]["pid"], json!(7));
        assert_eq!(v["note"], json!("plain"));
        assert!(
            s.find("\"createdAt\"").unwrap() < s.find("\"id\"").unwrap(),
            "{s}"
        );
        let two = vec![StatusData::default(), StatusData::default()];
        let v: Value = serde_json::from_str(&render_statuses(two).unwrap()).unwrap();
        assert!(v.is_array());
        let bad = StatusData {
            info: [("info".to_string(), "{not json".to_string())].into(),
            ..Default::default()
        };
        assert!(render_statuses(vec![bad]).is_err());
    }
}
