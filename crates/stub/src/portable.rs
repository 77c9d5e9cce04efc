//! What a portable payload (`pack --portable`) needs from the stub beyond
//! the placeholders written at extraction (`tree::extract`): an Erlang
//! `epmd` started before the entry where the host has no `/bin/sh`.
//!
//! `erlexec` starts epmd with `system("epmd -daemon")`, and every C
//! library's `system()` runs `/bin/sh`, whatever the payload carries. With
//! no `/bin/sh` the call fails silently and a distributed node dies with
//! "register/listen error: econnrefused". Starting the same command first
//! is what `erlexec` would have done; a second `epmd -daemon` (erlexec's,
//! where there is a shell) finds the port taken and exits. See
//! docs/decisions/0060-portable-payloads.md.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use bundle_format::Bundle;
use bundle_format::portable::EPMD_KEY;

use crate::launch::Launch;
use crate::sys::{self, ExecTarget, Forked};

/// The shell `system()` runs.
const SYSTEM_SHELL: &str = "/bin/sh";

/// Starts the payload's epmd daemon if the manifest names one, the entry
/// has its tree, and the host has no `/bin/sh`. Costs one `stat` otherwise.
/// Failures are not errors: without epmd the node reports its own.
pub fn before_entry(bundle: &Bundle<'_>, ready: &Launch) {
    let Some(epmd) = bundle.manifest().build_value(EPMD_KEY) else {
        return;
    };
    let Some(tree) = &ready.tree else {
        return;
    };
    if Path::new(SYSTEM_SHELL).exists() {
        return;
    }
    let program = tree.path.join(epmd);
    let Ok(path) = CString::new(program.as_os_str().as_bytes()) else {
        return;
    };
    let argv = [path, c"-daemon".to_owned()];
    // SAFETY: the stub is single-threaded here (the extraction thread, if
    // any, has been joined), and the child only execs or exits.
    match unsafe { sys::fork() } {
        Ok(Forked::Child) => {
            sys::exec(ExecTarget::Path(&program), &argv, &[]);
            sys::exit_now(127);
        }
        // `epmd -daemon` returns once the daemon is listening.
        Ok(Forked::Parent(pid)) => sys::wait_pid(pid),
        Err(_) => {}
    }
}
