//! Link flags for the skiff-runc binary only.
//!
//! Every container start runs the binary twice (the read-only re-exec, see sealed_exe.rs), and
//! the dynamic loader's share of that is mostly ~14,000 relative relocations. Packed relative
//! relocations (DT_RELR, glibc ≥ 2.36, lld) apply them from a bitmap a few KiB long instead of
//! a 340 KiB table.
fn main() {
    println!("cargo:rustc-link-arg-bin=skiff-runc=-Wl,-z,pack-relative-relocs");
}
