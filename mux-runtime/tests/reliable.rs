//! The reliable layer: frame encoding against the normative vectors, and the
//! state machine's behaviour, driven by hand or over the simulated link.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mux_runtime::msgpack::{self, Limits};
use mux_runtime::notation;
use mux_runtime::reliable::sim::{Faults, Sim};
use mux_runtime::reliable::{
    Config, Event, Frame, FrameError, LinkState, Machine, Params, ResetStep,
};
use mux_runtime::Value;

const MS: Duration = Duration::from_millis(1);

fn machine(window: u16, timeout_ms: u64, retries: u32) -> Machine {
    Machine::new(Config {
        window,
        timeout_ms,
        retries,
    })
    .expect("valid config")
}

fn default_machine() -> Machine {
    Machine::new(Config::default()).expect("default config is valid")
}

fn msg(i: i64) -> Value {
    Value::map([
        ("a", Value::from(vec![Value::from("ping")])),
        ("i", Value::from(i)),
    ])
}

fn frames(m: &mut Machine) -> Vec<Frame> {
    std::iter::from_fn(|| m.poll_transmit()).collect()
}

fn events(m: &mut Machine) -> Vec<Event> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

fn messages(evs: &[Event]) -> Vec<Value> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Message(v) => Some(v.clone()),
            _ => None,
        })
        .collect()
}

fn data_frames(fs: &[Frame]) -> Vec<(u16, Value)> {
    fs.iter()
        .filter_map(|f| match f {
            Frame::Data { s, d: Some(d), .. } => Some((*s, d.clone())),
            _ => None,
        })
        .collect()
}

/// Hands every frame `from` has to send to `to`, through MsgPack bytes.
fn pass(from: &mut Machine, to: &mut Machine, now: Instant) -> usize {
    let fs = frames(from);
    for f in &fs {
        let bytes = msgpack::to_vec(&f.to_value());
        let v = msgpack::decode_exact(&bytes, &Limits::default()).expect("own frames decode");
        to.handle_value(&v, now);
    }
    fs.len()
}

/// Two machines connected by hand with a perfect link: A requests.
fn up_pair(a: Machine, b: Machine, now: Instant) -> (Machine, Machine) {
    let (mut a, mut b) = (a, b);
    a.connect(now);
    while pass(&mut a, &mut b, now) + pass(&mut b, &mut a, now) > 0 {}
    assert_eq!(a.state(), LinkState::Up);
    assert_eq!(b.state(), LinkState::Up);
    events(&mut a);
    events(&mut b);
    (a, b)
}

// ---- frames ----

fn vectors() -> Vec<(String, Value, Vec<u8>)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/reliable.json");
    let text = std::fs::read_to_string(&path).expect("reliable.json is readable");
    let json: serde_json::Value = serde_json::from_str(&text).expect("reliable.json is JSON");
    json.as_array()
        .expect("an array of vectors")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().expect("name").to_owned();
            let value = notation::from_json(&e["value"]).expect("vector notation");
            let bytes = hex::decode(e["hex"].as_str().expect("hex")).expect("hex");
            (name, value, bytes)
        })
        .collect()
}

#[test]
fn every_reliable_vector_is_a_frame_that_encodes_to_its_exact_bytes() {
    let vs = vectors();
    assert_eq!(
        vs.len(),
        10,
        "reliable.json changed: review the frame tests"
    );
    for (name, value, bytes) in vs {
        let frame = Frame::from_value(&value).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(frame.to_value(), value, "{name}: frame -> map");
        assert_eq!(
            hex::encode(msgpack::to_vec(&frame.to_value())),
            hex::encode(&bytes),
            "{name}: bytes"
        );
        let decoded = msgpack::decode_exact(&bytes, &Limits::default()).expect("decodes");
        assert_eq!(
            Frame::from_value(&decoded),
            Ok(frame),
            "{name}: bytes -> frame"
        );
    }
}

#[test]
fn vectors_decode_to_the_expected_frame_kinds() {
    let by_name = |n: &str| {
        let (_, v, _) = vectors().into_iter().find(|(name, ..)| name == n).expect(n);
        Frame::from_value(&v).expect("frame")
    };
    assert_eq!(by_name("pure ack"), Frame::ack(1, 1, vec![]));
    assert_eq!(
        by_name("ack with out-of-order"),
        Frame::ack(1, 0, vec![2, 3])
    );
    let params = Params {
        timeout_ms: 1000,
        window: 8,
    };
    // The vectors' ids: the requester's and the answerer's.
    let (req, ans) = (Some(0x2A5F_3C11), Some(0x1B7D_0E42));
    for (n, step, id, peer) in [
        ("reset request", ResetStep::Request, req, None),
        ("reset ack", ResetStep::Ack, ans, req),
        ("reset ack2", ResetStep::Ack2, req, ans),
        (
            "reset request without connection id (before ids)",
            ResetStep::Request,
            None,
            None,
        ),
        (
            "reset ack without connection ids (before ids)",
            ResetStep::Ack,
            None,
            None,
        ),
    ] {
        assert_eq!(
            by_name(n),
            Frame::Reset {
                step,
                params,
                id,
                peer
            },
            "{n}"
        );
    }
    assert_eq!(
        by_name("closing"),
        Frame::Close {
            reason: "shutdown".into(),
            peer: ans,
        }
    );
    assert_eq!(
        by_name("closing without connection id (before ids)"),
        Frame::Close {
            reason: "shutdown".into(),
            peer: None,
        }
    );
    assert!(by_name("data frame").has_message());
}

#[test]
fn malformed_frames_are_errors_naming_the_problem() {
    let cases: Vec<(Value, FrameError)> = vec![
        (Value::from(3u8), FrameError::NotAMap { got: "int" }),
        (
            Value::map([("r", Value::from(0u8))]),
            FrameError::MissingKey { key: "s" },
        ),
        (
            Value::map([("s", Value::from("0")), ("r", Value::from(0u8))]),
            FrameError::WrongType {
                key: "s",
                expected: "int",
                got: "str",
            },
        ),
        (
            Value::map([("s", Value::from(-1i8)), ("r", Value::from(0u8))]),
            FrameError::OutOfRange {
                key: "s",
                value: -1,
            },
        ),
        (
            Value::map([("a", Value::from("q")), ("n", Value::from(1u8))]),
            FrameError::UnknownControl { a: "q".into() },
        ),
        (
            Value::map([("a", Value::from("r")), ("n", Value::from(7u8))]),
            FrameError::OutOfRange { key: "n", value: 7 },
        ),
        (
            Value::map([("a", Value::from("r")), ("n", Value::from(1u8))]),
            FrameError::MissingKey { key: "c" },
        ),
    ];
    for (v, want) in cases {
        let got = Frame::from_value(&v);
        assert_eq!(got, Err(want.clone()), "{v}");
        assert!(!want.to_string().is_empty());
    }
}

#[test]
fn machine_counts_and_ignores_values_that_are_not_frames() {
    let now = Instant::now();
    let mut m = default_machine();
    m.handle_value(&Value::from("junk"), now);
    m.handle_value(&Value::map([("s", Value::from(1u8))]), now);
    assert_eq!(m.stats().bad_frames, 2);
    assert_eq!(m.state(), LinkState::Idle);
    assert!(frames(&mut m).is_empty());
}

#[test]
fn invalid_configs_are_refused_with_the_valid_range() {
    for (w, t) in [(3, 1000), (200, 1000), (8, 0)] {
        let err = Machine::new(Config {
            window: w,
            timeout_ms: t,
            retries: 5,
        })
        .expect_err("invalid config");
        assert!(err.to_string().contains("use "), "{err}");
    }
}

// ---- handshake ----

#[test]
fn handshake_is_request_ack_ack2_and_both_sides_come_up() {
    let now = Instant::now();
    let (mut a, mut b) = (default_machine(), default_machine());
    a.connect(now);
    assert_eq!(a.state(), LinkState::Connecting);
    let step = |fs: Vec<Frame>| match fs.as_slice() {
        [Frame::Reset { step, .. }] => *step,
        other => panic!("expected one reset frame, got {other:?}"),
    };
    let f = frames(&mut a);
    assert_eq!(step(f.clone()), ResetStep::Request);
    b.handle_frame(f[0].clone(), now);
    assert_eq!(b.state(), LinkState::Connecting);
    let f = frames(&mut b);
    assert_eq!(step(f.clone()), ResetStep::Ack);
    a.handle_frame(f[0].clone(), now);
    assert_eq!(a.state(), LinkState::Up);
    let f = frames(&mut a);
    assert_eq!(step(f.clone()), ResetStep::Ack2);
    b.handle_frame(f[0].clone(), now);
    assert_eq!(b.state(), LinkState::Up);
    let up = Event::Up {
        timeout_ms: 1000,
        window: 8,
    };
    assert_eq!(events(&mut a), vec![up.clone()]);
    assert_eq!(events(&mut b), vec![up]);
}

#[test]
fn both_sides_initiating_at_once_come_up_once_each() {
    let mut sim = Sim::new(
        default_machine(),
        default_machine(),
        10 * MS,
        Faults::default(),
        1,
    );
    sim.connect(0);
    sim.connect(1);
    assert!(sim.run_until_quiet(Duration::from_secs(10)));
    for p in 0..2 {
        assert_eq!(sim.peers[p].state(), LinkState::Up);
        assert_eq!(
            sim.events[p],
            vec![Event::Up {
                timeout_ms: 1000,
                window: 8
            }],
            "peer {p}"
        );
    }
    sim.send(0, msg(1));
    sim.send(1, msg(2));
    assert!(sim.run_until_quiet(Duration::from_secs(10)));
    assert_eq!(sim.delivered, [vec![msg(2)], vec![msg(1)]]);
}

#[test]
fn mismatched_offers_agree_on_max_timeout_and_min_window() {
    let mut sim = Sim::new(
        machine(16, 500, 5),
        machine(8, 1500, 5),
        10 * MS,
        Faults::default(),
        2,
    );
    sim.connect(0);
    assert!(sim.run_until_quiet(Duration::from_secs(10)));
    let agreed = Event::Up {
        timeout_ms: 1500,
        window: 8,
    };
    assert_eq!(sim.events[0], vec![agreed.clone()]);
    assert_eq!(sim.events[1], vec![agreed]);
    assert_eq!(sim.peers[0].max_in_flight(), 3);

    // The agreed timeout drives retransmission: nothing at 500 ms.
    sim.record = true;
    sim.set_faults(Faults {
        loss: 1.0,
        ..Faults::default()
    });
    let t0 = sim.now;
    sim.send(0, msg(1));
    sim.run_for(Duration::from_millis(2000));
    let times: Vec<Duration> = sim.sent[0]
        .iter()
        .filter(|(_, f)| f.has_message())
        .map(|(t, _)| *t - t0)
        .collect();
    assert_eq!(times, vec![Duration::ZERO, Duration::from_millis(1500)]);
}

#[test]
fn requester_gives_up_after_retries_unanswered_requests() {
    let t0 = Instant::now();
    let mut a = machine(8, 100, 3);
    a.connect(t0);
    let mut requests = frames(&mut a).len();
    while let Some(t) = a.poll_timeout() {
        a.handle_timeout(t);
        requests += frames(&mut a).len();
    }
    assert_eq!(requests, 4, "one request plus 3 retries");
    assert_eq!(a.state(), LinkState::Down);
    match events(&mut a).as_slice() {
        [Event::Down { reason, lost: 0 }] => assert!(reason.contains("did not answer")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn reset_offer_below_the_minimum_window_is_refused_with_a_reason() {
    let now = Instant::now();
    let mut b = default_machine();
    b.handle_frame(
        Frame::Reset {
            step: ResetStep::Request,
            params: Params {
                timeout_ms: 1000,
                window: 2,
            },
            id: Some(7),
            peer: None,
        },
        now,
    );
    assert_eq!(b.state(), LinkState::Idle);
    match frames(&mut b).as_slice() {
        // Addressed to the refused request's id.
        [Frame::Close {
            reason,
            peer: Some(7),
        }] => assert!(reason.contains("window 2"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

// ---- data ----

#[test]
fn never_more_than_half_the_window_is_in_flight() {
    let now = Instant::now();
    let (mut a, mut b) = up_pair(default_machine(), default_machine(), now);
    for i in 0..20 {
        a.send(msg(i), now).expect("up");
    }
    let first = data_frames(&frames(&mut a));
    // The protocol allows 4 (window / 2); we keep one number spare.
    assert_eq!(first.len(), 3, "window 8: 3 unacknowledged");
    assert_eq!(
        first.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(a.in_flight(), 3);
    assert_eq!(a.queued(), 17);
    // Deliver them; B's acks open the window for exactly three more.
    for (s, d) in first {
        b.handle_frame(
            Frame::Data {
                s,
                r: 0,
                x: vec![],
                d: Some(d),
            },
            now,
        );
    }
    pass(&mut b, &mut a, now);
    let next = data_frames(&frames(&mut a));
    assert_eq!(
        next.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert_eq!(
        messages(&events(&mut b)),
        (0..3).map(msg).collect::<Vec<_>>()
    );
}

#[test]
fn unacknowledged_message_is_retransmitted_after_the_timeout() {
    let t0 = Instant::now();
    let (mut a, _b) = up_pair(default_machine(), default_machine(), t0);
    a.send(msg(1), t0).expect("up");
    let original = frames(&mut a);
    assert_eq!(a.poll_timeout(), Some(t0 + 1000 * MS));
    a.handle_timeout(t0 + 999 * MS);
    assert!(frames(&mut a).is_empty(), "nothing before the timeout");
    a.handle_timeout(t0 + 1000 * MS);
    assert_eq!(frames(&mut a), original);
    assert_eq!(a.stats().retransmits, 1);
}

#[test]
fn link_goes_down_after_retries_and_reports_lost_messages() {
    let t0 = Instant::now();
    let (mut a, _b) = up_pair(machine(8, 100, 3), default_machine(), t0);
    a.send(msg(1), t0).expect("up");
    a.send(msg(2), t0).expect("up");
    let mut transmissions = data_frames(&frames(&mut a)).len();
    let mut closes = 0;
    while let Some(t) = a.poll_timeout() {
        a.handle_timeout(t);
        for f in frames(&mut a) {
            match f {
                Frame::Data { d: Some(_), .. } => transmissions += 1,
                Frame::Close { .. } => closes += 1,
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(
        transmissions,
        2 * 4,
        "each message sent once plus 3 retries"
    );
    assert_eq!(closes, 1, "the peer is told");
    assert_eq!(a.state(), LinkState::Down);
    match events(&mut a).as_slice() {
        [Event::Down { lost: 2, reason }] => assert!(reason.contains("no acknowledgement")),
        other => panic!("{other:?}"),
    }
    assert!(a.send(msg(3), t0).is_err(), "sending while down is refused");
    assert_eq!(a.stats().refused, 1);
}

#[test]
fn duplicate_data_frame_is_delivered_once_and_acked_again() {
    let now = Instant::now();
    let (mut a, mut b) = up_pair(default_machine(), default_machine(), now);
    a.send(msg(7), now).expect("up");
    let f = frames(&mut a);
    b.handle_frame(f[0].clone(), now);
    b.handle_frame(f[0].clone(), now);
    assert_eq!(messages(&events(&mut b)), vec![msg(7)]);
    assert_eq!(b.stats().duplicates, 1);
    let acks = frames(&mut b);
    assert_eq!(
        acks,
        vec![Frame::ack(0, 1, vec![]), Frame::ack(0, 1, vec![])]
    );
}

#[test]
fn out_of_order_frames_are_held_listed_in_x_and_delivered_in_order() {
    let now = Instant::now();
    let (mut a, mut b) = up_pair(machine(16, 1000, 5), machine(16, 1000, 5), now);
    for i in 0..4 {
        a.send(msg(i), now).expect("up");
    }
    let fs = frames(&mut a);
    for f in &fs[1..] {
        b.handle_frame(f.clone(), now);
    }
    assert!(messages(&events(&mut b)).is_empty());
    let acks = frames(&mut b);
    assert_eq!(acks.last(), Some(&Frame::ack(0, 0, vec![1, 2, 3])));
    b.handle_frame(fs[0].clone(), now);
    assert_eq!(
        messages(&events(&mut b)),
        (0..4).map(msg).collect::<Vec<_>>()
    );
    assert_eq!(frames(&mut b), vec![Frame::ack(0, 4, vec![])]);
}

#[test]
fn hole_reported_in_x_is_retransmitted_at_once() {
    let now = Instant::now();
    let (mut a, mut b) = up_pair(machine(16, 1000, 5), machine(16, 1000, 5), now);
    for i in 0..4 {
        a.send(msg(i), now).expect("up");
    }
    let fs = frames(&mut a);
    b.handle_frame(fs[1].clone(), now); // frame 0 is lost
    pass(&mut b, &mut a, now); // ack r=0 x=[1]
    let again = data_frames(&frames(&mut a));
    assert_eq!(again, vec![(0, msg(0))], "seq 0 resent without waiting");
    assert_eq!(a.stats().fast_retransmits, 1);
    assert_eq!(a.stats().retransmits, 0);
    // A second ack with the same hole does not resend it again.
    b.handle_frame(fs[2].clone(), now);
    pass(&mut b, &mut a, now);
    assert!(data_frames(&frames(&mut a)).is_empty());
    // Selectively acked frames are not resent on timeout.
    a.handle_timeout(now + 1000 * MS);
    let resent = data_frames(&frames(&mut a));
    assert_eq!(
        resent.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![0, 3]
    );
}

#[test]
fn stale_ack_that_does_not_fit_what_is_in_flight_is_ignored() {
    let now = Instant::now();
    let (mut a, _b) = up_pair(default_machine(), default_machine(), now);
    for i in 0..2 {
        a.send(msg(i), now).expect("up");
    }
    frames(&mut a);
    // r=5 would acknowledge more than was sent.
    a.handle_frame(Frame::ack(0, 5, vec![]), now);
    // x listing a number not in flight, or one `r` already covers.
    a.handle_frame(Frame::ack(0, 0, vec![6]), now);
    a.handle_frame(Frame::ack(0, 1, vec![0]), now);
    assert_eq!(a.in_flight(), 2);
    assert_eq!(a.stats().stale_acks, 3);
    a.handle_frame(Frame::ack(0, 2, vec![]), now);
    assert_eq!(a.in_flight(), 0);
}

#[test]
fn sequence_numbers_wrap_around_over_many_messages() {
    for window in [4, 5, 8] {
        let mut sim = Sim::new(
            machine(window, 1000, 5),
            machine(window, 1000, 5),
            5 * MS,
            Faults::default(),
            3,
        );
        sim.connect(0);
        let sent: Vec<Value> = (0..500).map(msg).collect();
        for m in &sent {
            assert!(sim.send(0, m.clone()));
            assert!(sim.send(1, m.clone()));
        }
        assert!(sim.run_until_quiet(Duration::from_secs(600)));
        assert_eq!(sim.delivered[1], sent, "window {window}");
        assert_eq!(sim.delivered[0], sent, "window {window}");
        assert_eq!(sim.max_in_flight_seen, usize::from((window - 1) / 2));
        assert_eq!(sim.peers[0].stats().retransmits, 0, "perfect link");
    }
}

#[test]
fn messages_sent_before_the_link_is_up_go_out_once_it_is() {
    let mut sim = Sim::new(
        default_machine(),
        default_machine(),
        5 * MS,
        Faults::default(),
        4,
    );
    assert!(sim.send(0, msg(1)));
    assert!(sim.send(0, msg(2)));
    sim.connect(1);
    assert!(sim.run_until_quiet(Duration::from_secs(10)));
    assert_eq!(sim.delivered[1], vec![msg(1), msg(2)]);
}

// ---- reset and close ----

#[test]
fn restarted_peer_resets_the_link_and_pending_messages_are_reported_lost() {
    let mut sim = Sim::new(
        default_machine(),
        default_machine(),
        5 * MS,
        Faults::default(),
        5,
    );
    sim.connect(0);
    assert!(sim.run_until_quiet(Duration::from_secs(10)));
    sim.send(0, msg(1));
    assert!(sim.run_until_quiet(Duration::from_secs(10)));
    // Peer 1 loses its link to us for a while (frames vanish), then restarts.
    sim.set_faults(Faults {
        loss: 1.0,
        ..Faults::default()
    });
    sim.send(0, msg(2));
    sim.send(0, msg(3));
    sim.run_for(Duration::from_millis(100));
    sim.set_faults(Faults::default());
    sim.peers[1] = default_machine();
    sim.connect(1);
    assert!(sim.run_until_quiet(Duration::from_secs(10)));
    assert_eq!(sim.peers[0].state(), LinkState::Up);
    assert_eq!(sim.peers[1].state(), LinkState::Up);
    let up = Event::Up {
        timeout_ms: 1000,
        window: 8,
    };
    assert_eq!(
        sim.events[0],
        vec![up.clone(), Event::Reset { lost: 2 }, up.clone()]
    );
    // After the reset, sequence numbers restart and messages flow again.
    sim.send(0, msg(4));
    sim.send(1, msg(5));
    assert!(sim.run_until_quiet(Duration::from_secs(10)));
    assert_eq!(sim.delivered[1], vec![msg(1), msg(4)]);
    assert_eq!(sim.delivered[0], vec![msg(5)]);
}

#[test]
fn request_echo_right_after_coming_up_does_not_reset() {
    let now = Instant::now();
    let mut a = default_machine();
    let mut b = default_machine();
    a.connect(now);
    let request = frames(&mut a);
    for f in &request {
        b.handle_frame(f.clone(), now);
    }
    while pass(&mut b, &mut a, now) + pass(&mut a, &mut b, now) > 0 {}
    assert_eq!(b.state(), LinkState::Up);
    events(&mut b);
    // The same request again, however late: its id is the current peer's.
    for later in [10 * MS, 10_000 * MS] {
        b.handle_frame(request[0].clone(), now + later);
        assert_eq!(b.state(), LinkState::Up);
        assert!(events(&mut b).is_empty());
        assert!(frames(&mut b).is_empty());
    }
}

/// Session 1 (peer `old`) is up; a new peer's request arrives at once,
/// with no pause: the node takes it for what it is.
fn new_session_right_after(old: &mut Machine, node: &mut Machine, now: Instant) -> Machine {
    let mut new = default_machine();
    new.connect(now);
    while pass(&mut new, node, now) + pass(node, &mut new, now) > 0 {}
    assert_eq!(new.state(), LinkState::Up, "the new peer is up at once");
    assert_eq!(node.state(), LinkState::Up);
    assert_eq!(
        events(node),
        vec![
            Event::Reset { lost: 0 },
            Event::Up {
                timeout_ms: 1000,
                window: 8
            }
        ]
    );
    frames(old);
    new
}

#[test]
fn a_replayed_old_reset_frame_after_a_new_session_started_does_not_reset_it() {
    let now = Instant::now();
    let mut old = default_machine();
    let mut node = default_machine();
    // Session 1, every frame kept for the replay.
    old.connect(now);
    let mut replay = Vec::new();
    loop {
        let fs = frames(&mut old);
        if fs.is_empty() {
            break;
        }
        for f in fs {
            node.handle_frame(f.clone(), now);
            replay.push(f);
        }
        pass(&mut node, &mut old, now);
    }
    old.close("the host closed the link");
    replay.extend(frames(&mut old)); // the closing frame: lost on the way
    assert_eq!(node.state(), LinkState::Up);
    events(&mut node);
    let mut new = new_session_right_after(&mut old, &mut node, now + MS);
    // Session 1's request, ack2 and closing frame come back late.
    for f in &replay {
        node.handle_frame(f.clone(), now + 2 * MS);
        assert_eq!(node.state(), LinkState::Up, "after {f:?}");
    }
    assert!(events(&mut node).is_empty());
    assert!(
        frames(&mut node).is_empty(),
        "stale handshake frames are not answered"
    );
    // Session 2 goes on.
    new.send(msg(1), now + 3 * MS).expect("up");
    while pass(&mut new, &mut node, now) + pass(&mut node, &mut new, now) > 0 {}
    assert_eq!(messages(&events(&mut node)), vec![msg(1)]);
}

#[test]
fn a_new_peers_reset_right_after_a_closing_frame_is_accepted_at_once() {
    for close_arrives in [true, false] {
        let now = Instant::now();
        let (mut old, mut node) = up_pair(default_machine(), default_machine(), now);
        old.close("the host closed the link");
        if close_arrives {
            pass(&mut old, &mut node, now);
            assert_eq!(node.state(), LinkState::Down);
            events(&mut node);
            // From down there is nothing to reset: just the new handshake.
            let mut new = default_machine();
            new.connect(now + MS);
            while pass(&mut new, &mut node, now) + pass(&mut node, &mut new, now) > 0 {}
            assert_eq!((new.state(), node.state()), (LinkState::Up, LinkState::Up));
        } else {
            new_session_right_after(&mut old, &mut node, now + MS);
        }
    }
}

#[test]
fn back_to_back_sessions_over_a_slow_link_each_come_up_in_one_round_trip() {
    // Ten one-shot clients one after another, each starting the moment the
    // last one closed (its closing frame dropped on every other run): each
    // handshake takes one round trip, never a retransmission timeout.
    let latency = 20 * MS;
    let mut sim = Sim::new(
        default_machine(),
        default_machine(),
        latency,
        Faults::default(),
        7,
    );
    for k in 0..10 {
        sim.peers[0] = default_machine();
        let start = sim.now;
        sim.connect(0);
        while sim.peers[0].state() != LinkState::Up {
            assert!(
                sim.step(start + Duration::from_secs(10)),
                "session {k} stalled"
            );
        }
        assert!(
            sim.now - start <= 2 * latency,
            "session {k} came up after {:?}",
            sim.now - start
        );
        assert!(sim.send(0, msg(k)));
        assert!(sim.run_until_quiet(Duration::from_secs(10)));
        assert_eq!(sim.delivered[1].last(), Some(&msg(k)));
        if k % 2 == 0 {
            sim.close(0, "the host closed the link");
        } else {
            sim.peers[0].close("the host closed the link");
            sim.peers[0].poll_transmit(); // lost
        }
        sim.run_for(MS);
    }
}

/// `v` as a peer from before connection ids would send or see it.
fn without_ids(v: &Value) -> Value {
    match v {
        Value::Map(m) if m.iter().any(|(k, _)| k == &Value::from("a")) => Value::Map(
            m.iter()
                .filter(|(k, _)| k != &Value::from("i") && k != &Value::from("p"))
                .cloned()
                .collect(),
        ),
        other => other.clone(),
    }
}

/// [`pass`] with the connection ids taken out of the frames.
fn pass_without_ids(from: &mut Machine, to: &mut Machine, now: Instant) -> usize {
    let fs = frames(from);
    for f in &fs {
        to.handle_value(&without_ids(&f.to_value()), now);
    }
    fs.len()
}

#[test]
fn a_peer_with_the_handshake_before_connection_ids_still_connects_and_resets() {
    let now = Instant::now();
    // `old` sees and sends no ids, as a node from before them; `new` runs
    // the current machine.
    let old_pass = |old: &mut Machine, new: &mut Machine, now| {
        pass_without_ids(old, new, now) + pass_without_ids(new, old, now)
    };
    // The new side requests, the old one answers.
    let (mut new, mut old) = (default_machine(), default_machine());
    new.connect(now);
    while old_pass(&mut old, &mut new, now) > 0 {}
    assert_eq!((new.state(), old.state()), (LinkState::Up, LinkState::Up));
    new.send(msg(1), now).expect("up");
    while old_pass(&mut old, &mut new, now) > 0 {}
    assert_eq!(messages(&events(&mut old)), vec![msg(1)]);
    // The old side restarts: its request (no id) resets the new side at once.
    events(&mut new);
    let mut old = default_machine();
    old.connect(now + MS);
    while old_pass(&mut old, &mut new, now + MS) > 0 {}
    assert_eq!((new.state(), old.state()), (LinkState::Up, LinkState::Up));
    assert_eq!(
        events(&mut new),
        vec![
            Event::Reset { lost: 0 },
            Event::Up {
                timeout_ms: 1000,
                window: 8
            }
        ]
    );
    // A closing frame without an id is obeyed.
    old.close("bye");
    pass_without_ids(&mut old, &mut new, now);
    assert_eq!(new.state(), LinkState::Down);
}

#[test]
fn closing_takes_both_sides_down_with_the_reason() {
    let now = Instant::now();
    let (mut a, mut b) = up_pair(default_machine(), default_machine(), now);
    a.close("shutdown");
    assert_eq!(a.state(), LinkState::Down);
    pass(&mut a, &mut b, now);
    assert_eq!(b.state(), LinkState::Down);
    match events(&mut b).as_slice() {
        [Event::Down { reason, lost: 0 }] => assert!(reason.contains("shutdown"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // A down side still answers a new request (passive open).
    a.connect(now);
    while pass(&mut a, &mut b, now) + pass(&mut b, &mut a, now) > 0 {}
    assert_eq!(a.state(), LinkState::Up);
    assert_eq!(b.state(), LinkState::Up);
}

#[test]
fn local_reset_right_after_a_retried_handshake_keeps_both_sides_in_step() {
    // Found by fuzzing: a late ack to the first handshake's repeated
    // request must not leave the peer in the old epoch.
    let t0 = Instant::now();
    let (mut a, mut b) = (default_machine(), default_machine());
    a.connect(t0);
    a.handle_timeout(t0 + 1000 * MS); // request repeated: two on the wire
    let now = t0 + 1000 * MS;
    let requests = frames(&mut a);
    assert_eq!(requests.len(), 2);
    for f in &requests {
        b.handle_frame(f.clone(), now);
    }
    let acks = frames(&mut b); // two acks
    assert_eq!(acks.len(), 2);
    a.handle_frame(acks[0].clone(), now);
    assert_eq!(a.state(), LinkState::Up);
    a.send(msg(0), now).expect("up");
    a.connect(now); // local reset while the second ack is still coming
    a.handle_frame(acks[1].clone(), now);
    assert_eq!(a.state(), LinkState::Connecting, "late ack ignored");
    a.send(msg(1), now).expect("not down");
    // B now sees everything A sent, in order.
    pass(&mut a, &mut b, now);
    while pass(&mut b, &mut a, now) + pass(&mut a, &mut b, now) > 0 {}
    // A's request is repeated after its timeout and answered.
    let now = now + 1000 * MS;
    a.handle_timeout(now);
    b.handle_timeout(now);
    while pass(&mut a, &mut b, now) + pass(&mut b, &mut a, now) > 0 {}
    assert_eq!(a.state(), LinkState::Up);
    assert_eq!(b.state(), LinkState::Up);
    for i in 2..20 {
        a.send(msg(i), now).expect("up");
        while pass(&mut a, &mut b, now) + pass(&mut b, &mut a, now) > 0 {}
    }
    let got = messages(&events(&mut b));
    let expected_tail: Vec<Value> = (1..20).map(msg).collect();
    assert!(
        got == expected_tail || got[1..] == expected_tail[..] && got[0] == msg(0),
        "{got:?}"
    );
}

#[test]
fn frames_decode_whatever_the_key_order_as_micropython_may_send() {
    let data = Value::map([
        ("d", Value::from("hi")),
        ("x", Value::from(vec![Value::from(3u8)])),
        ("r", Value::from(1u8)),
        ("s", Value::from(2u8)),
        ("zz", Value::from("unknown keys are ignored")),
    ]);
    assert_eq!(
        Frame::from_value(&data),
        Ok(Frame::Data {
            s: 2,
            r: 1,
            x: vec![3],
            d: Some(Value::from("hi"))
        })
    );
    let reset = Value::map([
        (
            "c",
            Value::map([("m", Value::from(16u8)), ("t", Value::from(250u16))]),
        ),
        ("n", Value::from(2u8)),
        ("a", Value::from("r")),
    ]);
    let with_ids = Value::map([
        ("p", Value::from(5u8)),
        ("i", Value::from(0x3FFF_FFFFu32)),
        ("n", Value::from(3u8)),
        (
            "c",
            Value::map([("t", Value::from(9u8)), ("m", Value::from(4u8))]),
        ),
        ("a", Value::from("r")),
    ]);
    assert_eq!(
        Frame::from_value(&with_ids),
        Ok(Frame::Reset {
            step: ResetStep::Ack2,
            params: Params {
                timeout_ms: 9,
                window: 4
            },
            id: Some(0x3FFF_FFFF),
            peer: Some(5),
        })
    );
    assert_eq!(
        Frame::from_value(&reset),
        Ok(Frame::Reset {
            step: ResetStep::Ack,
            params: Params {
                timeout_ms: 250,
                window: 16
            },
            id: None,
            peer: None,
        })
    );
}
