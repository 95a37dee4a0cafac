//! Integration tests of proxybus-pool, one binary: the selection core in-process,
//! and the HTTP API, reloads, NATS health and active checks through real sockets
//! on 127.0.0.1 (and a real `nats-server`).

mod active_checks;
mod helpers;
mod http;
mod keep_alive;
mod nats_health;
mod reload;
mod retry;
mod schemas;
mod selection;
mod sessions;
mod tls;
