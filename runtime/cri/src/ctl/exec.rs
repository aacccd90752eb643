//! `exec`: without -i/-t (or with --sync) through ExecSync; with them over the streaming
//! server ([`super::stream`]).

use super::Ctl;
use super::cli::ExecArgs;
use anyhow::{Context, Result, bail};
use keelson_proto::runtime::v1 as pb;
use std::io::Write;
use std::time::Duration;

/// Runs a command through ExecSync: its output goes to stdout/stderr, its exit code is
/// keelsonctl's.
pub async fn exec(ctl: &Ctl, a: &ExecArgs) -> Result<u8> {
    if (a.interactive || a.tty) && !a.sync {
        return super::stream::exec_streaming(ctl, a).await;
    }
    if a.timeout < 0 {
        bail!("--timeout must not be negative");
    }
    // As the kubelet's CRI client: no deadline without a command timeout.
    let t = (a.timeout > 0).then(|| ctl.timeout + Duration::from_secs(a.timeout as u64));
    let mut c = ctl.runtime().await?;
    let msg = pb::ExecSyncRequest {
        container_id: a.id.clone(),
        cmd: a.cmd.clone(),
        timeout: a.timeout,
    };
    let r = ctl
        .call("ExecSync", t, c.exec_sync(ctl.req("ExecSync", msg, t)))
        .await
        .with_context(|| format!("execing command in container {} synchronously", a.id))?;
    {
        let mut o = std::io::stdout().lock();
        o.write_all(&r.stdout)?;
        o.flush()?;
    }
    {
        let mut e = std::io::stderr().lock();
        e.write_all(&r.stderr)?;
        e.flush()?;
    }
    Ok(match r.exit_code {
        0 => 0,
        c @ 1..=255 => c as u8,
        _ => 1,
    })
}
