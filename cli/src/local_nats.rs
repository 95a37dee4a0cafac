//! The nats-server `proxybus up` starts when no `NATS_URL` is given: a child
//! process with JetStream, its store in `./data/nats`, on 127.0.0.1:4222 when that
//! port is free (else another free port, written to `./data/nats.url` so that
//! `proxybus request` in another terminal finds it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// Where `up` writes the URL of the server it started.
pub(crate) const URL_FILE: &str = "nats.url";

/// A nats-server child process; stopped (SIGTERM, then SIGKILL) by [`stop`](Self::stop) or on drop.
#[derive(Debug)]
pub(crate) struct LocalNats {
    child: Child,
    url: String,
    url_file: PathBuf,
}

fn free_port(preferred: u16) -> anyhow::Result<u16> {
    if std::net::TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        return Ok(preferred);
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalNats {
    /// Starts nats-server with JetStream storing in `data_dir/nats` and waits until it greets.
    pub(crate) async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        let located = proxybus_shared::nats_server::locate()?;
        let binary = located.binary;
        let version = located.version.map_or_else(|| "of unknown version".to_owned(), |v| format!("v{v}"));
        println!("nats-server: {} ({version})", binary.display());
        let store = data_dir.join("nats");
        std::fs::create_dir_all(&store).with_context(|| format!("cannot create {}", store.display()))?;
        let port = free_port(4222)?;
        let mut child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&store)
            .args(["-n", "proxybus-up"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let url = format!("nats://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait()? {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr).await;
                }
                bail!("nats-server exited with {status}: {}", stderr.trim());
            }
            if greets(port).await {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("nats-server did not accept connections on port {port} within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Keep reading its stderr so that a chatty server never blocks on a full pipe.
        if let Some(mut pipe) = child.stderr.take() {
            tokio::spawn(async move {
                let mut sink = [0u8; 4096];
                while matches!(pipe.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
        let url_file = data_dir.join(URL_FILE);
        std::fs::write(&url_file, &url)?;
        Ok(Self { child, url, url_file })
    }

    /// `nats://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server gracefully (SIGTERM), killing it after 10 s.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(&self.url_file);
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            self.child.kill().await?;
        }
        Ok(())
    }
}

async fn greets(port: u16) -> bool {
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(("127.0.0.1", port))).await
    else {
        return false;
    };
    let mut buf = [0u8; 4];
    matches!(tokio::time::timeout(Duration::from_millis(500), stream.read_exact(&mut buf)).await, Ok(Ok(_)) if &buf == b"INFO")
}

/// The URL a running `proxybus up` wrote into `data_dir`, if any.
pub(crate) fn running_url(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join(URL_FILE)).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}
