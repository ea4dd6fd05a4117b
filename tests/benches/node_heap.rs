//! Benchmark (not a test): a unix-port satellite's heap, idle and under
//! load, in the same run. The node runs the moat-built firmware with a
//! 64 KiB heap (ESP8266-sized) on a TCP link; `sys.mem` reports the live
//! heap after a collection (`a`, bytes allocated) and what is free (`f`).
//!
//! Load: 4 connections, each with 4 `ping` streams every 10 ms and 8
//! pipelined 60-byte pings at a time, for 3 s; a fifth connection samples
//! `sys.mem` every 100 ms. Prints `key=value` lines for bench/run.
//!
//!     cargo bench -p moat-e2e --bench node_heap

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moat_e2e::node::{kw, Node};
use mux_runtime::Value;

/// `-X heapsize` in KiB (`MOAT_BENCH_HEAP_KB`, default 64).
fn heap_kb() -> u32 {
    std::env::var("MOAT_BENCH_HEAP_KB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}
const CLIENTS: usize = 4;
const STREAMS: usize = 4;
const PIPELINE: usize = 8;
const LOAD: Duration = Duration::from_secs(3);

fn alloc(mem: &Value) -> i128 {
    mem.get("a").and_then(Value::as_int).expect("sys.mem a")
}

fn free(mem: &Value) -> i128 {
    mem.get("f").and_then(Value::as_int).expect("sys.mem f")
}

fn main() {
    let heap = heap_kb();
    let mut n = Node::new(heap);
    n.write_cfg("moat.cfg", &n.tcp_cfg(vec![]));
    n.start();
    let mut probe = n.connect();
    probe.ok("ping", Value::Nil);
    std::thread::sleep(Duration::from_millis(300));
    let idle: Vec<Value> = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            probe.ok("sys.mem", Value::Nil)
        })
        .collect();
    let idle_alloc = idle.iter().map(alloc).min().unwrap();
    let idle_free = idle.iter().map(free).max().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let mut loaders = Vec::new();
    for k in 0..CLIENTS {
        let mut c = n.connect();
        let (stop, done, lost) = (stop.clone(), done.clone(), lost.clone());
        loaders.push(std::thread::spawn(move || {
            for s in 0..STREAMS {
                c.request(
                    "ping",
                    kw([("m", format!("stream {k}.{s}").into())]),
                    Some(10),
                );
            }
            let m: Value = "x".repeat(60).into();
            while !stop.load(Ordering::Relaxed) {
                let seqs: Vec<i128> = (0..PIPELINE)
                    .map(|_| c.request("ping", kw([("m", m.clone())]), None))
                    .collect();
                for i in seqs {
                    if c.answer(i, Duration::from_secs(10)).is_none() {
                        // The node closed this link (or fell silent):
                        // counted, and the table says so.
                        lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let started = Instant::now();
    let mut loaded = Vec::new();
    while started.elapsed() < LOAD {
        std::thread::sleep(Duration::from_millis(100));
        loaded.push(probe.ok("sys.mem", Value::Nil));
    }
    let requests = done.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        // A loader whose link the node closed panics in `Conn::send`
        // (broken pipe): that link is lost too.
        if l.join().is_err() {
            lost.fetch_add(1, Ordering::Relaxed);
        }
    }
    let load_alloc = loaded.iter().map(alloc).max().unwrap();
    let load_free = loaded.iter().map(free).min().unwrap();
    println!("heap_kb={heap}");
    println!("idle_alloc={idle_alloc}");
    println!("idle_free={idle_free}");
    println!("load_alloc_max={load_alloc}");
    println!("load_free_min={load_free}");
    println!("load_clients={CLIENTS} load_streams={STREAMS} load_pipeline={PIPELINE}");
    println!("load_req_per_s={:.0}", requests as f64 / secs);
    println!("load_links_lost={}", lost.load(Ordering::Relaxed));
    let console = n.console();
    if !console.trim().is_empty() {
        eprintln!("node console:\n{console}");
    }
    println!("node_running={}", n.running());
}
