//! Readers of kernel structures shared by the hooks, at offsets the daemon read from the running
//! kernel's BTF (`OFFSETS`).
use aya_ebpf::{
    EbpfContext as _,
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
        generated::{self, bpf_ktime_get_ns},
    },
    programs::TracePointContext,
};
use tracer_common::{AF_INET, AF_INET6, Tuple, normalize_family, settings::disguise};

use crate::maps::global;

#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

pub(crate) fn current_pid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// A full socket's id in the records and events (`sk` BTF-typed): its cookie (stable for its
/// life, never reused, what the kernel's socket list reports), or where tracing programs cannot
/// ask for one (before Linux 5.12) its disguised address, told apart from the sockets freed
/// before by the records' removal at CLOSE.
#[inline(always)]
pub(crate) fn socket_id(sk: u64) -> u64 {
    if global!(CONFIG.socket_cookies) != 0 {
        // SAFETY: a BTF-typed socket pointer, as the helper requires. With the setting off the
        // verifier never reaches this call, so older kernels accept the program.
        unsafe { generated::bpf_get_socket_cookie(sk as *mut c_void) }
    } else {
        disguised_pointer(sk)
    }
}

/// A kernel address as records and events may carry it ([`tracer_common::settings::disguise`],
/// keyed by the daemon at load): never the address itself. `address` is plain data (read from a
/// map or with a helper); for a typed pointer, [`disguised_pointer`].
#[inline(always)]
pub(crate) fn disguised(address: u64) -> u64 {
    disguise(
        address,
        global!(CONFIG.disguise_key),
        global!(CONFIG.disguise_factor),
    )
}

/// The disguised address of a BTF-typed pointer. The verifier refuses arithmetic on a pointer
/// (5.10 says "math between ptr_ pointer and ... is not allowed"), so its value is first read
/// back as plain data, with a helper; only kernels without cookies (before 5.12) run this.
#[inline(always)]
fn disguised_pointer(pointer: u64) -> u64 {
    let slot = pointer;
    // SAFETY: reads the local just written, on the program's stack.
    let address = unsafe { bpf_probe_read_kernel(&raw const slot) }.unwrap_or(0);
    disguised(address)
}

/// A listener's id as the kernel's socket list names it: its cookie. Without the helper, the
/// cookie the socket list gave it (the daemon lists listeners every few seconds), or its
/// disguised address until then.
#[inline(always)]
pub(crate) fn listener_id(sk: u64) -> u64 {
    if global!(CONFIG.socket_cookies) != 0 {
        return socket_id(sk);
    }
    match member::<u64>(sk, global!(OFFSETS.skc_cookie)) {
        0 => disguised_pointer(sk),
        cookie => cookie,
    }
}

/// A field of a BTF-typed kernel struct, loaded directly (no helper call): the offset is a
/// load-time constant from the kernel's BTF, which the verifier checks against the struct.
#[inline(always)]
pub(crate) fn member<T: Copy>(base: u64, offset: u32) -> T {
    // SAFETY: `base` is a BTF-typed pointer; a faulting load yields zero instead of an oops.
    unsafe { core::ptr::read_volatile((base + offset as u64) as *const T) }
}

/// A field of a classic tracepoint's record, loaded directly from the context at a constant
/// offset (checked against the tracepoint's format by the daemon).
#[inline(always)]
pub(crate) fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: the offset is inside the record; the verifier checks the access.
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// A full TCP socket's addresses and network namespace (`sk` BTF-typed, `tcp` the same socket
/// cast by the kernel to a `tcp_sock`), written into `tuple`; false for a family other than
/// IPv4/IPv6. Every field is a direct load, the namespace too (`sk->skc_net` is a typed pointer):
/// no helper call, which costs more than all the loads together.
#[inline(always)]
pub(crate) fn full_socket_tuple(sk: u64, tcp: u64, tuple: &mut Tuple) -> bool {
    let net: u64 = member(sk, global!(OFFSETS.skc_net));
    *tuple = Tuple {
        sport: u16::from_be(member(tcp, global!(OFFSETS.inet_sport))),
        dport: u16::from_be(member(sk, global!(OFFSETS.skc_dport))),
        family: member(sk, global!(OFFSETS.skc_family)),
        netns: member(net, global!(OFFSETS.net_inum)),
        ..Tuple::default()
    };
    if tuple.family == AF_INET {
        let s: u32 = member(tcp, global!(OFFSETS.inet_saddr));
        let d: u32 = member(sk, global!(OFFSETS.skc_daddr));
        tuple.saddr[..4].copy_from_slice(&s.to_ne_bytes());
        tuple.daddr[..4].copy_from_slice(&d.to_ne_bytes());
    } else if tuple.family == AF_INET6 {
        let (saddr, daddr) = (
            global!(OFFSETS.skc_v6_rcv_saddr),
            global!(OFFSETS.skc_v6_daddr),
        );
        let words: [u64; 4] = [
            member(sk, saddr),
            member(sk, saddr + 8),
            member(sk, daddr),
            member(sk, daddr + 8),
        ];
        tuple.saddr[..8].copy_from_slice(&words[0].to_ne_bytes());
        tuple.saddr[8..].copy_from_slice(&words[1].to_ne_bytes());
        tuple.daddr[..8].copy_from_slice(&words[2].to_ne_bytes());
        tuple.daddr[8..].copy_from_slice(&words[3].to_ne_bytes());
        normalize_family(tuple);
    } else {
        return false;
    }
    true
}

/// The socket (`struct sock`, untyped) behind the current task's descriptor `fd`, which a system
/// call just returned or was given and which is a socket; 0 when there is none.
#[inline(always)]
pub(crate) fn socket_of_fd(fd: i64) -> Result<u64, i64> {
    if fd < 0 {
        return Ok(0);
    }
    // SAFETY: every pointer is read with bpf_probe_read_kernel.
    unsafe {
        let read = |addr: u64| bpf_probe_read_kernel(addr as *const u64);
        let task = generated::bpf_get_current_task();
        let files = read(task + global!(OFFSETS.task_files) as u64)?;
        let fdt = read(files + global!(OFFSETS.files_fdt) as u64)?;
        let max_fds: u32 =
            bpf_probe_read_kernel((fdt + global!(OFFSETS.fdt_max_fds) as u64) as *const u32)?;
        if fd as u64 >= max_fds as u64 {
            return Ok(0);
        }
        let fd_array = read(fdt + global!(OFFSETS.fdt_fd) as u64)?;
        let file = read(fd_array + 8 * fd as u64)?;
        if file == 0 {
            return Ok(0);
        }
        let socket = read(file + global!(OFFSETS.file_private_data) as u64)?;
        Ok(read(socket + global!(OFFSETS.socket_sk) as u64)?)
    }
}

/// Inode number of the network namespace of a socket known by an untyped pointer (a timewait
/// socket); 0 when unreadable.
#[inline(always)]
pub(crate) fn netns_of(sk: u64) -> u32 {
    // SAFETY: bpf_probe_read_kernel checks the addresses.
    unsafe {
        match bpf_probe_read_kernel((sk + global!(OFFSETS.skc_net) as u64) as *const u64) {
            Ok(net) => {
                bpf_probe_read_kernel((net + global!(OFFSETS.net_inum) as u64) as *const u32)
                    .unwrap_or(0)
            }
            Err(_) => 0,
        }
    }
}

/// Reads a `struct sock_common`'s addresses, ports and namespace through an untyped pointer (a
/// timewait socket, or a socket found through a file) into `tuple`, straight into its fields.
#[inline(always)]
pub(crate) fn read_sock_common(sk: u64, tuple: &mut Tuple) -> Result<(), i64> {
    let at = |offset: u32| (sk + offset as u64) as *const u8;
    *tuple = Tuple::default();
    // SAFETY: bpf_probe_read_kernel checks the addresses.
    unsafe {
        tuple.family = bpf_probe_read_kernel(at(global!(OFFSETS.skc_family)).cast())?;
        tuple.dport = u16::from_be(bpf_probe_read_kernel(
            at(global!(OFFSETS.skc_dport)).cast(),
        )?);
        tuple.sport = bpf_probe_read_kernel(at(global!(OFFSETS.skc_num)).cast())?;
        if tuple.family == AF_INET {
            bpf_probe_read_kernel_buf(at(global!(OFFSETS.skc_rcv_saddr)), &mut tuple.saddr[..4])?;
            bpf_probe_read_kernel_buf(at(global!(OFFSETS.skc_daddr)), &mut tuple.daddr[..4])?;
        } else {
            bpf_probe_read_kernel_buf(at(global!(OFFSETS.skc_v6_rcv_saddr)), &mut tuple.saddr)?;
            bpf_probe_read_kernel_buf(at(global!(OFFSETS.skc_v6_daddr)), &mut tuple.daddr)?;
            normalize_family(tuple);
        }
    }
    tuple.netns = netns_of(sk);
    Ok(())
}
