//! Mount points below a node's directories, from `/proc/self/mountinfo`,
//! and detaching them: containerd leaves rootfs and shm mounts behind when
//! it dies, kubelet leaves pod volumes mounted when it stops, and deleting a
//! directory through a mount deletes what the mount points at.

use std::io;
use std::path::{Path, PathBuf};

use tracing::warn;

/// `component` of the log lines written here.
const COMPONENT: &str = "mounts";
/// The kernel's list of this process's mounts.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Decodes the octal escapes (`\040` for a space) mountinfo uses.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points in `mountinfo` text at or below any of `dirs`, deepest first.
pub fn mounts_below(mountinfo: &str, dirs: &[PathBuf]) -> Vec<PathBuf> {
    mounts_in(mountinfo, dirs, true)
}

/// Mount points strictly below any of `dirs` (not `dirs` themselves: a
/// data dir on its own disk stays mounted), deepest first.
pub fn mounts_strictly_below(mountinfo: &str, dirs: &[PathBuf]) -> Vec<PathBuf> {
    mounts_in(mountinfo, dirs, false)
}

/// Whether `dir` (as the kernel reports it) is itself a mount point.
pub fn is_mount_point(mountinfo: &str, dir: &Path) -> bool {
    let dirs = canonical_dirs(&[dir]);
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|f| dirs.iter().any(|d| Path::new(&unescape_mountinfo(f)) == d))
}

fn mounts_in(mountinfo: &str, dirs: &[PathBuf], with_dirs: bool) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|f| PathBuf::from(unescape_mountinfo(f)))
        .filter(|m| {
            dirs.iter()
                .any(|d| m.starts_with(d) && (with_dirs || m != d))
        })
        .collect();
    // Deepest first so a mount is never detached before one stacked below it.
    out.sort_by(|a, b| {
        b.components()
            .count()
            .cmp(&a.components().count())
            .then_with(|| a.cmp(b))
    });
    out.dedup();
    out
}

/// The dirs as the kernel reports them (symlinks resolved), where they exist.
pub fn canonical_dirs(dirs: &[&Path]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in dirs {
        out.push(d.to_path_buf());
        if let Ok(c) = d.canonicalize() {
            if c != *d {
                out.push(c);
            }
        }
    }
    out
}

/// Lazily unmounts every mount at or below `dirs` (deepest first). Returns the
/// mount points that were unmounted.
pub fn unmount_below(dirs: &[&Path]) -> Vec<PathBuf> {
    unmount_in(dirs, true)
}

/// Lazily unmounts every mount strictly below `dirs` (deepest first).
/// Returns the mount points that were unmounted.
pub fn unmount_strictly_below(dirs: &[&Path]) -> Vec<PathBuf> {
    unmount_in(dirs, false)
}

fn unmount_in(dirs: &[&Path], with_dirs: bool) -> Vec<PathBuf> {
    let dirs = canonical_dirs(dirs);
    let mut done = Vec::new();
    // A mount can hide others below it; a few rounds catch stacked mounts.
    for _ in 0..4 {
        let Ok(info) = std::fs::read_to_string(MOUNTINFO) else {
            break;
        };
        let mounts = mounts_in(&info, &dirs, with_dirs);
        if mounts.is_empty() {
            break;
        }
        for m in mounts {
            let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
            let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            if rc == 0 {
                done.push(m);
            } else {
                warn!(component = COMPONENT, mount = %m.display(), error = %io::Error::last_os_error(), "cannot unmount");
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_below_dirs_deepest_first() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/vda rw
90 22 0:50 / /r/containerd/state/io.containerd.runtime.v2.task/ns/a/rootfs rw - overlay overlay rw
91 22 0:51 / /r/containerd/state/x rw - tmpfs shm rw
92 22 0:52 / /d/containerd/root/with\\040space rw - tmpfs t rw
93 22 0:53 / /r/containerd-other/y rw - tmpfs t rw
";
        let dirs = [
            PathBuf::from("/d/containerd/root"),
            PathBuf::from("/r/containerd/state"),
        ];
        let m = mounts_below(info, &dirs);
        let strict = mounts_strictly_below(info, &dirs);
        assert_eq!(strict, m, "none of them is a dir itself");
        assert_eq!(
            m,
            [
                PathBuf::from("/r/containerd/state/io.containerd.runtime.v2.task/ns/a/rootfs"),
                PathBuf::from("/d/containerd/root/with space"),
                PathBuf::from("/r/containerd/state/x"),
            ]
        );
    }

    #[test]
    fn strictly_below_keeps_the_dir_itself() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/vda rw
40 22 8:2 / /var/lib/mke rw - ext4 /dev/vdb rw
41 40 0:60 / /var/lib/mke/kubelet/root/pods/p/volumes/s rw - tmpfs tmpfs rw
";
        let dirs = [PathBuf::from("/var/lib/mke")];
        assert_eq!(
            mounts_strictly_below(info, &dirs),
            [PathBuf::from("/var/lib/mke/kubelet/root/pods/p/volumes/s")]
        );
        assert_eq!(mounts_below(info, &dirs).len(), 2);
    }
}
