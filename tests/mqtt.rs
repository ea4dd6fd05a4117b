//! Muxes on "several hosts" joined through a real broker (mosquitto, started
//! by the test on a free loopback port): one project with unix nodes `a`
//! and `b` on TCP links (`moat run`), `moat mux --node a --mqtt URL` and
//! `moat mux --node b --mqtt URL` on their own sockets; clients of one mux
//! reach the node the other holds.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use moat_e2e::{moat, run_ok};
use mux_runtime::error::WellKnown;
use mux_runtime::Value;
use tokio::time::timeout;

#[path = "mqtt_hosts.rs"]
mod hosts;
use hosts::{kw, Hosts, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_one_mux_call_and_stream_from_the_node_another_mux_holds() {
    let Some(h) = Hosts::start("") else { return };
    let (ca, _cb) = h.wait_all_up().await;

    // `moat cmd` through mux A reaches b, held by mux B.
    let out = run_ok(
        moat(&h.root)
            .args(["cmd", "--socket"])
            .arg(&h.sockets[0])
            .args(["b", "t.who", "--json"]),
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"b\"");

    // mux.ls on A lists b with the mux holding it.
    let b = h.wait_state(&ca, "b", "up").await;
    assert_eq!(b.get("mux"), Some(&"mb".into()));
    assert_eq!(b.get("kind"), Some(&"mqtt".into()));
    // What the node says of itself (`sys.info`, `sys.hash`).
    assert!(b.get("board").and_then(Value::as_str).is_some(), "{b:?}");
    let fw = b.get("fw").and_then(Value::as_str).unwrap_or_default();
    assert!(
        fw.len() == 16 && fw.chars().all(|c| c.is_ascii_hexdigit()),
        "{b:?}"
    );
    let a = h.wait_state(&ca, "a", "up").await;
    assert_eq!(a.get("mux"), Some(&"ma".into()));

    // Calls and streams across the bridge; errors are the node's own.
    let hi = kw(&[("m", "hi".into())]);
    assert_eq!(ca.call(["b", "ping"], hi.clone()).await.unwrap(), hi);
    let e = ca.call(["b", "nope"], Value::Nil).await.unwrap_err();
    assert_eq!(e.kind(), Some(WellKnown::NoPath), "{e}");
    let items: Vec<_> = timeout(
        PATIENCE,
        ca.stream(["b", "c", "get"], Value::Nil, 10)
            .take(5)
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert_eq!(items.len(), 5);
    let counts: Vec<i64> = items
        .into_iter()
        .map(|i| i.unwrap().as_int().expect("the counter is an int") as i64)
        .collect();
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "{counts:?}");

    // Node to node across hosts: a asks its mux for b's name.
    let asked = ca
        .call(
            ["a", "t", "ask"],
            kw(&[(
                "p",
                Value::Array(vec!["b".into(), "t".into(), "who".into()]),
            )]),
        )
        .await
        .unwrap();
    assert_eq!(asked, "b".into());

    // A client that never reads its fast stream, and an MQTT subscriber
    // to everything that never reads after subscribing, stall no one.
    let stalled = h.client(0).await;
    let _unread = stalled.stream(["b", "c", "get"], Value::Nil, 1);
    let opts = rumqttc::MqttOptions::new("sloth", "127.0.0.1", h.broker.port);
    let (sloth, mut sloth_events) = rumqttc::AsyncClient::new(opts, 8);
    sloth
        .subscribe("moat/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    timeout(PATIENCE, async {
        while !matches!(
            sloth_events.poll().await,
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))
        ) {}
    })
    .await
    .expect("the slow subscriber is subscribed");
    // 1 000 requests across the bridge, 16 in flight: every answer comes
    // back once, to the request that asked.
    let sent: BTreeSet<i64> = (0..1000).collect();
    let got: Vec<i64> = futures::stream::iter(sent.iter().copied())
        .map(|i| {
            let ca = ca.clone();
            async move {
                let m = kw(&[("m", i.into())]);
                let answer = timeout(PATIENCE, ca.call(["b", "ping"], m))
                    .await
                    .unwrap()
                    .unwrap();
                answer.get("m").and_then(Value::as_int).unwrap() as i64
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(got.len(), 1000);
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), sent);

    // Without a local mux: `moat cmd --mqtt URL NODE PATH`.
    let out =
        run_ok(moat(&h.root).args(["cmd", "--mqtt", &h.broker.url(), "a", "t.who", "--json"]))
            .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"a\"");
    let out = run_ok(
        moat(&h.root)
            .args(["mux", "ls", "--socket"])
            .arg(&h.sockets[1]),
    )
    .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with('a') && l.contains("ma") && l.contains("up")),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_mux_turns_its_nodes_down_and_a_restarted_broker_is_rejoined() {
    let Some(mut h) = Hosts::start("") else {
        return;
    };
    let (ca, _cb) = h.wait_all_up().await;

    // A call in flight when the broker dies fails with a clear error.
    let napping = tokio::spawn({
        let ca = ca.clone();
        async move {
            ca.call(["b", "t", "nap"], kw(&[("ms", 60_000.into())]))
                .await
        }
    });
    // The nap is open on b once b's link carries it: wait for mux B to
    // serve it rather than sleeping.
    let cb = h.client(1).await;
    timeout(PATIENCE, async {
        loop {
            let info = cb.call(["mux", "info"], Value::Nil).await.unwrap();
            let received = info
                .get("mqtt")
                .and_then(|m| m.get("received"))
                .and_then(Value::as_int);
            if received.is_some_and(|r| r > 0) {
                let ls = cb.call(["mux", "ls"], Value::Nil).await.unwrap();
                let out = ls
                    .get("b")
                    .and_then(|b| b.get("messages_out"))
                    .and_then(Value::as_int);
                if out.is_some_and(|n| n > 0) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    drop(cb);
    h.broker.restart().unwrap();
    let e = timeout(PATIENCE, napping)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), Some(WellKnown::LinkDown), "{e}");
    assert!(e.to_string().contains("MQTT broker"), "{e}");
    // Both muxes come back; new requests work.
    h.wait_state(&ca, "b", "up").await;
    let hi = kw(&[("m", "again".into())]);
    let back = timeout(PATIENCE, async {
        loop {
            match ca.call(["b", "ping"], hi.clone()).await {
                Ok(v) => return v,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(back, hi);

    // Mux B hangs: the broker hears nothing from it for 1.5 keep-alives
    // (7.5 s) and publishes its last will; mux A marks b down. Thawed, B
    // reconnects and holds b again.
    h.freeze_mux(1, true);
    let b = h.wait_state(&ca, "b", "down").await;
    assert!(
        b.get("why")
            .and_then(Value::as_str)
            .is_some_and(|w| w.contains("last will")),
        "{b:?}"
    );
    h.freeze_mux(1, false);
    h.wait_state(&ca, "b", "up").await;

    // Mux B killed outright: its last will marks b down for mux A, and
    // requests to b fail with _LnkErr naming why.
    h.signal_mux(1, libc::SIGKILL);
    let b = h.wait_state(&ca, "b", "down").await;
    assert!(
        b.get("why")
            .and_then(Value::as_str)
            .is_some_and(|w| w.contains("mb")),
        "{b:?}"
    );
    let e = ca.call(["b", "ping"], hi.clone()).await.unwrap_err();
    assert_eq!(e.kind(), Some(WellKnown::LinkDown), "{e}");
    // Restarted, it holds b again.
    h.start_mux(1).unwrap();
    h.wait_state(&ca, "b", "up").await;
    assert_eq!(ca.call(["b", "ping"], hi.clone()).await.unwrap(), hi);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_brokers_packet_limit_gets_a_clear_error() {
    let Some(h) = Hosts::start("max_packet_size 2048") else {
        return;
    };
    let (ca, _cb) = h.wait_all_up().await;
    let big = kw(&[("m", "x".repeat(4000).into())]);
    let e = ca.call(["b", "ping"], big).await.unwrap_err();
    let text = e.to_string();
    eprintln!("over the limit: {text}");
    assert!(text.contains("MQTT") && text.contains("limit"), "{text}");
    // The bridge is still fine.
    let hi = kw(&[("m", "hi".into())]);
    assert_eq!(ca.call(["b", "ping"], hi.clone()).await.unwrap(), hi);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muxes_speaking_mqtt_3_1_1_wrap_their_requests_and_still_reach_each_other() {
    let Some(h) = Hosts::start_with("", "version = \"3.1.1\"\n") else {
        return;
    };
    let (ca, _cb) = h.wait_all_up().await;
    let info = ca.call(["mux", "info"], Value::Nil).await.unwrap();
    assert_eq!(
        info.get("mqtt").and_then(|m| m.get("version")),
        Some(&"MQTT 3.1.1".into())
    );
    let hi = kw(&[("m", "hi".into())]);
    assert_eq!(ca.call(["b", "ping"], hi.clone()).await.unwrap(), hi);
    let items: Vec<_> = timeout(
        PATIENCE,
        ca.stream(["b", "c", "get"], Value::Nil, 10)
            .take(3)
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert!(items.iter().all(Result::is_ok), "{items:?}");
    let out =
        run_ok(moat(&h.root).args(["cmd", "--mqtt", &h.broker.url(), "b", "t.who", "--json"]))
            .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"b\"");
}

/// A broker on TLS (`mqtts://localhost:PORT`, its CA in `[mqtt] ca`):
/// the muxes reach each other through it, `moat cmd --mqtt` too; a CA that
/// did not sign the broker's certificate is refused with the fix, and so
/// are TLS files on a plain `mqtt://` URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muxes_join_a_tls_broker_and_an_untrusted_certificate_is_refused_with_the_fix() {
    let Some(h) = Hosts::start_tls() else {
        return;
    };
    let (ca, _cb) = h.wait_all_up().await;
    let hi = kw(&[("m", "tls".into())]);
    assert_eq!(ca.call(["b", "ping"], hi.clone()).await.unwrap(), hi);
    let info = ca.call(["mux", "info"], Value::Nil).await.unwrap();
    let url = h.broker.url();
    assert!(url.starts_with("mqtts://"), "{url}");
    assert_eq!(
        info.get("mqtt").and_then(|m| m.get("url")),
        Some(&url.as_str().into())
    );
    let out = run_ok(moat(&h.root).args(["cmd", "--mqtt", &url, "b", "t.who", "--json"])).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"b\"");

    // Another CA: the broker's certificate is not trusted.
    let other = tempfile::tempdir().unwrap();
    let pki = moat_e2e::broker::Pki::make(other.path(), "other").unwrap();
    let out = moat(&h.root)
        .args(["cmd", "--mqtt", &url, "--mqtt-ca"])
        .arg(&pki.ca)
        .args(["b", "ping"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("certificate") && err.contains("--mqtt-ca"),
        "no TLS reason and fix: {err}"
    );
    // TLS files with a plain URL.
    let plain = url.replace("mqtts://", "mqtt://");
    let out = moat(&h.root)
        .args(["cmd", "--mqtt", &plain, "b", "ping"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("write mqtts://"),
        "{err}"
    );
}

/// The latest payload of every topic a test subscriber (standing in for
/// Home Assistant) saw, polled until `done` holds.
async fn watch_until(
    events: &mut rumqttc::EventLoop,
    seen: &mut std::collections::HashMap<String, Vec<u8>>,
    done: impl Fn(&std::collections::HashMap<String, Vec<u8>>) -> bool,
) {
    timeout(PATIENCE, async {
        while !done(seen) {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) =
                events.poll().await.expect("the broker is up")
            {
                seen.insert(p.topic, p.payload.to_vec());
            }
        }
    })
    .await
    .expect("Home Assistant's topics arrive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_sees_discovery_configs_states_availability_and_commands() {
    let entities = "[mqtt.ha.count]\nnode = \"b\"\nkind = \"sensor\"\npath = \"c.get\"\n\
                    every = 50\nunit = \"ticks\"\n\
                    [mqtt.ha.flag]\nnode = \"b\"\nkind = \"switch\"\npath = \"t.flag\"\n\
                    [mqtt.ha.poke]\nnode = \"a\"\nkind = \"button\"\npath = \"t.who\"\n";
    let Some(h) = Hosts::start_with("", entities) else {
        return;
    };
    h.wait_all_up().await;
    let mut opts = rumqttc::MqttOptions::new("ha-test", "127.0.0.1", h.broker.port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 64);
    for filter in ["homeassistant/#", "moat/mqtte2e/#"] {
        client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
    }
    let mut seen = std::collections::HashMap::new();
    let config = |seen: &std::collections::HashMap<String, Vec<u8>>, kind: &str, id: &str| {
        seen.get(&format!("homeassistant/{kind}/moat_mqtte2e_{id}/config"))
            .map(|p| serde_json::from_slice::<serde_json::Value>(p).expect("configs are JSON"))
    };
    let count_topic = "moat/mqtte2e/b/ha/count/state";
    watch_until(&mut events, &mut seen, |s| {
        config(s, "sensor", "b_count").is_some()
            && config(s, "switch", "b_flag").is_some()
            && config(s, "button", "a_poke").is_some()
            && s.get("moat/mqtte2e/b/availability").map(Vec::as_slice) == Some(b"online")
            && s.contains_key(count_topic)
    })
    .await;
    let sensor = config(&seen, "sensor", "b_count").unwrap();
    assert_eq!(sensor["state_topic"], count_topic);
    assert_eq!(sensor["unit_of_measurement"], "ticks");
    assert_eq!(sensor["availability_topic"], "moat/mqtte2e/b/availability");
    assert_eq!(sensor["device"]["name"], "b");
    let count: i64 = String::from_utf8_lossy(&seen[count_topic])
        .parse()
        .expect("a number");
    assert!(count >= 0);
    let button = config(&seen, "button", "a_poke").unwrap();
    assert!(button["command_topic"].is_string() && button.get("state_topic").is_none());

    // A command from Home Assistant reaches the node; its answer is the
    // switch's state.
    let switch = config(&seen, "switch", "b_flag").unwrap();
    let command = switch["command_topic"].as_str().unwrap().to_owned();
    let state = switch["state_topic"].as_str().unwrap().to_owned();
    client
        .publish(command, rumqttc::QoS::AtLeastOnce, false, "ON")
        .await
        .unwrap();
    watch_until(&mut events, &mut seen, |s| {
        s.get(&state).map(Vec::as_slice) == Some(b"ON")
    })
    .await;
    let (_, cb) = (h.client(0).await, h.client(1).await);
    assert_eq!(
        cb.call(["b", "t", "flag"], Value::Nil).await.unwrap(),
        Value::Bool(true)
    );
}
