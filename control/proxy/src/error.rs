use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF program {0} is not in the object")]
    MissingProgram(&'static str),
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("eBPF map {0} is not in the object")]
    MissingMap(&'static str),
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("eBPF link of {name}: {source}")]
    Link {
        name: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("node {node}: {reason}")]
    NodeConfig { node: String, reason: String },
    #[error("uplink {iface}: {reason}")]
    Uplink { iface: String, reason: String },
    #[error("aya-log: {0}")]
    Log(#[from] aya_log::Error),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("BPF_PROG_TEST_RUN of {name}: output of {len} bytes exceeds the {cap}-byte buffer")]
    TestRunOutput {
        name: &'static str,
        len: usize,
        cap: usize,
    },
    #[error("{what} failed (exit status {status:?}): {stderr}")]
    Nftables {
        what: String,
        status: Option<i32>,
        stderr: String,
    },
    #[error("network namespace: {0}")]
    Netns(String),
    #[error("reading CLOCK_MONOTONIC: {0}")]
    Clock(#[source] nix::errno::Errno),
    #[error("dataplane writer blocking task: {0}")]
    Join(#[source] tokio::task::JoinError),
    #[error("dataplane writer lost its map handles")]
    WriterLostMaps,
    #[error("the sync loop lost its proxier (a sync task panicked)")]
    ProxierLost,
    #[error("{cmd} failed (exit status {status:?}): {stderr}")]
    Iptables {
        cmd: String,
        status: Option<i32>,
        stderr: String,
    },
    #[error("--{flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
