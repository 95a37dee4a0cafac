//! Inventory reloads: on SIGHUP and when the inventory file changes.
//!
//! A reload reads and validates the whole file first; only a valid inventory
//! replaces the current one, in one atomic swap ([`Selector::replace_inventory`]),
//! so no request is dropped or answered from half an inventory. An invalid file
//! is logged with every problem and the current inventory stays.
//!
//! The watcher watches the file's directory, so editors that replace the file
//! (write a temporary file, rename it over) are seen too; bursts of events are
//! coalesced into one reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::inventory::{Inventory, InventoryError};
use crate::metrics as m;
use crate::selector::Selector;

/// How long the watcher waits for a burst of file events to settle.
pub(crate) const SETTLE: Duration = Duration::from_millis(150);

/// Reloads one selector's inventory from one file.
#[derive(Debug, Clone)]
pub struct InventoryReloader {
    path: PathBuf,
    selector: Arc<Selector>,
}

impl InventoryReloader {
    /// A reloader of `path` into `selector`.
    pub fn new(path: impl Into<PathBuf>, selector: Arc<Selector>) -> Self {
        Self { path: path.into(), selector }
    }

    /// The inventory file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads, validates and swaps in the file; on error the current inventory stays.
    /// Returns the number of proxies loaded.
    pub fn reload(&self) -> Result<usize, InventoryError> {
        match Inventory::load(&self.path) {
            Ok(inventory) => {
                let proxies = inventory.len();
                self.selector.replace_inventory(inventory);
                metrics::counter!(m::RELOADS, "outcome" => "ok").increment(1);
                tracing::info!(path = %self.path.display(), proxies, "inventory reloaded");
                Ok(proxies)
            }
            Err(err) => {
                metrics::counter!(m::RELOADS, "outcome" => "invalid").increment(1);
                tracing::error!(path = %self.path.display(), error = %err, "inventory reload refused; keeping the current one");
                Err(err)
            }
        }
    }

    /// Reloads on SIGHUP and (when `watch_file`) on changes of the file, until `shutdown`.
    pub async fn run(self, watch_file: bool, shutdown: CancellationToken) {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let _watcher = if watch_file { self.watch(tx.clone()) } else { None };
        #[cfg(unix)]
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|err| tracing::warn!(error = %err, "cannot listen for SIGHUP"))
            .ok();
        loop {
            #[cfg(unix)]
            let sighup = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let sighup = std::future::pending::<Option<()>>();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = sighup => {
                    tracing::info!("SIGHUP: reloading the inventory");
                    let _ = self.reload();
                }
                Some(()) = rx.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                    let _ = self.reload();
                }
            }
        }
    }

    fn watch(&self, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        let name = self.path.file_name()?.to_owned();
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        let handler = move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && !event.kind.is_access()
                && event.paths.iter().any(|p| p.file_name() == Some(name.as_os_str()))
            {
                // A full channel already holds a pending reload.
                let _ = tx.try_send(());
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(watcher) => watcher,
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the inventory file; SIGHUP still reloads");
                return None;
            }
        };
        if let Err(err) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(error = %err, dir = %dir.display(), "cannot watch the inventory directory; SIGHUP still reloads");
            return None;
        }
        tracing::info!(path = %self.path.display(), "watching the inventory file");
        Some(watcher)
    }
}
