//! The resolver's integration suite: one binary (`tests/api`), each test with its
//! own real nats-server and fake upstream proxy services on 127.0.0.1.

mod breaker;
mod cache;
mod discovery;
mod fallback;
mod health;
mod helpers;
mod processes;
mod regions;
mod schemes;
mod serving;
mod tls;
mod validation;
