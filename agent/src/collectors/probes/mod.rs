//! Collectors backed by the kernel. Each probe is one file or folder here, and one file of
//! the same name in `agent-ebpf/`; what they share sits beside them (BTF offsets, attach
//! errors, per-port counters).

pub mod accept_queue;
pub mod ebpf;
pub mod gpu_ioctl;
pub mod kernel;
pub mod owners;
pub mod ports;
pub mod tcp_retransmits;
