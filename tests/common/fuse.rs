//! The fake slow GPU driver: a FUSE file system (tests/fixtures/slow_ioctl.py) whose files
//! answer every ioctl by sleeping for the milliseconds passed as its argument.
//!
//! A test that uses it first checks `have_tool_by(test, fuse::FUSEPY, fuse::FUSEPY_CHECK)`.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{TempDir, wait_for};

/// Debian's python3-fusepy installs `fusepy` for this interpreter only.
pub const PYTHON: &str = "/usr/bin/python3";
/// The fixture script.
pub const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/slow_ioctl.py"
);
/// `_IO('N', 1)`: no data, so the raw argument reaches the FUSE handler as is.
pub const SLOW_CMD: libc::c_ulong = 0x4e01;

/// What the fixture needs, as `cargo xtask setup` installs it (with fuse3).
pub const FUSEPY: &str = "python3-fusepy";
/// The shell command that finds [`FUSEPY`], for [`super::have_tool_by`].
pub const FUSEPY_CHECK: &str = "/usr/bin/python3 -c 'import fusepy'";

/// The fake driver, mounted at `dir/<name>`; unmounted and stopped on drop.
pub struct SlowFs {
    pub child: Child,
    pub mnt: PathBuf,
}

impl SlowFs {
    /// Mounts the fixture at `dir/<name>` (its log in `dir/<name>.log`), serving files
    /// `gpu0` and `other`, and waits until it is mounted.
    pub fn new(dir: &TempDir, name: &str) -> Self {
        Self::mount(dir, name, FIXTURE, &[], "gpu0")
    }

    /// Mounts the FUSE script `script` (run with `args` after the mount point) at
    /// `dir/<name>`, its log in `dir/<name>.log`, and waits until `inside` (a path under the
    /// mount point, "" for the mount point itself) is on the new file system.
    pub fn mount(dir: &TempDir, name: &str, script: &str, args: &[&str], inside: &str) -> Self {
        let mnt = dir.0.join(name);
        std::fs::create_dir_all(&mnt).unwrap();
        let child = Command::new(PYTHON)
            .arg(script)
            .arg(&mnt)
            .args(args)
            .stdout(Stdio::null())
            .stderr(File::create(dir.0.join(format!("{name}.log"))).unwrap())
            .spawn()
            .expect("start the FUSE fixture");
        let fs = Self { child, mnt };
        let parent = std::fs::metadata(dir.0.as_path()).unwrap();
        wait_for(Duration::from_secs(10), || {
            let m = std::fs::metadata(fs.mnt.join(inside)).ok()?;
            (m.dev() != parent.dev()).then_some(())
        })
        .expect("timed out: FUSE fixture mounted");
        fs
    }

    /// Opens one of the fixture's files for reading and writing.
    pub fn open(&self, name: &str) -> File {
        File::options()
            .read(true)
            .write(true)
            .open(self.mnt.join(name))
            .expect("open a file of the FUSE fixture")
    }
}

impl Drop for SlowFs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount")
            .arg("-u")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Holds one ioctl in the fake driver for `ms`; returns how long it took from here.
pub fn slow_ioctl(f: &File, ms: u64) -> Duration {
    let t = Instant::now();
    // SAFETY: an ioctl without data on an fd we own; the argument is a plain number.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), SLOW_CMD, ms as libc::c_ulong) };
    let took = t.elapsed();
    assert_eq!(rc, 0, "ioctl: {}", std::io::Error::last_os_error());
    took
}

/// `ioctl(fd, SLOW_CMD, ms)` without asserting, for threads that must reach a barrier: true
/// when the driver answered (0, or ENOTTY from a device without that command).
pub fn raw_slow_ioctl(fd: libc::c_int, ms: u64) -> bool {
    // SAFETY: an ioctl without data on an open fd; the argument is a plain number.
    let rc = unsafe { libc::ioctl(fd, SLOW_CMD, ms as libc::c_ulong) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTTY)
}
