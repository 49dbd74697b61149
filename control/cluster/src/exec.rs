//! `xkube cluster exec NODE -- CMD...` and `xkube cluster shell NODE`: a command run as a
//! host process of a node, in the node's network namespace and its cgroup.
//!
//! Both matter: the namespace gives the node's addresses and routes, and the cgroup is where
//! the eBPF proxy's socket-level load balancer is attached. A process started with plain
//! `ip netns exec` is outside the node's cgroup, so its connects to a ClusterIP are not
//! translated and the service looks broken. The command keeps the caller's terminal (a TTY
//! when there is one), environment and working directory; its exit status is returned.

use std::{
    fs::{File, OpenOptions},
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::Path,
    process::Command,
};

use crate::{Error, NameOptions, NodeState, Result, io, load_state};

/// The node named `node`: its full name (`xk-node1`), or `nodeN` / `N` for short.
pub fn find_node(opts: &NameOptions, node: &str) -> Result<NodeState> {
    let (state, _) = load_state(opts)?;
    let short = |n: &NodeState| {
        n.name
            .strip_prefix(&format!("{}-", state.name))
            .map(str::to_owned)
    };
    state
        .nodes
        .iter()
        .find(|n| {
            n.name == node
                || short(n).as_deref() == Some(node)
                || short(n).as_deref() == Some(&format!("node{node}"))
        })
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = state.nodes.iter().map(|n| n.name.as_str()).collect();
            Error::Invalid(format!(
                "cluster {:?} has no node {node:?} (its nodes: {})",
                state.name,
                names.join(", ")
            ))
        })
}

/// Runs `argv` as a host process of `node` and waits for it; returns its exit code (128 +
/// the signal when a signal ended it, as shells report).
pub fn exec(opts: &NameOptions, node: &str, argv: &[String]) -> Result<i32> {
    let Some((program, args)) = argv.split_first() else {
        return Err(Error::Invalid(
            "no command: xkube cluster exec NODE -- CMD [ARG...]".into(),
        ));
    };
    let n = find_node(opts, node)?;
    let mut cmd = Command::new(program);
    cmd.args(args).env("XKUBE_NODE", &n.name);
    run_on(&n, &mut cmd, program)
}

/// An interactive shell on `node` (`$SHELL`, else `/bin/bash`, else `/bin/sh`) with the node
/// in its prompt.
pub fn shell(opts: &NameOptions, node: &str) -> Result<i32> {
    let n = find_node(opts, node)?;
    let shell = std::env::var("SHELL")
        .ok()
        .filter(|s| Path::new(s).exists())
        .or_else(|| {
            ["/bin/bash", "/bin/sh"]
                .into_iter()
                .find(|s| Path::new(s).exists())
                .map(str::to_owned)
        })
        .ok_or_else(|| Error::Invalid("no shell found ($SHELL, /bin/bash, /bin/sh)".into()))?;
    let mut cmd = Command::new(&shell);
    cmd.env("XKUBE_NODE", &n.name)
        .env("PS1", format!("[{}] \\w \\$ ", n.name));
    if shell.ends_with("bash") {
        // The user's rc files would set PS1 again.
        cmd.args(["--norc", "-i"]);
    }
    println!(
        "node {} ({}): network namespace {}, cgroup {}; exit to leave",
        n.name,
        n.addr,
        n.namespace,
        n.cgroup.display()
    );
    run_on(&n, &mut cmd, &shell)
}

fn run_on(n: &NodeState, cmd: &mut Command, what: &str) -> Result<i32> {
    let netns = Path::new("/run/netns").join(&n.namespace);
    let ns = File::open(&netns).map_err(|e| {
        Error::Invalid(format!(
            "node {}: its network namespace {} is gone ({e}); is the cluster up?",
            n.name,
            netns.display()
        ))
    })?;
    let procs_path = n.cgroup.join("cgroup.procs");
    let procs = OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(io("open", &procs_path))?;
    // The child keeps the caller's session, so a terminal stays its controlling terminal.
    crate::enter_in_child(cmd, &ns, Some(&procs), false);
    // SAFETY: signal(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            // Ignored signals stay ignored across exec: give the command the defaults back.
            nix::libc::signal(nix::libc::SIGINT, nix::libc::SIG_DFL);
            nix::libc::signal(nix::libc::SIGQUIT, nix::libc::SIG_DFL);
            Ok(())
        });
    }
    // A ^C or ^\ on the terminal is for the command (as with `system(3)`): this process
    // waits for it rather than dying first and leaving it behind.
    // SAFETY: setting a signal's disposition to ignore has no preconditions.
    let (int, quit) = unsafe {
        (
            nix::libc::signal(nix::libc::SIGINT, nix::libc::SIG_IGN),
            nix::libc::signal(nix::libc::SIGQUIT, nix::libc::SIG_IGN),
        )
    };
    let status = cmd.status();
    // SAFETY: restores the dispositions read above.
    unsafe {
        nix::libc::signal(nix::libc::SIGINT, int);
        nix::libc::signal(nix::libc::SIGQUIT, quit);
    }
    let status = status.map_err(|source| Error::Spawn {
        what: what.to_owned(),
        source,
    })?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
