//! Thin helpers over Linux process facilities: pidfds, `/proc` scans and
//! process-group signals.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// `pidfd_open(2)`: an fd that becomes readable when `pid` exits (without
/// reaping it). `ENOSYS` on kernels before 5.3.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; on success it returns a
    // new fd that nobody else owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: fd is a freshly opened descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Blocks until `pid` (a child of this process) has exited, leaving it
/// unreaped (`waitid(WEXITED | WNOWAIT)`). Fallback for kernels without pidfds.
pub(crate) fn wait_exited_no_reap(pid: i32) -> io::Result<()> {
    loop {
        // SAFETY: siginfo_t is plain old data; waitid only writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a local siginfo_t; idtype/flags are constants.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Non-blocking: has child `pid` exited (unreaped)? Used when the reactor
/// cannot watch the pidfd.
pub(crate) fn has_exited_no_reap(pid: i32) -> io::Result<bool> {
    // SAFETY: as in wait_exited_no_reap.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a local siginfo_t.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid filled the struct; si_pid is 0 when nothing has exited.
    Ok(unsafe { info.si_pid() } != 0)
}

/// Sends `sig` to process group `pgid`. "No such process" is not an error:
/// the group is already gone.
pub(crate) fn signal_group(pgid: i32, sig: Signal) -> nix::Result<()> {
    match killpg(Pid::from_raw(pgid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The fields of `/proc/<pid>/stat` we need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub state: u8,
    pub pgrp: i32,
}

impl Stat {
    /// Zombies (and dead tasks) have exited; they only wait to be reaped.
    pub(crate) fn is_dead(&self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x')
    }
}

/// Parses `/proc/<pid>/stat`: `pid (comm) state ppid pgrp ...`, where comm may
/// hold spaces and parentheses, so fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &[u8]) -> Option<Stat> {
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Stat { state, pgrp })
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist (any
/// more).
pub(crate) fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read(format!("/proc/{pid}/stat")).ok()?)
}

/// Is `pid` a process that has not exited?
pub(crate) fn is_alive(pid: i32) -> bool {
    stat(pid).is_some_and(|s| !s.is_dead())
}

/// Pids of the processes in group `pgid` that have not exited.
pub(crate) fn live_group_members(pgid: i32) -> io::Result<Vec<i32>> {
    let mut members = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // Processes vanish while we scan; a failed read means "gone".
        if let Some(st) = stat(pid) {
            if st.pgrp == pgid && !st.is_dead() {
                members.push(pid);
            }
        }
    }
    Ok(members)
}

/// Does `/proc/<pid>/environ` hold exactly the entry `<key>=<value>`?
/// Unreadable (gone, or not ours to read) counts as no.
pub(crate) fn environ_has(pid: i32, key: &str, value: &OsStr) -> bool {
    let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let mut wanted = Vec::with_capacity(key.len() + 1 + value.len());
    wanted.extend_from_slice(key.as_bytes());
    wanted.push(b'=');
    wanted.extend_from_slice(value.as_bytes());
    env.split(|&b| b == 0)
        .any(|entry| entry == wanted.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_comm() {
        let st = parse_stat(b"1234 (we ) ird (x)) S 1 777 777 0 -1 4194560 0").unwrap();
        assert_eq!(
            st,
            Stat {
                state: b'S',
                pgrp: 777
            }
        );
        let z = parse_stat(b"5 (z) Z 1 5 5 0").unwrap();
        assert!(z.is_dead());
        assert!(parse_stat(b"garbage").is_none());
        assert!(parse_stat(b"1 (x)").is_none());
    }

    #[test]
    fn own_process_is_visible() {
        let me = std::process::id() as i32;
        assert!(is_alive(me));
        let st = stat(me).unwrap();
        assert!(live_group_members(st.pgrp).unwrap().contains(&me));
        assert!(!environ_has(me, "MKECTL_NO_SUCH_VAR", OsStr::new("x")));
    }
}
