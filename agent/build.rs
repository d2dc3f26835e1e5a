//! Builds the eBPF objects (one per probe) with aya-build; the agent embeds them.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest)
        .parent()
        .ok_or_else(|| anyhow!("agent has no parent folder"))?
        .join("agent-ebpf");
    let root = root.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    println!("cargo:rerun-if-changed={root}/src");
    println!("cargo:rerun-if-changed={root}/common/src");
    println!("cargo:rerun-if-changed={root}/Cargo.toml");
    // aya-build runs cargo in the current folder; the eBPF crate is its own workspace.
    std::env::set_current_dir(root).context("enter agent-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "nodewatch-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
