//! [`ServiceProcess`]: a proxybus service run as a child process of a test, so that a test can
//! kill it like `kill -9`, start it again with the same command, and measure its own resident
//! memory ([`resident_kib`](crate::resident_kib), [`MemorySampler`](crate::MemorySampler)).
//!
//! The child is told that its parent went away by the end of its standard input:
//! [`exit_when_parent_goes`] (called in the child) exits the process then, so that no service
//! outlives a test that panicked or was killed.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use anyhow::{Context, Result};

/// Environment variable that, when set, lets the children's output through to the test's.
const TEST_LOG_ENV: &str = "TEST_LOG";

/// A child process running one service; dropping it kills and reaps the process.
#[derive(Debug)]
pub struct ServiceProcess {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    running: Option<Running>,
}

/// The live child and the write end of its standard input (closed when the child must go).
#[derive(Debug)]
struct Running {
    child: Child,
    _stdin: Option<ChildStdin>,
}

impl ServiceProcess {
    /// Spawns `program args…` with `envs` added to the test's environment. The child's output
    /// is discarded unless `TEST_LOG` is set.
    ///
    /// # Errors
    /// The program cannot be started.
    pub fn spawn<I, K, V>(name: impl Into<String>, program: &Path, args: &[&str], envs: I) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let mut process = Self {
            name: name.into(),
            program: program.to_owned(),
            args: args.iter().map(OsString::from).collect(),
            envs: envs.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            running: None,
        };
        process.start()?;
        Ok(process)
    }

    /// The name the test gave this process (`resolver-1`, `pool` …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operating-system process id while the child runs.
    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|running| running.child.id())
    }

    /// Kills the child with SIGKILL, like `kill -9`, and reaps it; nothing when it is not running.
    ///
    /// # Errors
    /// The process could not be signalled or reaped.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut running) = self.running.take() {
            if running.child.try_wait()?.is_none() {
                running.child.kill().with_context(|| format!("killing {}", self.name))?;
            }
            running.child.wait().with_context(|| format!("reaping {}", self.name))?;
        }
        Ok(())
    }

    /// Starts the child again with the same command, killing it first if it still runs.
    ///
    /// # Errors
    /// The program cannot be started.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.start()
    }

    /// Whether the child has exited on its own (a crash); `false` after [`kill`](Self::kill).
    ///
    /// # Errors
    /// The status could not be read.
    pub fn has_exited(&mut self) -> Result<bool> {
        match self.running.as_mut() {
            Some(running) => Ok(running.child.try_wait()?.is_some()),
            None => Ok(false),
        }
    }

    fn start(&mut self) -> Result<()> {
        let output = || if std::env::var_os(TEST_LOG_ENV).is_some() { Stdio::inherit() } else { Stdio::null() };
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(output())
            .stderr(output())
            .spawn()
            .with_context(|| format!("spawning {} ({})", self.name, self.program.display()))?;
        let stdin = child.stdin.take();
        tracing::debug!(name = %self.name, pid = child.id(), "spawned service process");
        self.running = Some(Running { child, _stdin: stdin });
        Ok(())
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Err(error) = self.kill() {
            tracing::warn!(name = %self.name, %error, "could not kill service process");
        }
    }
}

/// In a child spawned by [`ServiceProcess`]: exits the process (status 0) as soon as its
/// standard input ends, which is when the parent killed it, dropped its handle or died.
pub fn exit_when_parent_goes() {
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_child_is_reaped_and_restarted() {
        let mut child =
            ServiceProcess::spawn("sleeper", Path::new("sleep"), &["30"], Vec::<(String, String)>::new()).unwrap();
        let first = child.pid().unwrap();
        assert!(!child.has_exited().unwrap());
        child.kill().unwrap();
        assert_eq!(child.pid(), None);
        child.restart().unwrap();
        assert_ne!(child.pid(), Some(first));
        assert_eq!(child.name(), "sleeper");
    }
}
