//! `inet_sock_set_state`: every TCP state transition, in the steps a reader expects:
//!
//! 1. [`Change::read`]: the socket's record (since when it is in its state, its owner, the port
//!    it serves) tells how long it spent in the old state; an active close hands the connection
//!    over to a timewait socket.
//! 2. [`Change::count`]: the transition and the time spent are counted in the aggregates, and
//!    how the connection ended when it did.
//! 3. [`Change::report`]: an event goes to the ring buffer only when the daemon logs every
//!    transition or a socket leaves a watched state after its threshold.
//! 4. [`Change::keep`]: the record follows the socket (or moves to a timewait record), and the
//!    index of sockets in watched states follows the record.
//! 5. A connection that takes over the address of a timewait socket ends that timewait phase.
//!
//! The steps share one [`Change`] on the stack and read each setting alone (`global!`): the
//! program's whole chain of frames stays far below the 512 bytes of kernels without a private
//! stack.
use aya_ebpf::{helpers::generated, macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{
    End, EventKind, LastClose, RECENT_CLOSES as RECENT_CLOSES_LEN, SockRecord, TcpState, Tuple,
    TwRecord, UNKNOWN_DURATION, counter,
    ends::{errno, socket_error},
    event_flags, record_flags, runs_in_owner_context,
    settings::watches,
    tuple::service_port,
};

use crate::{
    account,
    maps::{
        CHANGES, LINGERING, NESTING, RECENT_CLOSES, SCRATCH_WATCH, SOCKETS, THRESHOLDS, TIMEWAIT,
        TW_TIMER_HANDLER, WATCHED, global,
    },
    output::{count, count_failure, passes_filter, reserve, submit, write_current_comm},
    read::{current_pid, disguised, full_socket_tuple, member, now, socket_id},
    timewait::end_timewait,
};

const CLOSE: u8 = TcpState::Close as u8;
const LISTEN: u8 = TcpState::Listen as u8;
const SYN_SENT: u8 = TcpState::SynSent as u8;
const SYN_RECV: u8 = TcpState::SynRecv as u8;
const ESTABLISHED: u8 = TcpState::Established as u8;
const FIN_WAIT2: u8 = TcpState::FinWait2 as u8;
const CLOSING: u8 = TcpState::Closing as u8;
const TIME_WAIT: u8 = TcpState::TimeWait as u8;
/// A state number no socket has: no record.
const NONE: u8 = 0;
/// `BPF_NOEXIST`: insert only where no entry is.
const BPF_NOEXIST: u64 = 1;
/// What a map insert returns when the entry exists already (-EEXIST).
const EEXIST: i32 = -17;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    // tp_btf rather than the classic tracepoint: no record is formatted for it, and the kernel
    // skips it only while it interrupts itself, not while any tracing program runs on the CPU.
    let sk: u64 = ctx.arg(0);
    let old = ctx.arg::<i32>(1) as u8;
    let new = ctx.arg::<i32>(2) as u8;
    if old as usize >= TcpState::COUNT || new as usize >= TcpState::COUNT {
        return 0;
    }
    // The kernel's own cast: null unless a full TCP socket, and typed as `struct tcp_sock`, so
    // the `inet_sock` fields past `struct sock` may be loaded.
    // SAFETY: the helper checks its argument.
    let tcp = unsafe { generated::bpf_skc_to_tcp_sock(sk as *mut _) } as u64;
    if tcp == 0 {
        return 0;
    }
    // The change is built in this CPU's scratch space, not on the program's small stack: one
    // slot per level of nesting (kernels before 6.x let a softirq run the program again on top
    // of a run it interrupted).
    let Some(depth) = NESTING.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's counter; a nested run restores it before the outer run resumes.
    let level = unsafe { *depth };
    let Some(change) = CHANGES.get_ptr_mut(level) else {
        count(counter::SKIPPED_NESTED);
        return 0;
    };
    // SAFETY: as above.
    unsafe { *depth = level + 1 };
    // SAFETY: this level's slot, no one else's while the program runs.
    let change = unsafe { &mut *change };
    if change.fill(sk, tcp, old, new) {
        // A socket accepted from a listener begins at LISTEN -> SYN_RECV, as a copy of its
        // listener: it has no record of its own yet, and before 6.x it still carries the
        // listener's cookie there, so the listener's record must not be taken for its own.
        let record = if change.is_child() {
            None
        } else {
            SOCKETS.get_ptr_mut(change.cookie)
        };
        change.read(sk, record);
        change.count(sk);
        change.report();
        let kept = change.keep(&ctx, record);
        change.index(&ctx, kept);
        // A connection reusing the address of a timewait socket ends it (TIME-WAIT reuse on
        // connect, or a SYN accepted on a TIME-WAIT address).
        if (old == SYN_SENT && new == ESTABLISHED) || (old == LISTEN && new == SYN_RECV) {
            let at = if old == SYN_SENT && change.known {
                change.since
            } else {
                change.ts
            };
            end_timewait(&change.tuple, at, 0);
        }
    }
    // SAFETY: as above.
    unsafe { *depth = level };
    0
}

/// One transition, as the steps see it: plain scalars (the verifier follows them better than
/// options or copies of records), in per-CPU scratch space ([`CHANGES`]).
pub(crate) struct Change {
    tuple: Tuple,
    /// The socket's address, as a number (the kernel's typed pointer cannot be kept in a map:
    /// the steps that read the socket take it as an argument).
    sk: u64,
    /// The socket's id (`socket_id`): its cookie, or its address on older kernels.
    cookie: u64,
    ts: u64,
    /// Since when the record says the socket is in its state.
    since: u64,
    /// Time spent in the old state, or `UNKNOWN_DURATION`.
    spent: u64,
    /// The owner's pid, 0 when unknown.
    pid: u32,
    service_port: u16,
    old: u8,
    new: u8,
    /// The state of the connection afterwards: `new`, or at an active close the timewait
    /// socket's (TIME_WAIT, or FIN_WAIT2 lingering on).
    next: u8,
    /// The record's state before (NONE: there was no record).
    had_state: u8,
    had_flags: u8,
    reset_reason: u8,
    syn_retransmits: u8,
    /// The record shows the old state: it speaks for it.
    known: bool,
    /// ... and knows since when (not only since the tracer first saw it).
    age_known: bool,
    /// The kernel handed the connection over to a timewait socket.
    handover: bool,
    /// How the connection ended (an [`End`], 0 when it did not) and the socket's error.
    end: u8,
    error: u8,
}

impl Change {
    /// The socket and the transition; false when the socket is not traced (another family, or
    /// left out by the user's filters).
    #[inline(always)]
    fn fill(&mut self, sk: u64, tcp: u64, old: u8, new: u8) -> bool {
        if !full_socket_tuple(sk, tcp, &mut self.tuple) {
            return false;
        }
        if !passes_filter(&self.tuple) {
            return false;
        }
        count(counter::TRANSITIONS);
        self.sk = sk;
        self.cookie = socket_id(sk);
        self.ts = now();
        self.since = 0;
        self.spent = UNKNOWN_DURATION;
        self.pid = 0;
        self.service_port = service_port(old, &self.tuple);
        self.old = old;
        self.new = new;
        self.next = new;
        self.had_state = NONE;
        self.had_flags = 0;
        self.reset_reason = 0;
        self.syn_retransmits = 0;
        self.known = false;
        self.age_known = false;
        self.handover = false;
        self.end = 0;
        self.error = 0;
        true
    }

    /// What the record knew, and where the connection goes.
    #[inline(always)]
    fn read(&mut self, sk: u64, record: Option<*mut SockRecord>) {
        let (old, new, ts) = (self.old, self.new, self.ts);
        let change = self;
        if let Some(r) = record {
            // SAFETY: the map value lives while the program runs (RCU); a socket's transitions
            // are serialized by its lock.
            unsafe {
                change.since = (*r).since_ns;
                change.had_state = (*r).state;
                change.had_flags = (*r).flags;
                change.pid = (*r).pid;
                change.service_port = (*r).service_port;
                change.reset_reason = (*r).reset_reason;
                change.syn_retransmits = (*r).syn_retransmits;
            }
            change.known = change.had_state == old;
            change.age_known = change.known && change.had_flags & record_flags::AGE_KNOWN != 0;
            if change.age_known {
                change.spent = ts.saturating_sub(change.since);
            }
        }
        if runs_in_owner_context(old, new) {
            change.pid = current_pid();
        }
        // At an active close the kernel hands the connection to a timewait socket, which took
        // the full socket's place in the connection table: TIME_WAIT, or FIN_WAIT2 lingering on
        // (a closed socket whose FIN was acknowledged but whose peer has not closed).
        change.handover = new == CLOSE
            && (old == FIN_WAIT2 || old == CLOSING)
            && TW_TIMER_HANDLER.get(0).is_some_and(|h| *h != 0)
            && member::<u64>(sk, global!(OFFSETS.skc_nulls_pprev)) == 0;
        if change.handover {
            change.next = if old == CLOSING || fin_received(sk) {
                TIME_WAIT
            } else {
                FIN_WAIT2
            };
        }
    }

    /// A socket just accepted from a listener (a copy of it): its first transition.
    #[inline(always)]
    fn is_child(&self) -> bool {
        self.old == LISTEN && self.new == SYN_RECV
    }

    /// A lingering FIN-WAIT-2: the connection stays in FIN_WAIT2, held by a timewait socket.
    #[inline(always)]
    fn lingers(&self) -> bool {
        self.handover && self.next == FIN_WAIT2
    }

    /// Counts the transition, the time spent in the old state, a connect's time, and how the
    /// connection ended.
    #[inline(always)]
    fn count(&mut self, sk: u64) {
        let port_labels = global!(CONFIG.port_labels) != 0;
        if !self.lingers() {
            account::transition(self.old, self.next, self.service_port, port_labels);
            if self.age_known && self.old != self.next {
                account::duration(self.old, self.spent, self.service_port, port_labels);
            }
        }
        if self.old == SYN_SENT && self.new == ESTABLISHED && self.age_known {
            account::connect_duration(self.spent, self.syn_retransmits != 0);
        }
        if self.new == CLOSE {
            self.count_end(sk);
        }
    }

    /// How the connection ended: the kernel set the socket's error before closing it, and a
    /// reset of its own was recorded. A reset sent right after the close amends it (`ends`).
    #[inline(always)]
    fn count_end(&mut self, sk: u64) {
        let err: i32 = member(sk, global!(OFFSETS.sk_err));
        let err = if (0..=255).contains(&err) {
            err as u8
        } else {
            255
        };
        self.error = socket_error(self.old, err, self.tuple.sport);
        let reset_sent = self.had_flags & record_flags::RESET_SENT != 0;
        let Some(end) = End::classify(self.old, self.handover, self.error, reset_sent) else {
            return;
        };
        self.end = end as u8;
        account::end(end, self.old == SYN_SENT, self.error, 1);
        if let Some(recent) = RECENT_CLOSES.get_ptr_mut(0) {
            // SAFETY: this CPU's slots, no one else's while the program runs (a nested run
            // writes a slot of its own); the index is masked into bounds.
            unsafe {
                let slot = ((*recent).next as usize) & (RECENT_CLOSES_LEN - 1);
                (*recent).entries[slot] = LastClose {
                    cookie: self.cookie,
                    end: self.end,
                    old: self.old,
                    _pad: [0; 6],
                };
                (*recent).next += 1;
            }
        }
    }

    /// Writes the event when the daemon wants it. It goes before the index changes: the daemon
    /// reads the index, then the ring buffer, so a socket gone from the index always has its
    /// event there already.
    #[inline(always)]
    fn report(&self) {
        if self.lingers() {
            return;
        }
        let long_stay = self.known
            && self.old != self.next
            && watches(global!(CONFIG.watched), self.old)
            && THRESHOLDS
                .get(self.old as u32)
                .is_some_and(|threshold| self.ts.saturating_sub(self.since) >= *threshold);
        // A connect that found no local port: rare, and what a reader of the log must see even
        // in quiet mode (`connect_failed` lines); it fails in the caller's system call.
        let failed_connect = self.end == End::Error as u8 && self.error == errno::EADDRNOTAVAIL;
        if global!(CONFIG.log_all) == 0 && !long_stay && !failed_connect {
            return;
        }
        let mut flags = 0;
        if long_stay {
            flags |= event_flags::LONG_STAY;
        }
        if self.handover {
            flags |= event_flags::TIMEWAIT;
        }
        let Some(mut entry) = reserve(counter::LOST_TRANSITIONS) else {
            return;
        };
        let event = entry.as_mut_ptr();
        let connected = self.old == SYN_SENT && self.new == ESTABLISHED;
        // Written field by field from the change, after the reservation: nothing waits on the
        // stack across the call.
        // SAFETY: the reservation holds one `Event`; every field is written before it is
        // submitted.
        unsafe {
            (*event).ts_ns = self.ts;
            // Read back from the map: plain data, never the typed pointer the verifier would
            // refuse arithmetic on.
            (*event).sock = disguised(core::ptr::read_volatile(&self.sk));
            (*event).cookie = self.cookie;
            (*event).prev_state_ns = self.spent;
            (*event).tuple = self.tuple;
            (*event).owner.pid = self.pid;
            (*event).owner._pad = 0;
            (*event).owner.comm = [0; 16];
            // Only the owner's own system call runs as the owner.
            if runs_in_owner_context(self.old, self.new) || failed_connect {
                write_current_comm(event);
            }
            (*event).kind = EventKind::Transition as u8;
            (*event).old = self.old;
            (*event).new = self.next;
            (*event).flags = flags;
            (*event).service_port = self.service_port;
            (*event).end = self.end;
            (*event).error = self.error;
            (*event).reset_reason = if self.end == End::ResetSent as u8 {
                self.reset_reason
            } else {
                0
            };
            (*event).syn_retransmits = if connected { self.syn_retransmits } else { 0 };
            (*event)._pad = [0; 6];
        }
        submit(entry);
    }

    /// The record follows the socket; returns the state it holds afterwards (NONE: no record).
    #[inline(always)]
    fn keep(&self, ctx: &BtfTracePointContext, record: Option<*mut SockRecord>) -> u8 {
        let had = self.had_state != NONE;
        if self.handover {
            self.hand_over(ctx);
            if had {
                let _ = SOCKETS.remove(self.cookie);
            }
            return NONE;
        }
        if self.new == CLOSE {
            if had {
                let _ = SOCKETS.remove(self.cookie);
            }
            account::moved(had.then_some(self.had_state), None);
            return NONE;
        }
        if let Some(r) = record {
            if self.old == self.new && self.known {
                // A state set again (close() after shutdown() in LAST_ACK) keeps its clock.
                // SAFETY: as in `read`.
                unsafe { (*r).pid = self.pid };
            } else {
                // SAFETY: as in `read`.
                unsafe {
                    (*r).since_ns = self.ts;
                    (*r).pid = self.pid;
                    (*r).netns = self.tuple.netns;
                    (*r).service_port = self.service_port;
                    (*r).state = self.new;
                    (*r).flags = record_flags::AGE_KNOWN;
                    (*r).reset_reason = 0;
                    (*r).syn_retransmits = 0;
                }
                account::moved(Some(self.had_state), Some(self.new));
            }
            return self.new;
        }
        let fresh = SockRecord {
            since_ns: self.ts,
            pid: self.pid,
            netns: self.tuple.netns,
            service_port: self.service_port,
            state: self.new,
            flags: record_flags::AGE_KNOWN,
            reset_reason: 0,
            syn_retransmits: 0,
            _pad: 0,
        };
        // A child never replaces a record: under its listener's cookie (before 6.x) that is the
        // listener's. It gets its own at its next transition, under its own cookie.
        let flags = if self.is_child() { BPF_NOEXIST } else { 0 };
        match SOCKETS.insert(self.cookie, &fresh, flags) {
            Ok(()) => {
                account::moved(None, Some(self.new));
                self.new
            }
            Err(EEXIST) => NONE,
            Err(_) => {
                count_failure(ctx, counter::RECORD_FAILED);
                NONE
            }
        }
    }

    /// The connection moves to a timewait record, by address.
    #[inline(always)]
    fn hand_over(&self, ctx: &BtfTracePointContext) {
        let lingers = self.lingers();
        let tw = TwRecord {
            since_ns: if lingers && self.known {
                self.since
            } else {
                self.ts
            },
            cookie: self.cookie,
            pid: self.pid,
            service_port: self.service_port,
            substate: self.next,
            flags: if !lingers || self.age_known {
                record_flags::AGE_KNOWN
            } else {
                0
            },
        };
        let stored = TIMEWAIT.insert(&self.tuple, &tw, 0).is_ok();
        if !stored {
            count_failure(ctx, counter::RECORD_FAILED);
        } else if lingers && LINGERING.insert(&self.tuple, &0, 0).is_err() {
            // Its silent move to TIME-WAIT will not be looked for: the kernel's list tells at
            // the next reconciliation.
            count_failure(ctx, counter::RECORD_FAILED);
        }
        let had = self.had_state != NONE;
        account::moved(had.then_some(self.had_state), stored.then_some(self.next));
    }

    /// The index of full sockets in watched states follows the record (`kept`: its state now).
    #[inline(always)]
    fn index(&self, ctx: &BtfTracePointContext, kept: u8) {
        let watched = global!(CONFIG.watched);
        let was_watched = self.had_state != NONE && watches(watched, self.had_state);
        if kept == NONE || !watches(watched, kept) {
            if was_watched {
                let _ = WATCHED.remove(self.cookie);
            }
            return;
        }
        if was_watched && let Some(e) = WATCHED.get_ptr_mut(self.cookie) {
            if kept != self.had_state || !(self.old == self.new && self.known) {
                // SAFETY: the map value lives while the program runs; serialized per socket.
                unsafe {
                    (*e).since_ns = self.ts;
                    (*e).pid = self.pid;
                    (*e).state = kept;
                    (*e).flags = record_flags::AGE_KNOWN;
                }
            }
            return;
        }
        // A new entry is built in per-CPU scratch space, not on the stack.
        let Some(entry) = SCRATCH_WATCH.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: this CPU's scratch slot, no one else's while the program runs.
        let entry = unsafe {
            (*entry).since_ns = self.ts;
            (*entry).tuple = self.tuple;
            (*entry).pid = self.pid;
            (*entry).service_port = self.service_port;
            (*entry).state = kept;
            (*entry).flags = record_flags::AGE_KNOWN;
            &*entry
        };
        if WATCHED.insert(self.cookie, entry, 0).is_err() {
            count_failure(ctx, counter::WATCH_FAILED);
        }
    }
}

/// Whether the socket received its peer's FIN (`SOCK_DONE` in `sk_flags`).
#[inline(always)]
fn fin_received(sk: u64) -> bool {
    let flags: u64 = member(sk, global!(OFFSETS.skc_flags));
    let done_bit = global!(OFFSETS.sock_done_bit);
    done_bit < 64 && (flags >> done_bit) & 1 != 0
}
