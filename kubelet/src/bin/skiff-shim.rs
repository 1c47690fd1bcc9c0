//! `skiff-shim`: the per-container supervisor the kubelet starts (see `skiff_kubelet::shim`).

fn main() {
    let code = match skiff_kubelet::shim::ShimArgs::parse(std::env::args_os().skip(1)) {
        Ok(args) => skiff_kubelet::shim::supervisor::main(args),
        Err(e) => {
            eprintln!("skiff-shim: {e}");
            2
        }
    };
    std::process::exit(code)
}
