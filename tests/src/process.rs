//! One `nats-server` child process: finding the binary, spawning it with a config file, learning
//! the ports it listens on, signalling it and reaping it.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep};

/// How often a waiting loop looks again.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Finds the `nats-server` binary with the one locator every part uses
/// ([`proxybus_shared::nats_server::locate`]): `$NATS_SERVER_BIN`, the project-local install,
/// `PATH`, `/usr/sbin`, skipping servers older than 2.11.
pub(crate) fn locate_binary() -> Result<PathBuf> {
    Ok(proxybus_shared::nats_server::locate()?.binary)
}

/// The address of every listener the server reported in its ports file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ListenPorts {
    /// Port for NATS clients.
    pub(crate) client: u16,
    /// Port of the HTTP monitoring endpoint.
    pub(crate) monitoring: u16,
}

/// Why a process did not come up.
#[derive(Debug)]
pub(crate) struct PortInUse;

impl fmt::Display for PortInUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port nats-server was told to listen on is in use")
    }
}

impl std::error::Error for PortInUse {}

/// A running `nats-server` child; dropping it kills and reaps the process.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Child,
    /// Length of the log file when this process was spawned: where its own output begins.
    log_offset: u64,
}

impl ServerProcess {
    /// Spawns `binary -c config`, appending its stdout and stderr to `log`.
    pub(crate) fn spawn(binary: &Path, config: &Path, log: &Path) -> Result<Self> {
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening nats-server log {}", log.display()))?;
        let log_offset = log_file.metadata()?.len();
        let child = Command::new(binary)
            .arg("-c")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        tracing::debug!(pid = child.id(), config = %config.display(), "spawned nats-server");
        Ok(Self { child, log_offset })
    }

    /// The operating-system process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended, without waiting.
    pub(crate) fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        self.child.try_wait().context("checking whether nats-server exited")
    }

    /// What this process wrote to `log` since it was spawned.
    pub(crate) fn own_output(&self, log: &Path) -> String {
        read_from(log, self.log_offset).unwrap_or_default()
    }

    /// Waits for the ports file `nats-server` writes once its listeners are up.
    ///
    /// Fails with [`PortInUse`] in the chain when the process exited because it could not bind.
    pub(crate) async fn wait_for_ports(
        &mut self,
        ports_dir: &Path,
        log: &Path,
        timeout: Duration,
    ) -> Result<ListenPorts> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ports) = read_ports_file(ports_dir, self.pid()) {
                return Ok(ports);
            }
            if let Some(status) = self.exit_status()? {
                let output = self.own_output(log);
                let error =
                    anyhow::anyhow!("nats-server exited ({status}) during startup; its output:\n{}", tail(&output));
                return Err(if output.contains("address already in use") { error.context(PortInUse) } else { error });
            }
            if Instant::now() >= deadline {
                bail!(
                    "nats-server did not report its ports within {timeout:?}; its output:\n{}",
                    tail(&self.own_output(log))
                );
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    /// Sends SIGTERM and waits for the process to exit; SIGKILL if it outlives `grace`.
    pub(crate) async fn terminate(&mut self, grace: Duration) -> Result<()> {
        if self.exit_status()?.is_some() {
            return Ok(());
        }
        self.signal(Signal::SIGTERM)?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exit_status()?.is_some() {
                return Ok(());
            }
            sleep(POLL_INTERVAL).await;
        }
        tracing::warn!(pid = self.pid(), ?grace, "nats-server ignored SIGTERM; killing it");
        self.kill()
    }

    /// Sends SIGKILL (like `kill -9`) and reaps the process.
    pub(crate) fn kill(&mut self) -> Result<()> {
        if self.exit_status()?.is_none() {
            self.signal(Signal::SIGKILL)?;
        }
        self.child.wait().context("reaping nats-server")?;
        Ok(())
    }

    fn signal(&self, signal: Signal) -> Result<()> {
        let pid = i32::try_from(self.pid()).context("process id out of range")?;
        match signal::kill(Pid::from_raw(pid), signal) {
            // Already gone; `wait` reaps it.
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(errno) => Err(errno).with_context(|| format!("sending {signal} to nats-server")),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Err(error) = self.kill() {
            tracing::warn!(pid = self.pid(), %error, "could not kill nats-server");
        }
    }
}

/// Removes ports files left behind by processes that were killed.
pub(crate) fn clear_ports_dir(ports_dir: &Path) -> Result<()> {
    for entry in fs::read_dir(ports_dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "ports") {
            fs::remove_file(&path).with_context(|| format!("removing stale ports file {}", path.display()))?;
        }
    }
    Ok(())
}

/// Reads `<name>_<pid>.ports`; `None` until it exists and holds complete JSON.
fn read_ports_file(ports_dir: &Path, pid: u32) -> Option<ListenPorts> {
    let suffix = format!("_{pid}.ports");
    let path = fs::read_dir(ports_dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.ends_with(&suffix)))?;
    // The server writes the file non-atomically; a partial read fails to parse and is retried.
    let ports: serde_json::Value = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
    Some(ListenPorts { client: first_port(&ports["nats"])?, monitoring: first_port(&ports["monitoring"])? })
}

/// The port of the first URL in a ports-file list such as `["nats://127.0.0.1:4222"]`.
fn first_port(urls: &serde_json::Value) -> Option<u16> {
    urls.get(0)?.as_str()?.rsplit(':').next()?.parse().ok()
}

/// The contents of `path` from byte `offset` on.
pub(crate) fn read_from(path: &Path, offset: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The last lines of a log, enough to explain a failure.
pub(crate) fn tail(log: &str) -> String {
    const LINES: usize = 30;
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_file_is_parsed_once_complete() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_ports_file(dir.path(), 42), None);
        let file = dir.path().join("nats-server_42.ports");
        fs::write(&file, r#"{"nats":["nats://127.0.0.1:4"#).unwrap();
        assert_eq!(read_ports_file(dir.path(), 42), None);
        fs::write(&file, r#"{"nats":["nats://127.0.0.1:4222"],"monitoring":["http://127.0.0.1:8222"]}"#).unwrap();
        assert_eq!(read_ports_file(dir.path(), 42), Some(ListenPorts { client: 4222, monitoring: 8222 }));
        assert_eq!(read_ports_file(dir.path(), 7), None);
    }
}
