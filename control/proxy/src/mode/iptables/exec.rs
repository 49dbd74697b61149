//! Running the iptables tools of one backend (`iptables-legacy` or `iptables-nft`), and
//! choosing the backend as kube-proxy's image does.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use crate::{Error, Result};

/// Which kernel interface the iptables tools use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// `iptables-legacy` (x_tables).
    Legacy,
    /// `iptables-nft` (nf_tables with the iptables syntax).
    Nft,
}

/// `--iptables-backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// As kube-proxy's image (iptables-wrapper) chooses: the backend holding the kubelet's
    /// hint chains (`KUBE-IPTABLES-HINT`, `KUBE-KUBELET-CANARY`), else the one holding more
    /// rules (the older wrapper's rule), `nft` on a tie.
    Auto,
    Legacy,
    Nft,
}

/// The iptables tools of one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Iptables {
    pub backend: Backend,
}

/// Seconds to wait for the xtables lock (`-w`).
const WAIT_SECONDS: &str = "5";

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
        }
    }

    fn tool(&self, tool: &str) -> String {
        match tool {
            "iptables" => format!("iptables-{}", self.name()),
            t => format!(
                "iptables-{}-{}",
                self.name(),
                t.trim_start_matches("iptables-")
            ),
        }
    }
}

fn run_err(cmd: &str, out: &std::process::Output) -> Error {
    Error::Iptables {
        cmd: cmd.to_owned(),
        status: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    }
}

fn spawn_err(cmd: &str, e: std::io::Error) -> Error {
    Error::Io {
        op: "running",
        path: cmd.into(),
        source: e,
    }
}

impl Iptables {
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }

    /// Chooses the backend for `choice` (module docs).
    pub fn choose(choice: BackendChoice) -> Self {
        let backend = match choice {
            BackendChoice::Legacy => Backend::Legacy,
            BackendChoice::Nft => Backend::Nft,
            BackendChoice::Auto => {
                let save = |b: Backend| Iptables::new(b).save(None).unwrap_or_default();
                let (nft, legacy) = (save(Backend::Nft), save(Backend::Legacy));
                let hinted = |s: &str| {
                    declared_chains(s)
                        .any(|c| c == "KUBE-IPTABLES-HINT" || c == "KUBE-KUBELET-CANARY")
                };
                let rules = |s: &str| s.lines().filter(|l| l.starts_with("-A ")).count();
                if hinted(&nft) {
                    Backend::Nft
                } else if hinted(&legacy) || rules(&legacy) > rules(&nft) {
                    Backend::Legacy
                } else {
                    Backend::Nft
                }
            }
        };
        Self { backend }
    }

    /// Whether this backend's tools are installed.
    pub fn available(&self) -> bool {
        Command::new(self.backend.tool("iptables-save"))
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `iptables-save [-t table]`.
    pub fn save(&self, table: Option<&str>) -> Result<String> {
        let tool = self.backend.tool("iptables-save");
        let mut cmd = Command::new(&tool);
        if let Some(t) = table {
            cmd.args(["-t", t]);
        }
        let out = cmd.output().map_err(|e| spawn_err(&tool, e))?;
        if !out.status.success() {
            return Err(run_err(&tool, &out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `iptables-restore --noflush` of `input`. Each `*table` section is committed as one
    /// transaction (nft commits the whole input at once; legacy table by table, so a failure
    /// in nat can follow a committed filter: the full sync that follows a failure repairs it).
    pub fn restore(&self, input: &str) -> Result<()> {
        let tool = self.backend.tool("iptables-restore");
        let mut child = Command::new(&tool)
            .args(["-w", WAIT_SECONDS, "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| spawn_err(&tool, e))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A write error shows as the tool's failure below.
            let _ = stdin.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().map_err(|e| spawn_err(&tool, e))?;
        if !out.status.success() {
            return Err(run_err(&tool, &out));
        }
        Ok(())
    }

    /// Whether `chain` exists in `table`: the tool's exit status 1 ("No chain/target/match by
    /// that name") is no; any other failure (the xtables lock, a resource problem) an error.
    pub fn chain_exists(&self, table: &str, chain: &str) -> Result<bool> {
        let tool = self.backend.tool("iptables");
        let out = Command::new(&tool)
            .args(["-w", WAIT_SECONDS, "-t", table, "-S", chain, "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| spawn_err(&tool, e))?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(run_err(&tool, &out)),
        }
    }
}

/// The chains a table section of `iptables-save` output declares.
pub fn declared_chains(save: &str) -> impl Iterator<Item = &str> {
    save.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
}

/// The sections of `iptables-save` output (all tables): `(table, its lines)`.
pub fn tables(save: &str) -> Vec<(&str, String)> {
    let mut out: Vec<(&str, String)> = Vec::new();
    for l in save.lines() {
        if let Some(t) = l.strip_prefix('*') {
            out.push((t.trim(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(l);
            body.push('\n');
        }
    }
    out
}

/// The `-A` rules of `chain` in `iptables-save` output of one table.
pub fn rules_of<'a>(save: &'a str, chain: &'a str) -> impl Iterator<Item = &'a str> {
    save.lines().filter_map(move |l| {
        l.strip_prefix("-A ")
            .and_then(|r| r.strip_prefix(chain))
            .and_then(|r| r.strip_prefix(' '))
    })
}

/// Removes one mode's iptables state in both backends: `cleanup_input` turns an
/// `iptables-save` of all tables into the restore input removing that mode's chains and jumps
/// (empty: nothing to remove). Tables are read with one `iptables-save` per backend (naming a
/// table would create it in the legacy backend). A failing backend does not stop the other's
/// cleanup; the first error is returned. Idempotent.
pub fn remove_everywhere(mode: &str, cleanup_input: impl Fn(&str) -> String) -> Result<()> {
    let mut first_err = None;
    for backend in [Backend::Legacy, Backend::Nft] {
        let ipt = Iptables::new(backend);
        if !ipt.available() {
            continue;
        }
        let res = ipt.save(None).and_then(|save| {
            let input = cleanup_input(&save);
            if input.is_empty() {
                return Ok(());
            }
            ipt.restore(&input)?;
            tracing::info!(backend = backend.name(), mode, "proxy mode state removed");
            Ok(())
        });
        if let Err(e) = res {
            tracing::warn!(backend = backend.name(), mode, error = %e, "removing a proxy mode's state");
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_are_named_per_backend() {
        assert_eq!(Backend::Legacy.tool("iptables"), "iptables-legacy");
        assert_eq!(
            Backend::Nft.tool("iptables-restore"),
            "iptables-nft-restore"
        );
        assert_eq!(
            Backend::Legacy.tool("iptables-save"),
            "iptables-legacy-save"
        );
    }

    #[test]
    fn save_output_is_parsed_for_chains_and_rules() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n\
                    -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
                    -A PREROUTINGX -j X\nCOMMIT\n";
        assert_eq!(
            declared_chains(save).collect::<Vec<_>>(),
            ["PREROUTING", "KUBE-SERVICES"]
        );
        assert_eq!(
            rules_of(save, "PREROUTING").collect::<Vec<_>>(),
            ["-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"]
        );
    }
}
