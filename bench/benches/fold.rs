//! One fold step: `FeedbackFolder::fold` of one event into a folder that already
//! knows 10 000 proxies (the `fold` scenario's data set). Each step's event has an
//! `event_id` never folded before, so every step is folded, not dropped as a repeat.

use criterion::Criterion;
use proxybus_aggregator::{FeedbackFolder, HealthPolicy};
use proxybus_bench::feedback::{event, fixtures};

fn fold_step(c: &mut Criterion) {
    let proxies = fixtures(10_000);
    let mut events: Vec<_> = (0..100_000).map(|i| event(i, &proxies)).collect();
    let mut folder = FeedbackFolder::new(HealthPolicy::default());
    let start = chrono::Utc::now();
    for (i, e) in events.iter().enumerate() {
        folder.fold(e, i as u64 + 1, start + chrono::TimeDelta::milliseconds(i as i64));
    }
    let mut seq = events.len() as u64;
    let repeat = events[0].clone();
    assert!(folder.fold(&repeat, seq + 1, start).duplicate, "a folded event_id is dropped as a repeat");
    c.bench_function("fold one event (10 000 proxies)", |b| {
        b.iter(|| {
            seq += 1;
            let slot = (seq % events.len() as u64) as usize;
            events[slot].event_id = uuid::Uuid::from_u128(u128::from(seq));
            let e = &events[slot];
            folder.fold(std::hint::black_box(e), seq, start + chrono::TimeDelta::milliseconds(seq as i64))
        });
    });
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    fold_step(&mut criterion);
    criterion.final_summary();
}
