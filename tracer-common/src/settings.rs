//! What the daemon hands the programs at load time, as read-only globals: its settings, the
//! address filters, and the struct offsets of the running kernel.
/// The daemon's settings for the programs (the stuck thresholds themselves are in the
/// `THRESHOLDS` array, read only when a socket leaves a watched state).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Nanoseconds per jiffy (the kernel's tick); 0 when unknown.
    pub ns_per_jiffy: u64,
    /// Bit `1 << state` set for each state with a stuck threshold.
    pub watched: u16,
    /// Non-zero: write every transition to the ring buffer (the daemon logs them all).
    pub log_all: u8,
    /// Non-zero: count transitions and durations per service port too.
    pub port_labels: u8,
    /// Non-zero: the kernel's `tcp_send_reset` tracepoint passes the reset's reason as its third
    /// argument (Linux 6.10 and later); older ones have two arguments.
    pub reset_reason_arg: u8,
    /// Non-zero: tracing programs may ask for a socket's cookie (Linux 5.12 and later). Without
    /// it, a full socket's id in the records and events is its disguised address.
    pub socket_cookies: u8,
    pub _pad: [u8; 2],
    /// The keys of the disguise of kernel addresses (random per daemon run; `disguise_factor`
    /// odd): no record or event carries an address, which would undo the kernel's address
    /// randomization for whoever reads the daemon's lines.
    pub disguise_key: u64,
    pub disguise_factor: u64,
}

/// A kernel address disguised by a keyed bijection (up to its lowest bit, which aligned addresses
/// do not use), its top bit clear so that it never reads as a kernel address: what the programs
/// put in place of addresses (the daemon's tests check it against this).
pub const fn disguise(address: u64, key: u64, factor: u64) -> u64 {
    (address ^ key).wrapping_mul(factor) >> 1
}

impl Config {
    pub const fn watches(&self, state: u8) -> bool {
        watches(self.watched, state)
    }
}

/// Whether `state` has a bit in a [`Config::watched`] mask.
#[inline(always)]
pub const fn watches(watched: u16, state: u8) -> bool {
    state < 16 && watched & (1 << state) != 0
}

/// Filters applied in the kernel before a socket is recorded, counted or reported.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelFilter {
    /// 0: any; else [`crate::AF_INET`] or [`crate::AF_INET6`].
    pub family: u16,
    /// Non-zero: only sockets whose local port is in the `LOCAL_PORTS` map.
    pub local_ports: u8,
    /// Non-zero: only sockets whose remote port is in the `REMOTE_PORTS` map.
    pub remote_ports: u8,
    /// Non-zero: only sockets of this network namespace (inode number).
    pub netns: u32,
}

impl KernelFilter {
    pub const fn is_empty(&self) -> bool {
        self.family == 0 && self.local_ports == 0 && self.remote_ports == 0 && self.netns == 0
    }
}

/// Field offsets the programs need, read from the running kernel's BTF (and the tracepoint's
/// format file) at start-up, so the programs do not depend on one kernel's layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    // `struct sock_common`
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_net: u32,
    pub skc_cookie: u32,
    pub skc_flags: u32,
    /// `skc_nulls_node.pprev`: null once the socket left the connection table (a timewait socket
    /// took its place there).
    pub skc_nulls_pprev: u32,
    /// Bit of `SOCK_DONE` (a FIN was received) in `skc_flags`.
    pub sock_done_bit: u32,
    pub skc_state: u32,
    /// `struct sock`: the socket's pending error (an `int`).
    pub sk_err: u32,
    /// `struct sock`: its protocol (a `u16` since Linux 5.6), to tell TCP sockets' `bind()`s.
    pub sk_protocol: u32,
    /// `struct inet_sock`: the local port and address as the classic tracepoint reports them
    /// (the kernel clears `skc_num` before the transition to CLOSE).
    pub inet_sport: u32,
    pub inet_saddr: u32,
    /// `struct net` to its namespace inode number (`ns.inum`).
    pub net_inum: u32,
    // `struct inet_timewait_sock`
    pub tw_substate: u32,
    pub tw_timer: u32,
    // `struct timer_list` (its `function` is the separate `TIMER_FUNCTION` global)
    pub timer_expires: u32,
    // current task -> open file -> socket, for accept()
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    // The owner iterator: a file's inode and its mode (a socket's?), a task's process id.
    pub file_f_inode: u32,
    pub inode_i_mode: u32,
    pub task_tgid: u32,
}

/// Offset of the return value in the records of every `syscalls/sys_exit_*` tracepoint (accept's:
/// the accepted socket's descriptor; bind's: 0 or an error); the daemon checks it against the
/// format files before loading.
pub const SYSCALL_RET_OFFSET: usize = 16;

/// Offsets of the socket's descriptor and of the address in the records of
/// `syscalls/sys_enter_bind`; the daemon checks them against the format file before loading.
pub const BIND_FD_OFFSET: usize = 16;
pub const BIND_ADDR_OFFSET: usize = 24;

#[cfg(test)]
mod disguise_tests {
    use super::disguise;

    #[test]
    fn disguised_addresses_stay_apart_and_never_read_as_addresses() {
        let (key, factor) = (0x9e37_79b9_7f4a_7c15, 0xbf58_476d_1ce4_e5b9);
        // Socket addresses, 64-byte aligned, close together as a slab hands them out.
        let base = 0xffff_8881_0a3c_0000u64;
        let mut seen = [0u64; 4096];
        for (i, slot) in seen.iter_mut().enumerate() {
            let id = disguise(base + 64 * i as u64, key, factor);
            assert!(id >> 63 == 0, "{id:x}");
            *slot = id;
        }
        seen.sort_unstable();
        assert!(
            seen.windows(2).all(|w| w[0] != w[1]),
            "two sockets share an id"
        );
        // Another key, another id: the ids say nothing across runs.
        assert_ne!(disguise(base, key ^ 1, factor), disguise(base, key, factor));
    }
}
