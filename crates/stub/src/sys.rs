//! Thin, safe wrappers over the few Linux system calls std does not offer.
//! Every `unsafe` block in the stub lives here, each with its reasoning.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// The effective user id.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// This process's id.
pub fn getpid() -> i32 {
    std::process::id() as i32
}

/// Mount flags of the file system holding `path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountFlags {
    /// Mounted read-only.
    pub read_only: bool,
    /// Mounted noexec.
    pub no_exec: bool,
}

/// Reads the mount flags of the file system that holds `path`.
pub fn mount_flags(path: &Path) -> io::Result<MountFlags> {
    let path = cstring(path)?;
    let mut buf = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string and `buf` points to
    // writable memory of the right size, which statvfs fills on success.
    cvt(unsafe { libc::statvfs(path.as_ptr(), buf.as_mut_ptr()) })?;
    // SAFETY: statvfs returned 0, so it initialised `buf`.
    let buf = unsafe { buf.assume_init() };
    Ok(MountFlags {
        read_only: buf.f_flag & libc::ST_RDONLY != 0,
        no_exec: buf.f_flag & libc::ST_NOEXEC != 0,
    })
}

/// Bytes an unprivileged user may still write on the file system holding
/// `path` (`f_bavail` blocks of `f_frsize`).
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let path = cstring(path)?;
    let mut buf = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: as in `mount_flags`.
    cvt(unsafe { libc::statvfs(path.as_ptr(), buf.as_mut_ptr()) })?;
    // SAFETY: statvfs returned 0, so it initialised `buf`.
    let buf = unsafe { buf.assume_init() };
    Ok(buf.f_bavail.saturating_mul(buf.f_frsize))
}

/// `access(path, W_OK | X_OK)`: can this user create entries in `path`?
pub fn can_write_dir(path: &Path) -> bool {
    let Ok(path) = cstring(path) else {
        return false;
    };
    // SAFETY: `path` is a valid NUL-terminated string.
    unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// An advisory lock operation.
#[derive(Debug, Clone, Copy)]
pub enum Lock {
    /// Shared lock, waiting for it.
    Shared,
    /// Exclusive lock, waiting for it.
    Exclusive,
    /// Exclusive lock, failing at once if held elsewhere.
    ExclusiveNow,
    /// Shared lock, failing at once if an exclusive lock is held.
    SharedNow,
}

/// Takes an flock(2) lock on `fd`. Returns `Ok(false)` when a non-blocking
/// attempt finds the lock held elsewhere.
pub fn flock(fd: &impl AsRawFd, lock: Lock) -> io::Result<bool> {
    let op = match lock {
        Lock::Shared => libc::LOCK_SH,
        Lock::Exclusive => libc::LOCK_EX,
        Lock::ExclusiveNow => libc::LOCK_EX | libc::LOCK_NB,
        Lock::SharedNow => libc::LOCK_SH | libc::LOCK_NB,
    };
    loop {
        // SAFETY: flock on a descriptor we own has no memory-safety preconditions.
        match cvt(unsafe { libc::flock(fd.as_raw_fd(), op) }) {
            Ok(_) => return Ok(true),
            Err(err) if err.raw_os_error() == Some(libc::EWOULDBLOCK) => return Ok(false),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Lets `fd` survive exec (clears FD_CLOEXEC), so the lock it holds lives as
/// long as the program we exec.
pub fn keep_across_exec(fd: &impl AsRawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: F_GETFD/F_SETFD on a descriptor we own only change its flags.
    unsafe {
        let flags = cvt(libc::fcntl(fd, libc::F_GETFD))?;
        cvt(libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC))?;
    }
    Ok(())
}

/// Creates an anonymous, executable in-memory file (`memfd_create`).
pub fn memfd_exec(name: &str) -> io::Result<File> {
    let name = CString::new(name).unwrap_or_default();
    // MFD_EXEC (Linux 6.3+) asks for an executable memfd explicitly, which
    // hosts with vm.memfd_noexec=1 require; older kernels reject the flag,
    // so retry without it.
    const MFD_EXEC: libc::c_uint = 0x0010;
    for flags in [libc::MFD_CLOEXEC | MFD_EXEC, libc::MFD_CLOEXEC] {
        // SAFETY: `name` is a valid NUL-terminated string.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: memfd_create returned a new descriptor that we own.
            return Ok(unsafe { File::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(err);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

/// What to exec.
#[derive(Debug)]
pub enum ExecTarget<'a> {
    /// A path on a file system that allows exec.
    Path(&'a Path),
    /// An open file (a memfd), executed with `execveat(fd, "", AT_EMPTY_PATH)`,
    /// which needs no /proc.
    Fd(RawFd),
}

/// Replaces this process with `target`. Returns only on failure.
///
/// The entry's environment is this process's, minus any variable that
/// `bundle_env` sets (each `NAME=value`), followed by `bundle_env`.
///
/// SIGPIPE goes back to its default first: Rust's runtime ignores it in the
/// stub, and an ignored signal stays ignored across exec, which would change
/// how the entry (say, a shell script with a pipeline) behaves. This is what
/// std's `Command` does for its children too.
pub fn exec(target: ExecTarget<'_>, argv: &[CString], bundle_env: &[CString]) -> io::Error {
    // SAFETY: setting a signal's disposition to SIG_DFL has no memory-safety
    // preconditions; no handler is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let argv_ptrs: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp_ptrs = environment_for_entry(bundle_env);
    match target {
        ExecTarget::Path(path) => {
            let path = match cstring(path) {
                Ok(path) => path,
                Err(err) => return err,
            };
            // SAFETY: all pointers are to NUL-terminated strings owned by
            // this frame, and both arrays end with a null pointer.
            unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
        }
        ExecTarget::Fd(fd) => {
            let empty = c"";
            // SAFETY: as above; `fd` is an open descriptor and AT_EMPTY_PATH
            // makes the kernel execute it directly.
            unsafe {
                libc::syscall(
                    libc::SYS_execveat,
                    fd,
                    empty.as_ptr(),
                    argv_ptrs.as_ptr(),
                    envp_ptrs.as_ptr(),
                    libc::AT_EMPTY_PATH,
                )
            };
        }
    }
    io::Error::last_os_error()
}

/// The entry's environment as exec wants it: pointers to this process's
/// variables that `bundle_env` does not set, then to `bundle_env`, then null.
fn environment_for_entry(bundle_env: &[CString]) -> Vec<*const libc::c_char> {
    let set_names: Vec<&[u8]> = bundle_env.iter().map(|v| env_name(v.to_bytes())).collect();
    let mut envp = Vec::with_capacity(inherited_environment().count() + bundle_env.len() + 1);
    envp.extend(
        inherited_environment()
            .filter(|entry| !set_names.contains(&env_name(entry.to_bytes())))
            .map(CStr::as_ptr),
    );
    envp.extend(bundle_env.iter().map(|v| v.as_ptr()));
    envp.push(std::ptr::null());
    envp
}

/// `NAME` of a `NAME=value` environment entry (the whole entry if it has
/// no `=`).
fn env_name(entry: &[u8]) -> &[u8] {
    entry.split(|&b| b == b'=').next().unwrap_or(entry)
}

/// This process's environment, as the C library holds it: borrowed, not
/// copied (copying it was the largest cost of a warm start).
fn inherited_environment() -> impl Iterator<Item = &'static CStr> {
    unsafe extern "C" {
        static environ: *const *const libc::c_char;
    }
    // SAFETY: `environ` is the C library's NULL-terminated array of
    // NUL-terminated strings. The stub never changes its environment (no
    // setenv, putenv or std::env::set_var anywhere), so the array and its
    // strings stay valid and unchanged until exec or exit; 'static is
    // therefore sound for this process. It can be null when the process was
    // started with no environment at all.
    let mut next = unsafe { environ };
    std::iter::from_fn(move || {
        if next.is_null() {
            return None;
        }
        // SAFETY: `next` points into the array described above, at or
        // before its terminating null pointer.
        let entry = unsafe { *next };
        if entry.is_null() {
            return None;
        }
        // SAFETY: a non-null entry is a NUL-terminated string (see above);
        // the array continues at least to its terminator.
        unsafe {
            next = next.add(1);
            Some(CStr::from_ptr(entry))
        }
    })
}

/// The path this program was executed as (`getauxval(AT_EXECFN)`), which the
/// kernel provides even when /proc is not mounted.
pub fn exec_path_from_auxv() -> Option<std::path::PathBuf> {
    // SAFETY: getauxval has no preconditions; AT_EXECFN, when present, points
    // to the NUL-terminated path on the initial stack, valid for the whole
    // life of the process.
    let ptr = unsafe { libc::getauxval(libc::AT_EXECFN) } as *const libc::c_char;
    if ptr.is_null() {
        return None;
    }
    // SAFETY: see above.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    Some(Path::new(OsStr::from_bytes(bytes)).to_owned())
}

/// Size of one ELF64 program header.
const PHDR_LEN: usize = 56;

/// This process's program header table where the kernel mapped it
/// (`AT_PHDR`, `AT_PHNUM`): its address and its bytes. `None` if the
/// auxiliary vector does not say.
pub fn loaded_program_headers() -> Option<(usize, &'static [u8])> {
    // SAFETY: getauxval has no preconditions.
    let (phdr, phnum) = unsafe {
        (
            libc::getauxval(libc::AT_PHDR),
            libc::getauxval(libc::AT_PHNUM),
        )
    };
    let phdr = usize::try_from(phdr).ok().filter(|&addr| addr != 0)?;
    let len = usize::try_from(phnum).ok()?.checked_mul(PHDR_LEN)?;
    // SAFETY: AT_PHDR is where the kernel mapped this process's program
    // header table, AT_PHNUM entries of PHDR_LEN bytes (we are ELF64); the
    // C library's start-up has read it already, and it stays mapped for the
    // life of the process.
    let table = unsafe { std::slice::from_raw_parts(phdr as *const u8, len) };
    Some((phdr, table))
}

/// The result of a fork, seen from one side.
#[derive(Debug)]
pub enum Forked {
    /// We are the parent; this is the child's pid.
    Parent(i32),
    /// We are the child.
    Child,
}

/// Forks this process.
///
/// # Safety
///
/// The caller must be single-threaded, or must only call async-signal-safe
/// functions in the child before exec or `_exit`.
pub unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller upholds the threading contract above.
    let pid = cvt(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        Forked::Child
    } else {
        Forked::Parent(pid)
    })
}

/// Ends the process at once, without running destructors or flushing stdio
/// buffers (the right way to leave a forked child that failed to exec).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Starts a new session (detaches from the controlling terminal).
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid has no memory-safety preconditions.
    cvt(unsafe { libc::setsid() }).map(drop)
}

/// Makes `target` (0, 1 or 2) refer to the same file as `fd`.
pub fn dup_onto(fd: &impl AsRawFd, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 between two valid descriptors; the old `target` is closed
    // atomically, which is what we want for stdio.
    cvt(unsafe { libc::dup2(fd.as_raw_fd(), target) }).map(drop)
}

/// Sends `signal` to `pid`. `Ok(false)` if the process does not exist.
pub fn kill(pid: i32, signal: i32) -> io::Result<bool> {
    // SAFETY: kill has no memory-safety preconditions.
    match cvt(unsafe { libc::kill(pid, signal) }) {
        Ok(_) => Ok(true),
        Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        Err(err) => Err(err),
    }
}

/// Blocks every signal in this thread and returns the previous mask.
pub fn block_all_signals() -> libc::sigset_t {
    // SAFETY: sigfillset/pthread_sigmask only write to the sigset_t values
    // we pass, which live on this stack frame.
    unsafe {
        let mut all = std::mem::zeroed::<libc::sigset_t>();
        let mut old = std::mem::zeroed::<libc::sigset_t>();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    }
}

/// Restores a signal mask saved by [`block_all_signals`].
pub fn set_signal_mask(mask: &libc::sigset_t) {
    // SAFETY: `mask` is a valid sigset_t.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
    }
}

/// Waits for any signal (all must be blocked) and returns its number.
pub fn wait_for_signal() -> i32 {
    // SAFETY: sigfillset writes to our local set; sigwaitinfo writes the
    // signal's details to `info`, which is large enough.
    unsafe {
        let mut all = std::mem::zeroed::<libc::sigset_t>();
        libc::sigfillset(&mut all);
        let mut info = std::mem::zeroed::<libc::siginfo_t>();
        loop {
            let signal = libc::sigwaitinfo(&all, &mut info);
            if signal > 0 {
                return signal;
            }
        }
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl ChildExit {
    /// The shell-style exit status: the code, or 128 + the signal.
    pub fn status(self) -> i32 {
        match self {
            ChildExit::Code(code) => code,
            ChildExit::Signal(signal) => 128 + signal,
        }
    }
}

/// Reaps one exited child without waiting, if any: `(pid, how)`.
pub fn reap_any() -> Option<(i32, ChildExit)> {
    let mut status = 0;
    // SAFETY: waitpid writes the status to our local integer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid <= 0 {
        return None;
    }
    let how = if libc::WIFSIGNALED(status) {
        ChildExit::Signal(libc::WTERMSIG(status))
    } else {
        ChildExit::Code(libc::WEXITSTATUS(status))
    };
    Some((pid, how))
}

/// Waits for the child `pid` to end, reaping it; how it ended.
pub fn wait_exit(pid: i32) -> io::Result<ChildExit> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status to our local integer.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret == pid {
            return Ok(if libc::WIFSIGNALED(status) {
                ChildExit::Signal(libc::WTERMSIG(status))
            } else {
                ChildExit::Code(libc::WEXITSTATUS(status))
            });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Waits for the child `pid` to end, reaping it.
pub fn wait_pid(pid: i32) {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status to our local integer.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return;
    }
}

/// Drops the pages of `bytes` (part of a read-only, private file mapping)
/// from this process's resident set. They stay in the page cache and are
/// read back transparently if touched again. Only whole pages inside the
/// slice are released.
pub fn release_pages(bytes: &[u8]) {
    const PAGE: usize = 4096;
    let start = (bytes.as_ptr() as usize).next_multiple_of(PAGE);
    let end = (bytes.as_ptr() as usize + bytes.len()) & !(PAGE - 1);
    if end > start {
        // SAFETY: [start, end) lies within `bytes`, which is part of a
        // read-only private file mapping. MADV_DONTNEED on such a mapping
        // only drops our page-table entries; later reads fault the same file
        // contents back in, so every reference into the map stays valid.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// Maps the file this process is running from, read-only.
pub fn map_own_executable(file: &File) -> io::Result<memmap2::Mmap> {
    // SAFETY: the map is read-only and private. Undefined behaviour would
    // need the file to change while mapped. Opened as /proc/self/exe, it is
    // the executable this process is running, which Linux refuses to open
    // for writing or to truncate while it runs (ETXTBSY), and an update by
    // rename leaves our inode intact. Opened by path (AT_EXECFN, argv[0]),
    // it is the file a deployment put there, which is only ever replaced by
    // rename or by a copy that, running, is just as protected; tools that
    // rewrite a file in place (cp, scp) fail with ETXTBSY while any copy of
    // it runs. Every offset read is first checked against the map's length
    // (bundle_format::layout::locate), so no read goes past the end.
    unsafe { memmap2::Mmap::map(file) }
}

/// Maps a staged copy of a bundle (`upgrade`), read-only.
pub fn map_staged_copy(file: &File) -> io::Result<memmap2::Mmap> {
    // SAFETY: the map is read-only and private. The file is a copy that
    // this process has just created under a name of its own, next to the
    // bundle file (a directory the bundle's owner deploys to), and nothing
    // writes it again: it is only ever renamed or removed. Every offset read
    // is first checked against the map's length, so no read goes past the end.
    unsafe { memmap2::Mmap::map(file) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        assert_eq!(env_name(b"HOME=/root"), b"HOME");
        assert_eq!(env_name(b"EMPTY="), b"EMPTY");
        assert_eq!(env_name(b"A=b=c"), b"A");
        assert_eq!(env_name(b"NOEQUALS"), b"NOEQUALS");
    }

    #[test]
    fn the_inherited_environment_is_the_process_environment() {
        use std::os::unix::ffi::OsStrExt;
        let ours: Vec<Vec<u8>> = inherited_environment()
            .map(|e| e.to_bytes().to_vec())
            .collect();
        let std_view: Vec<Vec<u8>> = std::env::vars_os()
            .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
            .collect();
        assert!(!ours.is_empty());
        assert_eq!(ours, std_view);
    }

    #[test]
    fn bundle_variables_replace_inherited_ones() {
        let set = [
            c"PATH=/replaced".to_owned(),
            c"SYDNEY_TEST_NEW=1".to_owned(),
        ];
        let envp = environment_for_entry(&set);
        assert!(envp.last().unwrap().is_null());
        let entries: Vec<&[u8]> = envp[..envp.len() - 1]
            .iter()
            // SAFETY: every pointer but the last is a NUL-terminated string
            // from the environment or from `set`, all alive here.
            .map(|&p| unsafe { CStr::from_ptr(p) }.to_bytes())
            .collect();
        let paths: Vec<_> = entries.iter().filter(|e| e.starts_with(b"PATH=")).collect();
        assert_eq!(paths, [&&b"PATH=/replaced"[..]]);
        assert_eq!(
            entries[entries.len() - 2..],
            [&b"PATH=/replaced"[..], b"SYDNEY_TEST_NEW=1"]
        );
        assert_eq!(entries.len(), inherited_environment().count() + 1);
    }
}

/// Duplicates `fd` onto the lowest free descriptor at or above `min`,
/// close-on-exec (the supervisor keeps its sockets and lock above the range
/// a server child gets them in, so placing them from fd 3 overwrites none).
pub fn dup_above(fd: &impl AsRawFd, min: RawFd) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new
    // descriptor that nothing else owns.
    let new = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) })?;
    // SAFETY: `new` was just created and is owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(new) })
}

/// Blocks `signals` and returns a non-blocking signalfd that reports them,
/// so that a poll loop handles them with no signal handler.
pub fn signal_fd(signals: &[i32]) -> io::Result<File> {
    // SAFETY: sigemptyset/sigaddset write to our local set; sigprocmask and
    // signalfd read it; the new descriptor is owned by nobody else.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        cvt(libc::sigprocmask(
            libc::SIG_BLOCK,
            &set,
            std::ptr::null_mut(),
        ))?;
        let fd = cvt(libc::signalfd(
            -1,
            &set,
            libc::SFD_CLOEXEC | libc::SFD_NONBLOCK,
        ))?;
        Ok(File::from_raw_fd(fd))
    }
}

/// Reads one signal number from a [`signal_fd`] (`None` if none is pending).
pub fn read_signal(fd: &File) -> Option<i32> {
    // SAFETY: signalfd_siginfo is plain data; read fills at most its size.
    unsafe {
        let mut info = std::mem::zeroed::<libc::signalfd_siginfo>();
        let size = size_of::<libc::signalfd_siginfo>();
        let n = libc::read(fd.as_raw_fd(), (&raw mut info).cast::<libc::c_void>(), size);
        (n == size as isize).then_some(info.ssi_signo as i32)
    }
}

/// Waits up to `timeout_ms` (-1: forever) until one of `fds` is readable;
/// bit `i` of the result is set when `fds[i]` is.
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> u32 {
    let mut polled = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 4];
    for (slot, &fd) in polled.iter_mut().zip(fds) {
        slot.fd = fd;
    }
    let count = fds.len().min(polled.len());
    // SAFETY: `polled` holds `count` initialised pollfd entries.
    let n = unsafe { libc::poll(polled.as_mut_ptr(), count as libc::nfds_t, timeout_ms) };
    if n <= 0 {
        return 0;
    }
    polled[..count]
        .iter()
        .enumerate()
        .filter(|(_, p)| p.revents != 0)
        .fold(0, |bits, (i, _)| bits | 1 << i)
}

/// The uid of the process at the other end of a unix socket (`SO_PEERCRED`).
pub fn peer_uid(socket: &impl AsRawFd) -> io::Result<u32> {
    // SAFETY: getsockopt writes at most `len` bytes into our local ucred.
    unsafe {
        let mut cred = std::mem::zeroed::<libc::ucred>();
        let mut len = size_of::<libc::ucred>() as libc::socklen_t;
        cvt(libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast::<libc::c_void>(),
            &mut len,
        ))?;
        Ok(cred.uid)
    }
}

/// Reaps the child `pid` if it has ended, without waiting.
pub fn reap_now(pid: i32) -> Option<ChildExit> {
    let mut status = 0;
    // SAFETY: waitpid writes the status to our local integer.
    let ret = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if ret != pid {
        return None;
    }
    Some(if libc::WIFSIGNALED(status) {
        ChildExit::Signal(libc::WTERMSIG(status))
    } else {
        ChildExit::Code(libc::WEXITSTATUS(status))
    })
}

/// A server child's command line and environment, built before the fork
/// so that the child allocates nothing: its `LISTEN_PID=` entry has room
/// for the pid, which only the child knows, and it writes the digits there.
#[derive(Debug)]
pub struct ServerSpawn {
    path: CString,
    argv: Vec<CString>,
    /// Our own `NAME=value\0` entries; `LISTEN_PID=` last when `listen_pid`.
    extra: Vec<Vec<u8>>,
    listen_pid: bool,
}

/// Room for a pid's digits in `LISTEN_PID=` (pids are below 2^22).
const PID_DIGITS: usize = 10;

/// The variables of the socket-activation and notify protocols, which a
/// child gets from [`ServerSpawn`] only.
const PROTOCOL_VARS: [&[u8]; 4] = [
    b"LISTEN_FDS",
    b"LISTEN_PID",
    b"LISTEN_FDNAMES",
    b"NOTIFY_SOCKET",
];

impl ServerSpawn {
    /// `path args...` with this process's environment minus the variables
    /// of the socket-activation and notify protocols, plus `extra`
    /// (`NAME=value`), plus `LISTEN_FDS=sockets` and `LISTEN_PID` when
    /// `sockets` > 0.
    pub fn new(
        path: &Path,
        args: &[&OsStr],
        extra: &[String],
        sockets: usize,
    ) -> io::Result<ServerSpawn> {
        let argv = args
            .iter()
            .map(|a| cstring(Path::new(a)))
            .collect::<io::Result<Vec<_>>>()?;
        let mut own: Vec<Vec<u8>> = extra
            .iter()
            .map(|e| format!("{e}\0").into_bytes())
            .collect();
        if sockets > 0 {
            own.push(format!("LISTEN_FDS={sockets}\0").into_bytes());
            own.push([&b"LISTEN_PID="[..], &[0u8; PID_DIGITS + 1]].concat());
        }
        Ok(ServerSpawn {
            path: cstring(path)?,
            argv,
            extra: own,
            listen_pid: sockets > 0,
        })
    }

    /// Forks a child that gets `sockets` as fds 3, 4, ..., keeps `lock`
    /// open across exec, is sent SIGTERM if this process dies
    /// (`PR_SET_PDEATHSIG`), and execs. Returns the child's pid.
    pub fn spawn(&mut self, sockets: &[RawFd], lock: Option<RawFd>) -> io::Result<i32> {
        let argv: Vec<*const libc::c_char> = self
            .argv
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let mut envp: Vec<*const libc::c_char> = inherited_environment()
            .filter(|entry| !PROTOCOL_VARS.contains(&env_name(entry.to_bytes())))
            .map(CStr::as_ptr)
            .collect();
        envp.extend(self.extra.iter().map(|e| e.as_ptr().cast::<libc::c_char>()));
        envp.push(std::ptr::null());
        let listen_pid = match self.listen_pid {
            true => self
                .extra
                .last_mut()
                .map(|e| e.as_mut_ptr().cast::<libc::c_char>()),
            false => None,
        };
        let parent = getpid();
        // SAFETY: after fork the child calls only async-signal-safe functions
        // (sigprocmask, signal, prctl, getppid, dup2, fcntl, getpid, execve,
        // _exit) and writes only into memory prepared above (its private
        // copy: the LISTEN_PID digits); it allocates nothing.
        unsafe {
            let pid = cvt(libc::fork())?;
            if pid != 0 {
                return Ok(pid);
            }
            let mut none = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            for (i, &fd) in sockets.iter().enumerate() {
                // The supervisor's copies sit at fd 64 and above, so no
                // target here is one of them; dup2 clears close-on-exec.
                if libc::dup2(fd, FIRST_LISTEN_FD + i as RawFd) == -1 {
                    libc::_exit(126);
                }
            }
            if let Some(lock) = lock {
                let flags = libc::fcntl(lock, libc::F_GETFD);
                libc::fcntl(lock, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            }
            if let Some(slot) = listen_pid {
                // Digits of our pid, written after "LISTEN_PID=".
                let mut pid = libc::getpid() as u32;
                let mut digits = [0u8; PID_DIGITS];
                let mut n = 0;
                loop {
                    digits[n] = b'0' + (pid % 10) as u8;
                    n += 1;
                    pid /= 10;
                    if pid == 0 || n == PID_DIGITS {
                        break;
                    }
                }
                let value = slot.add(b"LISTEN_PID=".len());
                for i in 0..n {
                    *value.add(i) = digits[n - 1 - i] as libc::c_char;
                }
                *value.add(n) = 0;
            }
            libc::execve(self.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
}

/// Where inherited sockets start (systemd's `SD_LISTEN_FDS_START`).
pub const FIRST_LISTEN_FD: RawFd = 3;
