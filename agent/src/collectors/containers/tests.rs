//! [`Containers`] against a fixture cgroup tree: plain folders named as a kubelet and
//! systemd name them, in a temp folder that stands for the cgroup2 mount.

use std::{fs, os::unix::fs::MetadataExt};

use super::{cgroups::RESCAN_EVERY, *};
use crate::yaml::HumanDuration;

const ID: &str = "4c0a5b1d2e3f40516273849aabbccddeeff00112233445566778899aabbccdde";
const ID2: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a00112233445566778899aabbccddeeff0";
const UID: &str = "0f3e1a2b-5c6d-4e7f-8091-a2b3c4d5e6f7";

/// A fixture: `<tmp>/cgroup` (the tree) and `<tmp>/pods` (the kubelet's log folders).
struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("nw-ctr-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("cgroup/system.slice/ssh.service")).unwrap();
        fs::create_dir_all(dir.join(format!("pods/shop_web-0_{UID}"))).unwrap();
        fs::create_dir_all(dir.join(pod_container(ID))).unwrap();
        Self { dir }
    }

    fn config(&self) -> ContainersConfig {
        ContainersConfig {
            cgroup_root: Some(self.dir.join("cgroup")),
            pods_dir: self.dir.join("pods"),
            retention: HumanDuration(Duration::from_secs(30)),
            ..ContainersConfig::default()
        }
    }

    fn containers(&self) -> Containers {
        let c = Containers::new(&self.config(), Path::new("/nonexistent"));
        assert!(c.active(), "the fixture root is used");
        c
    }

    /// The cgroup id of a fixture folder: its inode.
    fn id(&self, rel: impl AsRef<Path>) -> u64 {
        fs::metadata(self.dir.join(rel)).unwrap().ino()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Where a container of the fixture's pod is, as the systemd driver names it.
fn pod_container(id: &str) -> PathBuf {
    let uid = UID.replace('-', "_");
    PathBuf::from(format!(
        "cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{id}.scope"
    ))
}

fn web(id: &str) -> Owner {
    Owner::Container(Container {
        id: id[..12].to_string(),
        pod: Some("shop/web-0".into()),
    })
}

#[test]
fn a_container_cgroup_is_its_container_and_pod_and_the_rest_the_hosts() {
    let f = Fixture::new("owner");
    let mut c = f.containers();
    let t = Instant::now();
    let ctr = f.id(pod_container(ID));
    assert_eq!(c.owner_at(ctr, t), web(ID));
    assert_eq!(c.dir_at(ctr, t), Some(f.dir.join(pod_container(ID))));
    let ssh = f.id("cgroup/system.slice/ssh.service");
    assert_eq!(c.owner_at(ssh, t), Owner::Host);
    assert_eq!(c.owner_at(f.id("cgroup"), t), Owner::Host, "the root");
    let pod = f.id(pod_container(ID).parent().unwrap());
    assert_eq!(c.owner_at(pod, t), Owner::Host, "the pod's own cgroup");
    // Cached: the same answer with the folders gone, until a check sees them gone.
    assert_eq!(c.gone_for(ctr, t), None);
    assert_eq!(c.retention(), Duration::from_secs(30));
}

#[test]
fn a_removed_cgroup_is_gone_from_the_next_check_and_forgotten_after_twice_the_retention() {
    let f = Fixture::new("gone");
    let mut c = f.containers();
    let t = Instant::now();
    let ctr = f.id(pod_container(ID));
    assert_eq!(c.owner_at(ctr, t), web(ID));
    c.refresh(t);
    assert_eq!(c.gone_for(ctr, t), None);
    fs::remove_dir(f.dir.join(pod_container(ID))).unwrap();
    // Checked less than 2 s ago: not yet noticed.
    c.refresh(t + Duration::from_secs(1));
    assert_eq!(c.gone_for(ctr, t + Duration::from_secs(1)), None);
    let seen = t + cgroups::CHECK_EVERY;
    c.refresh(seen);
    assert_eq!(c.gone_for(ctr, seen), Some(Duration::ZERO));
    assert_eq!(
        c.gone_for(ctr, seen + Duration::from_secs(30)),
        Some(Duration::from_secs(30))
    );
    // Its series are still the container's, and it has no folder any more.
    assert_eq!(c.owner_at(ctr, seen), web(ID));
    assert_eq!(c.dir_at(ctr, seen), None);
    // Past twice the retention it is forgotten.
    let later = seen + Duration::from_secs(60);
    c.refresh(later);
    assert_eq!(c.gone_for(ctr, later), None);
}

#[test]
fn a_cgroup_made_after_the_walk_is_found_by_the_next_walk_a_second_on() {
    let f = Fixture::new("new");
    let mut c = f.containers();
    let t = Instant::now();
    assert_eq!(c.owner_at(f.id(pod_container(ID)), t), web(ID));
    fs::create_dir_all(f.dir.join(pod_container(ID2))).unwrap();
    let new = f.id(pod_container(ID2));
    // Walked less than a second ago: the host's for now.
    let soon = t + Duration::from_millis(500);
    assert_eq!(c.owner_at(new, soon), Owner::Host);
    assert_eq!(c.dir_at(new, soon), None);
    // Not found by a walk yet, so not gone either.
    assert_eq!(c.gone_for(new, soon), None);
    assert_eq!(c.owner_at(new, t + RESCAN_EVERY), web(ID2));
    assert_eq!(
        c.dir_at(new, t + RESCAN_EVERY),
        Some(f.dir.join(pod_container(ID2)))
    );
}

#[test]
fn an_id_no_walk_finds_is_the_hosts_and_gone_from_its_first_ask() {
    let f = Fixture::new("unknown");
    let mut c = f.containers();
    let t = Instant::now();
    let nowhere = u64::MAX - 7;
    assert_eq!(c.owner_at(nowhere, t), Owner::Host);
    assert_eq!(
        c.gone_for(nowhere, t + Duration::from_secs(5)),
        Some(Duration::from_secs(5))
    );
    // A walk for another id still sees what is there.
    let ssh = f.id("cgroup/system.slice/ssh.service");
    assert_eq!(c.owner_at(ssh, t + Duration::from_secs(5)), Owner::Host);
    assert_eq!(
        c.dir_at(ssh, t),
        Some(f.dir.join("cgroup/system.slice/ssh.service"))
    );
}

#[test]
fn a_pod_folder_made_after_its_container_names_it_later() {
    let f = Fixture::new("late-pod");
    fs::remove_dir(f.dir.join(format!("pods/shop_web-0_{UID}"))).unwrap();
    let mut c = f.containers();
    let t = Instant::now();
    let ctr = f.id(pod_container(ID));
    let nameless = Owner::Container(Container {
        id: ID[..12].to_string(),
        pod: None,
    });
    assert_eq!(c.owner_at(ctr, t), nameless);
    fs::create_dir(f.dir.join(format!("pods/shop_web-0_{UID}"))).unwrap();
    assert_eq!(c.owner_at(ctr, t + Duration::from_millis(10)), nameless);
    assert_eq!(c.owner_at(ctr, t + pods::RESCAN_EVERY), web(ID));
}

#[test]
fn symbolic_links_are_not_followed() {
    let f = Fixture::new("links");
    let outside = f.dir.join("outside");
    fs::create_dir_all(outside.join(format!("docker-{ID2}.scope"))).unwrap();
    std::os::unix::fs::symlink(&outside, f.dir.join("cgroup/link")).unwrap();
    let mut c = f.containers();
    let t = Instant::now();
    assert_eq!(
        c.owner_at(f.id(format!("outside/docker-{ID2}.scope")), t),
        Owner::Host
    );
    assert_eq!(c.owner_at(f.id(pod_container(ID)), t), web(ID));
}

#[test]
fn switched_off_or_without_cgroup_v2_everything_is_the_hosts() {
    let f = Fixture::new("off");
    let ctr = f.id(pod_container(ID));
    let off = ContainersConfig {
        enabled: false,
        ..f.config()
    };
    let mut c = Containers::new(&off, Path::new("/nonexistent"));
    assert!(!c.active());
    assert_eq!(c.owner(ctr), Owner::Host);
    assert_eq!(c.dir(ctr), None);
    // No cgroup2 line in the fixture's mountinfo.
    fs::create_dir_all(f.dir.join("proc/self")).unwrap();
    fs::write(
        f.dir.join("proc/self/mountinfo"),
        "24 30 0:22 / /sys rw - sysfs sysfs rw\n",
    )
    .unwrap();
    let auto = ContainersConfig {
        cgroup_root: None,
        ..f.config()
    };
    let mut c = Containers::new(&auto, &f.dir.join("proc"));
    assert!(!c.active());
    assert_eq!(c.owner(ctr), Owner::Host);
    c.refresh(Instant::now());
    assert_eq!(c.gone_for(ctr, Instant::now()), None);
    // The fixture's cgroup2 mount is found.
    fs::write(
        f.dir.join("proc/self/mountinfo"),
        format!(
            "36 35 0:31 / {} rw - cgroup2 cgroup2 rw\n",
            f.dir.join("cgroup").display()
        ),
    )
    .unwrap();
    let mut c = Containers::new(&auto, &f.dir.join("proc"));
    assert_eq!(c.owner(ctr), web(ID));
    // A configured root that is not there.
    let missing = ContainersConfig {
        cgroup_root: Some(f.dir.join("nothing")),
        ..f.config()
    };
    assert!(!Containers::new(&missing, Path::new("/nonexistent")).active());
}

#[test]
fn finds_the_cgroup2_mount() {
    let info = "24 30 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n\
                35 24 0:30 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755\n\
                36 35 0:31 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw,nsdelegate\n\
                37 35 0:32 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu\n";
    assert_eq!(
        cgroup2_mount(info),
        Some(PathBuf::from("/sys/fs/cgroup/unified"))
    );
    assert_eq!(
        cgroup2_mount("24 30 0:22 / /sys rw - sysfs sysfs rw\n"),
        None
    );
    let odd = "36 35 0:31 / /mnt/my\\040cgroup rw - cgroup2 none rw\n";
    assert_eq!(cgroup2_mount(odd), Some(PathBuf::from("/mnt/my cgroup")));
    assert_eq!(cgroup2_mount("garbage\n - \n"), None);
}

#[test]
fn the_section_parses_with_defaults_and_locates_mistakes() {
    let c = ContainersConfig::default();
    assert!(c.enabled);
    assert_eq!(c.cgroup_root, None);
    assert_eq!(c.pods_dir, PathBuf::from("/var/log/pods"));
    assert_eq!(c.retention.0, Duration::from_secs(300));
    let cfg =
        crate::config::Config::parse("c.yaml", "containers: { pods_dir: /x, retention: 30s }\n")
            .unwrap();
    assert_eq!(
        cfg.containers,
        ContainersConfig {
            pods_dir: PathBuf::from("/x"),
            retention: HumanDuration(Duration::from_secs(30)),
            ..ContainersConfig::default()
        }
    );
    let cfg = crate::config::Config::parse(
        "c.yaml",
        "containers:\n  enabled: false\n  cgroup_root: /sys/fs/cgroup\n",
    )
    .unwrap();
    assert!(!cfg.containers.enabled);
    assert_eq!(
        cfg.containers.cgroup_root,
        Some(PathBuf::from("/sys/fs/cgroup"))
    );
    let err = |text: &str| {
        crate::config::Config::parse("c.yaml", text)
            .unwrap_err()
            .to_string()
    };
    let e = err("interval: 1s\ncontainers:\n  pod_dir: /x\n");
    assert!(
        e.starts_with("c.yaml:3:3: containers.pod_dir: unknown field `pod_dir`"),
        "{e}"
    );
    let e = err("containers: { retention: 500ms }\n");
    assert!(
        e.starts_with(
            "c.yaml:1:26: containers.retention: retention 500ms is too short: the minimum is 1s"
        ),
        "{e}"
    );
    let e = err("containers: { retention: soon }\n");
    assert!(e.contains("invalid duration `soon`"), "{e}");
}
