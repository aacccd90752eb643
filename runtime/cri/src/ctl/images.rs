//! Image commands: `pull`, `images`, `inspecti`, `rmi`, `imagefsinfo`.

use super::cli::{ImagesArgs, InspectiArgs, OutputArgs, PullArgs, RmiArgs};
use super::display::{Table, human_size, human_size_with_precision, pretty, truncate_id};
use super::pods::each;
use super::protojson::{PROTOJSON, to_json};
use super::status::{StatusData, render_statuses};
use super::{Ctl, Output, config, out, output_format, parse_labels};
use anyhow::{Context, Result, anyhow, bail};
use keelson_proto::runtime::v1 as pb;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Registry credentials from `--creds USER[:PASSWORD]` or `--auth BASE64`.
pub fn get_auth(creds: Option<&str>, auth: Option<&str>) -> Result<Option<pb::AuthConfig>> {
    match (creds, auth) {
        (Some(_), Some(_)) => bail!("both `--creds` and `--auth` are specified"),
        (Some(c), None) => {
            if c.is_empty() {
                bail!("credentials can't be empty");
            }
            let (user, pass) = c.split_once(':').unwrap_or((c, ""));
            if user.is_empty() {
                bail!("username can't be empty");
            }
            Ok(Some(pb::AuthConfig {
                username: user.to_string(),
                password: pass.to_string(),
                ..Default::default()
            }))
        }
        (None, Some(a)) => Ok(Some(pb::AuthConfig {
            auth: a.to_string(),
            ..Default::default()
        })),
        (None, None) => Ok(None),
    }
}

/// Pulls an image; no deadline unless `timeout` (pulls take what they take).
pub async fn pull_image(
    ctl: &Ctl,
    image: &str,
    auth: Option<pb::AuthConfig>,
    sandbox: Option<pb::PodSandboxConfig>,
    annotations: HashMap<String, String>,
    timeout: Option<Duration>,
) -> Result<String> {
    let mut c = ctl.images().await?;
    let msg = pb::PullImageRequest {
        image: Some(pb::ImageSpec {
            image: image.to_string(),
            annotations,
            ..Default::default()
        }),
        auth,
        sandbox_config: sandbox,
    };
    let r = ctl
        .call(
            "PullImage",
            timeout,
            c.pull_image(ctl.req("PullImage", msg, timeout)),
        )
        .await?;
    Ok(r.image_ref)
}

pub async fn pull(ctl: &Ctl, a: &PullArgs) -> Result<()> {
    if a.image.is_empty() {
        bail!("image name cannot be empty");
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let creds = a.creds.clone().or_else(|| env("CRICTL_CREDS"));
    let auth_str = a.auth.clone().or_else(|| env("CRICTL_AUTH"));
    let auth = get_auth(creds.as_deref(), auth_str.as_deref())?;
    let sandbox = a
        .pod_config
        .as_deref()
        .map(config::load_pod_config)
        .transpose()
        .context("load podSandboxConfig")?;
    let annotations = parse_labels(&a.annotation)?;
    let timeout = a.pull_timeout.filter(|t| !t.is_zero());
    let r = pull_image(ctl, &a.image, auth, sandbox, annotations, timeout)
        .await
        .context("pulling image")?;
    out(&format!("Image is up to date for {r}\n"))
}

/// The status of an image by name, ID or ID prefix; `image` is empty when it is absent.
pub async fn image_status(
    ctl: &Ctl,
    image: &str,
    verbose: bool,
) -> Result<pb::ImageStatusResponse> {
    let t = Some(ctl.timeout);
    let mut c = ctl.images().await?;
    let msg = pb::ImageStatusRequest {
        image: Some(pb::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        verbose,
    };
    ctl.call(
        "ImageStatus",
        t,
        c.image_status(ctl.req("ImageStatus", msg, t)),
    )
    .await
}

/// Images, ordered as crictl orders them (by first tag, else first digest, else ID).
async fn list_images(ctl: &Ctl, name: &str) -> Result<Vec<pb::Image>> {
    let t = Some(ctl.timeout);
    let mut c = ctl.images().await?;
    let msg = pb::ListImagesRequest {
        filter: Some(pb::ImageFilter {
            image: Some(pb::ImageSpec {
                image: name.to_string(),
                ..Default::default()
            }),
        }),
    };
    let mut list = ctl
        .call(
            "ListImages",
            t,
            c.list_images(ctl.req("ListImages", msg, t)),
        )
        .await?
        .images;
    list.sort_by(|a, b| {
        if let (Some(x), Some(y)) = (a.repo_tags.first(), b.repo_tags.first()) {
            return x.cmp(y);
        }
        if let (Some(x), Some(y)) = (a.repo_digests.first(), b.repo_digests.first()) {
            return x.cmp(y);
        }
        a.id.cmp(&b.id)
    });
    Ok(list)
}

/// `(repository, digest)` of an image's first repo digest, `<none>` without one.
fn repo_digest(digests: &[String]) -> (String, String) {
    match digests.first() {
        None => ("<none>".into(), "<none>".into()),
        Some(d) => match d.split('@').collect::<Vec<_>>().as_slice() {
            [name, digest] => (name.to_string(), digest.to_string()),
            _ => ("errorName".into(), "errorRepoDigest".into()),
        },
    }
}

/// `(repository, tag)` per repo tag; an untagged image shows its repository and `<none>`.
fn repo_tags(tags: &[String], name: &str) -> Vec<(String, String)> {
    if tags.is_empty() {
        return vec![(name.to_string(), "<none>".to_string())];
    }
    tags.iter()
        .map(|t| match t.rsplit_once(':') {
            Some((repo, tag)) => {
                let repo = if repo == "<none>" { name } else { repo };
                (repo.to_string(), tag.to_string())
            }
            None => ("errorRepoTag".into(), "errorRepoTag".into()),
        })
        .collect()
}

pub async fn images(ctl: &Ctl, a: &ImagesArgs) -> Result<()> {
    let format = output_format(&a.output)?;
    let list = list_images(ctl, a.image.as_deref().unwrap_or_default())
        .await
        .context("listing images")?;
    if format == Output::Json {
        let v = to_json(
            &pb::ListImagesResponse { images: list },
            "runtime.v1.ListImagesResponse",
            PROTOJSON,
        )
        .map_err(|e| anyhow!(e))?;
        return out(&format!("{}\n", pretty(&v)));
    }
    let mut table = Table::new();
    let mut text = String::new();
    if !a.verbose && !a.quiet {
        let mut row = vec!["IMAGE", "TAG"];
        if a.digests {
            row.push("DIGEST");
        }
        row.extend(["IMAGE ID", "SIZE"]);
        if a.pinned {
            row.push("PINNED");
        }
        table.row(row);
    }
    for i in &list {
        if a.quiet {
            text.push_str(&format!("{}\n", i.id));
            continue;
        }
        if !a.verbose {
            let (name, mut digest) = repo_digest(&i.repo_digests);
            let size = human_size_with_precision(i.size as f64, 3);
            let mut id = i.id.clone();
            if !a.no_trunc {
                id = truncate_id(&id, "sha256:");
                digest = truncate_id(&digest, "sha256:");
            }
            for (repo, tag) in repo_tags(&i.repo_tags, &name) {
                let mut row = vec![repo, tag];
                if a.digests {
                    row.push(digest.clone());
                }
                row.extend([id.clone(), size.clone()]);
                if a.pinned {
                    row.push(i.pinned.to_string());
                }
                table.row(row);
            }
            continue;
        }
        text.push_str(&format!("ID: {}\n", i.id));
        for t in &i.repo_tags {
            text.push_str(&format!("RepoTags: {t}\n"));
        }
        for d in &i.repo_digests {
            text.push_str(&format!("RepoDigests: {d}\n"));
        }
        if i.size != 0 {
            text.push_str(&format!("Size: {}\n", i.size));
        }
        if let Some(uid) = &i.uid {
            text.push_str(&format!("Uid: value:{}\n", uid.value));
        }
        if !i.username.is_empty() {
            text.push_str(&format!("Username: {}\n", i.username));
        }
        if i.pinned {
            text.push_str("Pinned: true\n");
        }
        text.push('\n');
    }
    out(&text)?;
    out(&table.render())
}

pub async fn inspecti(ctl: &Ctl, a: &InspectiArgs) -> Result<()> {
    let format = output_format(a.output.as_deref().unwrap_or("json"))?;
    let mut ids = a.ids.clone();
    if ids.is_empty() {
        ids = list_images(ctl, "")
            .await
            .context("listing images")?
            .into_iter()
            .map(|i| i.id)
            .collect();
        if ids.is_empty() {
            bail!("no IDs provided or nothing found per filter");
        }
    }
    let verbose = !a.quiet;
    let mut statuses = Vec::new();
    let mut text = String::new();
    for id in &ids {
        let r = image_status(ctl, id, verbose)
            .await
            .with_context(|| format!("image status for {id:?} request"))?;
        let Some(image) = &r.image else {
            bail!("no such image {id:?} present");
        };
        if format == Output::Table {
            text.push_str(&format!("ID: {}\n", image.id));
            for t in &image.repo_tags {
                text.push_str(&format!("Tag: {t}\n"));
            }
            for d in &image.repo_digests {
                text.push_str(&format!("Digest: {d}\n"));
            }
            text.push_str(&format!(
                "Size: {}\n",
                human_size_with_precision(image.size as f64, 3)
            ));
            if verbose {
                text.push_str(&format!("Info: {:?}\n", r.info));
            }
            continue;
        }
        statuses.push(StatusData {
            status: Some(to_json(image, "runtime.v1.Image", PROTOJSON).map_err(|e| anyhow!(e))?),
            info: r.info.clone(),
            ..Default::default()
        });
    }
    if format == Output::Table {
        return out(&text);
    }
    out(&render_statuses(statuses)?)
}

pub async fn rmi(ctl: &Ctl, a: &RmiArgs) -> Result<()> {
    // ID -> whether to remove it (prune keeps what containers use).
    let mut ids: BTreeMap<String, bool> = a.ids.iter().map(|i| (i.clone(), true)).collect();
    if a.all || a.prune {
        for i in list_images(ctl, "").await? {
            if a.prune && i.pinned {
                continue;
            }
            ids.insert(i.id, true);
        }
    }
    if a.prune {
        let t = Some(ctl.timeout);
        let mut c = ctl.runtime().await?;
        let msg = pb::ListContainersRequest { filter: None };
        let containers = ctl
            .call(
                "ListContainers",
                t,
                c.list_containers(ctl.req("ListContainers", msg, t)),
            )
            .await?
            .containers;
        for ctr in containers {
            let image = ctr.image.map(|i| i.image).unwrap_or_default();
            match image_status(ctl, &image, false).await {
                Ok(r) => {
                    if let Some(i) = r.image {
                        ids.insert(i.id, false);
                    }
                }
                Err(e) => eprintln!("keelsonctl: image status request for {image:?} failed: {e:#}"),
            }
        }
    }
    let remove: Vec<String> = ids
        .into_iter()
        .filter_map(|(id, keep)| keep.then_some(id))
        .collect();
    if remove.is_empty() {
        if a.all || a.prune {
            eprintln!("No images to remove");
            return Ok(());
        }
        bail!("you must specify at least one IMAGE-ID or use --all/--prune");
    }
    each(&remove, |id| async move {
        let status = image_status(ctl, &id, false)
            .await
            .with_context(|| format!("image status request for {id:?} failed"))?;
        let Some(image) = status.image else {
            bail!("no such image {id}");
        };
        let t = Some(ctl.timeout);
        let mut c = ctl.images().await?;
        let msg = pb::RemoveImageRequest {
            image: Some(pb::ImageSpec {
                image: id.clone(),
                ..Default::default()
            }),
        };
        let r = ctl
            .call(
                "RemoveImage",
                t,
                c.remove_image(ctl.req("RemoveImage", msg, t)),
            )
            .await;
        if let Err(e) = r {
            // Under --prune another user may have got there first.
            if a.prune {
                return Ok(());
            }
            return Err(e.context(format!("error of removing image {id:?}")));
        }
        let names = if image.repo_tags.is_empty() {
            &image.repo_digests
        } else {
            &image.repo_tags
        };
        let mut text = String::new();
        for n in names {
            text.push_str(&format!("Deleted: {n}\n"));
        }
        out(&text)
    })
    .await
}

pub async fn imagefsinfo(ctl: &Ctl, a: &OutputArgs) -> Result<()> {
    let format = output_format(a.output.as_deref().unwrap_or("json"))?;
    let t = Some(ctl.timeout);
    let mut c = ctl.images().await?;
    let r = ctl
        .call(
            "ImageFsInfo",
            t,
            c.image_fs_info(ctl.req("ImageFsInfo", pb::ImageFsInfoRequest {}, t)),
        )
        .await
        .context("image filesystem info request")?;
    if format == Output::Table {
        let mut text = String::new();
        for (label, list) in [
            ("Container", &r.container_filesystems),
            ("Image", &r.image_filesystems),
        ] {
            text.push_str(&format!("{label} Filesystem \n"));
            for (i, fs) in list.iter().enumerate() {
                text.push_str(&format!("TimeStamp[{i}]: {}\n", fs.timestamp));
                let used = fs.used_bytes.as_ref().map_or(0, |v| v.value);
                text.push_str(&format!("Disk[{i}]: {}\n", human_size(used as f64)));
                let inodes = fs.inodes_used.as_ref().map_or(0, |v| v.value);
                text.push_str(&format!("Inodes[{i}]: {inodes}\n"));
                let mp = fs
                    .fs_id
                    .as_ref()
                    .map(|f| f.mountpoint.as_str())
                    .unwrap_or_default();
                text.push_str(&format!("Mountpoint[{i}]: {mp}\n"));
            }
        }
        return out(&text);
    }
    let v = to_json(&r, "runtime.v1.ImageFsInfoResponse", PROTOJSON).map_err(|e| anyhow!(e))?;
    out(&render_statuses(vec![StatusData {
        status: Some(v),
        ..Default::default()
    }])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_tags_and_digests_split_like_crictl() {
        let tags = vec!["127.0.0.1:5000/kt/busybox:sb".to_string()];
        assert_eq!(
            repo_tags(&tags, "x"),
            vec![("127.0.0.1:5000/kt/busybox".to_string(), "sb".to_string())]
        );
        assert_eq!(
            repo_tags(&[], "r/busybox"),
            vec![("r/busybox".to_string(), "<none>".to_string())]
        );
        let d = vec!["r/busybox@sha256:abc".to_string()];
        assert_eq!(
            repo_digest(&d),
            ("r/busybox".to_string(), "sha256:abc".to_string())
        );
        assert_eq!(
            repo_digest(&[]),
            ("<none>".to_string(), "<none>".to_string())
        );
    }

    #[test]
    fn auth_from_flags() {
        let a = get_auth(Some("u:p:q"), None).unwrap().unwrap();
        assert_eq!((a.username.as_str(), a.password.as_str()), ("u", "p:q"));
        let a = get_auth(Some("u"), None).unwrap().unwrap();
        assert_eq!(a.password, "");
        assert!(get_auth(Some(":p"), None).is_err());
        assert!(get_auth(Some("u"), Some("x")).is_err());
        assert_eq!(get_auth(None, Some("YTpi")).unwrap().unwrap().auth, "YTpi");
        assert!(get_auth(None, None).unwrap().is_none());
    }
}
