//! Builds `dataplane-ebpf/programs` for the BPF target with aya-build (nightly +
//! `-Z build-std=core` + bpf-linker, all installed by `cargo xtask setup`) and leaves the
//! object in `OUT_DIR`, where `src/ebpf/mod.rs` embeds it.

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .ancestors()
        .nth(2)
        .ok_or_else(|| anyhow!("workspace root above {manifest_dir}"))?;
    let programs = root.join("dataplane-ebpf/programs");
    let common = root.join("dataplane-ebpf/common");
    // aya-build watches the programs crate; the shared types change the object too.
    println!("cargo:rerun-if-changed={}", common.display());
    let programs = programs
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", programs.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "xkube-ebpf",
            root_dir: programs,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context(
        "building the eBPF programs failed; `cargo xtask setup` installs the nightly rust-src \
         and bpf-linker they need",
    )
}
