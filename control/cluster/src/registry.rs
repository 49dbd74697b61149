//! `xkube cluster up --registry`: a CNCF Distribution registry (Debian's `docker-registry`
//! package, which `cargo xtask setup` installs) in a namespace of its own on the fabric, at
//! [`REGISTRY_ADDR`]:[`REGISTRY_PORT`]. It speaks plain HTTP, so every node's engine is started
//! with `--insecure-registry` for that one address. With `--registry-htpasswd` it asks for
//! basic auth (bcrypt entries, `htpasswd -B`) on pushes and pulls: pods then need an
//! `imagePullSecret`.

use std::{
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::{Error, Result, io};

/// The registry's address on the fabric.
pub const REGISTRY_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// Its port.
pub const REGISTRY_PORT: u16 = 5000;
/// Debian's binary of the CNCF Distribution registry.
pub const BINARY: &str = "/usr/bin/docker-registry";

/// `198.18.0.3:5000`, the prefix of the registry's image names.
pub fn host() -> String {
    format!("{REGISTRY_ADDR}:{REGISTRY_PORT}")
}

/// The registry's configuration: storage under `root`, basic auth from `htpasswd` if given.
pub fn config(root: &Path, htpasswd: Option<&Path>) -> String {
    let mut c = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
         delete:\n    enabled: true\nhttp:\n  addr: {}\n",
        root.display(),
        host()
    );
    if let Some(h) = htpasswd {
        c.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: xkube\n    path: {}\n",
            h.display()
        ));
    }
    c
}

/// Writes the configuration under `data` and returns the command serving it.
pub fn command(data: &Path, htpasswd: Option<&Path>) -> Result<Command> {
    if !Path::new(BINARY).exists() {
        return Err(Error::Invalid(format!(
            "--registry needs {BINARY} (Debian's docker-registry package): run `cargo xtask setup` or `apt-get install docker-registry`"
        )));
    }
    let htpasswd = match htpasswd {
        Some(h) => Some(
            std::fs::canonicalize(h)
                .map_err(|e| Error::Invalid(format!("--registry-htpasswd {}: {e}", h.display())))?,
        ),
        None => None,
    };
    let dir = data.join("registry");
    let root: PathBuf = dir.join("storage");
    std::fs::create_dir_all(&root).map_err(io("create directory", &root))?;
    let cfg = dir.join("config.yml");
    std::fs::write(&cfg, config(&root, htpasswd.as_deref())).map_err(io("write", &cfg))?;
    let mut cmd = Command::new(BINARY);
    cmd.arg("serve").arg(cfg);
    Ok(cmd)
}

/// Waits until the registry accepts connections (from the host, over the fabric).
pub fn wait(timeout: Duration, log: &Path) -> Result<()> {
    let addr = SocketAddrV4::new(REGISTRY_ADDR, REGISTRY_PORT);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr.into(), Duration::from_millis(500)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::Timeout {
        what: format!("the registry at {addr}"),
        secs: timeout.as_secs(),
        logs: log.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_listens_on_the_fabric_and_adds_auth_only_when_asked() {
        let c = config(Path::new("/d/storage"), None);
        assert!(c.contains("  addr: 198.18.0.3:5000\n"), "{c}");
        assert!(c.contains("    rootdirectory: /d/storage\n"), "{c}");
        assert!(!c.contains("auth:"), "{c}");
        let c = config(Path::new("/d/storage"), Some(Path::new("/d/htpasswd")));
        assert!(
            c.ends_with("auth:\n  htpasswd:\n    realm: xkube\n    path: /d/htpasswd\n"),
            "{c}"
        );
    }
}
