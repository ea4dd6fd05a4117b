//! The normative vectors of authenticated links (tests/vectors/auth.json,
//! docs/auth.md): our initiator and responder write exactly the handshake's
//! bytes, derive TR, TI and KS, seal exactly the sealed messages, open
//! them, and drop every `rejected` entry.

use mux_runtime::auth::handshake::{SessionBox, Step};
use mux_runtime::auth::seal::{Form, Role, Session};
use mux_runtime::auth::{mac, AuthConfig, Initiator, Key, Responder};
use mux_runtime::msgpack::{self, Limits};
use mux_runtime::{notation, Value};
use serde_json::Value as Json;

fn vectors() -> Json {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/auth.json");
    let text = std::fs::read_to_string(path).expect("auth.json is there");
    serde_json::from_str(&text).expect("auth.json is JSON")
}

fn hex(j: &Json, key: &str) -> Vec<u8> {
    hex::decode(
        j[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} is a string")),
    )
    .unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn arr<const N: usize>(j: &Json, key: &str) -> [u8; N] {
    hex(j, key).try_into().expect("right length")
}

fn decode(bytes: &[u8]) -> Value {
    msgpack::decode_exact(bytes, &Limits::default()).expect("vector bytes decode")
}

struct Sides {
    initiator: Initiator,
    responder: Responder,
}

fn sides(v: &Json) -> Sides {
    let key: Key = arr(v, "key");
    let name = v["name"].as_str().unwrap();
    let project = v["project"].as_str().unwrap();
    let project_name = v["project_name"].as_str().unwrap();
    let config = AuthConfig::new(vec![key], name, project, project_name);
    Sides {
        initiator: Initiator::new(&config, arr(v, "ni")),
        responder: Responder::new(
            key,
            name,
            project,
            project_name,
            v["m"].as_u64().unwrap() as u32,
            arr(v, "nr"),
        ),
    }
}

#[test]
fn proofs_and_session_key_match_the_vectors() {
    let v = vectors();
    let (k, ni, nr) = (hex(&v, "key"), hex(&v, "ni"), hex(&v, "nr"));
    let name = v["name"].as_str().unwrap();
    let project = v["project"].as_str().unwrap();
    assert_eq!(
        mac::responder_proof(&k, &ni, &nr, name, project).to_vec(),
        hex(&v, "tr")
    );
    assert_eq!(mac::initiator_proof(&k, &ni, &nr).to_vec(), hex(&v, "ti"));
    assert_eq!(
        mac::session_key(&k, &ni, &nr).to_vec(),
        hex(&v, "session_key")
    );
}

#[test]
fn both_sides_write_the_handshake_bytes_of_the_vectors() {
    let v = vectors();
    let steps = v["handshake"].as_array().unwrap();
    let bytes: Vec<Vec<u8>> = steps.iter().map(|s| hex(s, "hex")).collect();
    for (s, b) in steps.iter().zip(&bytes) {
        let value = notation::from_json(&s["value"]).expect("notation");
        assert_eq!(decode(b), value, "{}", s["name"]);
    }
    let Sides {
        initiator,
        mut responder,
    } = sides(&v);
    assert_eq!(
        hex::encode(msgpack::to_vec(&initiator.hello())),
        hex::encode(&bytes[0])
    );
    let Step::Reply(challenge) = responder.on_message(&decode(&bytes[0])) else {
        panic!("the responder does not answer hello")
    };
    assert_eq!(
        hex::encode(msgpack::to_vec(&challenge)),
        hex::encode(&bytes[1])
    );
    let est = initiator
        .on_challenge(&decode(&bytes[1]))
        .expect("the vector's challenge checks");
    assert_eq!(
        hex::encode(msgpack::to_vec(&est.proof)),
        hex::encode(&bytes[2])
    );
    assert_eq!(est.peer.max_message, Some(1024));
    assert_eq!(est.peer.project_name, v["project_name"].as_str().unwrap());
    assert!(matches!(
        responder.on_message(&decode(&bytes[2])),
        Step::Done(SessionBox(_))
    ));
}

fn role(dir: &str) -> (Role, Role) {
    // (sender, receiver)
    match dir {
        "I" => (Role::Initiator, Role::Responder),
        "R" => (Role::Responder, Role::Initiator),
        other => panic!("direction {other}"),
    }
}

/// The vectors' sealed messages of one form, sealed to and opened from
/// their bytes; `tag_at` is where the tag starts in the wire bytes.
fn check_sealed(entries: &str, form: Form, tag_at: usize) {
    let v = vectors();
    let ks: [u8; 32] = arr(&v, "session_key");
    for e in v[entries].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let counter = e["counter"].as_u64().unwrap() as u32;
        let (from, to) = role(e["dir"].as_str().unwrap());
        let message = notation::from_json(&e["message"]).expect("notation");
        assert_eq!(
            hex::encode(msgpack::to_vec(&message)),
            e["body"].as_str().unwrap(),
            "{name}"
        );
        let (sealer, _) = Session::new(ks, from).in_form(form).split();
        let sealed = sealer.with_counter(counter - 1).seal(&message).unwrap();
        let wire = msgpack::to_vec(&sealed);
        assert_eq!(
            hex::encode(&wire),
            e["hex"].as_str().unwrap(),
            "{name}: sealed bytes"
        );
        assert_eq!(wire[tag_at - 1], counter as u8, "{name}: counter byte");
        assert_eq!(
            hex::encode(&wire[tag_at..tag_at + form.tag_len()]),
            e["tag"].as_str().unwrap(),
            "{name}: tag"
        );
        let (_, opener) = Session::new(ks, to).in_form(form).split();
        let mut opener = opener.with_last(counter - 1);
        assert_eq!(opener.open(&decode(&hex(e, "hex"))), Ok(message), "{name}");
        assert_eq!(opener.last(), counter);
    }
}

#[test]
fn sealed_messages_are_sealed_to_and_opened_from_the_vector_bytes() {
    // `81 a1 73 c4 LEN c`, then the tag.
    check_sealed("sealed", Form::Stream, 6);
}

#[test]
fn serial_sealed_messages_are_sealed_to_and_opened_from_the_vector_bytes() {
    // `c4 LEN c`, then the tag.
    check_sealed("sealed_serial", Form::Frame, 3);
}

/// Every entry of `entries` is dropped by an opener of `form`, its
/// counter stays, and a genuine `first` still opens after it.
fn check_rejected(entries: &str, form: Form, first: &str) {
    let v = vectors();
    let ks: [u8; 32] = arr(&v, "session_key");
    let first = &v[first][0];
    for e in v[entries].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let last = e["last"].as_u64().unwrap() as u32;
        let (_, to) = role(e["dir"].as_str().unwrap());
        let (_, opener) = Session::new(ks, to).in_form(form).split();
        let mut opener = opener.with_last(last);
        let got = opener.open(&decode(&hex(e, "hex")));
        assert!(got.is_err(), "{name}: accepted {got:?}");
        assert_eq!(opener.last(), last, "{name}: the counter moved");
        // A genuine next message is still accepted.
        if last == 0 {
            assert!(opener.open(&decode(&hex(first, "hex"))).is_ok(), "{name}");
        }
    }
}

#[test]
fn every_rejected_vector_is_dropped_and_the_link_goes_on() {
    check_rejected("rejected", Form::Stream, "sealed");
    check_rejected("serial_rejected", Form::Frame, "sealed_serial");
}

#[test]
fn encrypted_messages_match_the_vectors_and_the_encrypting_responder_says_so() {
    let v = vectors();
    let (k, ni, nr) = (hex(&v, "key"), hex(&v, "ni"), hex(&v, "nr"));
    let ke: [u8; 32] = arr(&v, "encryption_key");
    assert_eq!(mac::encryption_key(&k, &ni, &nr), ke);
    let ks: [u8; 32] = arr(&v, "session_key");
    // Step 2 of a responder whose link encrypts.
    let key: Key = arr(&v, "key");
    let mut r = Responder::new(
        key,
        v["name"].as_str().unwrap(),
        v["project"].as_str().unwrap(),
        v["project_name"].as_str().unwrap(),
        v["m"].as_u64().unwrap() as u32,
        arr(&v, "nr"),
    )
    .encrypting();
    let hello = decode(&hex(&v["handshake"][0], "hex"));
    let Step::Reply(challenge) = r.on_message(&hello) else {
        panic!("no challenge")
    };
    assert_eq!(
        hex::encode(msgpack::to_vec(&challenge)),
        v["challenge_encrypted"]["hex"].as_str().unwrap()
    );
    let est = sides(&v)
        .initiator
        .on_challenge(&challenge)
        .expect("the challenge checks");
    assert!(est.session.is_encrypted() && est.peer.encrypted);
    for e in v["encrypted"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let counter = e["counter"].as_u64().unwrap() as u32;
        let (from, to) = role(e["dir"].as_str().unwrap());
        let message = notation::from_json(&e["message"]).expect("notation");
        let mut x = hex(e, "body");
        mac::keystream_xor(
            &ke,
            // lowercase D in an encrypted session
            e["dir"].as_str().unwrap().to_ascii_lowercase().as_bytes()[0],
            counter.to_be_bytes(),
            &mut x,
        );
        assert_eq!(
            hex::encode(&x),
            e["cipher"].as_str().unwrap(),
            "{name}: cipher"
        );
        let (sealer, _) = Session::new(ks, from).encrypted(ke).split();
        let sealed = sealer.with_counter(counter - 1).seal(&message).unwrap();
        assert_eq!(
            hex::encode(msgpack::to_vec(&sealed)),
            e["hex"].as_str().unwrap(),
            "{name}: sealed bytes"
        );
        let (_, opener) = Session::new(ks, to).encrypted(ke).split();
        let mut opener = opener.with_last(counter - 1);
        assert_eq!(opener.open(&decode(&hex(e, "hex"))), Ok(message), "{name}");
    }
    for e in v["encrypted_rejected"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let last = e["last"].as_u64().unwrap() as u32;
        let (_, to) = role(e["dir"].as_str().unwrap());
        let (_, opener) = Session::new(ks, to).encrypted(ke).split();
        let mut opener = opener.with_last(last);
        let got = opener.open(&decode(&hex(e, "hex")));
        assert!(got.is_err(), "{name}: accepted {got:?}");
        assert_eq!(opener.last(), last, "{name}: the counter moved");
    }
}

// ---- links: a NodeLink to a fake node that authenticates ----

mod link {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use mux_runtime::auth::{nonce, Key};
    use mux_runtime::endpoint::NoHandler;
    use mux_runtime::framing::{Incoming, StreamCodec};
    use mux_runtime::link::{LinkOptions, LinkSpec, LinkState, NodeLink};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::net::TcpListener;
    use tokio_util::codec::Framed;

    const KEY: Key = [5; 32];

    /// What the fake node does besides answering pings.
    #[derive(Clone, Copy)]
    enum Node {
        Honest,
        /// Before each reply: the reply with a bit flipped, the previous
        /// reply replayed, and the reply unsealed.
        Faulty,
        /// Never answers the handshake.
        Silent,
    }

    /// A node listening on loopback with `key` and identity `name`/`project`.
    async fn fake_node(key: Key, name: &'static str, project: &'static str, how: Node) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                tokio::spawn(serve(io, key, name, project, how));
            }
        });
        addr
    }

    async fn serve(io: tokio::net::TcpStream, key: Key, name: &str, project: &str, how: Node) {
        let mut framed = Framed::new(io, StreamCodec::default());
        let mut r = Responder::new(key, name, project, "q", 512, nonce().unwrap());
        let session = loop {
            let Some(Ok(Incoming::Message(m))) = framed.next().await else {
                return;
            };
            if matches!(how, Node::Silent) {
                continue;
            }
            match r.on_message(&m) {
                Step::Reply(v) => framed.send(v).await.unwrap(),
                Step::Done(SessionBox(s)) => break s,
                Step::Fail(e) => {
                    let _ = framed.send(e).await;
                    return;
                }
            }
        };
        let (mut sealer, mut opener) = session.split();
        let mut last_reply: Option<Value> = None;
        while let Some(Ok(Incoming::Message(m))) = framed.next().await {
            let Ok(req) = opener.open(&m) else { continue };
            let (Some(d), Some(i)) = (req.get("d"), req.get("i").and_then(Value::as_int)) else {
                continue;
            };
            let reply = Value::map([("d", d.clone()), ("i", Value::from((i ^ 1) as i64))]);
            let sealed = sealer.seal(&reply).unwrap();
            if matches!(how, Node::Faulty) {
                let mut flipped = sealed.clone();
                if let Value::Map(pairs) = &mut flipped {
                    if let Value::Bin(b) = &mut pairs[0].1 {
                        *b.last_mut().unwrap() ^= 1;
                    }
                }
                framed.send(flipped).await.unwrap();
                if let Some(old) = last_reply.take() {
                    framed.send(old).await.unwrap();
                }
                framed.send(reply.clone()).await.unwrap();
            }
            framed.send(sealed.clone()).await.unwrap();
            last_reply = Some(sealed);
        }
    }

    fn auth(keys: Vec<Key>) -> AuthConfig {
        AuthConfig::new(keys, "demo", "9a", "q")
    }

    fn spawn(addr: &str, auth: AuthConfig, timeout: Duration) -> NodeLink {
        let options = LinkOptions {
            connect_timeout: timeout,
            ..LinkOptions::default()
        };
        NodeLink::spawn_auth(
            "demo",
            LinkSpec::Tcp { addr: addr.into() },
            Some(auth),
            Arc::new(NoHandler),
            options,
        )
    }

    async fn down_reason(link: &NodeLink) -> String {
        let mut states = link.watch_state();
        let state = tokio::time::timeout(
            Duration::from_secs(10),
            states.wait_for(|s| matches!(s, LinkState::Down(_))),
        )
        .await
        .expect("the link goes down")
        .unwrap()
        .clone();
        match state {
            LinkState::Down(why) => why,
            _ => unreachable!(),
        }
    }

    async fn ping(link: &NodeLink, m: &str) -> Value {
        let ep = tokio::time::timeout(Duration::from_secs(10), link.wait_up())
            .await
            .expect("up in time")
            .expect("up");
        let d = Value::map([("m", Value::from(m))]);
        tokio::time::timeout(Duration::from_secs(10), ep.call(["ping"], d))
            .await
            .expect("answered in time")
            .expect("answered")
    }

    #[tokio::test]
    async fn an_authenticated_link_carries_calls_and_keeps_the_nodes_size() {
        let addr = fake_node(KEY, "demo", "9a", Node::Honest).await;
        let link = spawn(&addr, auth(vec![KEY]), Duration::from_secs(5));
        assert_eq!(
            ping(&link, "hi").await,
            Value::map([("m", Value::from("hi"))])
        );
        let peer = link.peer().expect("a peer");
        assert_eq!((peer.max_message, peer.key_index), (Some(512), 0));
        let stats = link.stats();
        assert_eq!((stats.auth_ok, stats.auth_dropped), (1, 0));
        link.stop().await;
    }

    #[tokio::test]
    async fn a_pending_key_the_node_has_is_used_and_reported() {
        let addr = fake_node([6; 32], "demo", "9a", Node::Honest).await;
        let link = spawn(&addr, auth(vec![KEY, [6; 32]]), Duration::from_secs(5));
        ping(&link, "x").await;
        assert_eq!(link.peer().unwrap().key_index, 1);
        link.stop().await;
    }

    #[tokio::test]
    async fn altered_replayed_and_unsealed_messages_are_dropped_and_counted() {
        let addr = fake_node(KEY, "demo", "9a", Node::Faulty).await;
        let link = spawn(&addr, auth(vec![KEY]), Duration::from_secs(5));
        for i in 0..3 {
            let m = format!("n{i}");
            assert_eq!(
                ping(&link, &m).await,
                Value::map([("m", Value::from(m.as_str()))])
            );
        }
        let stats = link.stats();
        // Per reply: a flipped copy and an unsealed copy; a replay from
        // the second on.
        assert_eq!((stats.auth_ok, stats.auth_dropped), (3, 2 + 3 + 3));
        assert!(link.state().is_up());
        link.stop().await;
    }

    #[tokio::test]
    async fn a_wrong_key_is_named_and_counted() {
        let addr = fake_node([7; 32], "demo", "9a", Node::Honest).await;
        let link = spawn(&addr, auth(vec![KEY]), Duration::from_secs(5));
        let why = down_reason(&link).await;
        assert!(why.starts_with("node 'demo' rejected: wrong key"), "{why}");
        assert!(link.stats().auth_failed >= 1);
        link.stop().await;
    }

    #[tokio::test]
    async fn another_projects_node_is_refused_with_both_names_and_the_port() {
        let addr = fake_node(KEY, "demo", "3f", Node::Honest).await;
        let port = addr.rsplit_once(':').unwrap().1.to_owned();
        let link = spawn(&addr, auth(vec![KEY]), Duration::from_secs(5));
        let why = down_reason(&link).await;
        let want = format!(
            "port {port} answers node 'demo' of project 'q' (id 3f), not node 'demo' of this project 'q' (id 9a)"
        );
        assert!(why.starts_with(&want), "{why}");
        link.stop().await;
    }

    #[tokio::test]
    async fn a_node_that_does_not_authenticate_is_named_after_the_connect_timeout() {
        let addr = fake_node(KEY, "demo", "9a", Node::Silent).await;
        let link = spawn(&addr, auth(vec![KEY]), Duration::from_millis(300));
        let why = down_reason(&link).await;
        assert!(
            why.contains("did not answer the auth handshake")
                && why.contains("predates authenticated links"),
            "{why}"
        );
        link.stop().await;
    }
}
