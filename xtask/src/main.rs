//! `cargo xtask setup | run | test | bench`: what cargo alone cannot do — install the
//! toolchain pieces and Debian packages a fresh machine lacks, run the agent as root, run
//! every test, measure what the probes cost.

mod bench;
mod corpus;
mod fuzz;

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};

mod package;

/// Debian packages the build and the tests need: nft for the lossy-path tests, promtool
/// (from `prometheus`) to check `/metrics`, bpftool to see programs come and go, iproute2
/// for `ss` and namespaces, fuse3 and python3-fusepy for the fake slow GPU driver, bpftrace
/// for the benchmark's comparison, util-linux for `setpriv`, curl for humans,
/// prometheus-node-exporter for the footprint benchmark, e2fsprogs for the scoreboard's
/// filling disk (mkfs.ext4), gcc and libc6-dev for `cc`, which builds the benchmark's ioctl
/// loop and the tests' fake NVML library.
const DEB_PACKAGES: &[&str] = &[
    "nftables",
    "iproute2",
    "prometheus",
    "bpftool",
    "fuse3",
    "python3-fusepy",
    "bpftrace",
    "util-linux",
    "curl",
    "ca-certificates",
    "dpkg-dev",
    "haproxy",
    "prometheus-alertmanager",
    "man-db",
    "systemd",
    "prometheus-node-exporter",
    "e2fsprogs",
    "gcc",
    "libc6-dev",
    "openssl",
    "tinyproxy",
];
/// Seconds each fuzz target runs in `cargo xtask test`.
const FUZZ_SECONDS_IN_TEST: u64 = 5;
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_MAJOR: &str = "22";

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup   install what this machine lacks (Debian packages, rust-src, bpf-linker,
          cargo-fuzz, tracefs)
  run     setup, release build, then run the agent with the embedded defaults (as root);
          arguments after `--` go to `nodewatch run`
  test    setup, then cargo fmt --check, clippy -D warnings, every test, and the rule tests
  rules   the rule tests alone: alerts/tests/ with promtool and nodewatch test-rules
  corpus DIR
          builds nodewatch, then measures it on public rule files and rule tests under DIR
          (kept outside the repository): the share of the rules promtool accepts that
          `nodewatch check-rules` loads, and of the rule-test files where `nodewatch
          test-rules` gives promtool's verdict; lists every refused construct as file:line:col
  fuzz [SECONDS]
          every cargo-fuzz target in fuzz/ for SECONDS each (default 60), seeded from the
          repository's config, rules and rule tests; fails on a crash, hang or leak
  package release build, then target/debian/nodewatch_<version>_<arch>.deb
  bench   setup, release build, then every benchmark (as root; about 35 minutes): probe costs
          per ioctl, retransmit and listener packet against no probe and bpftrace, footprint
          next to node_exporter, the idle tick's own CPU against an earlier revision,
          /metrics latency, the fault-injection scoreboard, the same
          fault through Prometheus + Alertmanager, a 10-minute healthy run; rewrites
          BENCHMARKS.md";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("run") => run(&args[1..]),
        Some("test") => test(),
        Some("package") => package_release(),
        Some("rules") => rule_tests(),
        Some("corpus") => match args.get(1) {
            Some(dir) => nodewatch_debug().and_then(|bin| corpus::corpus(Path::new(dir), &bin)),
            None => {
                eprintln!("corpus takes the folder of rule files and rule tests\n\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        Some("bench") => bench::bench(),
        Some("fuzz") => match args.get(1).map(|s| s.parse::<u64>()) {
            None => setup().and_then(|()| fuzz::fuzz(60)),
            Some(Ok(secs)) if secs > 0 => setup().and_then(|()| fuzz::fuzz(secs)),
            Some(_) => {
                eprintln!("fuzz takes a number of seconds per target\n\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("unknown command `{other}`\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn step(what: &str) {
    println!("==> {what}");
}

/// Runs a command in the workspace root; fails naming the command.
fn sh<I, S>(program: &str, args: I) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(root_dir());
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{program}`"))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(&cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub(crate) fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup() -> Result<()> {
    step("setup: Debian packages");
    debian_packages().context("setup step `Debian packages` failed")?;
    step("setup: rust-src for the nightly toolchain (eBPF builds core from source)");
    rust_src().context("setup step `rust-src` failed")?;
    step(&format!(
        "setup: bpf-linker {BPF_LINKER_VERSION} on nightly's LLVM {LLVM_MAJOR}"
    ));
    bpf_linker().context("setup step `bpf-linker` failed")?;
    step("setup: cargo-fuzz (fuzz targets in fuzz/)");
    fuzz::setup().context("setup step `cargo-fuzz` failed")?;
    step("setup: tracefs");
    tracefs().context("setup step `tracefs` failed")?;
    step("setup: done");
    Ok(())
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEB_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output("dpkg-query", &["-W", "-f=${Status}", p])
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        println!("    all present: {}", DEB_PACKAGES.join(" "));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing {} and not root: run as root or `apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    println!("    installing {}", missing.join(" "));
    sh("apt-get", ["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot start apt-get")?;
    if !status.success() {
        bail!("`apt-get {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn rust_src() -> Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .context(
        "`rustup component list --toolchain nightly` failed: is the nightly toolchain installed?",
    )?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("    present");
        return Ok(());
    }
    sh(
        "rustup",
        ["component", "add", "rust-src", "--toolchain", "nightly"],
    )
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

fn bpf_linker() -> Result<()> {
    // Running it also proves its libLLVM link still resolves.
    if let Some(v) = output("bpf-linker", &["--version"]).or_else(|| {
        output(
            cargo_home().join("bin/bpf-linker").to_str()?,
            &["--version"],
        )
    }) && v.contains(BPF_LINKER_VERSION)
    {
        println!("    present: {}", v.trim());
        return Ok(());
    }
    let sysroot = output("rustc", &["+nightly", "--print", "sysroot"])
        .context("`rustc +nightly --print sysroot` failed")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(&format!("libLLVM.so.{LLVM_MAJOR}")))
        .with_context(|| format!("no libLLVM.so.{LLVM_MAJOR}* in {}", lib.display()))?;
    // bpf-linker links against nightly's own LLVM through a prefix holding both names; the
    // prefix stays, because the binary finds the library through it at run time.
    let prefix = cargo_home().join("nodewatch-llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in ["libLLVM.so", llvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&llvm), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    println!("    building bpf-linker (about a minute)");
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM_MAJOR}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .status()
        .context("cannot start cargo install")?;
    if !status.success() {
        bail!("`cargo install bpf-linker` failed ({status})");
    }
    Ok(())
}

fn tracefs() -> Result<()> {
    for p in [
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ] {
        if Path::new(p).is_dir() {
            println!("    mounted ({})", Path::new(p).parent().unwrap().display());
            return Ok(());
        }
    }
    if !is_root() {
        println!("    not mounted and not root: the agent mounts it when it starts as root");
        return Ok(());
    }
    sh("mount", ["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
}

fn run(extra: &[String]) -> Result<()> {
    setup()?;
    step("build: cargo build --release -p nodewatch");
    sh("cargo", ["build", "--release", "-p", "nodewatch"])?;
    if !is_root() {
        bail!("nodewatch loads eBPF programs: run `cargo xtask run` as root");
    }
    let bin = root_dir().join("target/release/nodewatch");
    let args: Vec<&String> = extra.iter().skip_while(|a| *a == "--").collect();
    step(&format!(
        "run: {} run {}",
        bin.display(),
        args.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    // exec: Ctrl-C and SIGTERM reach the agent itself, which detaches its programs.
    let err = std::os::unix::process::CommandExt::exec(Command::new(&bin).arg("run").args(args));
    Err(err).with_context(|| format!("cannot exec {}", bin.display()))
}

fn test() -> Result<()> {
    setup()?;
    if !is_root() {
        if env::var_os("CI").is_some() {
            bail!("CI is set but this is not root: the eBPF tests need root");
        }
        println!("warning: not root; tests that need the kernel will say SKIPPED");
    }
    step("test: cargo fmt --check");
    sh("cargo", ["fmt", "--all", "--check"])?;
    sh(
        "cargo",
        ["fmt", "--check", "--manifest-path", "agent-ebpf/Cargo.toml"],
    )?;
    sh(
        "cargo",
        ["fmt", "--check", "--manifest-path", "fuzz/Cargo.toml"],
    )?;
    step("test: cargo clippy --workspace --all-targets -- -D warnings");
    sh(
        "cargo",
        [
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    step("test: package the debug build for the packaging tests");
    sh("cargo", ["build", "-p", "nodewatch"])?;
    let deb = package::build(&root_dir(), &root_dir().join("target/debug/nodewatch"))
        .context("building the test package")?;
    step("test: cargo test --workspace (unit and integration, root-only included)");
    let status = Command::new("cargo")
        .args(["test", "--workspace", "--no-fail-fast"])
        .env("NODEWATCH_TEST_DEB", &deb)
        .current_dir(root_dir())
        .status()
        .context("cannot start cargo test")?;
    if !status.success() {
        bail!("`cargo test --workspace --no-fail-fast` failed ({status})");
    }
    step("test: rule tests (alerts/tests) with promtool and nodewatch test-rules, same verdicts");
    rule_tests()?;
    step("test: a short fuzzing run of every target");
    fuzz::fuzz(FUZZ_SECONDS_IN_TEST)?;
    step("test: all passed");
    Ok(())
}

fn package_release() -> Result<()> {
    step("build: cargo build --release -p nodewatch");
    sh("cargo", ["build", "--release", "-p", "nodewatch"])?;
    step("package: dpkg-deb");
    let deb = package::build(&root_dir(), &root_dir().join("target/release/nodewatch"))?;
    println!("    {}", deb.display());
    Ok(())
}

/// Runs a command in the workspace root; its exit status and what it wrote to stderr.
fn verdict(program: &str, args: &[&str], file: &Path) -> Result<(bool, String)> {
    let out = Command::new(program)
        .args(args)
        .arg(file)
        .current_dir(root_dir())
        .output()
        .with_context(|| format!("cannot start `{program}`"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Builds the debug binary and returns its path.
fn nodewatch_debug() -> Result<String> {
    sh("cargo", ["build", "--quiet", "-p", "nodewatch"])?;
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root_dir().join("target"));
    let bin = target.join("debug/nodewatch");
    Ok(bin
        .to_str()
        .context("target path is not UTF-8")?
        .to_string())
}

/// Every rule test file in `alerts/tests/` must pass under both `promtool test rules` and
/// `nodewatch test-rules`; every one in `alerts/tests/failing/` must fail under both. The two
/// reports are compared too: they should read the same.
fn rule_tests() -> Result<()> {
    let bin = nodewatch_debug()?;
    let bin = bin.as_str();
    let tests = root_dir().join("alerts/tests");
    let mut cases: Vec<(PathBuf, bool)> =
        yaml_files(&tests)?.into_iter().map(|f| (f, true)).collect();
    cases.extend(
        yaml_files(&tests.join("failing"))?
            .into_iter()
            .map(|f| (f, false)),
    );
    let mut bad = Vec::new();
    for (file, should_pass) in &cases {
        let (prom_ok, prom_err) = verdict("promtool", &["test", "rules"], file)?;
        let (ours_ok, ours_err) = verdict(bin, &["test-rules"], file)?;
        let name = file.strip_prefix(root_dir()).unwrap_or(file).display();
        let word = |ok: bool| if ok { "pass" } else { "FAIL" };
        println!(
            "    {name:<52} promtool {}  nodewatch {}  (expected {})",
            word(prom_ok),
            word(ours_ok),
            word(*should_pass)
        );
        if prom_ok != *should_pass || ours_ok != *should_pass {
            bad.push(format!(
                "{name}: promtool {}, nodewatch {}, expected {}\n--- promtool ---\n{prom_err}\n--- nodewatch ---\n{ours_err}",
                word(prom_ok),
                word(ours_ok),
                word(*should_pass)
            ));
        } else if prom_err != ours_err {
            println!(
                "      note: the two reports differ\n--- promtool ---\n{prom_err}\n--- nodewatch ---\n{ours_err}"
            );
        }
    }
    if !bad.is_empty() {
        bail!("rule tests disagree:\n{}", bad.join("\n"));
    }
    Ok(())
}
