//! Linker flags for the BPF object.
fn main() {
    // bpf-linker passes LLVM `-bpf-expand-memcpy-in-order` by default, which also turns every
    // zeroing of a struct or array into a call to a byte-at-a-time `memset` loop (several hundred
    // instructions per event). Without it LLVM writes zeroes and copies a word at a time. The
    // ordering it preserves only helps JITs that pattern-match memcpy (offloaded NICs), not x86
    // or arm64.
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
