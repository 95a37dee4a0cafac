//! The aggregator against a real `nats-server` with JetStream (one per test), and
//! the health model on its own.

mod attribution;
mod binary;
mod commits;
mod dead_letter;
mod event_ids;
mod exactly_once;
mod failover;
mod health_model;
mod helpers;
mod push_back;
mod reading;
mod replay;
mod server;
mod small_pools;
