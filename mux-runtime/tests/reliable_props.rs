//! Properties of the reliable layer over a lossy link: the deterministic
//! simulation (simulated clock, seeded faults) and the tokio component on a
//! paused clock over an in-memory lossy channel pair.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{Sink, Stream};
use proptest::prelude::*;

use mux_runtime::reliable::link;
use mux_runtime::reliable::sim::{Faults, Rng, Sim};
use mux_runtime::reliable::{Config, Event, LinkState, Machine};
use mux_runtime::Value;

fn machine(window: u16, timeout_ms: u64, retries: u32) -> Machine {
    Machine::new(Config {
        window,
        timeout_ms,
        retries,
    })
    .expect("valid config")
}

fn ids(vs: &[Value]) -> Vec<i128> {
    vs.iter()
        .map(|v| v.get("n").and_then(Value::as_int).expect("test message"))
        .collect()
}

fn numbered(n: usize) -> Value {
    Value::map([("n", Value::from(n)), ("d", Value::from(vec![0u8; n % 40]))])
}

fn count(events: &[Event], pred: impl Fn(&Event) -> bool) -> usize {
    events.iter().filter(|e| pred(e)).count()
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    // 64 cases by default; PROPTEST_CASES=N for a longer soak.
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// With enough retries that the link never gives up, every message sent
    /// either way arrives exactly once and in order, whatever the faults.
    #[test]
    fn every_message_arrives_exactly_once_in_order_over_a_lossy_link(
        seed in any::<u64>(),
        loss in 0.0..0.3f64,
        corrupt in 0.0..0.05f64,
        duplicate in 0.0..0.2f64,
        reorder in 0.0..0.2f64,
        window in prop::sample::select(vec![4u16, 5, 6, 8, 16]),
        latency_ms in 1u64..50,
        n_a in 0usize..120,
        n_b in 0usize..120,
        b_connects_too in any::<bool>(),
    ) {
        let faults = Faults { loss, corrupt, duplicate, reorder };
        let mut sim = Sim::new(
            machine(window, 200, 40),
            machine(8, 150, 40),
            Duration::from_millis(latency_ms),
            faults,
            seed,
        );
        sim.connect(0);
        if b_connects_too {
            sim.connect(1);
        }
        // Interleave sends from both sides with the passing of time.
        let mut rng = Rng::new(seed ^ 0x5eed);
        let (mut next_a, mut next_b) = (0, 0);
        while next_a < n_a || next_b < n_b {
            sim.run_for(Duration::from_millis(rng.next_u64() % 30));
            let from_a = next_b >= n_b || (next_a < n_a && rng.chance(0.5));
            if from_a {
                prop_assert!(sim.send(0, numbered(next_a)));
                next_a += 1;
            } else {
                prop_assert!(sim.send(1, numbered(next_b)));
                next_b += 1;
            }
            for p in 0..2 {
                prop_assert!(sim.peers[p].in_flight() <= sim.peers[p].max_in_flight());
            }
        }
        prop_assert!(sim.run_until_quiet(Duration::from_secs(3600)), "link never went quiet");
        for p in 0..2 {
            prop_assert_eq!(sim.peers[p].state(), LinkState::Up);
            prop_assert_eq!(
                count(&sim.events[p], |e| !matches!(e, Event::Up { .. })), 0,
                "peer {} saw {:?}", p, sim.events[p]
            );
            prop_assert_eq!(count(&sim.events[p], |e| matches!(e, Event::Up { .. })), 1);
        }
        prop_assert_eq!(ids(&sim.delivered[1]), (0..n_a as i128).collect::<Vec<_>>());
        prop_assert_eq!(ids(&sim.delivered[0]), (0..n_b as i128).collect::<Vec<_>>());
        prop_assert!(sim.max_in_flight_seen <= usize::from((window.min(8) - 1) / 2));
    }

    /// With few retries the link may go down and be reconnected; still no
    /// message is delivered twice or out of order, and none vanishes
    /// silently: each was delivered or reported lost.
    #[test]
    fn messages_are_never_duplicated_or_reordered_across_link_failures(
        seed in any::<u64>(),
        loss in 0.1..0.4f64,
        duplicate in 0.0..0.1f64,
        reorder in 0.0..0.1f64,
        n in 1usize..150,
    ) {
        let faults = Faults { loss, corrupt: 0.0, duplicate, reorder };
        let mut sim = Sim::new(
            machine(8, 100, 2),
            machine(8, 100, 2),
            Duration::from_millis(5),
            faults,
            seed,
        );
        sim.connect(0);
        let mut accepted = 0;
        for i in 0..n {
            sim.run_for(Duration::from_millis(20));
            for p in 0..2 {
                if sim.peers[p].state() == LinkState::Down {
                    sim.connect(p);
                }
            }
            if sim.send(0, numbered(i)) {
                accepted += 1;
            }
        }
        // Let it settle on a clean link so pending messages resolve.
        sim.set_faults(Faults::default());
        for _ in 0..5 {
            sim.run_until_quiet(Duration::from_secs(60));
            for p in 0..2 {
                if sim.peers[p].state() != LinkState::Up {
                    sim.connect(p);
                }
            }
        }
        prop_assert!(sim.run_until_quiet(Duration::from_secs(60)));
        let got = ids(&sim.delivered[1]);
        prop_assert!(got.windows(2).all(|w| w[0] < w[1]), "duplicated or reordered: {:?}", got);
        let lost: usize = sim.events[0].iter().map(|e| match e {
            Event::Reset { lost } | Event::Down { lost, .. } => *lost,
            _ => 0,
        }).sum();
        prop_assert!(got.len() + lost >= accepted, "delivered {} + lost {} < sent {}", got.len(), lost, accepted);
        let resets = count(&sim.events[0], |e| !matches!(e, Event::Up { .. }))
            + count(&sim.events[1], |e| !matches!(e, Event::Up { .. }));
        if resets == 0 {
            prop_assert_eq!(got.len(), accepted);
        }
    }
}

/// One end of an in-memory link that drops frames with a seeded chance.
struct LossyEnd {
    rx: mpsc::UnboundedReceiver<Value>,
    tx: mpsc::UnboundedSender<Value>,
    rng: Rng,
    loss: f64,
}

fn lossy_pair(loss: f64, seed: u64) -> (LossyEnd, LossyEnd) {
    let (a_tx, b_rx) = mpsc::unbounded();
    let (b_tx, a_rx) = mpsc::unbounded();
    (
        LossyEnd {
            rx: a_rx,
            tx: a_tx,
            rng: Rng::new(seed),
            loss,
        },
        LossyEnd {
            rx: b_rx,
            tx: b_tx,
            rng: Rng::new(seed.wrapping_add(1)),
            loss,
        },
    )
}

impl Stream for LossyEnd {
    type Item = Result<Value, Infallible>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.rx).poll_next(cx).map(|o| o.map(Ok))
    }
}

impl Sink<Value> for LossyEnd {
    type Error = mpsc::SendError;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(mut self: Pin<&mut Self>, v: Value) -> Result<(), Self::Error> {
        let loss = self.loss;
        if self.rng.chance(loss) {
            return Ok(());
        }
        // A peer that went away is a lost frame, as on a serial line.
        let _ = self.tx.unbounded_send(v);
        Ok(())
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

/// Collects `n` delivered messages, skipping state events.
async fn receive(events: &mut tokio::sync::mpsc::Receiver<Event>, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        match events.recv().await.expect("link task is running") {
            Event::Message(v) => got.push(v),
            Event::Up { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

#[tokio::test(start_paused = true)]
async fn async_link_delivers_everything_in_order_over_a_lossy_channel() {
    let (end_a, end_b) = lossy_pair(0.25, 7);
    let config = Config {
        retries: 30,
        ..Config::default()
    };
    let (a, mut a_events, a_task) = link::spawn(end_a, config).expect("config");
    let (b, mut b_events, b_task) = link::spawn(end_b, config).expect("config");
    let n = 200;
    let sender_a = tokio::spawn(async move {
        for i in 0..n {
            a.send(numbered(i)).await.expect("link a running");
        }
        a
    });
    let sender_b = tokio::spawn(async move {
        for i in 0..n {
            b.send(numbered(i)).await.expect("link b running");
        }
        b
    });
    // Both sides must be read: a link whose events are not consumed stalls.
    let (at_b, at_a) = tokio::join!(receive(&mut b_events, n), receive(&mut a_events, n));
    let (a, b) = (sender_a.await.unwrap(), sender_b.await.unwrap());
    assert_eq!(ids(&at_b), (0..n as i128).collect::<Vec<_>>());
    assert_eq!(ids(&at_a), (0..n as i128).collect::<Vec<_>>());
    let stats = a.stats().await.expect("running");
    assert!(
        stats.retransmits + stats.fast_retransmits > 0,
        "the channel was lossy"
    );
    assert_eq!(stats.messages_sent, n as u64);

    // Dropping a side's handle closes its link; the peer is told why.
    drop(a);
    let a_stats = a_task.await.expect("task").expect("clean stop");
    assert_eq!(a_stats.messages_delivered, n as u64);
    let mut reason = None;
    while reason.is_none() {
        // The closing frame may be lost: then the peer notices on its own
        // once it has something to send.
        b.send(numbered(0)).await.ok();
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok(ev) = b_events.try_recv() {
            if let Event::Down { reason: r, .. } = ev {
                reason = Some(r);
            }
        }
    }
    let reason = reason.unwrap();
    assert!(
        reason.contains("link handle dropped") || reason.contains("no acknowledgement"),
        "{reason}"
    );
    drop(b);
    b_task.await.expect("task").expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn async_link_reports_down_when_the_peer_is_silent() {
    let (end_a, _end_b) = lossy_pair(0.0, 1);
    let config = Config {
        timeout_ms: 100,
        retries: 2,
        ..Config::default()
    };
    let (_a, mut events, _task) = link::spawn(end_a, config).expect("config");
    let start = tokio::time::Instant::now();
    match events.recv().await {
        Some(Event::Down { reason, lost: 0 }) => assert!(reason.contains("did not answer")),
        other => panic!("{other:?}"),
    }
    // Three requests, 100 ms apart, then one more timeout: on the paused clock.
    assert_eq!(start.elapsed(), Duration::from_millis(300));
}
