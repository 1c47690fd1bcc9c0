//! `skiff-shim`: the per-container supervisor the kubelet starts (see `skiff_kubelet::shim`), or
//! with `pause <pod-uid>` the pause process holding a pod's shared PID namespace.

fn main() {
    let mut args = std::env::args_os().skip(1);
    if args
        .next()
        .is_some_and(|a| a == skiff_kubelet::shim::pause::PAUSE_ARG)
    {
        let uid = args.next().unwrap_or_default();
        std::process::exit(skiff_kubelet::shim::pause::main(&uid.to_string_lossy()));
    }
    let code = match skiff_kubelet::shim::ShimArgs::parse(std::env::args_os().skip(1)) {
        Ok(args) => skiff_kubelet::shim::supervisor::main(args),
        Err(e) => {
            eprintln!("skiff-shim: {e}");
            2
        }
    };
    std::process::exit(code)
}
