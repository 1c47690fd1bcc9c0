//! Link flags for the skiff-runc binary only.
//!
//! Every container start runs the binary twice (the read-only re-exec, see sealed_exe.rs), and
//! the dynamic loader's share of that is mostly ~14,000 relative relocations. Packed relative
//! relocations (DT_RELR, glibc ≥ 2.36, lld) apply them from a bitmap a few KiB long instead of
//! a 340 KiB table.
//!
//! The functions a container start runs are laid out first and together, in the order they
//! are called (hot-text.ld, a linker script made by tools/hot-text.sh): the kernel maps 64 KiB
//! of code around every page touched, so scattered over the whole text they made ~1.3 MB of
//! the peak RSS, side by side ~0.4 MB. Names missing from a build match nothing.
fn main() {
    println!("cargo:rustc-link-arg-bin=skiff-runc=-Wl,-z,pack-relative-relocs");
    let script =
        std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("hot-text.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!(
        "cargo:rustc-link-arg-bin=skiff-runc=-Wl,-T,{}",
        script.display()
    );
}
