//! Builds the eBPF objects (one `[[bin]]` per probe in agent-ebpf) and copies them into
//! `OUT_DIR`, where the agent embeds them.
//!
//! This is aya-build 0.2's `build_ebpf` done here, for one reason: aya-build replays every
//! line of the sub-build as a cargo warning, even when it succeeds. Here the output is kept
//! and shown only when the build fails. The command is the same: `rustup run nightly cargo
//! build --release --target bpfel-unknown-none -Z build-std=core` with bpf-linker's flags in
//! `CARGO_ENCODED_RUSTFLAGS` and a target dir of its own under `OUT_DIR`.

use std::{
    env,
    ffi::OsString,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

/// The eBPF crate, a workspace of its own in this folder beside `agent/`.
const CRATE_DIR: &str = "agent-ebpf";
const PACKAGE: &str = "nodewatch-ebpf";
/// The toolchain the eBPF crate builds with (`rustup run <it>`): it needs `-Z build-std`.
const TOOLCHAIN: &str = "nightly";
/// Set to 1 or true to skip the eBPF build, as with aya-build.
const SKIP: &str = "AYA_BUILD_SKIP";

fn main() {
    // The message alone: anyhow's Debug would add a backtrace where RUST_BACKTRACE is set.
    if let Err(e) = build() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn build() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={SKIP}");
    if let Some(v) = env::var_os(SKIP)
        && (v == "1" || v.eq_ignore_ascii_case("true"))
    {
        println!("cargo:warning={SKIP}={}; skipping eBPF build", v.display());
        return Ok(());
    }
    let manifest = env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = Path::new(&manifest)
        .parent()
        .ok_or_else(|| anyhow!("agent has no parent folder"))?
        .join(CRATE_DIR);
    // The whole crate: its sources, common/ (shared with userspace), Cargo.toml, Cargo.lock.
    println!("cargo:rerun-if-changed={}", root.display());
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);

    let endian = env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN not set")?;
    let target = match endian.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported endian={other}"),
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let arch = if arch.starts_with("riscv64") {
        "riscv64".to_string()
    } else {
        arch
    };

    // `rustup run nightly <program>`, or the current toolchain where rustup is missing.
    let rustup = find_on_path("rustup");
    if rustup.is_none() {
        println!(
            "cargo:warning=rustup not found on PATH; building eBPF with the current toolchain"
        );
    }
    let tool = |program: &str| match &rustup {
        Some(rustup) => {
            let mut c = Command::new(rustup);
            c.args(["run", TOOLCHAIN, program]);
            c
        }
        None => Command::new(program),
    };

    let mut cmd = tool("cargo");
    cmd.current_dir(&root).args([
        "build",
        "--package",
        PACKAGE,
        "--bins",
        "--message-format=json",
        "--release",
        "--target",
        target,
    ]);
    if use_build_std(&mut tool("rustc"))? {
        cmd.args(["-Z", "build-std=core"]);
    }
    cmd.args(["--features", ""]);
    // bpf-linker emits BTF; the cfg tells aya-ebpf the architecture it reads registers of.
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ]
    .join("\x1f");
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The outer build's compiler and wrapper are the stable toolchain's, not nightly's.
    cmd.env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    // Not OUT_DIR itself: the copied objects are named like the bins, and a separate folder
    // keeps this cargo from waiting on the outer one's lock.
    cmd.arg("--target-dir")
        .arg(out_dir.join("aya-build").join("target").join(PACKAGE));

    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut executables = Vec::new();
    let mut shown = Vec::new();
    for line in stdout.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            shown.push(line.to_string());
            continue;
        };
        match msg["reason"].as_str() {
            Some("compiler-artifact") => {
                if let (Some(name), Some(exe)) =
                    (msg["target"]["name"].as_str(), msg["executable"].as_str())
                {
                    executables.push((name.to_string(), PathBuf::from(exe)));
                }
            }
            Some("compiler-message") => {
                if let Some(r) = msg["message"]["rendered"].as_str() {
                    shown.push(r.trim_end().to_string());
                }
            }
            _ => {}
        }
    }
    if !out.status.success() {
        // Cargo shows a failed build script's stderr: cargo's progress, the compiler's
        // messages, then cargo's own errors.
        let cargo_err = String::from_utf8_lossy(&out.stderr);
        let (progress, errors) = match cargo_err.find("\nerror") {
            Some(i) => cargo_err.split_at(i + 1),
            None if cargo_err.starts_with("error") => ("", &*cargo_err),
            None => (&*cargo_err, ""),
        };
        let mut err = std::io::stderr().lock();
        err.write_all(progress.as_bytes())?;
        for s in &shown {
            writeln!(err, "{s}")?;
        }
        err.write_all(errors.as_bytes())?;
        bail!(
            "building the eBPF programs ({PACKAGE} in {}) failed ({}); its output is above",
            root.display(),
            out.status
        );
    }
    if executables.is_empty() {
        bail!("{cmd:?} built no eBPF object:\n{stdout}");
    }
    for (name, exe) in executables {
        let dst = out_dir.join(&name);
        std::fs::copy(&exe, &dst)
            .with_context(|| format!("copy {} to {}", exe.display(), dst.display()))?;
    }
    Ok(())
}

/// Whether to pass `-Z build-std=core`, as aya-build decides it: `RUSTC_BOOTSTRAP` when set
/// to 1, this package or -1, else whether `rustc` is a nightly.
fn use_build_std(rustc: &mut Command) -> anyhow::Result<bool> {
    match env::var_os("RUSTC_BOOTSTRAP") {
        Some(v) if v == "1" || v == PACKAGE => return Ok(true),
        Some(v) if v == "-1" => return Ok(false),
        _ => {}
    }
    let out = rustc
        .arg("-vV")
        .output()
        .with_context(|| format!("cannot start {rustc:?}"))?;
    if !out.status.success() {
        bail!(
            "{rustc:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let release = text
        .lines()
        .find_map(|l| l.strip_prefix("release: "))
        .ok_or_else(|| anyhow!("no release line in {rustc:?} output: {text}"))?;
    // e.g. `1.97.0-nightly`: the pre-release part names the channel.
    let pre = release.split_once('-').map_or("", |(_, pre)| pre);
    Ok(pre.split('.').next() == Some("nightly"))
}

/// The first `name` on `PATH` that is a file.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path: OsString = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
