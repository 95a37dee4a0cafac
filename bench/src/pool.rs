//! The upstream of the resolver: the reference `proxybus-pool` API, in this
//! process on 127.0.0.1, with a counter of `POST /api/v1/proxy/request` in front
//! of its router (how `singleflight` counts upstream calls).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use axum::extract::Request;
use proxybus_pool::{AppState, Auth, Inventory, Selector, SelectorOptions};
use proxybus_shared::http::paths;
use tokio_util::sync::CancellationToken;

/// Bearer token the bench's pool accepts.
pub const POOL_TOKEN: &str = "proxybus-bench-token";

/// A running pool; stops on drop.
#[derive(Debug)]
pub struct CountingPool {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Drop for CountingPool {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An inventory of `regions` × `per_region` proxies (documentation addresses, no lease caps).
pub fn inventory_toml(regions: usize, per_region: usize) -> String {
    let names = ["us-east", "eu-west", "ap-northeast", "us-west"];
    let mut text = String::from(
        "default_region = \"us-east\"\n[defaults]\nstrategy = \"p2c_ewma\"\nttl_seconds = 300\nsticky = true\n",
    );
    for (r, name) in names.iter().take(regions.clamp(1, names.len())).enumerate() {
        let _ = writeln!(text, "[regions.{name}]");
        for p in 0..per_region {
            let _ =
                writeln!(text, "[[regions.{name}.proxies]]\nurl = \"http://feed:secret@198.51.{r}.{}:3128\"", p + 1);
        }
    }
    text
}

impl CountingPool {
    /// Serves a pool of 2 regions × 16 proxies on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        let inventory = Inventory::from_toml_str(&inventory_toml(2, 16)).context("bench inventory")?;
        let selector = Arc::new(Selector::new(inventory, SelectorOptions::default()));
        let state = AppState::new(selector, Auth::with_tokens([POOL_TOKEN]));
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let app = proxybus_pool::router(state).layer(tower::util::MapRequestLayer::new(move |request: Request| {
            if request.uri().path() == paths::REQUEST {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            request
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(err) = served {
                eprintln!("proxybus-bench: pool stopped: {err}");
            }
        });
        Ok(Self { addr, requests, stop })
    }

    /// `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests to the request route so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}
