//! `cargo xtask package`: a Debian package built with dpkg-deb from the release binary, the
//! systemd unit, the default config (a conffile), the dashboard, example configs and a man
//! page made from `--help`.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// Package name and the commands documented in the man page.
const NAME: &str = "nodewatch";
const SUBCOMMANDS: &[&str] = &["run", "check-config", "probes"];

const POSTINST: &str = r#"#!/bin/sh
# Enable the unit; start it only where systemd runs (not in chroots or image builds).
set -e
if [ "$1" = "configure" ]; then
    mkdir -p /var/lib/nodewatch
    chmod 0700 /var/lib/nodewatch
    if [ -x /usr/bin/deb-systemd-helper ]; then
        deb-systemd-helper enable nodewatch.service >/dev/null || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
        if [ -n "$2" ]; then
            deb-systemd-invoke try-restart nodewatch.service >/dev/null || true
        else
            deb-systemd-invoke start nodewatch.service >/dev/null || true
        fi
    fi
fi
exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = "remove" ]; then
    deb-systemd-invoke stop nodewatch.service >/dev/null || true
fi
exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
if [ "$1" = "remove" ] && [ -x /usr/bin/deb-systemd-helper ]; then
    deb-systemd-helper mask nodewatch.service >/dev/null || true
fi
if [ "$1" = "purge" ]; then
    if [ -x /usr/bin/deb-systemd-helper ]; then
        deb-systemd-helper purge nodewatch.service >/dev/null || true
        deb-systemd-helper unmask nodewatch.service >/dev/null || true
    fi
    rm -rf /var/lib/nodewatch
fi
exit 0
"#;

/// Builds `target/debian/nodewatch_<version>_<arch>.deb` from `binary`; returns its path.
pub fn build(root: &Path, binary: &Path) -> Result<PathBuf> {
    if !binary.is_file() {
        bail!("{} does not exist: build it first", binary.display());
    }
    let version = version(binary)?;
    let arch = String::from_utf8(
        Command::new("dpkg")
            .arg("--print-architecture")
            .output()
            .context("dpkg --print-architecture")?
            .stdout,
    )?
    .trim()
    .to_string();
    let out_dir = root.join("target/debian");
    let stage = out_dir.join(format!("{NAME}_{version}_{arch}"));
    let _ = fs::remove_dir_all(&stage);
    let put = |rel: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let path = stage.join(rel);
        fs::create_dir_all(path.parent().expect("a file has a folder"))?;
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let read = |rel: &str| -> Result<Vec<u8>> {
        fs::read(root.join(rel)).with_context(|| format!("reading {rel}"))
    };

    put("usr/bin/nodewatch", &fs::read(binary)?, 0o755)?;
    put(
        "lib/systemd/system/nodewatch.service",
        &read("packaging/nodewatch.service")?,
        0o644,
    )?;
    put(
        "etc/nodewatch/config.yaml",
        &read("packaging/config.yaml")?,
        0o644,
    )?;
    put(
        "etc/nodewatch/rules.d/local.yaml",
        &read("packaging/rules.d/local.yaml")?,
        0o644,
    )?;
    for (from, to) in [
        (
            "packaging/grafana/nodewatch.json",
            "usr/share/nodewatch/grafana/nodewatch.json",
        ),
        (
            "packaging/prometheus/prometheus.yml",
            "usr/share/nodewatch/prometheus/prometheus.yml",
        ),
        (
            "packaging/prometheus/alertmanager.yml",
            "usr/share/nodewatch/prometheus/alertmanager.yml",
        ),
        (
            "packaging/config.yaml",
            "usr/share/nodewatch/examples/config.yaml",
        ),
        (
            "alerts/default.yaml",
            "usr/share/nodewatch/examples/rules/default.yaml",
        ),
        (
            "alerts/model-servers.yaml",
            "usr/share/nodewatch/rules/model-servers.yaml",
        ),
        ("README.md", "usr/share/doc/nodewatch/README.md"),
    ] {
        put(to, &read(from)?, 0o644)?;
    }
    put(
        "usr/share/doc/nodewatch/copyright",
        copyright().as_bytes(),
        0o644,
    )?;
    put(
        "usr/share/man/man1/nodewatch.1.gz",
        &gzip(&man_page(binary, &version)?)?,
        0o644,
    )?;

    let size_kib = dir_size(&stage)? / 1024;
    put(
        "DEBIAN/control",
        format!(
            "Package: {NAME}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: nodewatch developers <nodewatch@example.invalid>\nInstalled-Size: {size_kib}\nDepends: libc6 (>= 2.34)\nRecommends: prometheus-node-exporter\nSection: admin\nPriority: optional\nHomepage: https://example.invalid/nodewatch\nDescription: health agent for GPU and AI-serving nodes\n nodewatch watches TCP retransmits, accept-queue overflows and GPU-driver\n ioctl stalls from the kernel with eBPF, adds heartbeats of local services\n and resource metrics, evaluates alert rules locally, fires webhooks and\n marks the node unhealthy for the load balancer within about a second.\n"
        )
        .as_bytes(),
        0o644,
    )?;
    put(
        "DEBIAN/conffiles",
        b"/etc/nodewatch/config.yaml\n/etc/nodewatch/rules.d/local.yaml\n",
        0o644,
    )?;
    put("DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    put("DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    put("DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;

    let deb = out_dir.join(format!("{NAME}_{version}_{arch}.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&deb)
        .status()
        .context("cannot start dpkg-deb")?;
    if !status.success() {
        bail!("dpkg-deb --build failed ({status})");
    }
    Ok(deb)
}

fn version(binary: &Path) -> Result<String> {
    let out = Command::new(binary).arg("--version").output()?;
    let text = String::from_utf8(out.stdout)?;
    text.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("`{} --version` printed {text:?}", binary.display()))
}

fn help(binary: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(binary).args(args).arg("--help").output()?;
    Ok(String::from_utf8(out.stdout)?)
}

/// A man page whose body is the binary's own `--help` texts, so it cannot drift from them.
fn man_page(binary: &Path, version: &str) -> Result<String> {
    let esc = |s: &str| {
        s.replace('\\', "\\e")
            .replace("\n.", "\n\\&.")
            .replace("\n'", "\n\\&'")
    };
    let mut page = format!(
        ".TH NODEWATCH 1 \"\" \"nodewatch {version}\" \"User Commands\"\n.SH NAME\nnodewatch \\- health agent for GPU and AI-serving nodes\n.SH SYNOPSIS\n.B nodewatch\n\\fICOMMAND\\fR [\\fIOPTIONS\\fR]\n.SH DESCRIPTION\n.nf\n{}\n.fi\n",
        esc(&help(binary, &[])?)
    );
    for cmd in SUBCOMMANDS {
        page.push_str(&format!(
            ".SH \"nodewatch {cmd}\"\n.nf\n{}\n.fi\n",
            esc(&help(binary, &[cmd])?)
        ));
    }
    page.push_str(".SH FILES\n.TP\n/etc/nodewatch/config.yaml\nconfiguration (see /usr/share/doc/nodewatch/README.md)\n.TP\n/var/lib/nodewatch\nstate\n.SH SEE ALSO\n/usr/share/doc/nodewatch/README.md\n");
    Ok(page)
}

fn gzip(text: &str) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start gzip")?;
    std::io::Write::write_all(&mut child.stdin.take().expect("piped"), text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout)
}

fn copyright() -> String {
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: nodewatch\n\nFiles: *\nCopyright: nodewatch developers\nLicense: MIT or Apache-2.0\n".into()
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
