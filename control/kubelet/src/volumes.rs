//! Pod volumes on the node: emptyDir (under the pod dir, removed with the pod), hostPath,
//! secret (decoded files on a tmpfs when possible), configMap, projected, and the
//! service-account token at `/var/run/secrets/kubernetes.io/serviceaccount`.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, Pod, Secret, ServiceAccount};
use xkube_client::{Api, Client};

use crate::{
    error::{Error, Result, invalid, io},
    runtime::Mount,
};

/// Where the service-account token is mounted.
pub const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The pseudo-volume name of the automatic token mount.
const SA_VOLUME: &str = "kube-api-access";

/// The prepared volumes of a pod: name -> host directory (or file).
#[derive(Debug, Default, Clone)]
pub struct Volumes {
    pub paths: HashMap<String, PathBuf>,
    /// tmpfs mounts made for secrets (unmounted at teardown).
    pub tmpfs: Vec<PathBuf>,
}

fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

fn config_map_data(c: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = c
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in c.binary_data.iter().flatten() {
        out.insert(k.clone(), v.0.clone());
    }
    out
}

/// Writes `data` as files into `dir`, honouring `items` (key -> relative path).
fn write_files(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
    let pairs: Vec<(String, &Vec<u8>)> = match items {
        Some(items) if !items.is_empty() => items
            .iter()
            .filter_map(|i| data.get(&i.key).map(|v| (i.path.clone(), v)))
            .collect(),
        _ => data.iter().map(|(k, v)| (k.clone(), v)).collect(),
    };
    for (rel, v) in pairs {
        if rel.contains("..") || rel.starts_with('/') {
            return Err(invalid("volume item path", rel));
        }
        let p = dir.join(&rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io("create directory", parent))?;
        }
        std::fs::write(&p, v).map_err(io("write", &p))?;
    }
    Ok(())
}

/// Mounts a small tmpfs at `dir` (secrets never touch the disk); false when that fails
/// (the files are then written to the pod dir).
fn try_tmpfs(dir: &Path) -> bool {
    use nix::mount::{MsFlags, mount};
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4m,mode=0755"),
    )
    .is_ok()
}

/// The token secret of a service account: the `kubernetes.io/service-account-token` secret
/// among those the ServiceAccount's `secrets` names (the serviceaccount controller fills the
/// list). Only `get`s, no list: the Node authorizer lets a kubelet read the secrets of its
/// pods' service accounts and nothing else. `None` while the account or its token secret is
/// not there yet (the pod then starts without the mount, as before).
async fn service_account_token(client: &Client, ns: &str, sa: &str) -> Result<Option<Secret>> {
    let Some(account) = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .get_opt(sa)
        .await?
    else {
        return Ok(None);
    };
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    for name in account
        .secrets
        .iter()
        .flatten()
        .filter_map(|r| r.name.as_deref())
    {
        if let Some(s) = secrets.get_opt(name).await?
            && is_token_of(&s, sa)
        {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// Whether `s` is a token secret of service account `sa`.
fn is_token_of(s: &Secret, sa: &str) -> bool {
    s.type_.as_deref() == Some("kubernetes.io/service-account-token")
        && s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/service-account.name"))
            .is_some_and(|n| n == sa)
}

/// Whether the pod gets the automatic token mount.
fn wants_token(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    spec.automount_service_account_token != Some(false)
}

/// Creates the pod's volumes under `pod_dir`.
pub async fn prepare(client: &Client, pod: &Pod, pod_dir: &Path) -> Result<Volumes> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = Volumes::default();
    let spec = pod.spec.as_ref().ok_or_else(|| invalid("pod", "no spec"))?;
    let vol_dir = pod_dir.join("volumes");
    for v in spec.volumes.iter().flatten() {
        let path = if v.empty_dir.is_some() {
            let p = vol_dir.join("empty-dir").join(&v.name);
            std::fs::create_dir_all(&p).map_err(io("create emptyDir", &p))?;
            p
        } else if let Some(h) = &v.host_path {
            let p = PathBuf::from(&h.path);
            match h.type_.as_deref() {
                Some("DirectoryOrCreate") => {
                    std::fs::create_dir_all(&p).map_err(io("create hostPath", &p))?
                }
                Some("FileOrCreate") if !p.exists() => {
                    std::fs::File::create(&p).map_err(io("create hostPath", &p))?;
                }
                // Kubernetes refuses typed paths that are missing; an untyped one is bound as
                // it is and fails at mount time.
                Some("Directory" | "File" | "Socket") if !p.exists() => {
                    return Err(invalid("hostPath", format!("{} does not exist", h.path)));
                }
                _ => {}
            }
            p
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let p = vol_dir.join("secret").join(&v.name);
            let secret = Api::<Secret>::namespaced(client.clone(), ns)
                .get_opt(&name)
                .await?;
            let Some(secret) = secret else {
                if s.optional == Some(true) {
                    std::fs::create_dir_all(&p).map_err(io("create directory", &p))?;
                    out.paths.insert(v.name.clone(), p);
                    continue;
                }
                return Err(invalid(
                    "secret volume",
                    format!("secret {name:?} not found"),
                ));
            };
            if try_tmpfs(&p) {
                out.tmpfs.push(p.clone());
            }
            write_files(&p, &secret_data(&secret), s.items.as_deref())?;
            p
        } else if let Some(c) = &v.config_map {
            let p = vol_dir.join("configmap").join(&v.name);
            let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_opt(&c.name)
                .await?;
            match cm {
                Some(cm) => write_files(&p, &config_map_data(&cm), c.items.as_deref())?,
                None if c.optional == Some(true) => {
                    std::fs::create_dir_all(&p).map_err(io("create directory", &p))?
                }
                None => {
                    return Err(invalid(
                        "configMap volume",
                        format!("config map {:?} not found", c.name),
                    ));
                }
            }
            p
        } else if let Some(pr) = &v.projected {
            let p = vol_dir.join("projected").join(&v.name);
            if try_tmpfs(&p) {
                out.tmpfs.push(p.clone());
            }
            std::fs::create_dir_all(&p).map_err(io("create directory", &p))?;
            for src in pr.sources.iter().flatten() {
                if let Some(s) = &src.secret
                    && let Some(secret) = Api::<Secret>::namespaced(client.clone(), ns)
                        .get_opt(&s.name)
                        .await?
                {
                    write_files(&p, &secret_data(&secret), s.items.as_deref())?;
                }
                if let Some(c) = &src.config_map
                    && let Some(cm) = Api::<ConfigMap>::namespaced(client.clone(), ns)
                        .get_opt(&c.name)
                        .await?
                {
                    write_files(&p, &config_map_data(&cm), c.items.as_deref())?;
                }
                if let Some(t) = &src.service_account_token {
                    let sa = spec.service_account_name.as_deref().unwrap_or("default");
                    let tok = service_account_token(client, ns, sa).await?;
                    let token = tok
                        .as_ref()
                        .and_then(|s| secret_data(s).get("token").cloned())
                        .unwrap_or_default();
                    write_files(&p, &BTreeMap::from([(t.path.clone(), token)]), None)?;
                }
                if let Some(d) = &src.downward_api {
                    for item in d.items.iter().flatten() {
                        if let Some(f) = &item.field_ref {
                            let val =
                                crate::env::field_ref(pod, &f.field_path, &Default::default())
                                    .unwrap_or_default();
                            write_files(
                                &p,
                                &BTreeMap::from([(item.path.clone(), val.into_bytes())]),
                                None,
                            )?;
                        }
                    }
                }
            }
            p
        } else {
            tracing::warn!(volume = %v.name, "unsupported volume type, using an empty directory");
            let p = vol_dir.join("unsupported").join(&v.name);
            std::fs::create_dir_all(&p).map_err(io("create directory", &p))?;
            p
        };
        out.paths.insert(v.name.clone(), path);
    }
    // The service-account token, unless a volume already covers the path.
    let covered = spec.containers.iter().any(|c| {
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path.trim_end_matches('/') == SA_MOUNT)
    });
    if wants_token(pod) && !covered {
        let sa = spec.service_account_name.as_deref().unwrap_or("default");
        if let Some(secret) = service_account_token(client, ns, sa).await? {
            let p = vol_dir.join("token").join(SA_VOLUME);
            if try_tmpfs(&p) {
                out.tmpfs.push(p.clone());
            }
            let mut data = secret_data(&secret);
            data.entry("namespace".into())
                .or_insert_with(|| ns.as_bytes().to_vec());
            data.retain(|k, _| matches!(k.as_str(), "token" | "ca.crt" | "namespace"));
            write_files(&p, &data, None)?;
            out.paths.insert(SA_VOLUME.into(), p);
        }
    }
    Ok(out)
}

/// The mounts of `container`.
pub fn mounts_for(container: &Container, vols: &Volumes) -> Result<Vec<Mount>> {
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let base = vols.paths.get(&m.name).ok_or_else(|| Error::Invalid {
            what: "volumeMount",
            message: format!("volume {:?} not found", m.name),
        })?;
        let host_path = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) if !sub.contains("..") => base.join(sub),
            Some(sub) => return Err(invalid("subPath", sub)),
            None => base.clone(),
        };
        out.push(Mount {
            host_path,
            container_path: PathBuf::from(&m.mount_path),
            read_only: m.read_only == Some(true),
        });
    }
    if let Some(p) = vols.paths.get(SA_VOLUME) {
        out.push(Mount {
            host_path: p.clone(),
            container_path: PathBuf::from(SA_MOUNT),
            read_only: true,
        });
    }
    Ok(out)
}

/// Unmounts the pod's tmpfs mounts and removes its volume directories (hostPath untouched).
pub fn cleanup(vols: &Volumes, pod_dir: &Path) {
    for p in &vols.tmpfs {
        if let Err(e) = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH) {
            tracing::debug!(path = %p.display(), error = %e, "unmounting volume tmpfs");
        }
    }
    let d = pod_dir.join("volumes");
    if let Err(e) = std::fs::remove_dir_all(&d)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %d.display(), error = %e, "removing pod volumes");
    }
}

/// The tmpfs mounts below `pod_dir` (for a restarted kubelet's cleanup).
pub fn mounted_below(pod_dir: &Path) -> Vec<PathBuf> {
    let Ok(m) = std::fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    m.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(pod_dir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_files_hold_decoded_values_and_items_rename() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s: Secret = serde_json::from_value(json!({
            "metadata": {"name": "s"},
            "data": {"username": "YWRtaW4=", "password": "MWYyZDFlMmU2N2Rm"},
        }))
        .expect("secret");
        write_files(dir.path(), &secret_data(&s), None).expect("write");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("username")).expect("read"),
            "admin"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("password")).expect("read"),
            "1f2d1e2e67df"
        );
        let items: Vec<KeyToPath> =
            serde_json::from_value(json!([{"key": "username", "path": "sub/user"}]))
                .expect("items");
        let d2 = dir.path().join("x");
        write_files(&d2, &secret_data(&s), Some(&items)).expect("write items");
        assert_eq!(
            std::fs::read_to_string(d2.join("sub/user")).expect("read"),
            "admin"
        );
        assert!(!d2.join("password").exists());
        let bad: Vec<KeyToPath> =
            serde_json::from_value(json!([{"key": "username", "path": "../escape"}]))
                .expect("items");
        assert!(write_files(&d2, &secret_data(&s), Some(&bad)).is_err());
    }

    #[test]
    fn mounts_resolve_volumes_sub_paths_and_the_token() {
        let c: Container = serde_json::from_value(json!({
            "name": "c",
            "volumeMounts": [
                {"name": "cache", "mountPath": "/cache"},
                {"name": "cache", "mountPath": "/sub", "subPath": "a", "readOnly": true},
            ],
        }))
        .expect("container");
        let mut v = Volumes::default();
        v.paths.insert(
            "cache".into(),
            PathBuf::from("/pods/u/volumes/empty-dir/cache"),
        );
        v.paths
            .insert(SA_VOLUME.into(), PathBuf::from("/pods/u/volumes/token"));
        let m = mounts_for(&c, &v).expect("mounts");
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[1].host_path,
            Path::new("/pods/u/volumes/empty-dir/cache/a")
        );
        assert!(m[1].read_only);
        assert_eq!(m[2].container_path, Path::new(SA_MOUNT));
        let missing: Container = serde_json::from_value(json!({
            "name": "c", "volumeMounts": [{"name": "nope", "mountPath": "/x"}],
        }))
        .expect("container");
        assert!(mounts_for(&missing, &v).is_err());
    }
}
