//! `ssh -L` as a comparison path: a private `sshd` (a child of the bench, on
//! a free 127.0.0.1 port, generated host key, one authorized key, all in a
//! temp dir) and an `ssh -N -L 127.0.0.1:<local>:<target>` client to it. All
//! traffic stays on loopback. Needs Debian's openssh-server and
//! openssh-client (`apt-get install -y --no-install-recommends
//! openssh-server openssh-client`); the bench runs as root, so sshd's
//! privilege separation works (its `/run/sshd` is created when missing).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const SSHD: &str = "/usr/sbin/sshd";
const START_LIMIT: Duration = Duration::from_secs(20);

pub struct SshForward {
    dir: tempfile::TempDir,
    sshd: Child,
    ssh: Child,
    /// The forwarded port: a connection here is a tunnel to the target.
    pub local: SocketAddr,
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn log(dir: &Path, name: &str) -> Stdio {
    std::fs::File::create(dir.join(name))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// `(ssh, ssh-keygen)`, or why this path cannot be measured.
pub fn available() -> Result<(PathBuf, PathBuf), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root (sshd's privilege separation needs root)".into());
    }
    if !Path::new(SSHD).is_file() {
        return Err(format!(
            "{SSHD} missing (apt-get install -y --no-install-recommends openssh-server)"
        ));
    }
    let ssh = which("ssh").ok_or("ssh missing (apt-get install openssh-client)")?;
    let keygen =
        which("ssh-keygen").ok_or("ssh-keygen missing (apt-get install openssh-client)")?;
    Ok((ssh, keygen))
}

fn keygen(bin: &Path, file: &Path) -> Result<(), String> {
    let st = std::process::Command::new(bin)
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("ssh-keygen: {e}"))?;
    if !st.success() {
        return Err(format!("ssh-keygen failed: {st}"));
    }
    Ok(())
}

impl SshForward {
    /// Starts sshd and the forwarding client; returns once the forwarded
    /// port accepts connections (ssh opens it only after authenticating).
    pub async fn start(target: SocketAddr, cipher: &str) -> Result<SshForward, String> {
        let (ssh_bin, keygen_bin) = available()?;
        // sshd refuses to start without its privilege-separation directory.
        std::fs::create_dir_all("/run/sshd").map_err(|e| format!("/run/sshd: {e}"))?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        keygen(&keygen_bin, &d.join("host_key"))?;
        keygen(&keygen_bin, &d.join("id"))?;
        std::fs::copy(d.join("id.pub"), d.join("authorized_keys")).map_err(|e| e.to_string())?;
        let port = free_port().map_err(|e| e.to_string())?;
        let local_port = free_port().map_err(|e| e.to_string())?;
        let cfg = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile none\n\
             AuthorizedKeysFile {ak}\nPermitRootLogin prohibit-password\nStrictModes no\n\
             PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nAllowTcpForwarding yes\nPermitOpen {target}\nX11Forwarding no\n\
             PrintMotd no\nUseDNS no\nClientAliveInterval 0\nLogLevel INFO\n",
            hk = d.join("host_key").display(),
            ak = d.join("authorized_keys").display(),
        );
        std::fs::write(d.join("sshd_config"), cfg).map_err(|e| e.to_string())?;
        // sshd re-executes itself, so it must be started by absolute path.
        let sshd = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log(d, "sshd.out"))
            .stderr(log(d, "sshd.log"))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn sshd: {e}"))?;
        let sshd_addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_accepting(sshd_addr, || None).await.map_err(|_| {
            format!(
                "sshd not listening within {START_LIMIT:?}: {}",
                std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
            )
        })?;
        let ssh = Command::new(ssh_bin)
            .args(["-F", "/dev/null", "-N", "-T"])
            .args(["-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "IdentitiesOnly=yes"])
            .args(["-o", "ExitOnForwardFailure=yes"])
            .args(["-o", "LogLevel=ERROR"])
            .args(["-o", &format!("Ciphers={cipher}")])
            .arg("-i")
            .arg(d.join("id"))
            .args(["-p", &port.to_string()])
            .arg("-L")
            .arg(format!("127.0.0.1:{local_port}:{target}"))
            .arg("root@127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log(d, "ssh.out"))
            .stderr(log(d, "ssh.log"))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn ssh: {e}"))?;
        let mut fwd = SshForward {
            dir,
            sshd,
            ssh,
            local: ([127, 0, 0, 1], local_port).into(),
        };
        let exited = || {
            let st = fwd.ssh.try_wait().ok().flatten()?;
            Some(format!("ssh exited ({st})"))
        };
        if let Err(why) = wait_accepting(fwd.local, exited).await {
            let why = why.unwrap_or_else(|| format!("ssh forward not up within {START_LIMIT:?}"));
            return Err(format!("{why}:\n{}", fwd.logs()));
        }
        Ok(fwd)
    }

    /// The ssh client and the sshd listener (its session processes are
    /// its descendants).
    pub fn roots(&self) -> Vec<u32> {
        self.ssh.id().into_iter().chain(self.sshd.id()).collect()
    }

    pub fn logs(&self) -> String {
        let r = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "--- ssh log:\n{}\n--- sshd log:\n{}",
            r("ssh.log"),
            r("sshd.log")
        )
    }

    /// Stops the client (its sshd session ends with it), then sshd; anything
    /// of ours still alive after 5 s is killed.
    pub async fn stop(mut self) {
        let all = crate::procs::tree(&self.roots());
        for c in [&mut self.ssh, &mut self.sshd] {
            if let Some(pid) = c.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if tokio::time::timeout(Duration::from_secs(5), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
        // Session processes (children of sshd, started by us through it).
        let start = Instant::now();
        loop {
            let left: Vec<u32> = all
                .iter()
                .copied()
                .filter(|p| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(*p))
                .collect();
            if left.is_empty() {
                break;
            }
            if start.elapsed() > Duration::from_secs(5) {
                for p in left {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits until `addr` accepts a connection, trying every 20 ms. Between
/// tries `exited` says whether the process meant to listen there is gone:
/// `Err(Some(why))`; `Err(None)` once `START_LIMIT` has passed.
async fn wait_accepting(
    addr: SocketAddr,
    mut exited: impl FnMut() -> Option<String>,
) -> Result<(), Option<String>> {
    let start = Instant::now();
    while TcpStream::connect(addr).await.is_err() {
        if let Some(why) = exited() {
            return Err(Some(why));
        }
        if start.elapsed() > START_LIMIT {
            return Err(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st == "Z"))
        })
        .unwrap_or(true)
}
