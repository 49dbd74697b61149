//! Checks of `deploy/systemd/` (compiled for tests only): `systemd-analyze verify` on each unit
//! with the built `xkube` in place of `/usr/local/bin/xkube`, the wiring between a unit and its
//! env file, every flag of the env files against the built binary, and the sysusers file.
//!
//! The binary is `$XKUBE_BIN`, else `target/<profile>/xkube` next to this test (`cargo xtask
//! test` and CI run `cargo build --bins` first). Without it, or without `systemd-analyze` and
//! `systemd-sysusers` (Debian package `systemd`), the tests fail: they never skip.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::workspace_root;

/// A directory under the system's temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(what: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("xtask-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A unit of deploy/systemd and the `xkube` subcommand it runs.
struct Unit {
    /// `<name>.service` and `<name>.env`.
    name: &'static str,
    command: &'static str,
    /// The env file's variable holding the flags.
    args_var: &'static str,
}

const UNITS: [Unit; 2] = [
    Unit {
        name: "xkube-server",
        command: "server",
        args_var: "XKUBE_SERVER_ARGS",
    },
    Unit {
        name: "xkube-agent",
        command: "agent",
        args_var: "XKUBE_AGENT_ARGS",
    },
];

/// Where the units expect the binary.
const INSTALLED: &str = "/usr/local/bin/xkube";

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn systemd_file(name: &str) -> PathBuf {
    workspace_root().join("deploy/systemd").join(name)
}

fn xkube_bin() -> PathBuf {
    let path = match std::env::var_os("XKUBE_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            // target/<profile>/deps/xtask-<hash> -> target/<profile>/xkube
            let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
            exe.parent()
                .and_then(Path::parent)
                .map(|dir| dir.join("xkube"))
                .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()))
        }
    };
    assert!(
        path.is_file(),
        "{} missing: build the binaries first (`cargo build --bins`; `cargo xtask test` does) \
         or point XKUBE_BIN at one",
        path.display()
    );
    std::fs::canonicalize(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A unit file's sections and their `Key=value` lines, in order (systemd.syntax(7): `#` and
/// `;` comments, a trailing backslash continues the line). Panics on anything else.
fn parse_unit(text: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut pending = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';'])) {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont.trim_end());
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let line = std::mem::take(&mut pending);
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.entry(name.to_owned()).or_default();
            current = Some(name.to_owned());
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not `Key=value`: {raw:?}", i + 1));
        let section = current
            .as_ref()
            .unwrap_or_else(|| panic!("line {}: outside a [section]", i + 1));
        sections
            .entry(section.clone())
            .or_default()
            .push((key.trim().to_owned(), value.trim().to_owned()));
    }
    assert!(
        pending.is_empty(),
        "the last line continues with a backslash"
    );
    sections
}

/// The values of `key` in `[section]`.
fn values<'a>(
    unit: &'a BTreeMap<String, Vec<(String, String)>>,
    section: &str,
    key: &str,
) -> Vec<&'a str> {
    unit.get(section)
        .map(|kv| {
            kv.iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// The one value of `key` in `[section]`.
fn value<'a>(
    unit: &'a BTreeMap<String, Vec<(String, String)>>,
    section: &str,
    key: &str,
) -> &'a str {
    match values(unit, section, key).as_slice() {
        [v] => v,
        other => panic!("[{section}] {key}= should appear once, found {other:?}"),
    }
}

/// The assignments of an EnvironmentFile= (`KEY=VALUE`, `#`/`;` comments, one pair of quotes
/// around the value removed). Panics on anything else.
fn parse_env(text: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not `KEY=VALUE`: {raw:?}", i + 1));
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "line {}: bad variable name {key:?}",
            i + 1
        );
        let value = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        assert!(
            !value.contains(['"', '\'', '$', '\\']),
            "line {}: keep values free of quotes, `$` and backslashes: {raw:?}",
            i + 1
        );
        vars.insert(key.to_owned(), value.to_owned());
    }
    vars
}

/// The long flags (`--name`) written anywhere in `text`, comments included.
fn long_flags(text: &str) -> BTreeSet<String> {
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '-';
    let mut flags = BTreeSet::new();
    for (at, _) in text.match_indices("--") {
        if text[..at].chars().next_back().is_some_and(name_char) {
            continue; // inside a word such as `a--b`, or the second half of `---`
        }
        let name: String = text[at + 2..]
            .chars()
            .take_while(|c| name_char(*c))
            .collect();
        if name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            flags.insert(format!("--{name}"));
        }
    }
    flags
}

fn help(bin: &Path, command: &str) -> String {
    let out = Command::new(bin)
        .args([command, "--help"])
        .output()
        .unwrap_or_else(|e| panic!("running {} {command} --help: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} {command} --help failed",
        bin.display()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn parsers_read_units_env_files_and_flags() {
    let unit = parse_unit("# c\n[Unit]\nA=1\n; c\n[Service]\nB=x \\\n  y\nB=2\n");
    assert_eq!(value(&unit, "Unit", "A"), "1");
    assert_eq!(values(&unit, "Service", "B"), ["x y", "2"]);
    let env = parse_env("# c\nA=\"--x 1 --y\"\nB='q'\nC=plain\n");
    assert_eq!(env["A"], "--x 1 --y");
    assert_eq!(env["B"], "q");
    assert_eq!(env["C"], "plain");
    let flags = long_flags("# --data-dir, (--node-ip) a--b --- -v `--help`\nX=\"--cgroup-root x\"");
    let want: BTreeSet<String> = ["--data-dir", "--node-ip", "--help", "--cgroup-root"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(flags, want);
}

#[test]
#[should_panic(expected = "not `KEY=VALUE`")]
fn env_parser_rejects_lines_without_assignment() {
    parse_env("export\n");
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let bin = xkube_bin();
    let dir = TempDir::new("units");
    for unit in &UNITS {
        let file = format!("{}.service", unit.name);
        let text = read(&systemd_file(&file));
        assert!(text.contains(INSTALLED), "{file} does not run {INSTALLED}");
        // verify checks that ExecStart= names an executable: use the built one.
        let copy = dir.path().join(&file);
        std::fs::write(&copy, text.replace(INSTALLED, &bin.display().to_string()))
            .unwrap_or_else(|e| panic!("writing {}: {e}", copy.display()));
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&copy)
            .output()
            .unwrap_or_else(|e| {
                panic!("systemd-analyze (Debian package systemd) is needed for this test: {e}")
            });
        // verify exits 0 after unknown keys and unparsable values; it prints them.
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let about_it: Vec<&str> = text.lines().filter(|l| l.contains(&file)).collect();
        assert!(
            out.status.success() && about_it.is_empty(),
            "systemd-analyze verify {file}: {}\n{text}",
            out.status
        );
    }
}

#[test]
fn units_run_xkube_with_the_flags_of_their_env_file() {
    for unit in &UNITS {
        let file = format!("{}.service", unit.name);
        let parsed = parse_unit(&read(&systemd_file(&file)));
        assert_eq!(
            value(&parsed, "Service", "ExecStart"),
            format!("{INSTALLED} {} ${}", unit.command, unit.args_var),
            "{file}: ExecStart (an unbraced $VAR is split into words)"
        );
        assert_eq!(
            value(&parsed, "Service", "EnvironmentFile"),
            format!("/etc/xkube/{}.env", unit.name),
            "{file}"
        );
        assert_eq!(value(&parsed, "Service", "Restart"), "always", "{file}");
        assert_eq!(
            value(&parsed, "Install", "WantedBy"),
            "multi-user.target",
            "{file}"
        );
        let env = parse_env(&read(&systemd_file(&format!("{}.env", unit.name))));
        assert!(
            env.get(unit.args_var).is_some_and(|v| !v.trim().is_empty()),
            "{}.env does not set {}",
            unit.name,
            unit.args_var
        );
    }
}

#[test]
fn env_file_flags_are_accepted_by_the_built_xkube() {
    let bin = xkube_bin();
    for unit in &UNITS {
        let file = format!("{}.env", unit.name);
        let text = read(&systemd_file(&file));
        let env = parse_env(&text);
        // clap rejects an unknown flag or an unparsable value before it gets to --help.
        let args: Vec<&str> = env[unit.args_var].split_whitespace().collect();
        let out = Command::new(&bin)
            .arg(unit.command)
            .args(&args)
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
        assert!(
            out.status.success(),
            "xkube {} {} --help: {}",
            unit.command,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        // Flags in the comments (examples, explanations) must exist as well.
        let known = long_flags(&help(&bin, unit.command));
        let unknown: Vec<String> = long_flags(&text).difference(&known).cloned().collect();
        assert!(
            unknown.is_empty(),
            "{file} mentions flags that `xkube {} --help` does not list: {unknown:?}",
            unit.command
        );
    }
}

#[test]
fn server_data_dir_is_the_state_directory_of_its_user() {
    let unit = parse_unit(&read(&systemd_file("xkube-server.service")));
    let env = parse_env(&read(&systemd_file("xkube-server.env")));
    let args: Vec<&str> = env["XKUBE_SERVER_ARGS"].split_whitespace().collect();
    let data_dir = args
        .windows(2)
        .find(|w| w[0] == "--data-dir")
        .map(|w| w[1])
        .expect("xkube-server.env sets --data-dir");
    assert_eq!(
        format!("/var/lib/{}", value(&unit, "Service", "StateDirectory")),
        data_dir
    );
    assert_ne!(value(&unit, "Service", "User"), "root");
}

#[test]
fn sysusers_file_creates_the_server_user() {
    let unit = parse_unit(&read(&systemd_file("xkube-server.service")));
    let user = value(&unit, "Service", "User");
    let root = TempDir::new("sysusers");
    let etc = root.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap_or_else(|e| panic!("{}: {e}", etc.display()));
    let out = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(systemd_file("xkube.sysusers"))
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-sysusers (Debian package systemd) is needed for this test: {e}")
        });
    assert!(
        out.status.success(),
        "systemd-sysusers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = read(&etc.join("passwd"));
    let group = read(&etc.join("group"));
    assert!(
        passwd.lines().any(|l| l.starts_with(&format!("{user}:"))),
        "no user {user} in {passwd}"
    );
    assert!(
        group.lines().any(|l| l.starts_with(&format!("{user}:"))),
        "no group {user} in {group}"
    );
}
