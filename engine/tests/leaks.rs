//! Resource use of the engine over many requests. Alone in its own test binary: it counts the
//! threads and memory of the whole process, which concurrent tests would disturb.

mod support;

use engine::{Engine, EngineOptions, LoadOptions};
use support::*;

fn threads_of_this_process() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Threads:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<usize>()
        .unwrap()
        * 4096
}

#[test]
fn a_thousand_submit_then_drop_cycles_leave_nothing_behind() {
    // A small cache: 64 pages of 8 tokens.
    let options = EngineOptions {
        cache_budget_bytes: Some(64 * 8 * 480),
        page_tokens: 8,
    };
    let engine = Engine::load_with(&fixture("lite"), &LoadOptions::default(), options).unwrap();
    let r = reference("lite");
    // Warm up: the cache and the thread pools reach their working size.
    for _ in 0..20 {
        drop(long_running(&engine, Some("doc")));
    }
    wait_until("the warm-up to finish", || engine.counters().finished == 20);
    let threads = threads_of_this_process();
    let memory = resident_bytes();

    for i in 0..1000 {
        let mut req = request(fim_prompt(&r.fim), 64);
        req.supersedes = Some(format!("doc{}", i % 7));
        drop(engine.submit(req));
        if i % 50 == 0 {
            drop(long_running(&engine, Some("doc")));
        }
    }
    wait_until("every request to finish", || {
        let c = engine.counters();
        c.finished == c.submitted
    });
    let after = engine.counters();
    assert_eq!(after.queued, 0);
    assert_eq!(threads_of_this_process(), threads, "no thread left behind");
    let cache = after.cache;
    assert_eq!(
        cache.pages_in_use, cache.tree_pages,
        "idle: every page belongs to the prefix tree"
    );
    assert!(
        cache.pages_in_use <= cache.budget_pages.unwrap(),
        "{cache:?}"
    );
    let grown = resident_bytes().saturating_sub(memory);
    assert!(grown < 16 << 20, "resident memory grew by {grown} bytes");
}
