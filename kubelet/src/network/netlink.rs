//! Small rtnetlink helpers shared by the pod network's modules: connections (also inside another
//! network namespace), link lookups and errno checks.

use std::future::Future;
use std::os::fd::AsFd;
use std::path::Path;

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};

use super::{NetworkError, Result, io_err, sys_err};

pub(crate) fn nl_err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

/// The errno of a netlink error answer (positive), if it is one.
pub(crate) fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(message.raw_code().abs()),
        _ => None,
    }
}

/// Maps an error with the given errno to `Ok(())` (EEXIST on add, ENODEV/ESRCH on delete).
pub(crate) fn ignore_errno(
    result: Result<(), rtnetlink::Error>,
    ignored: &[i32],
) -> Result<(), rtnetlink::Error> {
    match result {
        Err(e) if errno(&e).is_some_and(|code| ignored.contains(&code)) => Ok(()),
        other => other,
    }
}

/// A route netlink connection in the calling thread's network namespace, driven by the current
/// tokio runtime.
pub(crate) fn connect() -> Result<Handle> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(io_err("opening a route netlink socket"))?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Runs `work` with a netlink connection inside the network namespace at `netns`: on a thread
/// of its own that joins the namespace and runs its own current-thread runtime, so no thread
/// of the caller's runtime ever changes namespace.
pub(crate) async fn in_netns<F, Fut, T>(netns: &Path, work: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
    T: Send + 'static,
{
    let file =
        std::fs::File::open(netns).map_err(io_err(format!("opening {}", netns.display())))?;
    let what = format!("entering {}", netns.display());
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let run = || -> Result<T> {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(sys_err(what))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(io_err("starting a runtime in a pod network namespace"))?;
            runtime.block_on(async { work(connect()?).await })
        };
        let _ = tx.send(run());
    });
    rx.await.unwrap_or_else(|_| {
        Err(NetworkError::Io {
            what: "working in a pod network namespace".to_string(),
            source: std::io::Error::other("the namespace thread panicked"),
        })
    })
}

/// The link named `name`, if there is one.
pub(crate) async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let result = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await;
    match result {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl_err(format!("looking up link {name}"))(e)),
    }
}

pub(crate) async fn all_links(handle: &Handle) -> Result<Vec<LinkMessage>> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("listing links"))
}

pub(crate) fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

pub(crate) fn link_attr_u32(
    link: &LinkMessage,
    pick: fn(&LinkAttribute) -> Option<u32>,
) -> Option<u32> {
    link.attributes.iter().find_map(pick)
}

/// The ifindex of a veth's peer (in the peer's namespace).
pub(crate) fn link_peer(link: &LinkMessage) -> Option<u32> {
    link_attr_u32(link, |a| match a {
        LinkAttribute::Link(index) => Some(*index),
        _ => None,
    })
}

pub(crate) fn link_controller(link: &LinkMessage) -> Option<u32> {
    link_attr_u32(link, |a| match a {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    })
}

pub(crate) fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link_attr_u32(link, |a| match a {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

pub(crate) async fn set_link_up(handle: &Handle, index: u32, what: &str) -> Result<()> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl_err(format!("setting {what} up")))
}

pub(crate) async fn delete_link(handle: &Handle, index: u32, what: &str) -> Result<()> {
    ignore_errno(handle.link().del(index).execute().await, &[libc::ENODEV])
        .map_err(nl_err(format!("deleting {what}")))
}
