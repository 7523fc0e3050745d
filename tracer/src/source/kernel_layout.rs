//! What the programs need to know about the running kernel, read at start-up rather than compiled
//! in: struct field offsets from its BTF, tracepoint record layouts from tracefs, and the address
//! of the timewait timer's callback from /proc/kallsyms.
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use btf_rs::{Btf, BtfType, Type};
use tracer_common::Offsets;

pub(crate) const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The running kernel's BTF, read once for both its parsers: btf-rs here for the offsets, aya for
/// loading the programs (probe.rs says why there are two). Read, not memory-mapped: kernels before
/// 6.x refuse `mmap` of `/sys/kernel/btf/vmlinux` (ENODEV).
pub(crate) fn read_kernel_btf(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .with_context(|| format!("cannot read the kernel's BTF at {}", path.display()))
}

/// Every struct offset the programs use, from the kernel's BTF.
pub(crate) struct KernelOffsets {
    pub(crate) offsets: Offsets,
    /// `timer_list.function`, a global of its own (read on every kernel timer).
    pub(crate) timer_function: u32,
    /// Names of the kernel's reasons for a reset (`enum sk_rst_reason`), by number, lower case
    /// without their prefix (`tcp_abort_on_close`); empty on a kernel without them.
    pub(crate) reset_reasons: Vec<String>,
    /// The `tcp_send_reset` tracepoint passes the reset's reason (Linux 6.10 and later).
    pub(crate) reset_reason_arg: bool,
    /// Tracing programs may ask for a socket's cookie (Linux 5.12 and later): the kernel declares
    /// the helper's function type, `btf_bpf_get_socket_ptr_cookie`, in its BTF.
    pub(crate) socket_cookies: bool,
}

/// Reads every struct offset the programs use from the kernel's BTF (`read_kernel_btf`).
pub(crate) fn read_offsets(btf: &[u8]) -> Result<KernelOffsets> {
    let btf = Btf::from_bytes(btf).context("cannot parse the kernel's BTF")?;
    let btf = KernelBtf(btf);
    // The programs read `struct sock_common` at the start of full and timewait sockets.
    for (outer, member) in [
        ("sock", "__sk_common"),
        ("inet_timewait_sock", "__tw_common"),
    ] {
        let offset = btf.offset(outer, member)?;
        if offset != 0 {
            bail!("struct {outer}.{member} is at offset {offset}, not 0: unsupported kernel");
        }
    }
    let offsets = Offsets {
        skc_daddr: btf.offset("sock_common", "skc_daddr")?,
        skc_rcv_saddr: btf.offset("sock_common", "skc_rcv_saddr")?,
        skc_dport: btf.offset("sock_common", "skc_dport")?,
        skc_num: btf.offset("sock_common", "skc_num")?,
        skc_family: btf.offset("sock_common", "skc_family")?,
        skc_v6_daddr: btf.offset("sock_common", "skc_v6_daddr")?,
        skc_v6_rcv_saddr: btf.offset("sock_common", "skc_v6_rcv_saddr")?,
        skc_net: btf.offset("sock_common", "skc_net")?,
        skc_cookie: btf.offset("sock_common", "skc_cookie")?,
        skc_flags: btf.offset("sock_common", "skc_flags")?,
        skc_nulls_pprev: btf.offset("sock_common", "skc_nulls_node")?
            + btf.offset("hlist_nulls_node", "pprev")?,
        sock_done_bit: btf.enum_value("sock_flags", "SOCK_DONE")?,
        skc_state: btf.offset("sock_common", "skc_state")?,
        sk_err: btf.offset("sock", "sk_err")?,
        sk_protocol: btf.offset("sock", "sk_protocol")?,
        inet_sport: btf.offset("inet_sock", "inet_sport")?,
        inet_saddr: btf.offset("inet_sock", "inet_saddr")?,
        net_inum: btf.offset("net", "ns")? + btf.offset("ns_common", "inum")?,
        tw_substate: btf.offset("inet_timewait_sock", "tw_substate")?,
        tw_timer: btf.offset("inet_timewait_sock", "tw_timer")?,
        timer_expires: btf.offset("timer_list", "expires")?,
        task_files: btf.offset("task_struct", "files")?,
        files_fdt: btf.offset("files_struct", "fdt")?,
        fdt_max_fds: btf.offset("fdtable", "max_fds")?,
        fdt_fd: btf.offset("fdtable", "fd")?,
        file_private_data: btf.offset("file", "private_data")?,
        socket_sk: btf.offset("socket", "sk")?,
        file_f_inode: btf.offset("file", "f_inode")?,
        inode_i_mode: btf.offset("inode", "i_mode")?,
        task_tgid: btf.offset("task_struct", "tgid")?,
    };
    Ok(KernelOffsets {
        offsets,
        timer_function: btf.offset("timer_list", "function")?,
        reset_reasons: btf.enum_names("sk_rst_reason", "SK_RST_REASON_"),
        // `__data`, the socket, the packet, then the reason.
        reset_reason_arg: btf.tracepoint_arguments("tcp_send_reset") >= 4,
        socket_cookies: btf.has_type("btf_bpf_get_socket_ptr_cookie"),
    })
}

struct KernelBtf(Btf);

impl KernelBtf {
    /// Byte offset of `member` in `struct outer`, looking through anonymous unions and structs.
    fn offset(&self, outer: &str, member: &str) -> Result<u32> {
        let types = self
            .0
            .resolve_types_by_name(outer)
            .with_context(|| format!("kernel BTF has no type `{outer}`"))?;
        let found = types.iter().find_map(|ty| match ty {
            Type::Struct(st) => self.find_member(st, member),
            _ => None,
        });
        match found {
            Some(bits) if bits % 8 == 0 => Ok(bits / 8),
            Some(_) => bail!("struct {outer}.{member} is a bit field: unsupported kernel"),
            None => bail!("kernel BTF: struct {outer} has no member `{member}`"),
        }
    }

    /// The value of a constant of an enum.
    fn enum_value(&self, name: &str, constant: &str) -> Result<u32> {
        let types = self
            .0
            .resolve_types_by_name(name)
            .with_context(|| format!("kernel BTF has no type `{name}`"))?;
        types
            .iter()
            .find_map(|ty| match ty {
                Type::Enum(e) => e
                    .members
                    .iter()
                    .find(|m| self.0.resolve_name(*m).is_ok_and(|n| n == constant))
                    .map(|m| m.val()),
                _ => None,
            })
            .with_context(|| format!("kernel BTF: enum {name} has no constant `{constant}`"))
    }

    /// The constants of an enum as a table by value, lower case without `prefix`; empty when the
    /// kernel has no such enum. Values past 255 are left out (they do not fit a record's byte).
    fn enum_names(&self, name: &str, prefix: &str) -> Vec<String> {
        let mut names = Vec::new();
        let Ok(types) = self.0.resolve_types_by_name(name) else {
            return names;
        };
        for ty in types {
            let Type::Enum(e) = ty else { continue };
            for member in &e.members {
                let (Ok(constant), Ok(value)) =
                    (self.0.resolve_name(member), usize::try_from(member.val()))
                else {
                    continue;
                };
                if value > usize::from(u8::MAX) {
                    continue;
                }
                if names.len() <= value {
                    names.resize(value + 1, String::new());
                }
                names[value] = constant
                    .strip_prefix(prefix)
                    .unwrap_or(&constant)
                    .to_ascii_lowercase();
            }
        }
        names
    }

    /// Whether the kernel's BTF has a type of this name.
    fn has_type(&self, name: &str) -> bool {
        self.0
            .resolve_types_by_name(name)
            .is_ok_and(|types| !types.is_empty())
    }

    /// How many arguments a tracepoint's BTF-typed programs get, counting the leading `__data`
    /// (from the `btf_trace_<name>` typedef the kernel declares for each); 0 when it has none.
    fn tracepoint_arguments(&self, tracepoint: &str) -> usize {
        let Ok(types) = self
            .0
            .resolve_types_by_name(&format!("btf_trace_{tracepoint}"))
        else {
            return 0;
        };
        types
            .iter()
            .find_map(|ty| {
                let Type::Typedef(typedef) = ty else {
                    return None;
                };
                let Type::Ptr(ptr) = self.0.resolve_chained_type(typedef).ok()? else {
                    return None;
                };
                match self.0.resolve_chained_type(&ptr).ok()? {
                    Type::FuncProto(proto) => Some(proto.parameters.len()),
                    _ => None,
                }
            })
            .unwrap_or(0)
    }

    /// Bit offset of `member` inside `st`.
    fn find_member(&self, st: &btf_rs::Struct, member: &str) -> Option<u32> {
        st.members.iter().find_map(|m| {
            let name = self.0.resolve_name(m).ok()?;
            if name == member {
                return Some(m.bit_offset());
            }
            if !name.is_empty() {
                return None;
            }
            // An anonymous union or struct: its members belong to `st`.
            match self.0.resolve_type_by_id(m.get_type_id()?).ok()? {
                Type::Struct(inner) | Type::Union(inner) => {
                    Some(m.bit_offset() + self.find_member(&inner, member)?)
                }
                _ => None,
            }
        })
    }
}

/// Address of a kernel function from /proc/kallsyms; `None` when absent or hidden (kptr_restrict
/// shows zeros).
pub(crate) fn kernel_symbol(kallsyms: &str, name: &str) -> Option<u64> {
    kallsyms
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let address = fields.next()?;
            let _kind = fields.next()?;
            (fields.next()? == name).then(|| u64::from_str_radix(address, 16).ok())?
        })
        .filter(|address| *address != 0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz::{any_text, mutated, mutated_bytes};

    /// /proc/kallsyms with these symbols (distinct names), some of modules.
    fn kallsyms(symbols: &[(String, u64)]) -> String {
        symbols
            .iter()
            .enumerate()
            .map(|(i, (name, address))| match i % 3 {
                0 => format!("{address:016x} t {name}\n"),
                1 => format!("{address:016x} T {name}\t[nf_tables]\n"),
                _ => format!("{address:x} D {name}.y.x\n{address:016x} d {name}\n"),
            })
            .collect()
    }

    fn symbols() -> impl Strategy<Value = Vec<(String, u64)>> {
        prop::collection::btree_map(
            "[a-z_][a-z0-9_]{0,20}",
            prop_oneof![Just(0u64), any::<u64>()],
            1..8,
        )
        .prop_map(|m| m.into_iter().collect())
    }

    /// An address is only ever one the text spells, in hex.
    fn spelled_in(text: &str, found: Option<u64>) -> bool {
        found.is_none_or(|a| a != 0 && text.to_ascii_lowercase().contains(&format!("{a:x}")))
    }

    proptest! {
        #[test]
        fn fuzz_kernel_symbol_valid(symbols in symbols(), pick in any::<prop::sample::Index>()) {
            let text = kallsyms(&symbols);
            let (name, address) = pick.get(&symbols);
            prop_assert_eq!(kernel_symbol(&text, name), Some(*address).filter(|a| *a != 0));
            // A name no symbol has (no generated name holds a dot), though one begins with it.
            prop_assert_eq!(kernel_symbol(&text, &format!("{name}.y")), None);
        }

        #[test]
        fn fuzz_kernel_symbol_mutated(
            (text, name) in symbols().prop_flat_map(|s| (mutated(kallsyms(&s)), Just(s[0].0.clone()))),
        ) {
            let found = kernel_symbol(&text, &name);
            prop_assert!(spelled_in(&text, found), "{found:?}");
        }

        #[test]
        fn fuzz_kernel_symbol_arbitrary(text in any_text(), name in any_text()) {
            let found = kernel_symbol(&text, &name);
            prop_assert!(spelled_in(&text, found), "{found:?}");
        }

        /// Not a BTF, or a BTF header before garbage: an error. (The running kernel's BTF cut
        /// short or with bytes overwritten is left out: some such cases make btf-rs take minutes
        /// over one parse, and the kernel's own file is written by nobody else.)
        #[test]
        fn fuzz_read_offsets_arbitrary(bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            // A BTF header (magic, version 1, 24 bytes) before whatever follows.
            prop::collection::vec(any::<u8>(), 0..256).prop_flat_map(|rest| {
                let mut bytes = vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0];
                bytes.extend(rest);
                mutated_bytes(bytes)
            }),
        ]) {
            prop_assert!(read_offsets(&bytes).is_err());
        }
    }

    #[test]
    fn finds_symbols() {
        let kallsyms = "ffffffff81000000 T _stext\nffffffff820660f0 t tw_timer_handler\nffffffff820660f8 t tw_timer_handler_x [mod]\n";
        assert_eq!(
            kernel_symbol(kallsyms, "tw_timer_handler"),
            Some(0xffffffff820660f0)
        );
        assert_eq!(kernel_symbol(kallsyms, "missing"), None);
        let hidden = "0000000000000000 t tw_timer_handler\n";
        assert_eq!(kernel_symbol(hidden, "tw_timer_handler"), None);
    }

    /// The running kernel's BTF must give the offsets the kernel-side code was verified with
    /// (../shared/BUILDING-EBPF.md). This reads the real /sys/kernel/btf/vmlinux.
    #[test]
    fn reads_offsets_from_the_running_kernel() {
        let kernel = read_offsets(&read_kernel_btf(Path::new(VMLINUX_BTF)).unwrap()).unwrap();
        assert!(kernel.timer_function > 0);
        // This kernel names its reset reasons and passes them to the tracepoint (6.10 and
        // later).
        assert_eq!(kernel.reset_reasons[11], "tcp_abort_on_close");
        assert!(kernel.reset_reason_arg);
        assert!(kernel.socket_cookies, "Linux 5.12 and later");
        assert_eq!(kernel.reset_reasons[0], "not_specified");
        let offsets = kernel.offsets;
        assert_eq!(offsets.skc_daddr, 0);
        assert_eq!(offsets.skc_rcv_saddr, 4);
        assert_eq!(offsets.skc_dport, 12);
        assert_eq!(offsets.skc_num, 14);
        assert_eq!(offsets.skc_family, 16);
        assert!(offsets.tw_timer > offsets.tw_substate);
        assert!(offsets.socket_sk > 0 && offsets.task_files > 0);
        assert_eq!(offsets.sock_done_bit, 1, "SOCK_DONE follows SOCK_DEAD");
        assert!(offsets.skc_nulls_pprev >= 8 && offsets.skc_cookie > 0 && offsets.skc_flags > 0);
        // `struct inet_sock` begins with `struct sock`: its own fields lie past it.
        assert!(offsets.inet_sport > offsets.skc_v6_rcv_saddr);
        assert!(offsets.inet_saddr > offsets.skc_v6_rcv_saddr);
    }

    /// A kernel without a type or field the programs read is refused with one line naming it.
    #[test]
    fn names_what_the_kernel_lacks() {
        let btf = read_kernel_btf(Path::new(VMLINUX_BTF)).unwrap();
        let btf = KernelBtf(Btf::from_bytes(&btf).unwrap());
        assert_eq!(btf.tracepoint_arguments("inet_sock_set_state"), 4);
        assert_eq!(btf.tracepoint_arguments("no_such_tracepoint"), 0);
        let err = btf.offset("sock", "no_such_field").unwrap_err().to_string();
        assert_eq!(err, "kernel BTF: struct sock has no member `no_such_field`");
        let err = format!("{:#}", btf.offset("no_such_struct", "x").unwrap_err());
        assert!(
            err.contains("no_such_struct") && !err.contains('\n'),
            "{err}"
        );
    }
}
