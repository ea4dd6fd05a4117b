//! Codec throughput: messages/s for encode+decode of typical messages, ours
//! against `rmpv` measured in the same run as a baseline.
//!
//! Run: `cargo bench -p mux-runtime --bench codec` (a few seconds).
//! No criterion: it would double the compile time for one small table.

use std::hint::black_box;
use std::time::{Duration, Instant};

use mux_runtime::message::Message;
use mux_runtime::msgpack::{self, Limits};
use mux_runtime::Value;

/// Runs `f` for about `budget`, returning calls per second (best of 3 rounds).
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    // Warm up and find a batch size that takes ~1 ms.
    let mut batch = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        if t.elapsed() >= Duration::from_millis(1) || batch >= 1 << 24 {
            break;
        }
        batch *= 2;
    }
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let mut calls = 0u64;
        while t.elapsed() < budget / 3 {
            for _ in 0..batch {
                f();
            }
            calls += batch;
        }
        best = best.max(calls as f64 / t.elapsed().as_secs_f64());
    }
    best
}

fn ours(v: &Value) -> impl FnMut() + '_ {
    let limits = Limits::default();
    let mut buf = Vec::with_capacity(64);
    move || {
        buf.clear();
        msgpack::encode(black_box(v), &mut buf);
        let decoded = msgpack::decode(black_box(&buf), &limits);
        black_box(decoded.ok());
    }
}

fn ours_message(m: &Message) -> impl FnMut() + '_ {
    let limits = Limits::default();
    let mut buf = Vec::with_capacity(64);
    move || {
        buf.clear();
        black_box(m).encode(&mut buf);
        let v = msgpack::decode_exact(black_box(&buf), &limits).unwrap();
        black_box(Message::from_value(v).ok());
    }
}

fn baseline(v: &rmpv::Value) -> impl FnMut() + '_ {
    let mut buf = Vec::with_capacity(64);
    move || {
        buf.clear();
        rmpv::encode::write_value(&mut buf, black_box(v)).unwrap();
        let decoded = rmpv::decode::read_value(&mut black_box(&buf[..]));
        black_box(decoded.ok());
    }
}

fn s(x: &str) -> rmpv::Value {
    rmpv::Value::from(x)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let budget = Duration::from_millis(600);

    let request = Message::request(["fs", "ls"], Value::map([("p", "".into())]), 2);
    let request_rmpv = rmpv::Value::Map(vec![
        (s("a"), rmpv::Value::Array(vec![s("fs"), s("ls")])),
        (s("d"), rmpv::Value::Map(vec![(s("p"), s(""))])),
        (s("i"), rmpv::Value::from(2)),
    ]);
    let item = Message::stream_item(7, 1, Value::Float(21.5));
    let item_rmpv = rmpv::Value::Map(vec![
        (s("d"), rmpv::Value::F32(21.5)),
        (s("i"), rmpv::Value::from(7)),
        (s("n"), rmpv::Value::from(1)),
    ]);

    let cases = [
        ("request {a,d,i}", &request, &request_rmpv),
        ("stream item {d:21.5,i,n}", &item, &item_rmpv),
    ];

    println!(
        "{:<26} {:>14} {:>14} {:>14} {:>8}",
        "encode+decode", "ours msg/s", "+Message msg/s", "rmpv msg/s", "ours/rmpv"
    );
    for (name, msg, theirs) in cases {
        let value = msg.to_value();
        // Same bytes on both sides, or the comparison means nothing.
        let mut theirs_bytes = Vec::new();
        rmpv::encode::write_value(&mut theirs_bytes, theirs).unwrap();
        assert_eq!(
            msgpack::to_vec(&value),
            theirs_bytes,
            "{name}: encodings differ"
        );

        let ours_rate = rate(budget, ours(&value));
        let message_rate = rate(budget, ours_message(msg));
        let rmpv_rate = rate(budget, baseline(theirs));
        println!(
            "{:<26} {:>14.0} {:>14.0} {:>14.0} {:>8.2}",
            name,
            ours_rate,
            message_rate,
            rmpv_rate,
            ours_rate / rmpv_rate
        );
    }
    println!("(+Message: Message -> bytes -> Value -> Message, the full receive path)");
}
