//! Which container a cgroup belongs to, read from its path alone: the directory names the
//! container runtimes and the kubelet give cgroups, under the systemd and the cgroupfs drivers.
//!
//! | runtime, driver | cgroup of a container |
//! |---|---|
//! | Docker, systemd | `system.slice/docker-<id>.scope` |
//! | Docker, cgroupfs | `docker/<id>` (in Docker: `docker/<a>/docker/<b>`) |
//! | Podman, systemd | `.../libpod-<id>.scope` |
//! | Podman, cgroupfs | `libpod_parent/libpod-<id>` |
//! | containerd / CRI-O, systemd | `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope` (`crio-<id>.scope`; guaranteed QoS: `kubepods-pod<uid_>.slice`) |
//! | containerd / CRI-O, cgroupfs | `kubepods/<qos>/pod<uid>/<id>` (`crio-<id>`; guaranteed: `kubepods/pod<uid>/<id>`) |
//!
//! `<id>` is 64 lowercase hex digits; anything else is not a container id. The innermost
//! container directory of a path wins (`docker-<id>.scope/init.scope` is that container; in
//! Docker-in-Docker the inner one). Not containers: the runtimes' monitors
//! (`crio-conmon-<id>.scope`, `libpod-conmon-<id>.scope`), and a pod's own cgroup above its
//! containers (`...-pod<uid>.slice` alone), which holds no task of a container: both are the
//! host's, as is everything else (`system.slice/...`, `user.slice/...`, the root).

/// How many hex digits of a container id its label keeps, as `docker ps` shows it.
pub const SHORT_ID_LEN: usize = 12;

/// Hex digits of a full container id.
const ID_LEN: usize = 64;

/// The prefixes of a container's `.scope` under the systemd driver.
const SCOPE_PREFIXES: &[&str] = &["docker-", "cri-containerd-", "crio-", "libpod-"];

/// A container: its `container` label and, on Kubernetes, its `pod` label.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Container {
    /// The first 12 hex digits of the container id (lowercase).
    pub id: String,
    /// `namespace/name` of its Kubernetes pod, when it is in one whose name is known.
    pub pod: Option<String>,
}

impl Container {
    /// The `container="other"` of a metric that has run out of container labels.
    pub fn other() -> Self {
        Self {
            id: "other".into(),
            pod: None,
        }
    }
}

/// Whom a cgroup's tasks belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The host: no `container` or `pod` label.
    Host,
    /// A container.
    Container(Container),
}

/// What a cgroup path names: a container, and the UID of its pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    /// The first [`SHORT_ID_LEN`] hex digits of the container id.
    pub id: String,
    /// The pod UID, with `-` as the API server writes it.
    pub pod_uid: Option<String>,
}

/// The container a cgroup path (relative to the cgroup root, with or without a leading `/`)
/// belongs to; `None` for the host.
pub fn container_of(path: &str) -> Option<Named> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let (at, id) = (0..parts.len())
        .rev()
        .find_map(|i| container_id(parts[i], &parts[..i]).map(|id| (i, id)))?;
    let pod_uid = (0..at).rev().find_map(|i| pod_uid(parts[i], &parts[..i]));
    Some(Named {
        id: id[..SHORT_ID_LEN].to_string(),
        pod_uid,
    })
}

/// The full id of the container whose directory is `part`, given the directories above it.
fn container_id<'a>(part: &'a str, above: &[&str]) -> Option<&'a str> {
    if let Some(stem) = part.strip_suffix(".scope") {
        return SCOPE_PREFIXES
            .iter()
            .find_map(|p| stem.strip_prefix(p))
            .filter(|id| is_id(id));
    }
    let (parent, grand) = match above.split_last() {
        Some((p, rest)) => (*p, rest),
        None => return None,
    };
    let under_pod = || pod_uid(parent, grand).is_some();
    if is_id(part) && (parent == "docker" || under_pod()) {
        return Some(part);
    }
    if let Some(id) = part.strip_prefix("libpod-")
        && is_id(id)
        && above.contains(&"libpod_parent")
    {
        return Some(id);
    }
    if let Some(id) = part.strip_prefix("crio-")
        && is_id(id)
        && under_pod()
    {
        return Some(id);
    }
    None
}

/// The pod UID a kubelet's pod directory `part` names, given the directories above it:
/// `pod<uid>` below `kubepods` (cgroupfs) or `kubepods[-<qos>]-pod<uid_>.slice` (systemd, which
/// writes `_` for the `-` of the UID).
fn pod_uid(part: &str, above: &[&str]) -> Option<String> {
    if let Some(stem) = part.strip_suffix(".slice") {
        let (head, last) = stem.rsplit_once('-')?;
        let uid = last.strip_prefix("pod")?;
        let kubepods =
            head == "kubepods" || head.starts_with("kubepods-") || head.contains("-kubepods");
        return (kubepods && is_uid(uid, '_')).then(|| uid.replace('_', "-"));
    }
    let uid = part.strip_prefix("pod")?;
    (above.contains(&"kubepods") && is_uid(uid, '-')).then(|| uid.to_string())
}

/// 64 lowercase hex digits.
fn is_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(is_lower_hex)
}

/// A pod UID: lowercase hex digits and `sep` (a UUID; a static pod's is a bare hash).
fn is_uid(s: &str, sep: char) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().any(is_lower_hex)
        && s.bytes().all(|b| is_lower_hex(b) || b == sep as u8)
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4c0a5b1d2e3f40516273849aabbccddeeff00112233445566778899aabbccdde";
    const B: &str = "b1b2b3b4b5b6b7b8b9babbbcbdbebf00112233445566778899aabbccddeeff00";
    const UID: &str = "0f3e1a2b-5c6d-4e7f-8091-a2b3c4d5e6f7";
    const UID_: &str = "0f3e1a2b_5c6d_4e7f_8091_a2b3c4d5e6f7";

    fn named(path: &str) -> Option<(String, Option<String>)> {
        container_of(path).map(|n| (n.id, n.pod_uid))
    }

    #[test]
    fn every_runtime_and_driver_is_recognised() {
        assert!(is_id(ID) && is_id(B), "the fixtures are full ids");
        let short = &ID[..12];
        let b = &B[..12];
        let cases: Vec<(String, &str, Option<&str>)> = vec![
            // Docker, systemd and cgroupfs drivers, Docker-in-Docker.
            (format!("/system.slice/docker-{ID}.scope"), short, None),
            (
                format!("system.slice/docker-{ID}.scope/init.scope"),
                short,
                None,
            ),
            (format!("/docker/{ID}"), short, None),
            (format!("/docker/{ID}/docker/{B}"), b, None),
            (
                format!("/system.slice/docker-{ID}.scope/docker/{B}"),
                b,
                None,
            ),
            // Podman.
            (format!("/machine.slice/libpod-{ID}.scope"), short, None),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
                ),
                short,
                None,
            ),
            (format!("/libpod_parent/libpod-{ID}"), short, None),
            // containerd and CRI-O, systemd driver, every QoS class.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                short,
                Some(UID),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                short,
                Some(UID),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                short,
                Some(UID),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope"
                ),
                short,
                Some(UID),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope"),
                short,
                Some(UID),
            ),
            // cgroupfs driver.
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                short,
                Some(UID),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                short,
                Some(UID),
            ),
            (format!("/kubepods/pod{UID}/{ID}"), short, Some(UID)),
            (
                format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
                short,
                Some(UID),
            ),
            // A static pod's UID is a bare hash.
            (
                format!("/kubepods/podd41d8cd98f00b204e9800998ecf8427e/{ID}"),
                short,
                Some("d41d8cd98f00b204e9800998ecf8427e"),
            ),
            // kind: a node container holding a kubelet of its own.
            (
                format!(
                    "/system.slice/docker-{B}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                short,
                Some(UID),
            ),
        ];
        for (path, id, uid) in cases {
            assert_eq!(
                named(&path),
                Some((id.to_string(), uid.map(String::from))),
                "{path}"
            );
        }
    }

    #[test]
    fn what_is_not_a_container_is_the_hosts() {
        let upper = ID.to_uppercase();
        let paths = [
            String::new(),
            "/".into(),
            "/init.scope".into(),
            "/system.slice/ssh.service".into(),
            "/user.slice/user-1000.slice/session-3.scope".into(),
            // The runtimes' monitors.
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope"),
            // The pod's own cgroup, above its containers.
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"),
            format!("/kubepods/burstable/pod{UID}"),
            "/kubepods.slice".into(),
            // Ids of the wrong length or alphabet.
            format!("/system.slice/docker-{}.scope", &ID[..63]),
            format!("/system.slice/docker-{ID}0.scope"),
            format!("/system.slice/docker-{upper}.scope"),
            format!("/system.slice/docker-{}g.scope", &ID[..63]),
            format!("/docker/{}", &ID[..63]),
            // Unknown prefixes, or a bare id where no runtime puts one.
            format!("/system.slice/rkt-{ID}.scope"),
            format!("/system.slice/{ID}"),
            format!("/{ID}"),
            format!("/machine.slice/libpod-{ID}"),
            format!("/system.slice/crio-{ID}"),
            // A pod directory outside kubepods is no pod.
            format!("/pods/pod{UID}/{ID}"),
            format!("/system.slice/foo-pod{UID_}.slice/{ID}"),
        ];
        for path in paths {
            assert_eq!(named(&path), None, "{path}");
        }
    }

    #[test]
    fn a_pod_uid_needs_a_kubepods_parent_and_its_alphabet() {
        assert_eq!(
            pod_uid(&format!("pod{UID}"), &["kubepods"]),
            Some(UID.into())
        );
        assert_eq!(
            pod_uid(&format!("kubepods-besteffort-pod{UID_}.slice"), &[]),
            Some(UID.into())
        );
        assert_eq!(pod_uid(&format!("pod{UID}"), &["system.slice"]), None);
        assert_eq!(pod_uid(&format!("kubepods-pod{UID}.slice"), &[]), None);
        assert_eq!(pod_uid("pod", &["kubepods"]), None);
        assert_eq!(pod_uid("pod-_-", &["kubepods"]), None);
        assert_eq!(pod_uid("podXYZ", &["kubepods"]), None);
    }
}
