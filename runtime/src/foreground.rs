//! The foreground side of `run` and `exec` without `--detach`: the runtime stays the process's
//! parent, relays its pty when it has one, forwards the signals it receives and exits with the
//! process's code.

use crate::console::Proxy;
use crate::error::{Context, Result};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::os::unix::net::UnixStream;

const FORWARDED: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

pub struct Foreground {
    signals: SigSet,
    proxy: Option<Proxy>,
}

impl Foreground {
    /// Blocks SIGCHLD and the forwarded signals. Call it before the process is cloned so that
    /// none is lost; the child unblocks its own copy of the mask.
    pub fn block() -> Result<Foreground> {
        let mut signals = SigSet::empty();
        signals.add(Signal::SIGCHLD);
        for s in FORWARDED {
            signals.add(s);
        }
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None).ctx(|| "block signals".into())?;
        Ok(Foreground {
            signals,
            proxy: None,
        })
    }

    /// Relays between our stdio and the pty master the process sends over `socket`.
    pub fn relay_pty(&mut self, socket: &UnixStream) -> Result<()> {
        self.proxy = Some(Proxy::start(socket)?);
        Ok(())
    }

    /// Waits for `pid`, forwarding the signals we receive to it, and returns its exit code as a
    /// shell would (128+signal when killed).
    pub fn wait(self, pid: Pid) -> i32 {
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return code,
                Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
                Err(nix::errno::Errno::ECHILD) => return 255,
                _ => {}
            }
            match self.signals.wait() {
                Ok(Signal::SIGCHLD) | Err(_) => {}
                Ok(sig) => {
                    let _ = kill(pid, sig);
                }
            }
        }
    }
}
