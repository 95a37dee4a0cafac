//! Bad input (issue #17; docs/reliability.md): property tests of every decoder,
//! subject parser and configuration parser of proxybus-shared. Each property
//! says what it checks; each can fail. The URL redactor's properties sit beside
//! it, in `shared/src/proxy_url.rs`. The same invariants are fuzzed by the targets
//! in `fuzz/` (`scripts/fuzz.sh`).

mod codec;
mod config;
mod subjects;
