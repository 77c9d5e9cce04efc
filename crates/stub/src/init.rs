//! The minimal init used when the stub is PID 1 (a container started
//! without `--init`).
//!
//! PID 1 gets no default signal handling, and every orphan in the container
//! is re-parented to it. Exec'ing the entry would leave the entry with both
//! duties; most servers do neither. So the stub stays: it spawns the entry,
//! forwards every catchable signal to it, reaps every child, and exits with
//! the entry's exit code, or 128 + the signal that killed it.
//!
//! Signals are blocked and taken with sigwaitinfo rather than handled: the
//! kernel never drops a blocked signal sent to PID 1, and nothing runs in
//! signal context.

use bundle_format::Bundle;

use crate::exit::exit_for;
use crate::launch::{self, Launch};
use crate::sys::{self, Forked};
use crate::ui;

/// Runs the entry as a child and supervises it. Never returns.
pub fn run(bundle: &Bundle<'_>, ready: &Launch) -> ! {
    let previous_mask = sys::block_all_signals();
    // SAFETY: the stub is single-threaded here: the only other thread it
    // ever starts (payload hashing) is joined before launch.
    let child = match unsafe { sys::fork() } {
        Ok(Forked::Child) => {
            sys::set_signal_mask(&previous_mask);
            let err = launch::exec(bundle, ready);
            ui::error(&format!("{err:#}"));
            sys::exit_now(i32::from(exit_for(&err).code()));
        }
        Ok(Forked::Parent(pid)) => pid,
        Err(err) => {
            ui::error(&format!("cannot start the entry: fork failed: {err}"));
            std::process::exit(1);
        }
    };
    loop {
        let signal = sys::wait_for_signal();
        if signal == libc::SIGCHLD {
            while let Some((pid, how)) = sys::reap_any() {
                if pid == child {
                    std::process::exit(how.status());
                }
            }
        } else {
            // The child may already be gone; its SIGCHLD is queued then.
            let _ = sys::kill(child, signal);
        }
    }
}
