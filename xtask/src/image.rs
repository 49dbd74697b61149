//! `cargo xtask image`: the static `xkube` binary of the container image and the image's build
//! context.
//!
//! [`static_binary`] builds `xkube` for `x86_64-unknown-linux-musl` (release) and checks from
//! its ELF headers that it needs no dynamic loader and no shared library. [`image`] copies it
//! next to `deploy/image/Dockerfile` into a build-context directory and prints the
//! `docker build` command (or runs it with `--docker` when a Docker daemon answers).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{apt_install, cargo, is_root, output, run, say, workspace_root};

/// The Rust target of the image's binary.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The image's repository name; the tag is the workspace version.
pub const IMAGE: &str = "xkube/xkube";

/// `cargo xtask image` flags.
#[derive(clap::Args)]
pub struct ImageArgs {
    /// Build-context directory to write (default: <target dir>/image).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also run `docker build` (needs a reachable Docker daemon; none is started).
    #[arg(long)]
    docker: bool,
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace root, where cargo
/// runs) or `<root>/target`.
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// What the musl build needs from Debian: ring's build script compiles C and assembly for
/// the target, and cc-rs finds no musl C compiler without `musl-gcc`.
const MUSL_APT_PACKAGES: &[(&str, &str)] = &[(
    "musl-tools",
    "musl-gcc: ring's C code for the static musl build",
)];

/// Builds `xkube` for [`MUSL_TARGET`] in release mode and checks that the result is statically
/// linked; first installs what is missing (the Rust target through rustup, `musl-tools`
/// through apt, which needs root). Returns the binary's path
/// (`<target dir>/x86_64-unknown-linux-musl/release/xkube`).
pub fn static_binary(root: &Path) -> Result<PathBuf> {
    musl_target(root)?;
    apt_install(MUSL_APT_PACKAGES, is_root())?;
    say(format!(
        "cargo build --release --target {MUSL_TARGET} --package xkube --bin xkube (the \
         image's static binary)"
    ));
    let started = Instant::now();
    run(cargo(root).args([
        "build",
        "--release",
        "--target",
        MUSL_TARGET,
        "--package",
        "xkube",
        "--bin",
        "xkube",
    ]))?;
    let bin = target_dir(root).join(MUSL_TARGET).join("release/xkube");
    let elf = std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    match linkage(&elf).with_context(|| format!("reading the ELF headers of {}", bin.display()))? {
        Linkage::Static => {}
        Linkage::Dynamic {
            interpreter,
            needed,
        } => bail!(
            "{} is not static: interpreter {interpreter:?}, {needed} shared libraries needed",
            bin.display()
        ),
    }
    say(format!(
        "{} is statically linked ({:.1} MiB, cargo took {:.0} s)",
        bin.display(),
        elf.len() as f64 / (1024.0 * 1024.0),
        started.elapsed().as_secs_f64()
    ));
    Ok(bin)
}

/// Adds the musl target to the active toolchain unless it is installed.
fn musl_target(root: &Path) -> Result<()> {
    // In the workspace root, so that rustup answers for the toolchain cargo will use there.
    let installed = output(
        Command::new("rustup")
            .args(["target", "list", "--installed"])
            .current_dir(root),
    )
    .context("rustup is needed to add the musl target")?;
    if installed.lines().any(|l| l.trim() == MUSL_TARGET) {
        return Ok(());
    }
    say(format!(
        "rustup target add {MUSL_TARGET} (Rust's standard library for static binaries)"
    ));
    run(Command::new("rustup")
        .args(["target", "add", MUSL_TARGET])
        .current_dir(root))
}

/// `cargo xtask image`: the static binary, a build context, and the `docker build` command.
pub fn image(args: &ImageArgs) -> Result<()> {
    let root = workspace_root();
    let bin = static_binary(&root)?;
    // Run it here as the image will: no loader, no libc from the host.
    let version = env!("CARGO_PKG_VERSION");
    let says = output(Command::new(&bin).arg("version"))?;
    if !says.starts_with(&format!("xkube {version} ")) {
        bail!(
            "{} version printed {:?}, expected xkube {version}",
            bin.display(),
            says.trim()
        );
    }
    say(format!("{} version: {}", bin.display(), says.trim()));
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| target_dir(&root).join("image"));
    write_context(&root.join("deploy/image/Dockerfile"), &bin, &out)?;
    say(format!(
        "build context {}: Dockerfile, xkube, .dockerignore",
        out.display()
    ));
    let tag = format!("{IMAGE}:{version}");
    let build_args = [
        "build".to_owned(),
        "--build-arg".to_owned(),
        format!("VERSION={version}"),
        "-t".to_owned(),
        tag.clone(),
        out.display().to_string(),
    ];
    if !args.docker {
        say("build the image with:");
        println!("docker {}", build_args.join(" "));
        return Ok(());
    }
    output(Command::new("docker").arg("version")).context(
        "--docker needs a reachable Docker daemon (`docker version` failed); this command \
         does not start one",
    )?;
    say(format!("docker {}", build_args.join(" ")));
    run(Command::new("docker").args(&build_args))?;
    say(format!("image {tag} built"));
    Ok(())
}

/// Writes the build context: the Dockerfile, the binary as `xkube`, and a `.dockerignore`
/// that keeps anything else in `out` out of the context. Running it again replaces them.
pub fn write_context(dockerfile: &Path, bin: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    copy_replace(dockerfile, &out.join("Dockerfile"))?;
    copy_replace(bin, &out.join("xkube"))?;
    let ignore = out.join(".dockerignore");
    std::fs::write(&ignore, "*\n!Dockerfile\n!xkube\n")
        .with_context(|| format!("writing {}", ignore.display()))
}

/// Copies `src` to `dst` through a temporary file and a rename, so that a `dst` being
/// executed or read is replaced rather than rewritten in place. Permissions are copied.
fn copy_replace(src: &Path, dst: &Path) -> Result<()> {
    let name = dst
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", dst.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dst.with_file_name(tmp_name);
    std::fs::copy(src, &tmp)
        .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
    std::fs::rename(&tmp, dst)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dst.display()))
}

/// How an ELF executable is linked, from its program headers.
#[derive(Debug, PartialEq, Eq)]
pub enum Linkage {
    /// No program interpreter and no shared library (static, or static-pie).
    Static,
    /// A program interpreter (`PT_INTERP`) or shared libraries (`DT_NEEDED` entries).
    Dynamic {
        interpreter: Option<String>,
        needed: usize,
    },
}

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;

/// `N` bytes of `elf` at `at`.
fn bytes<const N: usize>(elf: &[u8], at: usize) -> Result<[u8; N]> {
    at.checked_add(N)
        .and_then(|end| elf.get(at..end))
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow!("truncated ELF file: {N} bytes at offset {at}"))
}

fn u16_at(elf: &[u8], at: usize) -> Result<u16> {
    bytes(elf, at).map(u16::from_le_bytes)
}

fn u32_at(elf: &[u8], at: usize) -> Result<u32> {
    bytes(elf, at).map(u32::from_le_bytes)
}

fn u64_at(elf: &[u8], at: usize) -> Result<u64> {
    bytes(elf, at).map(u64::from_le_bytes)
}

fn usize_at(elf: &[u8], at: usize) -> Result<usize> {
    let v = u64_at(elf, at)?;
    usize::try_from(v).map_err(|_| anyhow!("ELF offset {v} does not fit in memory"))
}

/// Reads the linkage of a 64-bit little-endian ELF file (x86_64): a static(-pie) executable
/// has no `PT_INTERP` segment and no `DT_NEEDED` entry in its `PT_DYNAMIC` segment.
pub fn linkage(elf: &[u8]) -> Result<Linkage> {
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        bail!("not an ELF file");
    }
    // e_ident[EI_CLASS] = ELFCLASS64, e_ident[EI_DATA] = ELFDATA2LSB.
    if elf.get(4..6) != Some([2u8, 1].as_slice()) {
        bail!("not a 64-bit little-endian ELF file");
    }
    let phoff = usize_at(elf, 0x20)?;
    let phentsize = usize::from(u16_at(elf, 0x36)?);
    let phnum = usize::from(u16_at(elf, 0x38)?);
    if phentsize < 56 {
        bail!("program header entries of {phentsize} bytes (ELF64 needs 56)");
    }
    phnum
        .checked_mul(phentsize)
        .and_then(|len| phoff.checked_add(len))
        .filter(|end| *end <= elf.len())
        .ok_or_else(|| anyhow!("program header table beyond the end of the file"))?;
    let mut interpreter = None;
    let mut needed = 0;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = u32_at(elf, ph)?;
        if p_type != PT_INTERP && p_type != PT_DYNAMIC {
            continue;
        }
        let offset = usize_at(elf, ph + 8)?;
        let size = usize_at(elf, ph + 32)?;
        let segment = offset
            .checked_add(size)
            .and_then(|end| elf.get(offset..end))
            .ok_or_else(|| anyhow!("segment at {offset} (+{size}) beyond the end of the file"))?;
        if p_type == PT_INTERP {
            let path = segment.split(|b| *b == 0).next().unwrap_or_default();
            interpreter = Some(String::from_utf8_lossy(path).into_owned());
        } else {
            // Elf64_Dyn: d_tag, d_val; the array ends at DT_NULL.
            for entry in segment.chunks_exact(16) {
                let tag = u64_at(entry, 0)?;
                if tag == DT_NULL {
                    break;
                }
                if tag == DT_NEEDED {
                    needed += 1;
                }
            }
        }
    }
    if interpreter.is_none() && needed == 0 {
        Ok(Linkage::Static)
    } else {
        Ok(Linkage::Dynamic {
            interpreter,
            needed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::TempDir;

    const PT_LOAD: u32 = 1;

    /// A minimal ELF64 file: the header, one program header per segment, then the segments'
    /// bytes.
    fn elf(segments: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // ELFCLASS64
        f[5] = 1; // little-endian
        f[6] = 1; // EV_CURRENT
        f[0x10..0x12].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN
        f[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        let phnum = u16::try_from(segments.len()).expect("few segments");
        f[0x38..0x3a].copy_from_slice(&phnum.to_le_bytes());
        let mut data_at = 64 + 56 * segments.len();
        let mut data = Vec::new();
        for (p_type, bytes) in segments {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&p_type.to_le_bytes());
            ph[8..16].copy_from_slice(&(data_at as u64).to_le_bytes());
            ph[32..40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            ph[40..48].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            f.extend_from_slice(&ph);
            data.extend_from_slice(bytes);
            data_at += bytes.len();
        }
        f.extend_from_slice(&data);
        f
    }

    fn dynamic(entries: &[(u64, u64)]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|(tag, val)| tag.to_le_bytes().into_iter().chain(val.to_le_bytes()))
            .collect()
    }

    #[test]
    fn an_executable_without_interpreter_or_needed_libraries_is_static() {
        let plain = elf(&[(PT_LOAD, vec![0; 32])]);
        assert_eq!(linkage(&plain).expect("parses"), Linkage::Static);
        // static-pie: a dynamic section for self-relocation, no DT_NEEDED.
        const DT_RELA: u64 = 7;
        let pie = elf(&[
            (PT_LOAD, vec![0; 32]),
            (PT_DYNAMIC, dynamic(&[(DT_RELA, 0x1000), (DT_NULL, 0)])),
        ]);
        assert_eq!(linkage(&pie).expect("parses"), Linkage::Static);
    }

    #[test]
    fn an_interpreter_or_a_needed_library_makes_it_dynamic() {
        let interp = elf(&[
            (PT_INTERP, b"/lib/ld-musl-x86_64.so.1\0".to_vec()),
            (PT_LOAD, vec![0; 32]),
        ]);
        assert_eq!(
            linkage(&interp).expect("parses"),
            Linkage::Dynamic {
                interpreter: Some("/lib/ld-musl-x86_64.so.1".into()),
                needed: 0
            }
        );
        // Entries after DT_NULL do not count.
        let needs = elf(&[(
            PT_DYNAMIC,
            dynamic(&[(DT_NEEDED, 1), (DT_NEEDED, 9), (DT_NULL, 0), (DT_NEEDED, 5)]),
        )]);
        assert_eq!(
            linkage(&needs).expect("parses"),
            Linkage::Dynamic {
                interpreter: None,
                needed: 2
            }
        );
    }

    #[test]
    fn this_test_binary_is_dynamically_linked_against_glibc() {
        // Tests build for the host's gnu target: the loader is ld-linux, libc is needed.
        let exe = std::env::current_exe().expect("current_exe");
        let data = std::fs::read(&exe).expect("read the test binary");
        match linkage(&data).expect("parses") {
            Linkage::Dynamic {
                interpreter: Some(i),
                needed,
            } => {
                assert!(i.contains("ld-linux"), "interpreter {i}");
                assert!(needed > 0, "no DT_NEEDED entries");
            }
            other => panic!("{} reads as {other:?}", exe.display()),
        }
    }

    #[test]
    fn non_elf_and_truncated_files_are_errors() {
        assert!(linkage(b"#!/bin/sh\necho hi\n").is_err());
        let mut cut = elf(&[(PT_LOAD, vec![0; 32])]);
        cut.truncate(80); // inside the program header
        assert!(linkage(&cut).is_err());
        let mut beyond = elf(&[(PT_INTERP, b"/lib/ld.so\0".to_vec())]);
        beyond.truncate(64 + 56 + 4); // the segment's bytes are cut off
        assert!(linkage(&beyond).is_err());
    }

    #[test]
    fn the_build_context_holds_dockerfile_binary_and_an_ignore_file_and_can_be_rewritten() {
        let dir = TempDir::new("image-context");
        let dockerfile = dir.path().join("Dockerfile.src");
        let bin = dir.path().join("xkube.bin");
        std::fs::write(&dockerfile, "FROM scratch\n").expect("write");
        std::fs::write(&bin, "binary v1").expect("write");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let out = dir.path().join("ctx");
        write_context(&dockerfile, &bin, &out).expect("first write");
        std::fs::write(&bin, "binary v2").expect("write");
        write_context(&dockerfile, &bin, &out).expect("second write");
        let read = |n: &str| std::fs::read_to_string(out.join(n)).expect(n);
        assert_eq!(read("Dockerfile"), "FROM scratch\n");
        assert_eq!(read("xkube"), "binary v2");
        assert_eq!(read(".dockerignore"), "*\n!Dockerfile\n!xkube\n");
        let mode = std::fs::metadata(out.join("xkube"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let mut names: Vec<_> = std::fs::read_dir(&out)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        assert_eq!(names, [".dockerignore", "Dockerfile", "xkube"]);
    }

    #[test]
    fn the_dockerfile_copies_the_binary_the_context_provides() {
        let root = workspace_root();
        let text = std::fs::read_to_string(root.join("deploy/image/Dockerfile")).expect("read");
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert_eq!(lines.first(), Some(&"FROM scratch"));
        assert!(lines.contains(&"COPY xkube /usr/local/bin/xkube"));
        assert!(lines.contains(&r#"ENTRYPOINT ["/usr/local/bin/xkube"]"#));
    }
}
