//! The host's way to a lab's API server: a process that listens on a 127.0.0.1 port in the
//! host's network namespace, then moves into the lab's namespace, from where it connects each
//! accepted connection to the server and copies bytes both ways. The listening socket stays in
//! the namespace it was made in, so no route or NAT is needed in the host's namespace.

use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::Context;

/// `skiff cluster forward`'s flags.
#[derive(clap::Args)]
pub struct ForwardArgs {
    /// The lab's network namespace (a name under /var/run/netns).
    #[arg(long)]
    netns: String,
    /// The address to connect to inside it.
    #[arg(long)]
    to: std::net::SocketAddr,
    /// Where to write the port listened on.
    #[arg(long)]
    port_file: PathBuf,
}

/// Forwards until killed.
pub fn run(args: ForwardArgs) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("listening on 127.0.0.1")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let ns_path = PathBuf::from("/var/run/netns").join(&args.netns);
    let ns =
        std::fs::File::open(&ns_path).with_context(|| format!("opening {}", ns_path.display()))?;
    // A thread of its own enters the lab's namespace and runs a runtime whose threads (made
    // by it, after) all live there: the connections it makes are the lab's.
    let to = args.to;
    let forwarding = std::thread::spawn(move || -> anyhow::Result<()> {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the lab's network namespace")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            // The port is announced once connections can be forwarded.
            skiff_apiserver::pki::write(&args.port_file, format!("{port}\n").as_bytes(), false)?;
            tracing::info!(port, %to, "forwarding 127.0.0.1:{port} to {to} in {}", args.netns);
            loop {
                let (mut inbound, _) = listener.accept().await?;
                tokio::spawn(async move {
                    match tokio::net::TcpStream::connect(to).await {
                        Ok(mut outbound) => {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                        Err(e) => tracing::warn!("connecting to {to}: {e}"),
                    }
                });
            }
        })
    });
    forwarding
        .join()
        .map_err(|_| anyhow::anyhow!("the forwarding thread panicked"))?
}
