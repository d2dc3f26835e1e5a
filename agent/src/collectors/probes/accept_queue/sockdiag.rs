//! TCP listeners of this network namespace through sock_diag (netlink `inet_diag`): what
//! `ss -ltnm` shows as Recv-Q (queue length), Send-Q (backlog limit) and `d<N>` (drops).

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::AsRawFd,
    time::Duration,
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

/// One listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    /// Connections waiting in the accept queue (`sk_ack_backlog`).
    pub queue_length: u32,
    /// The accept queue's limit (`sk_max_ack_backlog`, the `listen()` backlog).
    pub queue_max: u32,
    /// Packets this socket dropped (`sk_drops`), which for a listener is what the kernel also
    /// counts as `ListenDrops`: accept-queue overflows and other refused handshakes.
    pub drops: u32,
    /// The socket's inode: tells a restarted listener from the old one.
    pub inode: u32,
}

/// Why the listeners could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    #[error("netlink sock_diag socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("sock_diag dump: {0}")]
    Io(#[source] std::io::Error),
    #[error("sock_diag answer: {0}")]
    Decode(String),
    #[error("sock_diag refused the request: {0}")]
    Refused(std::io::Error),
}

/// A netlink socket kept open between ticks.
pub struct SockDiag {
    socket: Socket,
    buf: Vec<u8>,
}

impl SockDiag {
    /// Opens the netlink socket; fails where sock_diag is unavailable.
    pub fn open() -> Result<Self, SockDiagError> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(SockDiagError::Socket)?;
        socket.bind_auto().map_err(SockDiagError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(SockDiagError::Socket)?;
        set_recv_timeout(&socket, Duration::from_secs(2)).map_err(SockDiagError::Socket)?;
        Ok(Self {
            socket,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Every TCP listener, IPv4 and IPv6.
    pub fn listeners(&mut self) -> Result<Vec<Listener>, SockDiagError> {
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            self.dump(family, &mut out)?;
        }
        Ok(out)
    }

    fn dump(&mut self, family: u8, out: &mut Vec<Listener>) -> Result<(), SockDiagError> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut request = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::SKMEMINFO,
                states: StateFlags::LISTEN,
                socket_id: if family == AF_INET {
                    SocketId::new_v4()
                } else {
                    SocketId::new_v6()
                },
            })
            .into(),
        );
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket.send(&bytes, 0).map_err(SockDiagError::Io)?;
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(SockDiagError::Io)?;
            let mut at = 0;
            while at < n {
                let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[at..n])
                    .map_err(|e| SockDiagError::Decode(e.to_string()))?;
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        let code = e.code.map_or(0, |c| -c.get());
                        return Err(SockDiagError::Refused(std::io::Error::from_raw_os_error(
                            code,
                        )));
                    }
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        let drops = r
                            .nlas
                            .iter()
                            .find_map(|nla| match nla {
                                Nla::MemInfo(m) => Some(m.drops),
                                _ => None,
                            })
                            .unwrap_or(0);
                        out.push(Listener {
                            port: r.header.socket_id.source_port,
                            queue_length: r.header.recv_queue,
                            queue_max: r.header.send_queue,
                            drops,
                            inode: r.header.inode,
                        });
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                at += len;
            }
        }
    }
}

fn set_recv_timeout(socket: &Socket, timeout: Duration) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    // SAFETY: a valid socket fd and a timeval of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Turns per-listener drop counts, which restart at 0 with each new listener, into one
/// monotonic total per port. Listeners present at the first reading are a baseline.
#[derive(Default)]
pub struct DropTracker {
    seen_once: bool,
    last: HashMap<(u16, u32), u32>,
    totals: BTreeMap<u16, u64>,
}

impl DropTracker {
    pub fn update(&mut self, ports: &[u16], listeners: &[Listener]) -> Vec<(u16, u64)> {
        let mut now = HashMap::new();
        for l in listeners.iter().filter(|l| ports.contains(&l.port)) {
            let key = (l.port, l.inode);
            let before = match self.last.get(&key) {
                Some(&b) => b,
                None if self.seen_once => 0,
                None => l.drops,
            };
            *self.totals.entry(l.port).or_default() += u64::from(l.drops.wrapping_sub(before));
            now.insert(key, l.drops);
        }
        self.last = now;
        self.seen_once = true;
        ports
            .iter()
            .map(|&p| (p, self.totals.get(&p).copied().unwrap_or(0)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(port: u16, inode: u32, drops: u32) -> Listener {
        Listener {
            port,
            queue_length: 0,
            queue_max: 0,
            drops,
            inode,
        }
    }

    #[test]
    fn drop_tracker_follows_restarted_listeners() {
        let mut t = DropTracker::default();
        // Listeners already there at start are a baseline.
        assert_eq!(
            t.update(&[80, 81], &[l(80, 1, 5), l(9, 2, 7)]),
            vec![(80, 0), (81, 0)]
        );
        assert_eq!(t.update(&[80, 81], &[l(80, 1, 8)]), vec![(80, 3), (81, 0)]);
        // The server restarts: a new socket starts again at 0 and its drops add on.
        assert_eq!(t.update(&[80, 81], &[]), vec![(80, 3), (81, 0)]);
        assert_eq!(
            t.update(&[80, 81], &[l(80, 3, 2), l(81, 4, 1)]),
            vec![(80, 5), (81, 1)]
        );
        // IPv4 and IPv6 listeners on one port both count.
        assert_eq!(
            t.update(&[80, 81], &[l(80, 3, 4), l(80, 5, 1), l(81, 4, 1)]),
            vec![(80, 8), (81, 1)]
        );
    }
}
