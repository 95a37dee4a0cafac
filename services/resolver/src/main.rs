//! `proxybus-resolver`: reads its configuration, installs telemetry and signal
//! handling, then runs [`proxybus_resolver::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use proxybus_resolver::ResolverConfig;
use proxybus_shared::config::{
    DEPRECATED_PROXY_CONFIG_VARS, DEPRECATED_RESOLVER_CONFIG_VARS, EnvSource, PROXY_CONFIG_VAR, RESOLVER_CONFIG_VAR,
};

/// mimalloc instead of the system allocator (without transparent huge pages, which
/// raised the resting RSS by ~13 MiB): the services allocate per message and
/// glibc malloc was a fifth of the aggregator's CPU (docs/benchmarks.md, round 4).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Answers proxy requests on the NATS bus.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML file with the resolver's own settings (the PROXYBUS_RESOLVER_* variables win over
    /// it). Default: $PROXYBUS_RESOLVER_CONFIG.
    #[arg(long, visible_alias = "resolver-config")]
    config: Option<PathBuf>,
    /// TOML file with the seed's ProxySettings tree (the CRYPTOFEED_PROXY_* variables win over
    /// it). Default: $PROXYBUS_PROXY_CONFIG.
    #[arg(long)]
    proxy_config: Option<PathBuf>,
}

impl Args {
    /// Fills each file not given on the command line from its variable, or from the
    /// variable's deprecated old name (with a warning, so call it after telemetry is set up):
    /// [`EnvSource::file_path`].
    fn or_from_env(self, env: &EnvSource) -> Self {
        Self {
            config: env.file_path(self.config, RESOLVER_CONFIG_VAR, DEPRECATED_RESOLVER_CONFIG_VARS),
            proxy_config: env.file_path(self.proxy_config, PROXY_CONFIG_VAR, DEPRECATED_PROXY_CONFIG_VARS),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let env = EnvSource::from_process();
    proxybus_shared::telemetry::init_from_env(&env);
    let args = args.or_from_env(&env);
    let config = match ResolverConfig::load(args.proxy_config.as_deref(), args.config.as_deref(), &env) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("proxybus-resolver: {err}");
            return ExitCode::from(2);
        }
    };
    match proxybus_resolver::run(config, proxybus_shared::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "resolver failed");
            eprintln!("proxybus-resolver: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str], env: &[(&str, &str)]) -> Args {
        let env: EnvSource = env.iter().copied().collect();
        Args::parse_from(std::iter::once("proxybus-resolver").chain(argv.iter().copied())).or_from_env(&env)
    }

    #[test]
    fn files_come_from_flags_then_variables_then_their_deprecated_names() {
        let old = [("PROXYBUS_CONFIG", "old-proxy.toml"), ("PROXYBUS_CONFIG_RESOLVER", "old-resolver.toml")];
        let read = args(&[], &old);
        assert_eq!(read.proxy_config, Some(PathBuf::from("old-proxy.toml")));
        assert_eq!(read.config, Some(PathBuf::from("old-resolver.toml")));
        let both = [old[0], old[1], (PROXY_CONFIG_VAR, "proxy.toml"), (RESOLVER_CONFIG_VAR, "resolver.toml")];
        let read = args(&[], &both);
        assert_eq!(read.proxy_config, Some(PathBuf::from("proxy.toml")));
        assert_eq!(read.config, Some(PathBuf::from("resolver.toml")));
        let read = args(&["--resolver-config", "flag.toml", "--proxy-config", "flag-proxy.toml"], &both);
        assert_eq!(read.config, Some(PathBuf::from("flag.toml")), "--resolver-config is --config");
        assert_eq!(read.proxy_config, Some(PathBuf::from("flag-proxy.toml")));
        assert_eq!(args(&["--config", "c.toml"], &[]).config, Some(PathBuf::from("c.toml")));
        let none = args(&[], &[]);
        assert_eq!((none.config, none.proxy_config), (None, None));
    }
}
