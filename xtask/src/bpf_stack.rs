//! Static check of a BPF object's stack: for every program of a BPF ELF object, its deepest chain
//! of BPF-to-BPF calls and the stack that chain needs, counted as the kernel verifier's
//! `check_max_stack_depth` does when there is no private stack. The verifier refuses a chain over
//! 512 bytes ("combined stack size of N calls is X. Too large") only at load time, on the target
//! kernel; this finds it at build time.
//!
//! The rules modelled:
//! - a function's frame is the deepest stack byte it touches: the largest `-off` of any access
//!   through `r10` or a pointer derived from it (`r2 = r10; r2 += -16`), including pointers handed
//!   to helpers (which read or write upwards from the pointer) and pointers to the caller's stack
//!   that a callee dereferences below their start (the verifier charges those to the caller);
//!   rounded up to 8 bytes, the stack slot, as current kernels report it (older ones print the
//!   exact byte; the 32-byte rounding below makes that difference vanish);
//! - along a call chain the frames are summed, each rounded up to 32 bytes, `max(depth, 1)` first:
//!   the rule of 5.10 and of the interpreter. JIT kernels round to 16, so this is the conservative
//!   figure and never below any kernel's;
//! - BPF-to-BPF calls are `call` with src_reg 1, resolved through their relocation (a symbol plus
//!   `imm + 1` instructions) or, without one, relative to the call; helper and kfunc calls are not
//!   frames. A `lddw` relocated against code (a callback for `bpf_loop`, a timer...) counts as a
//!   call from the function that takes the address: exact for synchronous callbacks, an
//!   overestimate for asynchronous ones, which the verifier checks as chains of their own.
//!
//! Every path of a function is explored, not only those the verifier finds feasible, so the
//! figures can exceed the verifier's. They fall short of them only where the analysis has to
//! guess: a stack pointer moved by an index it cannot bound is assumed to move upwards (and
//! `Chain::notes` says where); a stack pointer stored through anything but `r10` itself is charged
//! from where it points when stored but not followed further; a stack pointer handed to a
//! callback through a helper (`bpf_loop`'s context) is not followed into the callback. Not checked
//! either: the verifier's 256-byte limit on frames below a tail call.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    fmt,
};

use anyhow::{Context as _, Result, anyhow, bail};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind, SymbolKind};

/// The verifier's limit on the combined stack of a call chain (`MAX_BPF_STACK`).
pub const VERIFIER_LIMIT: u32 = 512;

/// Frame granularity of 5.10 and of the interpreter: the coarsest any kernel rounds to.
pub const FRAME_ROUNDING: u32 = 32;

/// One function of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Demangled, without its hash, when it is a Rust symbol; as in the object otherwise.
    pub function: String,
    /// Its own stack, as the verifier reports it in `stack depth A+B+C`.
    pub depth: u32,
    /// What the chain is charged for it: `depth` rounded up to [`FRAME_ROUNDING`].
    pub rounded: u32,
}

/// A program's deepest chain of frames, the program's own first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub program: String,
    pub section: String,
    pub frames: Vec<Frame>,
    /// The sum of the frames' `rounded`.
    pub total: u32,
    /// Where the analysis had to assume something (a stack pointer moved by an unknown amount).
    pub notes: Vec<String>,
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} =", self.program, self.total)?;
        for (i, frame) in self.frames.iter().enumerate() {
            let plus = if i == 0 { "" } else { " +" };
            write!(
                f,
                "{plus} {} ({}, frame {})",
                frame.rounded, frame.function, frame.depth
            )?;
        }
        for note in &self.notes {
            write!(f, " [{note}]")?;
        }
        Ok(())
    }
}

/// One line per program, in the object's order.
pub fn report(chains: &[Chain]) -> String {
    chains.iter().map(|chain| format!("{chain}\n")).collect()
}

/// Every program of the BPF ELF object `elf` (each global function of an executable section
/// other than `.text`) with its deepest call chain.
pub fn analyze(elf: &[u8]) -> Result<Vec<Chain>> {
    analyze_image(&Image::parse(elf)?)
}

/// Every function of the BPF ELF object `elf` with its own frame, in the object's order: where
/// the stack goes, whichever chains a function is on.
pub fn frames(elf: &[u8]) -> Result<Vec<Frame>> {
    frames_of(&Image::parse(elf)?)
}

/// `frame` rounded as the chain is charged for it.
pub const fn rounded(frame: u32) -> u32 {
    let frame = if frame == 0 { 1 } else { frame };
    frame.div_ceil(FRAME_ROUNDING) * FRAME_ROUNDING
}

// ---------------------------------------------------------------------------------------------
// The object, reduced to what the analysis needs. Tests build it by hand.

/// What a relocated instruction points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A symbol in an executable section: index into `Image::sections`, and the symbol's value.
    Code { section: usize, value: u64 },
    /// Anything else: a map, a global, an extern (kfunc).
    Data,
}

#[derive(Debug, Clone)]
struct Symbol {
    name: String,
    global: bool,
}

#[derive(Debug, Clone)]
struct Section {
    name: String,
    code: Vec<u8>,
    /// Function symbols by offset.
    functions: BTreeMap<u64, Symbol>,
    /// Relocations by the offset of the instruction they patch.
    relocations: BTreeMap<u64, Target>,
}

#[derive(Debug, Clone)]
struct Image {
    sections: Vec<Section>,
    little_endian: bool,
}

impl Image {
    fn parse(elf: &[u8]) -> Result<Image> {
        let file = object::File::parse(elf).map_err(|e| anyhow!("parsing the BPF object: {e}"))?;
        let code_sections: Vec<_> = file
            .sections()
            .filter(|s| s.kind() == SectionKind::Text)
            .collect();
        let position: HashMap<_, _> = code_sections
            .iter()
            .enumerate()
            .map(|(i, s)| (s.index(), i))
            .collect();
        let mut sections = Vec::with_capacity(code_sections.len());
        for section in &code_sections {
            let name = section.name().map_err(|e| anyhow!("a section name: {e}"))?;
            let code = section.data().map_err(|e| anyhow!("section {name}: {e}"))?;
            let mut relocations = BTreeMap::new();
            for (offset, relocation) in section.relocations() {
                let object::RelocationTarget::Symbol(symbol) = relocation.target() else {
                    continue;
                };
                let symbol = file
                    .symbol_by_index(symbol)
                    .map_err(|e| anyhow!("section {name}, relocation at {offset:#x}: {e}"))?;
                let target = match symbol.section_index().and_then(|i| position.get(&i)) {
                    Some(&section) => Target::Code {
                        section,
                        value: symbol.address(),
                    },
                    None => Target::Data,
                };
                relocations.insert(offset, target);
            }
            sections.push(Section {
                name: name.to_owned(),
                code: code.to_vec(),
                functions: BTreeMap::new(),
                relocations,
            });
        }
        for symbol in file.symbols() {
            if symbol.kind() != SymbolKind::Text {
                continue;
            }
            let Some(&section) = symbol.section_index().and_then(|i| position.get(&i)) else {
                continue;
            };
            let name = symbol.name().map_err(|e| anyhow!("a symbol name: {e}"))?;
            sections[section].functions.insert(
                symbol.address(),
                Symbol {
                    name: name.to_owned(),
                    global: symbol.is_global(),
                },
            );
        }
        Ok(Image {
            sections,
            little_endian: file.is_little_endian(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Instructions.

const INSN: u64 = 8;

const CLASS_LD: u8 = 0x00;
const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_ALU: u8 = 0x04;
const CLASS_JMP: u8 = 0x05;
const CLASS_JMP32: u8 = 0x06;
const CLASS_ALU64: u8 = 0x07;

const LDDW: u8 = 0x18;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const PSEUDO_CALL: u8 = 1;
const PSEUDO_FUNC: u8 = 4;
const MODE_MEM: u8 = 0x60;
const MODE_ATOMIC: u8 = 0xc0;
const FP: u8 = 10;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Insn {
    code: u8,
    dst: u8,
    src: u8,
    off: i16,
    imm: i32,
    /// The whole constant of a `lddw`.
    imm64: i64,
}

impl Insn {
    fn class(self) -> u8 {
        self.code & 0x07
    }

    fn is_lddw(self) -> bool {
        self.code == LDDW
    }

    /// Bytes accessed by a load or store.
    fn size(self) -> i64 {
        match self.code & 0x18 {
            0x00 => 4,
            0x08 => 2,
            0x10 => 1,
            _ => 8,
        }
    }
}

/// One entry per 8-byte slot; the second half of a `lddw` decodes as an inert default, and is
/// never reached because the `lddw` steps over it.
fn decode(code: &[u8], little_endian: bool) -> Result<Vec<Insn>> {
    if !code.len().is_multiple_of(INSN as usize) {
        bail!(
            "{} bytes of code is not a whole number of instructions",
            code.len()
        );
    }
    let words: Vec<&[u8]> = code.chunks_exact(INSN as usize).collect();
    let mut insns = vec![Insn::default(); words.len()];
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        let (dst, src) = if little_endian {
            (w[1] & 0x0f, w[1] >> 4)
        } else {
            (w[1] >> 4, w[1] & 0x0f)
        };
        let (off, imm) = if little_endian {
            (
                i16::from_le_bytes([w[2], w[3]]),
                i32::from_le_bytes([w[4], w[5], w[6], w[7]]),
            )
        } else {
            (
                i16::from_be_bytes([w[2], w[3]]),
                i32::from_be_bytes([w[4], w[5], w[6], w[7]]),
            )
        };
        let mut insn = Insn {
            code: w[0],
            dst,
            src,
            off,
            imm,
            imm64: i64::from(imm),
        };
        if insn.is_lddw() {
            let Some(next) = words.get(i + 1) else {
                bail!("lddw at {:#x} is cut short", i as u64 * INSN);
            };
            let high = if little_endian {
                i32::from_le_bytes([next[4], next[5], next[6], next[7]])
            } else {
                i32::from_be_bytes([next[4], next[5], next[6], next[7]])
            };
            insn.imm64 = (i64::from(high) << 32) | i64::from(imm as u32);
            insns[i] = insn;
            i += 2;
        } else {
            insns[i] = insn;
            i += 1;
        }
    }
    Ok(insns)
}

// ---------------------------------------------------------------------------------------------
// Functions and calls.

/// A function of the image: a section and where it starts.
type FuncKey = (usize, u64);

struct Function {
    name: String,
    section: usize,
    start: u64,
    /// Slots of the function, from its start to the next function's.
    insns: Vec<Insn>,
    /// Relocation of each relocated slot, by slot index in `insns`.
    relocations: HashMap<usize, Target>,
    /// BPF-to-BPF calls and code references, by slot index in `insns`.
    calls: BTreeMap<usize, usize>,
}

/// Where a call or a code reference at byte `at` of `section` lands, or `None` for a helper or
/// kfunc call and for a `lddw` of data.
fn call_target(
    insn: Insn,
    section: usize,
    at: u64,
    relocation: Option<Target>,
) -> Result<Option<FuncKey>> {
    let landing = |base: u64, delta: i64| {
        base.checked_add_signed(delta)
            .ok_or_else(|| anyhow!("call at {at:#x} lands before its section"))
    };
    if insn.code == CALL && insn.src == PSEUDO_CALL {
        let delta = (i64::from(insn.imm) + 1) * INSN as i64;
        return match relocation {
            // libbpf: instruction `st_value / 8 + imm + 1` of the symbol's section.
            Some(Target::Code { section, value }) => Ok(Some((section, landing(value, delta)?))),
            Some(Target::Data) => bail!("call at {at:#x} is relocated against data"),
            None => Ok(Some((section, landing(at, delta)?))),
        };
    }
    if insn.is_lddw() {
        return match relocation {
            // libbpf: byte `st_value + imm` of the symbol's section.
            Some(Target::Code { section, value }) => {
                Ok(Some((section, landing(value, i64::from(insn.imm))?)))
            }
            // Already linked: `lddw rX, <func>` is marked and counts in instructions like a call.
            None if insn.src == PSEUDO_FUNC => Ok(Some((
                section,
                landing(at, (i64::from(insn.imm) + 1) * INSN as i64)?,
            ))),
            _ => Ok(None),
        };
    }
    Ok(None)
}

/// Splits the image's sections into functions: one starting at every function symbol and every
/// call target (as the verifier splits a program into subprograms), each running to the next.
fn functions(image: &Image) -> Result<(Vec<Function>, HashMap<FuncKey, usize>)> {
    let mut decoded = Vec::with_capacity(image.sections.len());
    let mut starts: Vec<BTreeSet<u64>> = Vec::with_capacity(image.sections.len());
    for section in &image.sections {
        decoded.push(
            decode(&section.code, image.little_endian)
                .with_context(|| format!("section {}", section.name))?,
        );
        starts.push(section.functions.keys().copied().collect());
    }
    for (s, insns) in decoded.iter().enumerate() {
        for (slot, &insn) in insns.iter().enumerate() {
            let at = slot as u64 * INSN;
            let relocation = image.sections[s].relocations.get(&at).copied();
            if let Some((section, start)) = call_target(insn, s, at, relocation)
                .with_context(|| format!("section {}", image.sections[s].name))?
            {
                let len = image
                    .sections
                    .get(section)
                    .map_or(0, |t| t.code.len() as u64);
                if !start.is_multiple_of(INSN) || start >= len {
                    bail!(
                        "{} at {at:#x} calls outside the code",
                        image.sections[s].name
                    );
                }
                starts[section].insert(start);
            }
        }
    }
    let mut funcs = Vec::new();
    let mut index = HashMap::new();
    for (s, section) in image.sections.iter().enumerate() {
        let bounds: Vec<u64> = starts[s]
            .iter()
            .copied()
            .chain([section.code.len() as u64])
            .collect();
        for pair in bounds.windows(2) {
            let (start, end) = (pair[0], pair[1]);
            let (first, last) = ((start / INSN) as usize, (end / INSN) as usize);
            let name = section.functions.get(&start).map_or_else(
                || format!("{}+{start:#x}", section.name),
                |sym| demangle(&sym.name),
            );
            let relocations = section
                .relocations
                .range(start..end)
                .map(|(&at, &target)| (((at - start) / INSN) as usize, target))
                .collect();
            index.insert((s, start), funcs.len());
            funcs.push(Function {
                name,
                section: s,
                start,
                insns: decoded[s][first..last].to_vec(),
                relocations,
                calls: BTreeMap::new(),
            });
        }
    }
    for func in &mut funcs {
        for (slot, &insn) in func.insns.iter().enumerate() {
            let at = func.start + slot as u64 * INSN;
            let relocation = func.relocations.get(&slot).copied();
            if let Some(key) = call_target(insn, func.section, at, relocation)? {
                let callee = index
                    .get(&key)
                    .ok_or_else(|| anyhow!("no function at {key:?}"))?;
                func.calls.insert(slot, *callee);
            }
        }
    }
    Ok((funcs, index))
}

// ---------------------------------------------------------------------------------------------
// The frame of one function: a forward data-flow analysis of where each register may point.

/// Base 0 is the function's own frame (`r10`); base `i` in 1..=5 is the value `ri` had on entry,
/// which may point into a caller's frame.
const BASES: usize = 6;

/// Offsets saturate here: well past the verifier's limit, and it keeps the analysis finite.
const CLAMP: i64 = 4096;

/// Visits of an instruction after which loops stop refining scalar bounds.
const WIDEN_AFTER: u32 = 32;

/// What a register or a spilled stack slot may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Val {
    /// For each base it may point into, the lowest offset from that base it may have.
    ptr: [Option<i64>; BASES],
    /// The bounds of the scalar it holds, when known on every path that makes it a scalar.
    range: Option<(i64, i64)>,
}

impl Val {
    const UNKNOWN: Val = Val {
        ptr: [None; BASES],
        range: None,
    };

    fn konst(c: i64) -> Val {
        Val::range(c, c)
    }

    fn range(lo: i64, hi: i64) -> Val {
        Val {
            range: Some((lo, hi)),
            ..Val::UNKNOWN
        }
    }

    fn base(base: usize) -> Val {
        let mut v = Val::UNKNOWN;
        v.ptr[base] = Some(0);
        v
    }

    fn is_ptr(&self) -> bool {
        self.ptr.iter().any(Option::is_some)
    }

    /// The bounds of a scalar that is nothing else.
    fn scalar(&self) -> Option<(i64, i64)> {
        if self.is_ptr() { None } else { self.range }
    }

    /// The pointers moved by at least `by` (the scalar part is the caller's business).
    fn moved(&self, by: i64) -> [Option<i64>; BASES] {
        self.ptr
            .map(|p| p.map(|p| p.saturating_add(by).clamp(-CLAMP, CLAMP)))
    }

    fn join(&self, other: &Val) -> Val {
        let mut ptr = self.ptr;
        for (mine, theirs) in ptr.iter_mut().zip(other.ptr) {
            *mine = match (*mine, theirs) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let range = match (self.range, other.range) {
            (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            _ => None,
        };
        Val { ptr, range }
    }

    /// `self` joined with `newer` where a loop keeps changing it: a range that still grows is
    /// dropped (a loop counter would otherwise grow it one step per pass). Pointers need no
    /// widening: their offsets only go down, and stop at `-CLAMP`.
    fn widen(&self, newer: &Val) -> Val {
        let joined = self.join(newer);
        let range = if joined.range == self.range {
            self.range
        } else {
            None
        };
        Val { range, ..joined }
    }
}

/// Wrapping would make a nonsense range; an overflowing bound is no bound.
fn checked_range(lo: Option<i64>, hi: Option<i64>) -> Option<(i64, i64)> {
    match (lo, hi) {
        (Some(lo), Some(hi)) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    regs: [Val; 11],
    /// 8-byte slots of the own frame written through `r10` itself, by offset: how the compiler
    /// spills, stack pointers included.
    slots: BTreeMap<i64, Val>,
}

impl State {
    fn entry() -> State {
        let mut regs = [Val::UNKNOWN; 11];
        for (i, reg) in regs.iter_mut().enumerate().take(BASES).skip(1) {
            *reg = Val::base(i);
        }
        regs[usize::from(FP)] = Val::base(0);
        State {
            regs,
            slots: BTreeMap::new(),
        }
    }

    /// Joins `other` in, widening if asked; whether that changed anything.
    fn join(&mut self, other: &State, widen: bool) -> bool {
        let merge = |mine: &Val, theirs: &Val| {
            if widen {
                mine.widen(theirs)
            } else {
                mine.join(theirs)
            }
        };
        let mut joined = self.clone();
        for (mine, theirs) in joined.regs.iter_mut().zip(&other.regs) {
            *mine = merge(mine, theirs);
        }
        // A slot only one side knows holds some scalar on the other: bounds unknown.
        for (off, theirs) in &other.slots {
            let mine = joined.slots.get(off).copied().unwrap_or(Val::UNKNOWN);
            joined.slots.insert(*off, merge(&mine, theirs));
        }
        for (off, mine) in joined.slots.iter_mut() {
            if !other.slots.contains_key(off) {
                *mine = merge(mine, &Val::UNKNOWN);
            }
        }
        let changed = joined != *self;
        *self = joined;
        changed
    }

    /// Forgets the slots a `size`-byte write at `r10 + off` overlaps.
    fn clobber(&mut self, off: i64, size: i64) {
        self.slots
            .retain(|&slot, _| slot + 8 <= off || off + size <= slot);
    }
}

/// What one function does with stack, as its callers need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Summary {
    /// The deepest byte of its own frame it touches, `-off`.
    deepest: i64,
    /// For each argument register, the lowest offset from its entry value that the function (or
    /// its callees) dereferences: a pointer into the caller's stack charges the caller.
    args: [Option<i64>; 5],
    /// Where a pointer into the own frame moved by an unknown amount.
    notes: Vec<String>,
    /// The same for pointers that came in as arguments: they matter only to a caller that passes
    /// a stack pointer there.
    arg_notes: [Vec<String>; 5],
}

impl Summary {
    /// A use of `val + off`, the pointer's target starting there and running upwards.
    fn touch(&mut self, val: &Val, off: i64) {
        for (base, p) in val.ptr.iter().enumerate() {
            let Some(p) = p else { continue };
            let at = p.saturating_add(off);
            if base == 0 {
                self.deepest = self.deepest.max(-at);
            } else {
                let arg = &mut self.args[base - 1];
                *arg = Some(arg.map_or(at, |a| a.min(at)));
            }
        }
    }

    /// Files `text` for every base `val` may point into.
    fn note(&mut self, val: &Val, text: &str) {
        for (base, p) in val.ptr.iter().enumerate() {
            if p.is_none() {
                continue;
            }
            let notes = if base == 0 {
                &mut self.notes
            } else {
                &mut self.arg_notes[base - 1]
            };
            if !notes.iter().any(|n| n == text) {
                notes.push(text.to_owned());
            }
        }
    }

    fn frame(&self) -> u32 {
        let deepest = self.deepest.clamp(0, CLAMP);
        (deepest as u32).div_ceil(8) * 8
    }
}

/// The value of a 64-bit ALU instruction, noting in `summary` where a pointer moves by an amount
/// it cannot bound.
fn alu64(op: u8, dst: Val, src: Val, summary: &mut Summary, at: &str) -> Val {
    match op {
        // mov
        0xb0 => src,
        // add: a pointer plus a scalar, a scalar plus a pointer, or two scalars.
        0x00 => {
            let range = match (dst.range, src.range) {
                (Some((a, b)), Some((c, d))) => checked_range(a.checked_add(c), b.checked_add(d)),
                _ => None,
            };
            let mut ptr = [None; BASES];
            for (side, other) in [(dst, src), (src, dst)] {
                if !side.is_ptr() {
                    continue;
                }
                let by = match other.scalar() {
                    Some((lo, _)) => lo,
                    None => {
                        // An index of unknown value: assumed not negative, as the compiler
                        // indexes upwards from the start of an object.
                        summary.note(
                            &side,
                            &format!("{at}: stack pointer plus an unknown amount, assumed ≥ 0"),
                        );
                        0
                    }
                };
                ptr = Val { ptr, range: None }
                    .join(&Val {
                        ptr: side.moved(by),
                        range: None,
                    })
                    .ptr;
            }
            Val { ptr, range }
        }
        // sub: a pointer minus a scalar, or the distance between two pointers (a scalar).
        0x10 => match src.scalar() {
            Some((lo, hi)) => Val {
                ptr: dst.moved(hi.saturating_neg()),
                range: dst
                    .range
                    .and_then(|(a, b)| checked_range(a.checked_sub(hi), b.checked_sub(lo))),
            },
            None if src.is_ptr() => Val::UNKNOWN,
            None => {
                summary.note(
                    &dst,
                    &format!("{at}: stack pointer minus an unknown amount, not counted"),
                );
                Val { range: None, ..dst }
            }
        },
        // neg
        0x80 => dst
            .scalar()
            .and_then(|(lo, hi)| checked_range(hi.checked_neg(), lo.checked_neg()))
            .map_or(Val::UNKNOWN, |(lo, hi)| Val::range(lo, hi)),
        // and with a mask: an index into a power-of-two table.
        0x50 => match src.scalar() {
            Some((mask, m)) if mask == m && mask >= 0 => Val::range(0, mask),
            _ => Val::UNKNOWN,
        },
        // mul and lsh of a non-negative range by a constant: scaled indices.
        0x20 | 0x60 => match (dst.scalar(), src.scalar()) {
            (Some((lo, hi)), Some((k, k2))) if k == k2 && lo >= 0 && k >= 0 => {
                let scale = |x: i64| {
                    if op == 0x20 {
                        x.checked_mul(k)
                    } else {
                        u32::try_from(k)
                            .ok()
                            .filter(|&k| k < 63)
                            .and_then(|k| x.checked_mul(1 << k))
                    }
                };
                checked_range(scale(lo), scale(hi))
                    .map_or(Val::UNKNOWN, |(lo, hi)| Val::range(lo, hi))
            }
            _ => Val::UNKNOWN,
        },
        _ => Val::UNKNOWN,
    }
}

/// The value of a 32-bit ALU instruction: 32-bit arithmetic on a pointer is refused, so only
/// scalars, zero-extended.
fn alu32(op: u8, dst: Val, src: Val) -> Val {
    let fits = |v: Val| {
        v.scalar()
            .filter(|&(lo, hi)| lo >= 0 && hi <= i64::from(u32::MAX))
    };
    match op {
        0xb0 => match src.scalar() {
            Some((c, c2)) if c == c2 => Val::konst(i64::from(c as u32)),
            _ => fits(src).map_or(Val::range(0, u32::MAX.into()), |(lo, hi)| {
                Val::range(lo, hi)
            }),
        },
        0x50 => match src.scalar() {
            Some((c, c2)) if c == c2 => Val::range(0, i64::from(c as u32)),
            _ => Val::range(0, u32::MAX.into()),
        },
        0x00 => match (fits(dst), fits(src)) {
            (Some((a, b)), Some((c, d))) if b + d <= i64::from(u32::MAX) => {
                Val::range(a + c, b + d)
            }
            _ => Val::range(0, u32::MAX.into()),
        },
        _ => Val::range(0, u32::MAX.into()),
    }
}

fn analyze_function(func: &Function, summaries: &[Option<Summary>]) -> Result<Summary> {
    let mut summary = Summary::default();
    let n = func.insns.len();
    let mut states: Vec<Option<State>> = vec![None; n];
    let mut visits = vec![0_u32; n];
    let mut work = VecDeque::new();
    let mut queued = vec![false; n];
    if n > 0 {
        states[0] = Some(State::entry());
        work.push_back(0);
        queued[0] = true;
    }
    while let Some(pc) = work.pop_front() {
        queued[pc] = false;
        let Some(mut st) = states[pc].clone() else {
            continue;
        };
        let insn = func.insns[pc];
        let at = format!("{} at {:#x}", func.name, func.start + pc as u64 * INSN);
        let mut next = vec![pc + 1];
        match insn.class() {
            CLASS_LD if insn.is_lddw() => {
                let relocated = func.relocations.contains_key(&pc) || insn.src != 0;
                st.regs[reg(insn.dst)] = if relocated {
                    Val::UNKNOWN
                } else {
                    Val::konst(insn.imm64)
                };
                next = vec![pc + 2];
            }
            CLASS_LD => {
                // Legacy packet loads clobber r0..r5 like a call.
                for reg in &mut st.regs[..6] {
                    *reg = Val::UNKNOWN;
                }
            }
            CLASS_LDX => {
                let base = st.regs[reg(insn.src)];
                summary.touch(&base, insn.off.into());
                let loaded = if insn.src == FP && insn.size() == 8 {
                    st.slots
                        .get(&insn.off.into())
                        .copied()
                        .unwrap_or(Val::UNKNOWN)
                } else if insn.code & 0xe0 == MODE_MEM && insn.size() < 8 {
                    // Zero-extended.
                    Val::range(0, (1_i64 << (8 * insn.size())) - 1)
                } else {
                    Val::UNKNOWN
                };
                st.regs[reg(insn.dst)] = loaded;
            }
            CLASS_ST | CLASS_STX => {
                let base = st.regs[reg(insn.dst)];
                summary.touch(&base, insn.off.into());
                let atomic = insn.class() == CLASS_STX && insn.code & 0xe0 == MODE_ATOMIC;
                let stored = if insn.class() == CLASS_ST {
                    Val::konst(insn.imm.into())
                } else {
                    st.regs[reg(insn.src)]
                };
                let off = i64::from(insn.off);
                if insn.dst == FP && insn.size() == 8 && !atomic {
                    st.clobber(off, 8);
                    st.slots.insert(off, stored);
                } else {
                    if insn.dst == FP {
                        st.clobber(off, insn.size());
                    }
                    // A stack pointer written anywhere else is used from there: charge it now.
                    summary.touch(&stored, 0);
                }
                if atomic {
                    // BPF_FETCH returns the old value in src; cmpxchg in r0.
                    if insn.imm & 0x01 != 0 {
                        st.regs[reg(insn.src)] = Val::UNKNOWN;
                    }
                    if insn.imm == 0xf1 {
                        st.regs[0] = Val::UNKNOWN;
                    }
                }
            }
            CLASS_ALU | CLASS_ALU64 => {
                let dst = st.regs[reg(insn.dst)];
                let src = if insn.code & 0x08 != 0 {
                    st.regs[reg(insn.src)]
                } else {
                    Val::konst(insn.imm.into())
                };
                let op = insn.code & 0xf0;
                st.regs[reg(insn.dst)] = if op == 0xb0 && insn.off != 0 {
                    Val::UNKNOWN // movsx
                } else if insn.class() == CLASS_ALU {
                    alu32(op, dst, src)
                } else {
                    alu64(op, dst, src, &mut summary, &at)
                };
            }
            CLASS_JMP | CLASS_JMP32 => {
                match insn.code {
                    CALL => {
                        // Helpers read or write upwards from the pointers they are given; which of
                        // r1..r5 are arguments is not known here, so all of them count.
                        for r in 1..=5 {
                            let val = st.regs[r];
                            summary.touch(&val, 0);
                        }
                        if let Some(&callee) = func.calls.get(&pc) {
                            let callee_summary =
                                summaries.get(callee).and_then(Option::as_ref).ok_or_else(
                                    || anyhow!("{}: callee analysed out of order", func.name),
                                )?;
                            for r in 0..5 {
                                let val = st.regs[r + 1];
                                if let Some(off) = callee_summary.args[r] {
                                    summary.touch(&val, off);
                                }
                                for text in &callee_summary.arg_notes[r] {
                                    summary.note(&val, text);
                                }
                            }
                        }
                        for reg in &mut st.regs[..6] {
                            *reg = Val::UNKNOWN;
                        }
                    }
                    EXIT => next.clear(),
                    _ => {
                        let op = insn.code & 0xf0;
                        let delta = if insn.class() == CLASS_JMP32 && op == 0x00 {
                            i64::from(insn.imm) // gotol
                        } else {
                            i64::from(insn.off)
                        };
                        let target = (pc as i64 + 1).saturating_add(delta);
                        if op == 0x00 {
                            next.clear();
                        }
                        // A jump out of the function is refused by the verifier: nothing to follow.
                        if let Ok(target) = usize::try_from(target) {
                            next.push(target);
                        }
                    }
                }
            }
            _ => {}
        }
        for succ in next {
            if succ >= n {
                continue;
            }
            visits[succ] += 1;
            let changed = match &mut states[succ] {
                Some(old) => old.join(&st, visits[succ] > WIDEN_AFTER),
                slot @ None => {
                    *slot = Some(st.clone());
                    true
                }
            };
            if changed && !queued[succ] {
                queued[succ] = true;
                work.push_back(succ);
            }
        }
    }
    Ok(summary)
}

fn reg(r: u8) -> usize {
    usize::from(r & 0x0f).min(10)
}

// ---------------------------------------------------------------------------------------------
// Chains.

fn analyze_image(image: &Image) -> Result<Vec<Chain>> {
    let (funcs, index) = functions(image)?;
    let mut summaries: Vec<Option<Summary>> = vec![None; funcs.len()];
    let mut best: Vec<Option<(u32, Vec<usize>)>> = vec![None; funcs.len()];
    let mut chains = Vec::new();
    for (s, section) in image.sections.iter().enumerate() {
        if section.name == ".text" {
            continue;
        }
        for (offset, symbol) in &section.functions {
            if !symbol.global {
                continue;
            }
            let f = *index
                .get(&(s, *offset))
                .ok_or_else(|| anyhow!("no function for {}", symbol.name))?;
            // Only what the program reaches: the verifier never sees the rest.
            summarize(f, &funcs, &mut summaries, &mut Vec::new())?;
            let (total, path) = deepest(f, &funcs, &summaries, &mut best)?;
            let notes = reachable(f, &funcs)
                .into_iter()
                .filter_map(|g| summaries[g].as_ref())
                .flat_map(|summary| summary.notes.iter().cloned())
                .collect();
            let frames = path
                .iter()
                .map(|&g| frame(&funcs[g], summaries[g].as_ref()))
                .collect();
            chains.push(Chain {
                program: symbol.name.clone(),
                section: section.name.clone(),
                frames,
                total,
                notes,
            });
        }
    }
    Ok(chains)
}

fn frames_of(image: &Image) -> Result<Vec<Frame>> {
    let (funcs, _) = functions(image)?;
    let mut summaries: Vec<Option<Summary>> = vec![None; funcs.len()];
    for f in 0..funcs.len() {
        summarize(f, &funcs, &mut summaries, &mut Vec::new())?;
    }
    Ok(funcs
        .iter()
        .zip(&summaries)
        .map(|(func, summary)| frame(func, summary.as_ref()))
        .collect())
}

fn frame(func: &Function, summary: Option<&Summary>) -> Frame {
    let depth = summary.map_or(0, Summary::frame);
    Frame {
        function: func.name.clone(),
        depth,
        rounded: rounded(depth),
    }
}

/// Analyses `f` after its callees, refusing a cycle (which the verifier refuses too).
fn summarize(
    f: usize,
    funcs: &[Function],
    summaries: &mut [Option<Summary>],
    visiting: &mut Vec<usize>,
) -> Result<()> {
    if summaries[f].is_some() {
        return Ok(());
    }
    if let Some(at) = visiting.iter().position(|&g| g == f) {
        let cycle: Vec<&str> = visiting[at..]
            .iter()
            .chain([&f])
            .map(|&g| funcs[g].name.as_str())
            .collect();
        bail!(
            "recursive calls, which BPF cannot do: {}",
            cycle.join(" -> ")
        );
    }
    visiting.push(f);
    for &callee in funcs[f].calls.values() {
        summarize(callee, funcs, summaries, visiting)?;
    }
    visiting.pop();
    summaries[f] = Some(analyze_function(&funcs[f], summaries)?);
    Ok(())
}

/// The deepest chain from `f`: its total and its functions. Cycles were refused by `summarize`.
fn deepest(
    f: usize,
    funcs: &[Function],
    summaries: &[Option<Summary>],
    best: &mut [Option<(u32, Vec<usize>)>],
) -> Result<(u32, Vec<usize>)> {
    if let Some(done) = &best[f] {
        return Ok(done.clone());
    }
    let own = rounded(summaries[f].as_ref().map_or(0, Summary::frame));
    let mut deepest_callee: (u32, Vec<usize>) = (0, Vec::new());
    let callees: BTreeSet<usize> = funcs[f].calls.values().copied().collect();
    for callee in callees {
        let chain = deepest(callee, funcs, summaries, best)?;
        if chain.0 > deepest_callee.0 {
            deepest_callee = chain;
        }
    }
    let mut path = vec![f];
    path.extend(deepest_callee.1);
    let result = (own.saturating_add(deepest_callee.0), path);
    best[f] = Some(result.clone());
    Ok(result)
}

/// `f` and every function it may call, directly or not.
fn reachable(f: usize, funcs: &[Function]) -> Vec<usize> {
    let mut seen = BTreeSet::from([f]);
    let mut todo = vec![f];
    while let Some(g) = todo.pop() {
        for &callee in funcs[g].calls.values() {
            if seen.insert(callee) {
                todo.push(callee);
            }
        }
    }
    seen.into_iter().collect()
}

// ---------------------------------------------------------------------------------------------
// Names.

/// `<tracer::transition::Change>::report` for a Rust symbol, without its hash; others unchanged
/// (`memcpy`, the programs).
fn demangle(raw: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Hand-assembled little-endian BPF.
    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Vec<u8> {
        let mut bytes = vec![code, (src << 4) | dst];
        bytes.extend(off.to_le_bytes());
        bytes.extend(imm.to_le_bytes());
        bytes
    }
    fn mov(dst: u8, src: u8) -> Vec<u8> {
        insn(0xbf, dst, src, 0, 0)
    }
    fn mov_imm(dst: u8, imm: i32) -> Vec<u8> {
        insn(0xb7, dst, 0, 0, imm)
    }
    fn add_imm(dst: u8, imm: i32) -> Vec<u8> {
        insn(0x07, dst, 0, 0, imm)
    }
    fn add(dst: u8, src: u8) -> Vec<u8> {
        insn(0x0f, dst, src, 0, 0)
    }
    /// `*(u64 *)(dst + off) = src`
    fn stx_dw(dst: u8, off: i16, src: u8) -> Vec<u8> {
        insn(0x7b, dst, src, off, 0)
    }
    /// `*(u8 *)(dst + off) = imm`
    fn st_b(dst: u8, off: i16, imm: i32) -> Vec<u8> {
        insn(0x72, dst, 0, off, imm)
    }
    /// `dst = *(u64 *)(src + off)`
    fn ldx_dw(dst: u8, src: u8, off: i16) -> Vec<u8> {
        insn(0x79, dst, src, off, 0)
    }
    fn lddw(dst: u8, imm: i64) -> Vec<u8> {
        let mut bytes = insn(LDDW, dst, 0, 0, imm as i32);
        bytes.extend(insn(0, 0, 0, 0, (imm >> 32) as i32));
        bytes
    }
    fn helper(id: i32) -> Vec<u8> {
        insn(CALL, 0, 0, 0, id)
    }
    fn pseudo_call(imm: i32) -> Vec<u8> {
        insn(CALL, 0, PSEUDO_CALL, 0, imm)
    }
    fn jeq_imm(dst: u8, imm: i32, off: i16) -> Vec<u8> {
        insn(0x15, dst, 0, off, imm)
    }
    fn ja(off: i16) -> Vec<u8> {
        insn(0x05, 0, 0, off, 0)
    }
    fn exit() -> Vec<u8> {
        insn(EXIT, 0, 0, 0, 0)
    }

    fn section(name: &str, code: &[Vec<u8>], functions: &[(u64, &str, bool)]) -> Section {
        Section {
            name: name.to_owned(),
            code: code.concat(),
            functions: functions
                .iter()
                .map(|&(at, name, global)| {
                    let name = name.to_owned();
                    (at, Symbol { name, global })
                })
                .collect(),
            relocations: BTreeMap::new(),
        }
    }

    fn image(sections: Vec<Section>) -> Image {
        Image {
            sections,
            little_endian: true,
        }
    }

    /// The one program of a section `prog` holding `code`.
    fn chain_of(code: &[Vec<u8>]) -> Chain {
        let chains = analyze_image(&image(vec![section("prog", code, &[(0, "p", true)])]))
            .expect("analysis");
        assert_eq!(chains.len(), 1);
        chains[0].clone()
    }

    fn own_frame(code: &[Vec<u8>]) -> u32 {
        chain_of(code).frames[0].depth
    }

    #[test]
    fn rounding_is_the_interpreters_32_bytes_and_an_empty_frame_counts() {
        assert_eq!(rounded(0), 32);
        assert_eq!(rounded(1), 32);
        assert_eq!(rounded(32), 32);
        assert_eq!(rounded(33), 64);
        assert_eq!(rounded(104), 128);
        assert_eq!(rounded(472), 480);
    }

    #[test]
    fn a_store_through_r10_is_the_frame() {
        assert_eq!(own_frame(&[stx_dw(FP, -24, 1), exit()]), 24);
        assert_eq!(own_frame(&[mov_imm(0, 0), exit()]), 0);
    }

    #[test]
    fn a_pointer_derived_from_r10_and_given_to_a_helper_counts_from_its_offset() {
        // r2 = r10; r2 += -40; r1 = map; call bpf_map_lookup_elem
        let code = [
            mov(2, FP),
            add_imm(2, -40),
            mov_imm(1, 0),
            helper(1),
            exit(),
        ];
        let chain = chain_of(&code);
        assert_eq!(chain.frames[0].depth, 40);
        assert_eq!(chain.total, 64);
    }

    #[test]
    fn the_access_offset_adds_to_the_derived_pointer_and_slots_round_to_8() {
        // *(u8 *)(r10 - 16 - 9): byte 25 below the frame pointer, in the slot down to 32.
        let code = [mov(3, FP), add_imm(3, -16), st_b(3, -9, 0), exit()];
        assert_eq!(own_frame(&code), 32);
    }

    #[test]
    fn a_stack_pointer_spilled_and_reloaded_is_still_followed() {
        let code = [
            mov(1, FP),
            add_imm(1, -48),
            stx_dw(FP, -8, 1),
            mov_imm(1, 0),
            ldx_dw(2, FP, -8),
            st_b(2, -16, 0),
            exit(),
        ];
        assert_eq!(own_frame(&code), 64);
    }

    #[test]
    fn paths_join_to_the_deeper_pointer() {
        let code = [
            mov(2, FP),
            jeq_imm(1, 0, 2),
            add_imm(2, -16),
            ja(1),
            add_imm(2, -80),
            st_b(2, 0, 0),
            exit(),
        ];
        assert_eq!(own_frame(&code), 80);
    }

    #[test]
    fn a_constant_or_a_bounded_index_moves_a_pointer_exactly() {
        // r2 = -48 (a lddw: both halves make the constant); r1 = r10 + r2
        let code = [lddw(2, -48), mov(1, FP), add(1, 2), st_b(1, 0, 0), exit()];
        assert_eq!(own_frame(&code), 48);
        // r2 is 16 or 24 (a field's offset picked by a branch): the pointer is at least -64 + 16.
        let code = [
            mov_imm(2, 24),
            jeq_imm(3, 0, 1),
            mov_imm(2, 16),
            mov(1, FP),
            add_imm(1, -64),
            add(1, 2),
            st_b(1, 0, 0),
            exit(),
        ];
        let chain = chain_of(&code);
        assert_eq!(chain.frames[0].depth, 48);
        assert!(chain.notes.is_empty(), "{:?}", chain.notes);
    }

    #[test]
    fn an_unknown_index_on_a_stack_pointer_is_noted() {
        let code = [
            ldx_dw(2, 1, 0),
            mov(1, FP),
            add_imm(1, -64),
            add(1, 2),
            st_b(1, 0, 0),
            exit(),
        ];
        let chain = chain_of(&code);
        assert_eq!(chain.frames[0].depth, 64);
        assert_eq!(chain.notes.len(), 1, "{:?}", chain.notes);
        assert!(
            chain.notes[0].contains("unknown amount"),
            "{:?}",
            chain.notes
        );
    }

    #[test]
    fn lddw_takes_two_slots() {
        let insns =
            decode(&[lddw(1, 0x1234_5678_9abc_def0), exit()].concat(), true).expect("decode");
        assert_eq!(insns.len(), 3);
        assert_eq!(insns[0].imm64, 0x1234_5678_9abc_def0);
        assert_eq!(insns[2].code, EXIT);
        // A jump counts the lddw as two slots: here it skips it and lands on the store.
        let code = [ja(2), lddw(1, 0), stx_dw(FP, -24, 1), exit()];
        assert_eq!(own_frame(&code), 24);
        // A call after a lddw is found at its byte offset, relocation included.
        let mut prog = section(
            "prog",
            &[lddw(1, 0), pseudo_call(0), exit()],
            &[(0, "p", true)],
        );
        prog.relocations.insert(
            16,
            Target::Code {
                section: 1,
                value: 0,
            },
        );
        let text = section(".text", &[exit(), stx_dw(FP, -8, 1), exit()], &[]);
        let chains = analyze_image(&image(vec![prog, text])).expect("analysis");
        let names: Vec<_> = chains[0]
            .frames
            .iter()
            .map(|f| f.function.as_str())
            .collect();
        assert_eq!(names, ["p", ".text+0x8"]);
        assert_eq!(chains[0].frames[1].depth, 8);
    }

    #[test]
    fn chains_sum_through_two_levels_of_calls_and_keep_the_deepest() {
        // .text: b at 0 (a 100-byte frame), a at 0x18 (8 bytes, calls b pc-relative), memcpy.
        let text = section(
            ".text",
            &[
                insn(0x62, FP, 0, -100, 0), // *(u32 *)(r10 - 100) = 0
                mov_imm(0, 0),
                exit(),
                stx_dw(FP, -8, 1),
                pseudo_call(-5), // slot 4: 4 + 1 - 5 = slot 0, b
                exit(),
                exit(),
            ],
            &[(0, "b", false), (0x18, "a", false), (0x30, "memcpy", true)],
        );
        // The program calls memcpy (through the section symbol), then a (through its symbol).
        let mut prog = section(
            "tp_btf/x",
            &[
                stx_dw(FP, -40, 1),
                pseudo_call(5), // .text + (5 + 1) * 8 = memcpy
                pseudo_call(-1),
                exit(),
                exit(), // a local helper function of the section, not a program
            ],
            &[(0, "x", true), (0x20, "local", false)],
        );
        prog.relocations.insert(
            8,
            Target::Code {
                section: 0,
                value: 0,
            },
        );
        prog.relocations.insert(
            16,
            Target::Code {
                section: 0,
                value: 0x18,
            },
        );
        let chains = analyze_image(&image(vec![text, prog])).expect("analysis");
        assert_eq!(
            chains.len(),
            1,
            "only global functions outside .text are programs"
        );
        let chain = &chains[0];
        let frames: Vec<_> = chain
            .frames
            .iter()
            .map(|f| (f.function.as_str(), f.depth, f.rounded))
            .collect();
        assert_eq!(frames, [("x", 40, 64), ("a", 8, 32), ("b", 104, 128)]);
        assert_eq!(chain.total, 224);
        assert_eq!(
            chain.to_string(),
            "x: 224 = 64 (x, frame 40) + 32 (a, frame 8) + 128 (b, frame 104)"
        );
    }

    #[test]
    fn a_callee_reaching_below_the_pointer_it_was_given_charges_the_caller() {
        let text = section(".text", &[st_b(1, -32, 0), exit()], &[(0, "f", false)]);
        let mut prog = section(
            "xdp",
            &[mov(1, FP), add_imm(1, -16), pseudo_call(-1), exit()],
            &[(0, "p", true)],
        );
        prog.relocations.insert(
            16,
            Target::Code {
                section: 0,
                value: 0,
            },
        );
        let chains = analyze_image(&image(vec![text, prog])).expect("analysis");
        let frames: Vec<_> = chains[0].frames.iter().map(|f| f.depth).collect();
        assert_eq!(frames, [48, 0]);
        assert_eq!(chains[0].total, 64 + 32);
    }

    #[test]
    fn a_callback_whose_address_is_taken_counts_as_a_call() {
        let text = section(".text", &[stx_dw(FP, -200, 1), exit()], &[(0, "cb", false)]);
        let mut prog = section("tc", &[lddw(2, 0), helper(181), exit()], &[(0, "p", true)]);
        prog.relocations.insert(
            0,
            Target::Code {
                section: 0,
                value: 0,
            },
        );
        let chains = analyze_image(&image(vec![text, prog])).expect("analysis");
        assert_eq!(chains[0].total, 32 + 224);
    }

    #[test]
    fn recursion_is_refused_not_looped_on() {
        let text = section(
            ".text",
            &[pseudo_call(1), exit(), pseudo_call(-3), exit()],
            &[(0, "a", false), (0x10, "b", false)],
        );
        let mut prog = section("prog", &[pseudo_call(-1), exit()], &[(0, "p", true)]);
        prog.relocations.insert(
            0,
            Target::Code {
                section: 0,
                value: 0,
            },
        );
        let error = analyze_image(&image(vec![text, prog])).expect_err("a cycle");
        assert!(error.to_string().contains("a -> b -> a"), "{error}");
    }

    #[test]
    fn a_loop_walking_down_the_stack_ends_charged_the_most() {
        let code = [
            mov(1, FP),
            add_imm(1, -8),
            st_b(1, 0, 0),
            jeq_imm(2, 0, -3),
            exit(),
        ];
        assert_eq!(own_frame(&code), CLAMP as u32);
    }

    #[test]
    fn rust_names_are_demangled_others_kept() {
        assert_eq!(
            demangle("_RNvNtCs9Puz4OTRVXD_13tracer_common5tuple16normalize_family"),
            "tracer_common::tuple::normalize_family"
        );
        assert_eq!(demangle("memcpy"), "memcpy");
    }
}
