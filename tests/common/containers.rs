//! A container as a runtime builds one, where no runtime can start here: a network namespace
//! of its own plus a cgroup v2 folder named as docker or containerd name theirs
//! (`docker-<64 hex>.scope`, `.../kubepods-besteffort-pod<uid>.slice/cri-containerd-<64 hex>.scope`),
//! with a process kept in both (what `/proc/<pid>/net/tcp` is read through).
//!
//! Sockets belong to the cgroup of the process that creates them, so [`FakeContainer::inside`]
//! moves this whole test process into the container's cgroup for the call and runs the
//! closure on a thread in its namespace. Tests that use it hold [`serial`] so no other test of
//! the binary creates sockets or processes meanwhile.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
};

use super::Netns;

static SERIAL: Mutex<()> = Mutex::new(());

/// Held by each test that moves the process between cgroups.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The cgroup v2 mount point.
pub fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| PathBuf::from(pre.split_whitespace().nth(4).unwrap()))
        })
        .expect("no cgroup2 mount")
}

/// This process's cgroup v2 folder.
fn own_cgroup(root: &Path) -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("no cgroup v2 line in /proc/self/cgroup");
    root.join(rel.trim_start_matches('/'))
}

fn move_to(dir: &Path, pid: u32) {
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
        .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", dir.display()));
}

/// 64 hex digits, different per test process and tag.
pub fn container_id(tag: &str) -> String {
    let seed = format!(
        "{tag}{}{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    );
    let mut h: u64 = 0xcbf29ce484222325;
    let mut out = String::new();
    for round in 0..4u64 {
        for b in seed.bytes().chain(round.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
        }
        out.push_str(&format!("{h:016x}"));
    }
    out
}

pub struct FakeContainer {
    /// The full id; the `container` label is its first 12 digits.
    pub id: String,
    /// The container's cgroup folder.
    pub dir: PathBuf,
    /// Folders to remove on drop, deepest first.
    made: Vec<PathBuf>,
    pub ns: Netns,
    keeper: Option<Child>,
    home: PathBuf,
}

impl FakeContainer {
    /// A docker container (systemd cgroup driver): `<root>/nw-test-<pid>.slice/docker-<id>.scope`.
    pub fn docker(tag: &str) -> Self {
        let id = container_id(tag);
        Self::build(tag, &[format!("docker-{id}.scope")], id)
    }

    /// A Kubernetes pod's container under containerd (systemd driver), pod `uid`:
    /// `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid with _>.slice/cri-containerd-<id>.scope`.
    pub fn kubernetes(tag: &str, uid: &str) -> Self {
        let id = container_id(tag);
        let u = uid.replace('-', "_");
        Self::build(
            tag,
            &[
                "kubepods.slice".into(),
                "kubepods-besteffort.slice".into(),
                format!("kubepods-besteffort-pod{u}.slice"),
                format!("cri-containerd-{id}.scope"),
            ],
            id,
        )
    }

    fn build(tag: &str, path: &[String], id: String) -> Self {
        let root = cgroup2_root();
        let home = own_cgroup(&root);
        let mut dir = root.join(format!("nw-test-{tag}-{}.slice", std::process::id()));
        let mut made = vec![dir.clone()];
        for p in path {
            dir = dir.join(p);
            made.push(dir.clone());
        }
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        made.reverse();
        let mut c = Self {
            id,
            dir,
            made,
            ns: Netns::create(tag),
            keeper: None,
            home,
        };
        // The process the agent reads the namespace's sockets through.
        let keeper = c.inside(|| {
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep")
        });
        c.keeper = Some(keeper);
        c
    }

    /// The `container` label.
    pub fn label(&self) -> &str {
        &self.id[..12]
    }

    /// Runs `f` with this process in the container's cgroup, on a thread in its network
    /// namespace: sockets and processes made in `f` belong to the container.
    pub fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        move_to(&self.dir, std::process::id());
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.ns.run(f)));
        move_to(&self.home, std::process::id());
        out.unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for FakeContainer {
    fn drop(&mut self) {
        if let Some(mut k) = self.keeper.take() {
            let _ = k.kill();
            let _ = k.wait();
        }
        for d in &self.made {
            let _ = std::fs::remove_dir(d);
        }
    }
}
