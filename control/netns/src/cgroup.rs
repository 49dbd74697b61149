//! cgroup v2 directories for the hosts xkube builds (a node's agent and pods live in one; the
//! socket-LB programs attach to it). Removed in `Drop`, moving any remaining processes to the
//! parent first.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{Error, Result};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The cgroup v2 mount point (`/sys/fs/cgroup/unified` on hybrid hosts, `/sys/fs/cgroup` on
/// unified ones), from `/proc/mounts`.
pub fn v2_root() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").map_err(|source| Error::Io {
        op: "read",
        path: "/proc/mounts".into(),
        source,
    })?;
    mounts
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(dir))
        })
        .ok_or_else(|| Error::Io {
            op: "find cgroup2 mount",
            path: "/proc/mounts".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no cgroup2 mount"),
        })
}

/// A resource controller that cgroup v1 may hold instead of v2 on a hybrid host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V1Controller {
    Memory,
    Cpu,
}

impl V1Controller {
    fn name(self) -> &'static str {
        match self {
            V1Controller::Memory => "memory",
            V1Controller::Cpu => "cpu",
        }
    }
}

/// On a hybrid host, the cgroup v1 directories that mirror the v2 directory `v2_dir` (same
/// path below each hierarchy's mount) for the memory and cpu controllers that the v2 root does
/// not offer; empty on unified hosts. The directories may not exist yet.
pub fn v1_mirrors(v2_dir: &Path) -> Vec<(V1Controller, PathBuf)> {
    let Ok(root) = v2_root() else {
        return Vec::new();
    };
    let Ok(rel) = v2_dir.strip_prefix(&root) else {
        return Vec::new();
    };
    let in_v2 = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let Ok(mounts) = fs::read_to_string("/proc/mounts") else {
        return Vec::new();
    };
    [V1Controller::Memory, V1Controller::Cpu]
        .into_iter()
        .filter(|c| !in_v2.split_whitespace().any(|n| n == c.name()))
        .filter_map(|c| {
            mounts.lines().find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (dir, kind, opts) = (f.get(1)?, f.get(2)?, f.get(3)?);
                (*kind == "cgroup" && opts.split(',').any(|o| o == c.name()))
                    .then(|| (c, Path::new(dir).join(rel)))
            })
        })
        .collect()
}

/// A cgroup v2 directory owned by this guard.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `<cgroup2 root>/<prefix>-<pid>-<seq>`.
    pub fn unique(prefix: &str) -> Result<Self> {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = v2_root()?.join(format!("{prefix}-{}-{seq}", std::process::id()));
        fs::create_dir(&path).map_err(|source| Error::Io {
            op: "create cgroup",
            path: path.clone(),
            source,
        })?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the process `pid` (all its threads) into this cgroup.
    pub fn add_process(&self, pid: u32) -> Result<()> {
        write_procs(&self.path, pid)
    }

    /// Moves the calling process into this cgroup until the returned guard is dropped, which
    /// moves it back where it was.
    pub fn enter(&self) -> Result<Entered> {
        enter(&self.path)
    }
}

/// The cgroup v2 directory of the calling process (its `0::` line in `/proc/self/cgroup`,
/// below [`v2_root`]).
pub fn own() -> Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").map_err(|source| Error::Io {
        op: "read",
        path: "/proc/self/cgroup".into(),
        source,
    })?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .trim_start_matches('/');
    Ok(v2_root()?.join(rel))
}

/// Moves the calling process into the existing cgroup v2 directory `path` until the returned
/// guard is dropped, which moves it back where it was.
pub fn enter(path: &Path) -> Result<Entered> {
    let previous = own()?;
    write_procs(path, std::process::id())?;
    Ok(Entered { previous })
}

/// The calling process is inside a [`Cgroup`]; dropping this moves it back.
#[derive(Debug)]
pub struct Entered {
    previous: PathBuf,
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Err(e) = write_procs(&self.previous, std::process::id()) {
            tracing::warn!(error = %e, "leaving cgroup");
        }
    }
}

fn write_procs(dir: &Path, pid: u32) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    fs::write(&procs, pid.to_string()).map_err(|source| Error::Io {
        op: "write",
        path: procs,
        source,
    })
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let parent = self.path.parent().map(Path::to_path_buf);
        if let (Some(parent), Ok(procs)) =
            (parent, fs::read_to_string(self.path.join("cgroup.procs")))
        {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                let _ = write_procs(&parent, pid);
            }
        }
        if let Err(e) = fs::remove_dir(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "removing cgroup");
        }
    }
}
