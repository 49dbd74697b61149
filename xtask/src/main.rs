//! Project automation. `cargo xtask setup | test | demo | image`.
//!
//! `setup` installs what building and testing xkube needs and is quiet and fast when everything
//! is already there. `test` runs setup, the lints and the whole test suite (privileged tests
//! included: run it as root). `demo` runs setup and the main job. `image` runs setup and builds
//! the container image's static binary and build context ([`image`]).

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Parser, Subcommand};

mod image;
#[cfg(test)]
mod units;

#[derive(Parser)]
#[command(about = "xkube project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install build and test prerequisites (idempotent).
    Setup,
    /// Setup, then formatting and clippy checks, then the whole test suite.
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy`.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo nextest run` (e.g. a test filter).
        #[arg(last = true)]
        nextest_args: Vec<String>,
    },
    /// Setup, then the main job: a 3-node cluster in network namespaces with a Service
    /// answering through the eBPF proxy (left running; `xkube cluster down --name demo`).
    Demo,
    /// Setup, then the static (musl) xkube binary and the image's build context
    /// (deploy/image/Dockerfile); prints the `docker build` command.
    Image(image::ImageArgs),
}

/// Debian packages the project uses, and what for.
const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "protobuf-compiler",
        "etcd-client's build script runs protoc",
    ),
    ("etcd-server", "the etcd storage backend and its tests"),
    (
        "nftables",
        "the proxy's nftables mode applies its table with `nft -f`",
    ),
    (
        "iproute2",
        "`ip netns` to inspect the namespaces xkube creates",
    ),
    (
        "systemd",
        "systemd-analyze and systemd-sysusers check deploy/systemd in the xtask tests",
    ),
    (
        "docker.io",
        "the docker runtime: its tests and `cluster up --runtime docker` start dockerd",
    ),
    (
        "iptables",
        "the kubelet's pod masquerade and the proxy's iptables mode (legacy and nft tools)",
    ),
    (
        "curl",
        "the tools image of `cluster up --runtime docker` and the e2e pods",
    ),
    (
        "docker-registry",
        "`cluster up --registry` runs the CNCF Distribution registry on the fabric",
    ),
    (
        "apache2-utils",
        "htpasswd for the registry's basic-auth test",
    ),
    (
        "socat",
        "the tools image of `cluster up --runtime docker` and the kubelet tests",
    ),
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Test {
            no_lint,
            nextest_args,
        } => setup().and_then(|()| test(no_lint, &nextest_args)),
        Cmd::Demo => setup().and_then(|()| demo()),
        Cmd::Image(args) => setup().and_then(|()| image::image(&args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    // /proc/self belongs to the effective uid of the process looking at it.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn say(msg: impl AsRef<str>) {
    eprintln!("xtask: {}", msg.as_ref());
}

/// Runs a command, inheriting stdio; fails with its exit status.
fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout; fails with its stderr.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup() -> Result<()> {
    let started = Instant::now();
    let root = is_root();
    apt_packages(root)?;
    nightly_rust_src()?;
    bpf_linker()?;
    nextest()?;
    python_client()?;
    if root {
        bpffs()?;
    } else {
        say("not root: skipping the bpffs mount (eBPF programs and tests need root)");
    }
    say(format!(
        "setup complete ({:.1} s)",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn apt_packages(root: bool) -> Result<()> {
    apt_install(APT_PACKAGES, root)
}

/// Installs the Debian packages of `packages` (name, what for) that are missing.
fn apt_install(packages: &[(&str, &str)], root: bool) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .map(|s| s.contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for (p, why) in packages.iter().filter(|(p, _)| missing.contains(p)) {
        say(format!("installing Debian package {p} ({why})"));
    }
    if !root {
        bail!(
            "Debian packages {} are missing and only root can install them: run `sudo apt-get \
             install -y {}` or run this command as root",
            missing.join(", "),
            missing.join(" ")
        );
    }
    run(Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null()))
    .context("apt-get update")?;
    // RUNLEVEL=1: the packages' services (dockerd, the registry) are not started on the host:
    // the clusters and tests start their own, in their namespaces.
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("RUNLEVEL", "1"))
    .with_context(|| format!("installing {}", missing.join(" ")))
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to manage the nightly toolchain that builds eBPF")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        say("installing the nightly Rust toolchain (eBPF programs build with -Z build-std)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        say("installing rust-src for the nightly toolchain (needed to build core for BPF)");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("HOME is not set"))
}

/// The LLVM shared library of the nightly toolchain and its major version, e.g. 22 from
/// `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn nightly_llvm() -> Result<(PathBuf, Vec<PathBuf>, u32)> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let mut libs = Vec::new();
    let mut major = None;
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(OsStr::to_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(rest) = name.strip_prefix("libLLVM.so.") {
            major = rest.split('.').next().and_then(|m| m.parse::<u32>().ok());
            libs.push(path);
        } else if name.starts_with("libLLVM-") && name.ends_with(".so") {
            libs.push(path);
        }
    }
    let major = major.ok_or_else(|| {
        anyhow!(
            "no libLLVM.so.<major>... in {}: cannot build bpf-linker against the nightly's LLVM",
            lib.display()
        )
    })?;
    Ok((lib, libs, major))
}

fn bpf_linker() -> Result<()> {
    let (_, libs, major) = nightly_llvm()?;
    let prefix = home()?.join(".local/xkube-llvm");
    let marker = prefix.join("bpf-linker-llvm-major");
    let built_for = std::fs::read_to_string(&marker).ok();
    let works = output(Command::new("bpf-linker").arg("--version")).is_ok();
    if works && built_for.as_deref().map(str::trim) == Some(&major.to_string()) {
        return Ok(());
    }
    say(format!(
        "building bpf-linker against the nightly's LLVM {major} (about a minute)"
    ));
    let libdir = prefix.join("lib");
    std::fs::create_dir_all(&libdir).with_context(|| format!("creating {}", libdir.display()))?;
    for lib in &libs {
        let Some(name) = lib.file_name() else {
            continue;
        };
        symlink_force(lib, &libdir.join(name))?;
    }
    let versioned = libs
        .iter()
        .find(|l| {
            l.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .ok_or_else(|| anyhow!("no versioned libLLVM.so in the nightly sysroot"))?;
    symlink_force(versioned, &libdir.join("libLLVM.so"))?;
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))
    .context("building bpf-linker (needs network access to crates.io)")?;
    std::fs::write(&marker, format!("{major}\n"))
        .with_context(|| format!("writing {}", marker.display()))?;
    Ok(())
}

fn symlink_force(src: &Path, dst: &Path) -> Result<()> {
    match std::fs::remove_file(dst) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", dst.display())),
    }
    std::os::unix::fs::symlink(src, dst)
        .with_context(|| format!("linking {} -> {}", dst.display(), src.display()))
}

fn nextest() -> Result<()> {
    if output(Command::new("cargo").args(["nextest", "--version"])).is_ok() {
        return Ok(());
    }
    say("installing cargo-nextest (the test runner)");
    run(Command::new("cargo").args(["install", "cargo-nextest", "--locked"]))
}

/// The venv holding the official Python `kubernetes` client (a second real client in the
/// apiserver tests).
fn python_venv() -> Result<PathBuf> {
    Ok(home()?.join(".local/xkube-venv"))
}

fn python_client() -> Result<()> {
    let venv = python_venv()?;
    let python = venv.join("bin/python");
    if output(Command::new(&python).args(["-c", "import kubernetes"])).is_ok() {
        return Ok(());
    }
    say(format!(
        "installing the Python kubernetes client into {} (apiserver interoperability test)",
        venv.display()
    ));
    if !python.exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .context("creating the Python venv (python3 -m venv)")?;
    }
    run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "kubernetes",
    ]))
    .context("pip install kubernetes (needs PyPI)")
}

fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    say("mounting bpffs at /sys/fs/bpf (eBPF maps and links are pinned there)");
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

fn test(no_lint: bool, nextest_args: &[String]) -> Result<()> {
    let root = workspace_root();
    if !is_root() {
        bail!(
            "the test suite includes privileged eBPF and network-namespace tests: run it as root"
        );
    }
    if !no_lint {
        say("cargo fmt --check");
        run(cargo(&root).args(["fmt", "--all", "--check"]))
            .context("formatting differs: run `cargo fmt --all`")?;
        say("cargo clippy --all-targets -- -D warnings");
        run(cargo(&root).args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    }
    // The end-to-end tests run the workspace's binaries (`xkube cluster up`, xkubectl).
    say("cargo build (the binaries the end-to-end tests run)");
    run(cargo(&root).args(["build", "--bins"]))?;
    say("cargo nextest run (unit, integration and privileged tests)");
    run(cargo(&root)
        .args(["nextest", "run", "--profile", "ci", "--no-fail-fast"])
        .env("XKUBE_PYTHON", python_venv()?.join("bin/python"))
        .args(nextest_args))
}

fn demo() -> Result<()> {
    let root = workspace_root();
    if !is_root() {
        bail!("the demo builds network namespaces and loads eBPF programs: run it as root");
    }
    say("building xkube");
    run(cargo(&root).args(["build", "--quiet", "--package", "xkube"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let xkube = target.join("debug/xkube");
    run(Command::new(&xkube).arg("version"))?;
    say("xkube cluster up --name demo --nodes 3 (namespaces, control plane, 3 node agents)");
    run(Command::new(&xkube).args(["cluster", "up", "--name", "demo", "--nodes", "3"]))?;
    let kubeconfig = PathBuf::from("/var/lib/xkube/clusters/demo/control-plane/admin.kubeconfig");
    say("kubectl apply -f deploy/examples/web.yaml (3 agnhost pods + a NodePort Service)");
    run(Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["apply", "-f"])
        .arg(root.join("deploy/examples/web.yaml")))
    .context("kubectl (upstream, /usr/bin/kubectl) against the cluster")?;
    say("calling the Service through the eBPF proxy");
    run(Command::new(&xkube).args(["demo", "service", "--name", "demo"]))?;
    run(Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "nodes,pods,svc,endpoints", "-o", "wide"]))
}
