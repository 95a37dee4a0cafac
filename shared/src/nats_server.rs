//! The `nats-server` proxybus runs and talks to: finding the binary, and the
//! minimum server version every part needs.
//!
//! One locator serves the test harness (`proxybus-tests`), `proxybus up` and the
//! benchmarks. It looks, in this order, at
//! 1. `$NATS_SERVER_BIN` (taken as given, whatever its version: a test may start an old
//!    server on purpose);
//! 2. the project-local install `.tools/venv/bin/nats-server` that `scripts/ensure-deps.sh`
//!    makes (in the current directory or one of its parents, or in the workspace this crate
//!    was built from);
//! 3. `nats-server` on `PATH`;
//! 4. `/usr/sbin/nats-server` (Debian's package).
//!
//! A candidate from 2–4 is used only when `nats-server --version` says it is at least
//! [`MINIMUM_VERSION`]; the error lists every candidate that was too old, and names the one
//! command that installs a current server ([`INSTALL_COMMAND`]).
//!
//! # Why 2.11
//! proxybus uses what nats-server 2.11 (2025) brought — per-message TTL, consumer priority
//! groups (pinned consumers with fail-over) — and async-nats' own key-value API, which cannot
//! read the account info of 2.9. Every binary checks the version a server announces in its
//! `INFO` ([`check_version`]) and refuses an older one with a message naming both versions.
//!
//! # Examples
//! ```
//! use proxybus_shared::nats_server::{ServerVersion, VersionError, check_version};
//! assert!(check_version("2.15.1").is_ok());
//! let Err(VersionError::TooOld(too_old)) = check_version("2.9.10") else { panic!() };
//! assert_eq!(too_old.found, ServerVersion { major: 2, minor: 9, patch: 10 });
//! assert!(too_old.to_string().contains("2.11.0"));
//! ```

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::OnceLock;

/// Environment variable naming the `nats-server` binary to run.
pub const BINARY_ENV: &str = "NATS_SERVER_BIN";

/// The project-local install, relative to the repository root.
pub const PROJECT_LOCAL_BINARY: &str = ".tools/venv/bin/nats-server";

/// Where Debian and Ubuntu's `nats-server` package installs the binary.
pub const DEBIAN_BINARY: &str = "/usr/sbin/nats-server";

/// The one command that installs a current server into the project (run from the repository).
pub const INSTALL_COMMAND: &str = "./scripts/ensure-deps.sh run";

/// The oldest nats-server proxybus supports: 2.11.0, the first with per-message TTL and
/// consumer priority groups (nats-server 2.11 release notes).
pub const MINIMUM_VERSION: ServerVersion = ServerVersion { major: 2, minor: 11, patch: 0 };

/// A nats-server release number, `major.minor.patch` (pre-release suffixes are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A version string that is not `[v]major.minor.patch[-suffix]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a nats-server version: {0:?}")]
pub struct VersionParseError(pub String);

impl FromStr for ServerVersion {
    type Err = VersionParseError;

    /// Parses `2.15.1`, `v2.15.1` or `2.12.0-RC.3` (the suffix is dropped).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = || VersionParseError(text.to_owned());
        let core = text.trim().trim_start_matches('v');
        let core = core.split(['-', '+']).next().unwrap_or_default();
        let mut parts = core.split('.').map(|part| part.parse::<u32>().map_err(|_| fail()));
        let (Some(major), Some(minor), Some(patch), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(fail());
        };
        Ok(Self { major: major?, minor: minor?, patch: patch? })
    }
}

/// A server older than [`MINIMUM_VERSION`], or one whose version cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "nats-server {found} is not supported: proxybus needs nats-server {minimum} or newer \
     (install a current one with `{INSTALL_COMMAND}`, or upgrade the server NATS_URL names)"
)]
pub struct UnsupportedServer {
    /// What the server announced.
    pub found: ServerVersion,
    /// What proxybus needs.
    pub minimum: ServerVersion,
}

/// Why a server version was refused: too old, or unreadable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// Older than [`MINIMUM_VERSION`].
    #[error(transparent)]
    TooOld(#[from] UnsupportedServer),
    /// The `INFO` version string did not parse.
    #[error(transparent)]
    Unreadable(#[from] VersionParseError),
}

/// Checks the version a server announced in its `INFO` (`server_info().version`).
///
/// # Errors
/// [`UnsupportedServer`] (as [`VersionError::TooOld`]) when it is older than
/// [`MINIMUM_VERSION`]; [`VersionError::Unreadable`] when it is not a version.
pub fn check_version(announced: &str) -> Result<ServerVersion, VersionError> {
    let found: ServerVersion = announced.parse()?;
    if found < MINIMUM_VERSION {
        return Err(UnsupportedServer { found, minimum: MINIMUM_VERSION }.into());
    }
    Ok(found)
}

/// A located binary and the version it reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedServer {
    /// Path of the binary.
    pub binary: PathBuf,
    /// What `nats-server --version` printed, when it ran.
    pub version: Option<ServerVersion>,
}

/// No usable nats-server was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocateError {
    /// `$NATS_SERVER_BIN` names no file.
    #[error("{BINARY_ENV}={0} does not name a file; point it at a nats-server binary")]
    ExplicitMissing(PathBuf),
    /// No candidate at all, or only ones older than the minimum.
    #[error(
        "no nats-server {MINIMUM_VERSION} or newer found{}; install one with `{INSTALL_COMMAND}` \
         (or set {BINARY_ENV}, or point NATS_URL at a running server)",
        too_old_list(.too_old)
    )]
    NotFound {
        /// Candidates that were found but are too old, with their versions.
        too_old: Vec<(PathBuf, String)>,
    },
}

fn too_old_list(too_old: &[(PathBuf, String)]) -> String {
    if too_old.is_empty() {
        return String::new();
    }
    let found: Vec<String> = too_old.iter().map(|(path, version)| format!("{} is {version}", path.display())).collect();
    format!(" ({})", found.join(", "))
}

/// Where the locator looks; [`Candidates::from_process`] reads them from this process.
#[derive(Debug, Clone, Default)]
pub struct Candidates {
    /// `$NATS_SERVER_BIN`.
    pub explicit: Option<OsString>,
    /// Directories whose `.tools/venv/bin/nats-server` is the project-local install.
    pub project_dirs: Vec<PathBuf>,
    /// `$PATH`.
    pub search_path: Option<OsString>,
    /// The system binary (`/usr/sbin/nats-server`).
    pub system: PathBuf,
}

impl Candidates {
    /// This process's environment, its current directory and its ancestors, the workspace this
    /// crate was built from, and Debian's path.
    pub fn from_process() -> Self {
        let mut project_dirs: Vec<PathBuf> =
            std::env::current_dir().map(|dir| dir.ancestors().map(Path::to_path_buf).collect()).unwrap_or_default();
        // The workspace root of this build: `shared/`'s parent.
        if let Some(workspace) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
            project_dirs.push(workspace.to_path_buf());
        }
        Self {
            explicit: std::env::var_os(BINARY_ENV),
            project_dirs,
            search_path: std::env::var_os("PATH"),
            system: PathBuf::from(DEBIAN_BINARY),
        }
    }

    /// Every file in look-up order after `$NATS_SERVER_BIN`, without repeats.
    fn files(&self) -> Vec<PathBuf> {
        let local = self.project_dirs.iter().map(|dir| dir.join(PROJECT_LOCAL_BINARY));
        let on_path = self.search_path.iter().flat_map(std::env::split_paths).map(|dir| dir.join("nats-server"));
        let mut files: Vec<PathBuf> = Vec::new();
        for file in local.chain(on_path).chain(std::iter::once(self.system.clone())) {
            if file.is_file() && !files.contains(&file) {
                files.push(file);
            }
        }
        files
    }
}

/// Finds the nats-server to run, as this module's doc describes; the answer is computed once per
/// process.
///
/// # Errors
/// [`LocateError`] when `$NATS_SERVER_BIN` names no file or no current server is installed.
pub fn locate() -> Result<LocatedServer, LocateError> {
    static LOCATED: OnceLock<Result<LocatedServer, LocateError>> = OnceLock::new();
    LOCATED.get_or_init(|| locate_in(&Candidates::from_process(), binary_version)).clone()
}

/// [`locate`] with its inputs injected: `version_of` runs a binary's `--version`.
///
/// # Errors
/// As [`locate`].
pub fn locate_in(
    candidates: &Candidates,
    version_of: impl Fn(&Path) -> Option<String>,
) -> Result<LocatedServer, LocateError> {
    if let Some(explicit) = candidates.explicit.as_ref().filter(|value| !value.is_empty()) {
        let binary = PathBuf::from(explicit);
        if !binary.is_file() {
            return Err(LocateError::ExplicitMissing(binary));
        }
        let version = version_of(&binary).and_then(|text| text.parse().ok());
        return Ok(LocatedServer { binary, version });
    }
    let mut too_old = Vec::new();
    for binary in candidates.files() {
        let reported = version_of(&binary);
        match reported.as_deref().map(check_version) {
            Some(Ok(version)) => return Ok(LocatedServer { binary, version: Some(version) }),
            Some(Err(_)) => too_old.push((binary, reported.unwrap_or_default())),
            None => too_old.push((binary, "of unknown version".to_owned())),
        }
    }
    Err(LocateError::NotFound { too_old })
}

/// Runs `binary --version` and returns the version it printed (`nats-server: v2.15.1` →
/// `2.15.1`), or `None` when it does not run or prints no version.
pub fn binary_version(binary: &Path) -> Option<String> {
    let output = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let word = text.split_whitespace().last()?;
    word.parse::<ServerVersion>().ok().map(|_| word.trim_start_matches('v').to_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn fake_binary(dir: &Path, relative: &str) -> PathBuf {
        let path = dir.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn versions(table: &'static [(&'static str, &'static str)]) -> impl Fn(&Path) -> Option<String> {
        move |path| {
            table.iter().find(|(suffix, _)| path.to_string_lossy().ends_with(suffix)).map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn versions_parse_with_and_without_v_and_suffix() {
        assert_eq!("v2.15.1".parse(), Ok(ServerVersion { major: 2, minor: 15, patch: 1 }));
        assert_eq!("2.12.0-RC.3".parse(), Ok(ServerVersion { major: 2, minor: 12, patch: 0 }));
        assert!("2.15".parse::<ServerVersion>().is_err());
        assert!("2.15.1.4".parse::<ServerVersion>().is_err());
        assert!("two.fifteen.one".parse::<ServerVersion>().is_err());
    }

    #[test]
    fn the_minimum_is_compared_by_number_not_by_text() {
        // "2.9.10" > "2.11.0" as text; as versions it is older.
        assert!(matches!(check_version("2.9.10"), Err(VersionError::TooOld(_))));
        assert!(check_version("2.11.0").is_ok());
        assert!(check_version("2.10.29").is_err());
        assert!(check_version("3.0.0").is_ok());
        assert!(matches!(check_version(""), Err(VersionError::Unreadable(_))));
    }

    #[test]
    fn explicit_binary_wins_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let explicit = fake_binary(dir.path(), "custom/nats-server");
        let local = dir.path().join("repo");
        fake_binary(&local, PROJECT_LOCAL_BINARY);
        let candidates =
            Candidates { explicit: Some(explicit.clone().into()), project_dirs: vec![local], ..Candidates::default() };
        let found = locate_in(&candidates, versions(&[("custom/nats-server", "2.9.10")])).unwrap();
        assert_eq!(found.binary, explicit, "an explicit binary is used even when old");
        assert_eq!(found.version, Some(ServerVersion { major: 2, minor: 9, patch: 10 }));

        let missing = Candidates { explicit: Some("/nonexistent/nats-server".into()), ..Candidates::default() };
        let error = locate_in(&missing, versions(&[])).unwrap_err();
        assert!(error.to_string().contains(BINARY_ENV), "{error}");
    }

    #[test]
    fn project_local_comes_before_path_and_system() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let local = fake_binary(&repo, PROJECT_LOCAL_BINARY);
        let path_dir = dir.path().join("bin");
        fake_binary(&path_dir, "nats-server");
        let system = fake_binary(dir.path(), "sbin/nats-server");
        let candidates =
            Candidates { explicit: None, project_dirs: vec![repo], search_path: Some(path_dir.into()), system };
        let table = &[(".tools/venv/bin/nats-server", "2.15.1"), ("bin/nats-server", "2.12.0")];
        assert_eq!(locate_in(&candidates, versions(table)).unwrap().binary, local);
    }

    #[test]
    fn old_servers_are_skipped_and_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path_dir = dir.path().join("bin");
        let on_path = fake_binary(&path_dir, "nats-server");
        let system = fake_binary(dir.path(), "sbin/nats-server");
        let candidates = Candidates {
            explicit: None,
            project_dirs: vec![dir.path().join("no-repo")],
            search_path: Some(path_dir.into()),
            system: system.clone(),
        };
        // The one on PATH is old, the system one is current: the system one is used.
        let table = &[("/bin/nats-server", "2.9.10"), ("sbin/nats-server", "2.11.4")];
        assert_eq!(locate_in(&candidates, versions(table)).unwrap().binary, system);

        // Both old: the error names each with its version and the install command.
        let table = &[("/bin/nats-server", "2.9.10"), ("sbin/nats-server", "2.10.1")];
        let error = locate_in(&candidates, versions(table)).unwrap_err().to_string();
        assert!(error.contains(&format!("{} is 2.9.10", on_path.display())), "{error}");
        assert!(error.contains("2.10.1"), "{error}");
        assert!(error.contains(INSTALL_COMMAND), "{error}");
    }

    #[test]
    fn nothing_installed_says_how_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let candidates = Candidates {
            explicit: Some(OsString::new()),
            project_dirs: vec![dir.path().to_path_buf()],
            search_path: Some(OsString::new()),
            system: dir.path().join("nonexistent"),
        };
        let error = locate_in(&candidates, versions(&[])).unwrap_err();
        assert_eq!(error, LocateError::NotFound { too_old: vec![] });
        assert!(error.to_string().contains(INSTALL_COMMAND));
    }
}
