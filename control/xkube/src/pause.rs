//! `xkube pause`: the infra process of a pod. It holds the pod's namespaces open, reaps
//! zombies when it is PID 1, and exits 0 on SIGTERM or SIGINT.

use nix::{
    sys::{
        signal::{SigSet, Signal},
        wait::{WaitPidFlag, waitpid},
    },
    unistd::Pid,
};

pub fn run() -> anyhow::Result<()> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        set.add(s);
    }
    set.thread_block()?;
    loop {
        match set.wait()? {
            Signal::SIGCHLD => {
                // Reap every exited child (we may be PID 1 of the pod).
                while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    if status == nix::sys::wait::WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            _ => return Ok(()),
        }
    }
}
