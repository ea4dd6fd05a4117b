//! The endpoint against a scripted fake peer over an in-memory duplex.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use mux_runtime::endpoint::{Endpoint, Handler, NoHandler, Notice, Request};
use mux_runtime::error::{RemoteError, WellKnown};
use mux_runtime::framing::{Incoming, LosslessCodec, StreamCodec};
use mux_runtime::message::{path, Message};
use mux_runtime::Value;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::time::timeout;
use tokio_util::codec::Framed;

/// Long enough to never fire on a working endpoint; only bounds a failure.
const PATIENCE: Duration = Duration::from_secs(5);

/// The scripted side: raw messages, no endpoint logic.
struct FakePeer {
    framed: Framed<DuplexStream, StreamCodec>,
}

impl FakePeer {
    async fn recv(&mut self) -> Message {
        let item = timeout(PATIENCE, self.framed.next())
            .await
            .expect("the endpoint sent nothing")
            .expect("link closed")
            .expect("framing error");
        match item {
            Incoming::Message(v) => Message::from_value(v).expect("valid message"),
            Incoming::Console(b) => panic!("unexpected console bytes {b:?}"),
        }
    }

    async fn send(&mut self, msg: Message) {
        self.framed.send(msg.to_value()).await.unwrap();
    }

    /// Nothing more arrives within a short while.
    async fn expect_silence(&mut self) {
        if let Ok(Some(item)) = timeout(Duration::from_millis(200), self.framed.next()).await {
            panic!("expected silence, got {item:?}");
        }
    }
}

fn pair_with(handler: Arc<dyn Handler>) -> (Endpoint, FakePeer) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let ep = Endpoint::spawn(Framed::new(a, StreamCodec::default()), handler);
    let peer = FakePeer {
        framed: Framed::new(b, StreamCodec::default()),
    };
    (ep, peer)
}

fn pair() -> (Endpoint, FakePeer) {
    pair_with(Arc::new(NoHandler))
}

fn kw(pairs: &[(&str, Value)]) -> Value {
    Value::map(pairs.iter().map(|(k, v)| (*k, v.clone())))
}

#[tokio::test]
async fn call_sends_an_even_seq_and_takes_the_odd_answer() {
    let (ep, mut peer) = pair();
    let call = tokio::spawn(ep.call(["ping"], kw(&[("m", "hi".into())])));
    let req = peer.recv().await;
    let Message::Request {
        path: p, data, seq, ..
    } = req
    else {
        panic!("not a request: {req:?}")
    };
    assert_eq!(p, path(["ping"]));
    assert_eq!(seq % 2, 0);
    assert_eq!(data, kw(&[("m", "hi".into())]));
    peer.send(Message::reply(seq + 1, kw(&[("m", "hi".into())])))
        .await;
    let got = call.await.unwrap().unwrap();
    assert_eq!(got, kw(&[("m", "hi".into())]));
}

#[tokio::test]
async fn nil_kwargs_go_out_as_an_empty_map() {
    let (ep, mut peer) = pair();
    let _call = tokio::spawn(ep.call(["sys", "mem"], Value::Nil));
    let Message::Request { data, .. } = peer.recv().await else {
        panic!()
    };
    assert_eq!(data, Value::Map(vec![]));
}

#[tokio::test]
async fn concurrent_calls_answered_out_of_order_each_get_their_own_reply() {
    let (ep, mut peer) = pair();
    let calls: Vec<_> = (0..10)
        .map(|k| tokio::spawn(ep.call(["echo"], kw(&[("k", k.into())]))))
        .collect();
    let mut reqs = Vec::new();
    for _ in 0..10 {
        reqs.push(peer.recv().await);
    }
    for req in reqs.into_iter().rev() {
        let Message::Request { data, seq, .. } = req else {
            panic!()
        };
        peer.send(Message::reply(seq + 1, data.get("k").unwrap().clone()))
            .await;
    }
    for (k, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), Value::from(k as i64));
    }
}

#[tokio::test]
async fn remote_errors_reach_the_caller() {
    let (ep, mut peer) = pair();
    let call = tokio::spawn(ep.call(["fs", "rm"], kw(&[("p", "x".into())])));
    let seq = peer.recv().await.seq().unwrap();
    let err = RemoteError::well_known(WellKnown::FileNotFound, vec!["x".into()]);
    peer.send(Message::error(seq + 1, err.clone())).await;
    assert_eq!(call.await.unwrap(), Err(err));
}

#[tokio::test]
async fn stream_yields_items_in_order_until_the_end() {
    let (ep, mut peer) = pair();
    let mut s = ep.stream(["t", "temp"], Value::Nil, 100);
    let Message::Request { seq, stream, .. } = peer.recv().await else {
        panic!()
    };
    assert_eq!(stream, Some(100));
    for n in 1..=3u64 {
        peer.send(Message::stream_item(seq + 1, n, (n * 10).into()))
            .await;
    }
    peer.send(Message::stream_end(seq + 1)).await;
    let got: Vec<_> = timeout(PATIENCE, s.by_ref().collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(got, vec![Ok(10.into()), Ok(20.into()), Ok(30.into())]);
    drop(s);
    peer.expect_silence().await;
}

#[tokio::test]
async fn dropping_a_stream_sends_its_cancellation() {
    let (ep, mut peer) = pair();
    let mut s = ep.stream(["t", "temp"], Value::Nil, 100);
    let seq = peer.recv().await.seq().unwrap();
    peer.send(Message::stream_item(seq + 1, 1, 1.into())).await;
    assert_eq!(s.next().await, Some(Ok(1.into())));
    drop(s);
    assert_eq!(peer.recv().await, Message::cancel(seq));
}

#[tokio::test]
async fn dropping_a_pending_call_sends_its_cancellation() {
    let (ep, mut peer) = pair();
    let call = tokio::spawn(ep.call(["slow"], Value::Nil));
    let seq = peer.recv().await.seq().unwrap();
    call.abort();
    assert_eq!(peer.recv().await, Message::cancel(seq));
    // A late answer to the cancelled request is dropped quietly.
    peer.send(Message::reply(seq + 1, 1.into())).await;
    let again = tokio::spawn(ep.call(["ping"], Value::Nil));
    let seq2 = peer.recv().await.seq().unwrap();
    assert_ne!(seq2, seq);
    peer.send(Message::reply(seq2 + 1, 2.into())).await;
    assert_eq!(again.await.unwrap(), Ok(2.into()));
}

#[tokio::test]
async fn link_loss_fails_pending_calls_and_streams_with_lnkerr() {
    let (ep, mut peer) = pair();
    let call = tokio::spawn(ep.call(["slow"], Value::Nil));
    let mut s = ep.stream(["t"], Value::Nil, 100);
    peer.recv().await;
    peer.recv().await;
    drop(peer);
    let err = timeout(PATIENCE, call).await.unwrap().unwrap().unwrap_err();
    assert_eq!(err.kind(), Some(WellKnown::LinkDown));
    let item = timeout(PATIENCE, s.next()).await.unwrap().unwrap();
    assert_eq!(item.unwrap_err().kind(), Some(WellKnown::LinkDown));
    assert_eq!(s.next().await, None);
    // From now on calls fail at once, and the endpoint says it is down.
    assert!(!ep.is_up());
    let err = ep.call(["ping"], Value::Nil).await.unwrap_err();
    assert_eq!(err.kind(), Some(WellKnown::LinkDown));
    assert_eq!(
        ep.send(["x"], Value::Nil).unwrap_err().kind(),
        Some(WellKnown::LinkDown)
    );
    timeout(PATIENCE, ep.closed()).await.unwrap();
}

/// Answers `echo` with its kwargs, `count` streams from its own counter,
/// `hang` never answers, everything else `_NPErr`.
struct TestApp;

impl Handler for TestApp {
    fn call(&self, req: Request) -> BoxFuture<'static, Result<Value, RemoteError>> {
        Box::pin(async move {
            match req.path.first().map(|p| p.to_string()).as_deref() {
                Some("echo") => Ok(req.data),
                Some("hang") => futures::future::pending().await,
                _ => Err(RemoteError::no_path(
                    req.path.iter().map(Value::from).collect(),
                    "no such app",
                )),
            }
        })
    }
}

#[tokio::test]
async fn peer_requests_are_answered_by_the_handler_with_seq_plus_one() {
    let (_ep, mut peer) = pair_with(Arc::new(TestApp));
    peer.send(Message::request(["echo"], kw(&[("x", 1.into())]), 6))
        .await;
    assert_eq!(peer.recv().await, Message::reply(7, kw(&[("x", 1.into())])));
    peer.send(Message::request(["nope"], Value::Nil, 8)).await;
    let Message::Error { seq: 9, error } = peer.recv().await else {
        panic!()
    };
    assert_eq!(error.kind(), Some(WellKnown::NoPath));
}

#[tokio::test]
async fn a_pure_client_answers_requests_with_nperr() {
    let (_ep, mut peer) = pair();
    peer.send(Message::request(["sys", "dir"], Value::Nil, 2))
        .await;
    let Message::Error { seq: 3, error } = peer.recv().await else {
        panic!()
    };
    assert_eq!(error.kind(), Some(WellKnown::NoPath));
}

#[tokio::test]
async fn a_slow_peer_request_does_not_block_others() {
    let (_ep, mut peer) = pair_with(Arc::new(TestApp));
    peer.send(Message::request(["hang"], Value::Nil, 2)).await;
    peer.send(Message::request(["echo"], kw(&[("y", 2.into())]), 4))
        .await;
    assert_eq!(peer.recv().await, Message::reply(5, kw(&[("y", 2.into())])));
}

#[tokio::test]
async fn a_duplicate_seq_gets_duperr_and_the_original_keeps_running() {
    let (ep, mut peer) = pair_with(Arc::new(TestApp));
    peer.send(Message::request(["hang"], Value::Nil, 2)).await;
    peer.send(Message::request(["echo"], Value::Nil, 2)).await;
    let Message::Error { seq: 3, error } = peer.recv().await else {
        panic!()
    };
    assert_eq!(error.kind(), Some(WellKnown::Duplicate));
    assert_eq!(ep.stats().serving, 1, "the original still runs");
}

#[tokio::test]
async fn peer_stream_requests_are_served_by_repeated_calls_until_cancelled() {
    let (ep, mut peer) = pair_with(Arc::new(TestApp));
    peer.send(Message::request(["echo"], kw(&[("v", 5.into())]), 10).streaming(20))
        .await;
    for n in 1..=3 {
        assert_eq!(
            peer.recv().await,
            Message::stream_item(11, n, kw(&[("v", 5.into())]))
        );
    }
    peer.send(Message::cancel(10)).await;
    // Items already queued may still arrive; then nothing more.
    loop {
        match timeout(Duration::from_millis(300), peer.framed.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Incoming::Message(v)))) => {
                assert!(matches!(
                    Message::from_value(v).unwrap(),
                    Message::StreamItem { seq: 11, .. }
                ));
            }
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ep.stats().serving, 0);
}

#[tokio::test]
async fn a_streamed_command_that_fails_ends_the_stream_with_its_error() {
    let (_ep, mut peer) = pair_with(Arc::new(TestApp));
    peer.send(Message::request(["nope"], Value::Nil, 2).streaming(10))
        .await;
    let Message::Error { seq: 3, error } = peer.recv().await else {
        panic!()
    };
    assert_eq!(error.kind(), Some(WellKnown::NoPath));
    peer.expect_silence().await;
}

#[tokio::test]
async fn unsolicited_messages_reach_every_subscriber() {
    let (ep, mut peer) = pair();
    let mut a = ep.notices();
    let mut b = ep.notices();
    peer.send(Message::unsolicited(["link"], true.into())).await;
    let want = Notice {
        path: path(["link"]),
        data: true.into(),
    };
    assert_eq!(timeout(PATIENCE, a.recv()).await.unwrap().unwrap(), want);
    assert_eq!(timeout(PATIENCE, b.recv()).await.unwrap().unwrap(), want);
}

#[tokio::test]
async fn send_is_fire_and_forget() {
    let (ep, mut peer) = pair();
    ep.send(["sys", "wdt"], Value::Nil).unwrap();
    assert_eq!(
        peer.recv().await,
        Message::Unsolicited {
            path: path(["sys", "wdt"]),
            data: Value::Nil
        }
    );
}

#[tokio::test]
async fn console_bytes_and_messages_share_a_lossless_link() {
    let (a, mut b) = tokio::io::duplex(4096);
    let ep = Endpoint::spawn(
        Framed::new(a, LosslessCodec::default()),
        Arc::new(NoHandler),
    );
    let mut console = ep.console();
    let call = tokio::spawn(ep.call(["ping"], Value::Nil));
    // The fake node prints, then answers request 2 (the first even number).
    b.write_all(b"hello\n").await.unwrap();
    b.write_all(&Message::reply(3, "pong".into()).to_bytes())
        .await
        .unwrap();
    b.write_all(b"bye\n").await.unwrap();
    assert_eq!(call.await.unwrap(), Ok("pong".into()));
    let mut text = Vec::new();
    while text.len() < 10 {
        let chunk = timeout(PATIENCE, console.recv()).await.unwrap().unwrap();
        text.extend_from_slice(&chunk);
    }
    assert_eq!(text, b"hello\nbye\n");
    assert_eq!(ep.stats().console_bytes_in, 10);
}

#[tokio::test]
async fn two_endpoints_call_each_other_over_one_link() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let left = Endpoint::spawn(Framed::new(a, StreamCodec::default()), Arc::new(TestApp));
    let right = Endpoint::spawn(Framed::new(b, StreamCodec::default()), Arc::new(TestApp));
    let (x, y) = tokio::join!(
        left.call(["echo"], kw(&[("from", "left".into())])),
        right.call(["echo"], kw(&[("from", "right".into())])),
    );
    assert_eq!(x.unwrap(), kw(&[("from", "left".into())]));
    assert_eq!(y.unwrap(), kw(&[("from", "right".into())]));
    let items: Vec<_> = left
        .stream(["echo"], kw(&[("s", 1.into())]), 5)
        .take(3)
        .collect()
        .await;
    assert_eq!(items, vec![Ok(kw(&[("s", 1.into())])); 3]);
    // The cancellation reached the right side: it serves nothing now.
    timeout(PATIENCE, async {
        while right.stats().serving > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn dropping_every_handle_closes_the_link() {
    let (ep, mut peer) = pair();
    drop(ep);
    let next = timeout(PATIENCE, peer.framed.next()).await.unwrap();
    assert!(next.is_none(), "the link should close, got {next:?}");
}

#[tokio::test]
async fn a_peer_that_does_not_read_gets_its_stream_coalesced_not_queued_without_bound() {
    let (ep, mut peer) = pair_with(Arc::new(TestApp));
    peer.send(Message::request(["echo"], kw(&[("pad", "x".repeat(200).into())]), 2).streaming(1))
        .await;
    // The peer never reads again: the duplex fills, then our queue.
    let high = mux_runtime::endpoint::HIGH_WATER;
    timeout(PATIENCE, async {
        while ep.stats().queued < high {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the queue fills up to the high-water mark");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(ep.stats().queued <= high, "queued {}", ep.stats().queued);
    drop(peer);
}

#[tokio::test]
async fn a_malformed_request_gets_an_error_answer_not_silence() {
    let (_ep, mut peer) = pair_with(Arc::new(TestApp));
    // `d` must be a map of keyword arguments.
    let bad = Value::map([
        ("a", Value::Array(vec!["echo".into()])),
        ("d", Value::from(5)),
        ("i", Value::from(4)),
    ]);
    peer.framed.send(bad).await.unwrap();
    let Message::Error { seq: 5, error } = peer.recv().await else {
        panic!("expected an error answer to request 4")
    };
    assert_eq!(error.kind(), Some(WellKnown::Value));
    // Non-requests that do not parse are dropped; the link lives on.
    peer.framed
        .send(Value::map([("n", Value::from(1))]))
        .await
        .unwrap();
    peer.send(Message::request(["echo"], Value::Nil, 6)).await;
    assert_eq!(peer.recv().await, Message::reply(7, Value::Map(vec![])));
}
