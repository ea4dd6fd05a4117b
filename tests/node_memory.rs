//! A node out of heap degrades request by request, never link by link.
//!
//! A unix-port satellite with `-X heapsize=64k` (ESP8266-sized) on a TCP
//! link is driven past its heap by the load of the `node_heap` bench: four
//! clients, each with four `ping` streams every 10 ms and eight pipelined
//! 60-byte pings at a time. Every request must get its reply or an error
//! reply naming the problem (`E:busy: ...`), no link may be dropped, no
//! task may die with an unretrieved exception, and once the load stops
//! every link answers again.

use moat_e2e::node::{kw, Conn, Node, WAIT};
use mux_runtime::Value;
use std::time::{Duration, Instant};

const HEAP_KB: u32 = 64;
const CLIENTS: usize = 4;
const STREAMS: usize = 4;
const PIPELINE: usize = 8;
/// How long the clients keep the node under load.
const LOAD: Duration = Duration::from_secs(4);

/// What one loading client saw.
#[derive(Debug, Default)]
struct Seen {
    replies: u64,
    refused: u64,
    stream_items: u64,
    streams_refused: u64,
}

/// An error reply under memory pressure must say so: `E:busy: ...`.
fn busy_error(v: &Value) -> Result<(), String> {
    match v.get("e").and_then(Value::as_str) {
        Some(e) if e.starts_with("E:busy") => Ok(()),
        _ => Err(format!("an error reply that does not say busy: {v}")),
    }
}

/// One client: its streams, then batches of pipelined pings until `until`;
/// then it cancels its streams and its link must still answer a ping.
fn load(mut c: Conn, k: usize, until: Instant) -> Result<Seen, String> {
    let streams: Vec<i128> = (0..STREAMS)
        .map(|s| {
            let m = format!("stream {k}.{s}");
            c.request("ping", kw([("m", m.into())]), Some(10))
        })
        .collect();
    let m: Value = "x".repeat(60).into();
    let want = kw([("m", m.clone())]);
    let mut seen = Seen::default();
    while Instant::now() < until {
        let mut open: Vec<i128> = (0..PIPELINE)
            .map(|_| c.request("ping", kw([("m", m.clone())]), None))
            .collect();
        while !open.is_empty() {
            let v = c.next_within(WAIT).ok_or_else(|| {
                format!(
                    "client {k}: link lost (or node silent for {WAIT:?}) with {} requests \
                     unanswered; seen so far {seen:?}",
                    open.len()
                )
            })?;
            let Some(i) = v.get("i").and_then(Value::as_int).map(|j| j - 1) else {
                continue; // unsolicited (`link`)
            };
            if let Some(p) = open.iter().position(|&o| o == i) {
                open.swap_remove(p);
                if v.get("e").is_some() {
                    busy_error(&v).map_err(|e| format!("client {k}: {e}"))?;
                    seen.refused += 1;
                } else if v.get("d") == Some(&want) {
                    seen.replies += 1;
                } else {
                    return Err(format!("client {k}: wrong reply to a ping: {v}"));
                }
            } else if streams.contains(&i) {
                if v.get("e").is_some() {
                    busy_error(&v).map_err(|e| format!("client {k} stream: {e}"))?;
                    seen.streams_refused += 1;
                } else {
                    seen.stream_items += 1;
                }
            }
        }
    }
    for i in streams {
        c.send(&Value::map([("i", Value::Int(i))]));
    }
    // the load is over: this link answers again (a few tries, since the
    // other clients may still be finishing their last batch)
    let mut last = None;
    for _ in 0..50 {
        match c.call("ping", kw([("m", Value::from(k as i64))])) {
            Ok(v) if v == kw([("m", Value::from(k as i64))]) => return Ok(seen),
            other => last = Some(other),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("client {k}: no ping after the load: {last:?}"))
}

#[test]
fn a_node_out_of_heap_refuses_requests_and_keeps_its_links() {
    let mut n = Node::new(HEAP_KB);
    n.write_cfg("moat.cfg", &n.tcp_cfg(vec![]));
    n.start();
    let mut probe = n.connect();
    probe.ok("ping", Value::Nil);

    // every client's link is up (it answers) before the load starts: a new
    // link needs 2 x 1 KiB of contiguous heap, which a node out of heap may
    // not have; it is then refused (that is not a link lost)
    let clients: Vec<Conn> = (0..CLIENTS)
        .map(|_| {
            let mut c = n.connect();
            c.ok("ping", Value::Nil);
            c
        })
        .collect();
    let until = Instant::now() + LOAD;
    let loaders: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, c)| std::thread::spawn(move || load(c, k, until)))
        .collect();
    let mut problems = Vec::new();
    let mut total = Seen::default();
    for (k, l) in loaders.into_iter().enumerate() {
        match l.join() {
            Ok(Ok(s)) => {
                total.replies += s.replies;
                total.refused += s.refused;
                total.stream_items += s.stream_items;
                total.streams_refused += s.streams_refused;
            }
            Ok(Err(e)) => problems.push(e),
            // `Conn::send` panics on a link the node closed
            Err(_) => problems.push(format!("client {k}: link lost (send failed)")),
        }
    }
    let console = n.console();
    assert!(
        problems.is_empty(),
        "under memory pressure: {problems:#?}\nnode console:\n{console}"
    );
    assert!(
        !console.contains("Task exception wasn't retrieved"),
        "a task died with an exception nobody handled:\n{console}"
    );
    assert!(
        total.replies > 0,
        "no ping was served under load: {total:?}"
    );
    // the load is more than the heap holds: the node must have said no
    assert!(
        total.refused + total.streams_refused > 0,
        "no request was refused: the load did not exhaust the heap: {total:?}"
    );
    // the probe, idle all along, still answers, and so does a new client
    assert_eq!(
        probe.ok("ping", kw([("m", "after".into())])),
        kw([("m", "after".into())])
    );
    let mut fresh = n.connect();
    assert_eq!(fresh.ok("ping", Value::Nil), kw([("m", Value::Nil)]));
    assert!(n.running(), "the node ended:\n{console}");
    eprintln!("under load: {total:?}");
}
