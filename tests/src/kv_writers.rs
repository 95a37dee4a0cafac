//! Writers that rewrite KV records without pause, for tests that read a bucket while it
//! is written (a KV key listing skips keys rewritten while it reads).

use async_nats::jetstream::kv;
use bytes::Bytes;
use tokio::task::JoinHandle;

/// `writers` tasks, each putting every one of `records` (key, value) again and again
/// until dropped (or until a put fails: the server is gone).
#[derive(Debug)]
pub struct KvRewriters {
    tasks: Vec<JoinHandle<()>>,
}

impl KvRewriters {
    /// Starts the writers on `bucket`.
    pub fn start(bucket: &kv::Store, records: &[(String, Bytes)], writers: usize) -> Self {
        let tasks = (0..writers)
            .map(|_| {
                let (bucket, records) = (bucket.clone(), records.to_vec());
                tokio::spawn(async move {
                    loop {
                        let puts = records.iter().map(|(key, value)| bucket.put(key, value.clone()));
                        if futures::future::join_all(puts).await.iter().any(Result::is_err) {
                            return;
                        }
                    }
                })
            })
            .collect();
        Self { tasks }
    }
}

impl Drop for KvRewriters {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}
