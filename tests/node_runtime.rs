//! The node runtime on real MicroPython: a unix-port satellite started as a
//! process, driven over TCP and stdio with the foundation codec.
//!
//! Every scenario runs twice: with a 256 KiB heap and with `-X
//! heapsize=64k` (an ESP8266-sized budget). `bench_heap_and_round_trips`
//! prints the heap and request-rate figures (`--nocapture` to see them).

use moat_e2e::node::uart::UartHost;
use moat_e2e::node::{kw, path, run_script, Conn, Node, NodeErr, WAIT};
use mux_runtime::Value;
use std::time::{Duration, Instant};

const SHORT: Duration = Duration::from_millis(400);

/// A test app module written into the node's folder (a filesystem module,
/// loaded like any project app).
const TAPP: &str = r#"
import asyncio
from app import App


class Leaf(App):
    def cmd_who(self):
        return self.name


class T(App):
    def __init__(self, cfg, name, root):
        super().__init__(cfg, name, root)
        self.k = 0
        self.apps = [Leaf({}, "zero", root), Leaf({}, "one", root)]

    def cmd_get(self):
        self.k += 1
        return self.k

    def cmd_cfg(self):
        return self.cfg

    def cmd_kerr(self):
        raise KeyError("nope")

    def cmd_verr(self):
        raise ValueError("bad", 3)

    def cmd_oserr(self):
        raise OSError(5)

    def cmd_custom(self):
        raise RuntimeError("custom")

    def cmd_obj(self):
        return object()

    async def cmd_slow(self, t=100):
        await asyncio.sleep_ms(t)
        return t

    async def cmd_ask(self, v=0):
        return await self.root.call(["host", "echo"], v=v)

    async def stream_count(self, send, r, n=3):
        for j in range(n):
            send(j)
            await asyncio.sleep_ms(r)


class Bad(App):
    async def run(self):
        await asyncio.sleep_ms(50)
        raise ValueError("boom")

    def cmd_alive(self):
        return True
"#;

fn s(v: &str) -> Value {
    Value::from(v)
}

fn int(v: i64) -> Value {
    Value::from(v)
}

fn none() -> Value {
    Value::map(Vec::<(&str, Value)>::new())
}

fn proxy(n: &str) -> Value {
    Value::Proxy(n.into())
}

/// A node with the test app `t`, a failing app `bad` and `fs`, on TCP.
fn standard(heap: u32) -> (Node, Conn) {
    let mut n = Node::new(heap);
    n.write_file("tapp.py", TAPP);
    let cfg = n.tcp_cfg(vec![
        (
            "apps",
            kw([
                ("t", s("tapp.T")),
                ("fs", s("fs.Files")),
                ("bad", s("tapp.Bad")),
            ]),
        ),
        ("t", kw([("x", int(1))])),
    ]);
    n.write_cfg("moat.cfg", &cfg);
    n.start();
    let mut c = n.connect();
    let up = c
        .wait_unsolicited(&path("link"), WAIT)
        .expect("no link message");
    assert_eq!(up.get("d"), Some(&Value::Bool(true)));
    (n, c)
}

use moat_e2e::both_heaps;

both_heaps!(
    builtins_answer,
    cfg_write_save_restart_survives,
    fs_round_trips_every_byte_and_refuses_escapes,
    streams_run_and_stop_on_cancel,
    errors_travel_as_proxies,
    unknown_paths_name_the_path,
    malformed_input_never_stops_the_node,
    an_oversized_request_is_skipped_whole_and_answered,
    stdio_link_carries_messages_and_console,
    failing_app_is_reported_and_restarted,
    apps_call_out_through_the_link,
    tcp_client_link_connects_out,
    uart_link_survives_byte_errors,
);

fn builtins_answer(heap: u32) {
    let (mut n, mut c) = standard(heap);
    assert_eq!(c.ok("ping", kw([("m", s("hi"))])), kw([("m", s("hi"))]));

    let root = c.ok("dir", none());
    let cmds = root.get("c").and_then(Value::as_array).expect("c");
    assert!(
        cmds.contains(&s("ping")) && cmds.contains(&s("dir")),
        "{root}"
    );
    let subs = root.get("d").expect("d");
    for (name, class) in [("sys", "Sys"), ("cfg", "Cfg"), ("t", "T"), ("fs", "Files")] {
        assert_eq!(subs.get(name), Some(&s(class)), "{root}");
    }

    let sys = c.ok("sys.dir", none());
    let sc = sys.get("c").and_then(Value::as_array).expect("c");
    for cmd in [
        "dir", "is_up", "unproxy", "wdt", "mem", "hash", "info", "boot",
    ] {
        assert!(sc.contains(&s(cmd)), "sys.dir lacks {cmd}: {sys}");
    }
    let cfgd = c.ok("cfg.dir", none());
    for cmd in ["r", "w", "s", "x"] {
        assert!(
            cfgd.get("c")
                .and_then(Value::as_array)
                .unwrap()
                .contains(&s(cmd)),
            "{cfgd}"
        );
    }
    // sub-apps in a list, addressed by integers
    assert_eq!(c.ok("t.1.who", none()), s("one"));
    let td = c.ok("t.dir", none());
    assert_eq!(td.get("s"), Some(&Value::Array(vec![s("count")])), "{td}");

    let mem = c.ok("sys.mem", none());
    let free = mem.get("f").and_then(Value::as_int).expect("f");
    let alloc = mem.get("a").and_then(Value::as_int).expect("a");
    assert!(
        free > 0 && alloc > 0 && free + alloc <= n.heap_kb as i128 * 1024,
        "{mem}"
    );

    let info = c.ok("sys.info", none());
    assert_eq!(info.get("v"), Some(&s(env!("CARGO_PKG_VERSION"))), "{info}");
    assert!(info
        .get("p")
        .and_then(Value::as_str)
        .unwrap()
        .starts_with("1."));
    assert!(
        info.get("b").is_some() && info.get("id").is_some(),
        "{info}"
    );

    // frozen module hashes: nil for a module that is not frozen
    assert_eq!(
        c.ok("sys.hash", kw([("m", s("no_such_module"))])),
        Value::Nil
    );
    assert!(matches!(c.ok("sys.hash", none()), Value::Map(_)));

    // is_up repeats the link message
    c.ok("sys.is_up", none());
    let up = c
        .wait_unsolicited(&path("link"), WAIT)
        .expect("link after is_up");
    assert_eq!(up.get("d"), Some(&Value::Bool(true)));

    // an unencodable result travels as a proxy, which can be released once
    let p = c.ok("t.obj", none());
    assert!(matches!(p, Value::Proxy(_)), "{p}");
    c.ok("sys.unproxy", kw([("p", p.clone())]));
    assert_eq!(
        c.fails("sys.unproxy", kw([("p", p)])).proxy(),
        Some("_KyErr")
    );
    assert_eq!(
        c.fails("sys.unproxy", kw([("p", proxy("_FnErr"))])).proxy(),
        Some("_VaErr")
    );

    // sys.wdt without a watchdog is a harmless keepalive; fire and forget too
    c.ok("sys.wdt", none());
    c.send(&Value::map([("a", path("sys.wdt")), ("d", none())]));

    // cfg.r of the whole config and of a subtree
    assert_eq!(c.ok("cfg.r", kw([("p", path("t"))])), kw([("x", int(1))]));
    let all = c.ok("cfg.r", none());
    assert!(
        all.get("link").is_some() && all.get("apps").is_some(),
        "{all}"
    );

    // a second client is served independently
    let mut c2 = n.connect();
    assert_eq!(c2.ok("ping", kw([("m", int(2))])), kw([("m", int(2))]));
    drop(c2);
    assert_eq!(c.ok("t.get", none()), int(1));
    assert!(n.running());
}

fn cfg_write_save_restart_survives(heap: u32) {
    let (mut n, mut c) = standard(heap);
    c.ok("cfg.w", kw([("p", path("t.y.z")), ("d", int(7))]));
    c.ok("cfg.w", kw([("p", path("t.x")), ("d", proxy("-"))]));
    assert_eq!(
        c.ok("cfg.r", kw([("p", path("t"))])),
        kw([("y", kw([("z", int(7))]))])
    );
    // the running app keeps its config until restarted
    assert_eq!(c.ok("t.cfg", none()), kw([("x", int(1))]));
    c.ok("cfg.x", kw([("p", path("t"))]));
    assert_eq!(c.ok("t.cfg", none()), kw([("y", kw([("z", int(7))]))]));
    assert_eq!(c.ok("t.get", none()), int(1), "a restarted app is new");
    // a subtree too big for one message comes as parts: simple members,
    // and the keys to fetch one by one
    for j in 0..30 {
        c.ok(
            "cfg.w",
            kw([("p", path(&format!("big.k{j}"))), ("d", s(&"x".repeat(40)))]),
        );
    }
    c.ok("cfg.w", kw([("p", path("big.sub.a")), ("d", int(1))]));
    let parts = c.ok("cfg.r", kw([("p", path("big"))]));
    let parts = parts.as_array().expect("parts: [simple, keys]");
    assert_eq!(parts.len(), 2);
    let Value::Map(simple) = &parts[0] else {
        panic!("simple members: {}", parts[0])
    };
    let keys = parts[1].as_array().expect("keys");
    assert!(keys.contains(&s("sub")), "{}", parts[1]);
    // every member is either here or to be fetched
    assert_eq!(simple.len() + keys.len(), 31);
    assert!(!simple.is_empty());
    for k in keys.iter().filter(|k| **k != s("sub")) {
        let p = Value::Array(vec![s("big"), k.clone()]);
        assert_eq!(c.ok("cfg.r", kw([("p", p)])), s(&"x".repeat(40)));
    }
    assert_eq!(
        c.ok("cfg.r", kw([("p", path("big.sub"))])),
        kw([("a", int(1))])
    );
    c.ok("cfg.w", kw([("p", path("big"))]));
    assert_eq!(
        c.fails("cfg.r", kw([("p", path("big"))])).proxy(),
        Some("_KyErr")
    );
    c.ok("cfg.s", none());

    // soft reset: link down message, connection closes, node comes back
    c.ok("sys.boot", kw([("m", int(1))]));
    let down = c.wait_unsolicited(&path("link"), WAIT).expect("link down");
    assert_eq!(down.get("d"), Some(&Value::Bool(false)));
    assert!(c.closed_within(WAIT), "link stays open after sys.boot");
    let mut c = n.connect();
    assert_eq!(
        c.ok("cfg.r", kw([("p", path("t"))])),
        kw([("y", kw([("z", int(7))]))])
    );
    assert_eq!(c.ok("t.cfg", none()), kw([("y", kw([("z", int(7))]))]));

    // hard reset ends the unix process cleanly; a new process reads the saved config
    c.ok("sys.boot", kw([("m", int(2))]));
    let st = n.wait_exit(WAIT);
    assert!(st.success(), "hard reset exit status {st}");
    n.start();
    let mut c = n.connect();
    assert_eq!(c.ok("t.cfg", none()), kw([("y", kw([("z", int(7))]))]));
    assert!(
        !n.console().contains("crashed"),
        "a clean reset counted as a crash:\n{}",
        n.console()
    );
}

fn fs_round_trips_every_byte_and_refuses_escapes(heap: u32) {
    let (n, mut c) = standard(heap);
    let all: Vec<u8> = (0..=255u8).collect();
    c.ok("fs.mkdir", kw([("p", s("d"))]));
    let f = c.ok("fs.open", kw([("p", s("d/bin")), ("m", s("w"))]));
    assert_eq!(
        c.ok(
            "fs.wr",
            kw([
                ("f", f.clone()),
                ("d", Value::Bin(all[..100].to_vec())),
                ("o", int(0))
            ])
        ),
        int(100)
    );
    assert_eq!(
        c.ok(
            "fs.wr",
            kw([
                ("f", f.clone()),
                ("d", Value::Bin(all[100..].to_vec())),
                ("o", int(100))
            ])
        ),
        int(156)
    );
    c.ok("fs.cl", kw([("f", f)]));
    assert_eq!(std::fs::read(n.dir.path().join("d/bin")).unwrap(), all);

    let f = c.ok("fs.open", kw([("p", s("d/bin"))]));
    let mut got = Vec::new();
    loop {
        let part = c.ok(
            "fs.rd",
            kw([
                ("f", f.clone()),
                ("o", int(got.len() as i64)),
                ("n", int(64)),
            ]),
        );
        let Value::Bin(b) = part else {
            panic!("fs.rd gave {part}")
        };
        if b.is_empty() {
            break;
        }
        got.extend(b);
    }
    c.ok("fs.cl", kw([("f", f)]));
    assert_eq!(got, all);

    let st = c.ok("fs.stat", kw([("p", s("d/bin"))]));
    assert_eq!(st.get("m"), Some(&s("f")));
    assert_eq!(st.get("s"), Some(&int(256)));
    assert_eq!(c.ok("fs.stat", kw([("p", s("d"))])).get("m"), Some(&s("d")));
    let h = c.ok("fs.hash", kw([("p", s("d/bin"))]));
    assert_eq!(
        h,
        Value::Bin(
            hex::decode("40aff2e9d2d8922e47afd4648e6967497158785fbd1da870e7110266bf944880")
                .unwrap()
        )
    );
    let h8 = c.ok("fs.hash", kw([("p", s("d/bin")), ("l", int(8))]));
    assert_eq!(h8, Value::Bin(hex::decode("40aff2e9d2d8922e").unwrap()));

    assert_eq!(
        c.ok("fs.ls", kw([("p", s("d"))])),
        Value::Array(vec![s("bin")])
    );
    let lx = c.ok("fs.ls", kw([("p", s("d")), ("x", Value::Bool(true))]));
    let e = &lx.as_array().expect("ls x: array")[0];
    assert_eq!(e.get("n"), Some(&s("bin")), "{lx}");
    assert_eq!(e.get("m"), Some(&s("f")), "{lx}");
    assert_eq!(e.get("s"), Some(&int(256)), "{lx}");

    // mv replaces the target atomically
    std::fs::write(n.dir.path().join("d/old"), b"x").unwrap();
    c.ok("fs.mv", kw([("s", s("d/bin")), ("d", s("d/old"))]));
    assert_eq!(std::fs::read(n.dir.path().join("d/old")).unwrap(), all);
    assert_eq!(
        c.fails("fs.stat", kw([("p", s("d/bin"))])).proxy(),
        Some("_FnErr")
    );
    assert_eq!(
        c.fails("fs.mkdir", kw([("p", s("d"))])).proxy(),
        Some("_FxErr")
    );
    c.ok("fs.rm", kw([("p", s("d/old"))]));
    c.ok("fs.rmdir", kw([("p", s("d"))]));
    assert!(!n.dir.path().join("d").exists());

    // paths that leave the root are refused, whatever the command
    for (cmd, args) in [
        ("fs.open", kw([("p", s("../x")), ("m", s("w"))])),
        ("fs.ls", kw([("p", s(".."))])),
        ("fs.stat", kw([("p", s("a/../../etc/passwd"))])),
        ("fs.rm", kw([("p", s("/../x"))])),
        ("fs.mv", kw([("s", s("moat.cfg")), ("d", s("../../x"))])),
    ] {
        let e = c.fails(cmd, args);
        assert_eq!(e.proxy(), Some("_VaErr"), "{cmd}: {e:?}");
    }
    assert!(!n.dir.path().parent().unwrap().join("x").exists());
    // an absolute path means the root
    assert!(c
        .ok("fs.ls", kw([("p", s("/"))]))
        .as_array()
        .unwrap()
        .contains(&s("moat.cfg")));
    assert_eq!(
        c.fails("fs.rd", kw([("f", int(99))])).proxy(),
        Some("_KyErr")
    );
}

fn streams_run_and_stop_on_cancel(heap: u32) {
    let (_n, mut c) = standard(heap);
    // any command streams: t.get called every 20 ms
    let i = c.request("t.get", none(), Some(20));
    let mut last = 0;
    for want in 1..=4 {
        let m = c.answer(i, WAIT).expect("stream item");
        assert_eq!(m.get("n"), Some(&int(want)), "{m}");
        let v = m.get("d").and_then(Value::as_int).unwrap();
        assert!(v > last, "values must increase: {m}");
        last = v;
    }
    c.send(&Value::map([("i", Value::Int(i))]));
    // after the cancellation and a round trip, nothing more arrives for i
    assert_eq!(c.ok("ping", none()), kw([("m", Value::Nil)]));
    let got = c.answer(i, SHORT);
    if let Some(m) = &got {
        // one item may have been in flight before the cancel arrived
        assert!(c.answer(i, SHORT).is_none(), "stream still running: {m}");
    }

    // a native stream ends by itself with {i, r: false}
    let i = c.request("t.count", kw([("n", int(3))]), Some(10));
    let mut vals = Vec::new();
    loop {
        let m = c.answer(i, WAIT).expect("stream message");
        if m.get("r") == Some(&Value::Bool(false)) {
            break;
        }
        vals.push(m.get("d").cloned().unwrap());
    }
    assert_eq!(vals, vec![int(0), int(1), int(2)]);

    // a native stream cannot be called without r
    assert_eq!(c.fails("t.count", none()).proxy(), Some("_NPErr"));

    // a slow command can be cancelled; the link keeps working meanwhile
    let i = c.request("t.slow", kw([("t", int(2000))]), None);
    assert_eq!(c.ok("ping", kw([("m", int(1))])), kw([("m", int(1))]));
    c.send(&Value::map([("i", Value::Int(i))]));
    assert!(c.answer(i, Duration::from_millis(2500)).is_none());

    // a request reusing an open number gets _DupErr; the original still answers
    let i = c.request("t.slow", kw([("t", int(1000))]), None);
    c.send(&Value::map([
        ("a", path("ping")),
        ("d", none()),
        ("i", Value::Int(i)),
    ]));
    let dup = c.answer(i, WAIT).expect("dup answer");
    assert_eq!(dup.get("e"), Some(&proxy("_DupErr")), "{dup}");
    let orig = c.answer(i, WAIT).expect("original answer");
    assert_eq!(orig.get("d"), Some(&int(1000)), "{orig}");
}

fn errors_travel_as_proxies(heap: u32) {
    let (_n, mut c) = standard(heap);
    let e = c.fails("t.kerr", none());
    assert_eq!(
        e,
        NodeErr {
            e: proxy("_KyErr"),
            d: Value::Array(vec![s("nope")])
        }
    );
    let e = c.fails("t.verr", none());
    assert_eq!(
        e,
        NodeErr {
            e: proxy("_VaErr"),
            d: Value::Array(vec![s("bad"), int(3)])
        }
    );
    let e = c.fails("t.oserr", none());
    assert_eq!(
        e,
        NodeErr {
            e: proxy("_OsErr"),
            d: Value::Array(vec![int(5), s("EIO")])
        }
    );
    let e = c.fails("t.custom", none());
    assert_eq!(e.e, s("E:RuntimeError('custom',)"), "{e:?}");
    // wrong arguments are a TypeError
    assert_eq!(
        c.fails("ping", kw([("zz", int(1))])).proxy(),
        Some("_TyErr")
    );
    // a plain string action means a one-element path
    c.send(&Value::map([
        ("a", s("ping")),
        ("d", kw([("m", int(5))])),
        ("i", Value::Int(1000)),
    ]));
    assert_eq!(
        c.answer(1000, WAIT).unwrap().get("d"),
        Some(&kw([("m", int(5))]))
    );
}

fn unknown_paths_name_the_path(heap: u32) {
    let (_n, mut c) = standard(heap);
    for (p, reason) in [
        ("nope.x", "no such app"),
        ("t.nope", "no such command"),
        ("nope", "no such command"),
        ("t.7.who", "no such app"),
        ("sys", "no such command"),
    ] {
        let e = c.fails(p, none());
        assert_eq!(e.e, proxy("_NPErr"), "{p}");
        assert_eq!(e.d, Value::Array(vec![path(p), s(reason)]), "{p}");
    }
}

/// A small deterministic generator (no external crate needed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Whether `c`'s link was closed by the node after it said why: the
/// malformed-input notice and then end of stream.
fn closed_for_junk(c: &mut Conn) -> bool {
    let notice = s("E:bad: malformed MsgPack on this link, it is closed");
    let mut told = c.unsolicited.iter().any(|m| m.get("e") == Some(&notice));
    while let Some(m) = c.next_within(WAIT) {
        told |= m.get("e") == Some(&notice);
    }
    told && c.closed_within(Duration::ZERO)
}

fn malformed_input_never_stops_the_node(heap: u32) {
    let (mut n, mut c) = standard(heap);
    let mut rng = Lcg(heap as u64);
    // interesting prefixes: huge lengths, deep nesting, reserved byte
    let prefixes: [&[u8]; 8] = [
        b"\xdd\xff\xff\xff\xff",
        b"\xdb\x7f\xff\xff\xff",
        b"\xdf\xff\xff\xff\xff",
        b"\xc6\xff\xff\xff\xff",
        b"\xc1",
        &[0x91; 40],
        b"\x81\xa1a\x92\xa3sys",
        b"\xc9\x7f\xff\xff\xff\x04",
    ];
    for k in 0..1000 {
        let len = (rng.next() % 64) as usize;
        let mut b: Vec<u8> = if k % 10 == 0 {
            prefixes[(k / 10) % prefixes.len()].to_vec()
        } else {
            Vec::new()
        };
        b.extend((0..len).map(|_| rng.next() as u8));
        // the node closes a link that sent malformed MsgPack: a write may
        // fail then; the next junk goes to a new link
        if c.send_raw(&b).is_err() || k % 10 == 9 {
            assert!(
                n.running(),
                "node died after {k} junk strings:\n{}",
                n.console()
            );
            c = n.connect();
        }
        if k % 100 == 99 {
            let i = c.request("ping", kw([("m", s("alive"))]), None);
            let m = c.answer(i, WAIT).expect("a new link answers after junk");
            assert_eq!(m.get("d"), Some(&kw([("m", s("alive"))])), "{m}");
        }
    }
    assert!(n.running(), "node died:\n{}", n.console());
    // A malformed byte ends the link: what follows it is never decoded, so
    // a request hidden after junk does not run (no resync inside it).
    let mut c = n.connect();
    let mut b = vec![0xc1];
    b.extend(mux_runtime::msgpack::to_vec(&kw([
        ("a", path("ping")),
        ("d", kw([("m", s("smuggled"))])),
        ("i", int(100)),
    ])));
    c.send_raw(&b).unwrap();
    assert!(
        c.answer(100, Duration::from_secs(2)).is_none(),
        "the request after the junk ran"
    );
    assert!(
        closed_for_junk(&mut c),
        "no notice and close after junk:\n{}",
        n.console()
    );
    assert!(
        n.console().contains("malformed MsgPack from a client"),
        "{}",
        n.console()
    );
    let mut c2 = n.connect();
    let i = c2.request("ping", kw([("m", int(1))]), None);
    assert!(
        c2.answer(i, WAIT).is_some(),
        "no ping answer on a new link:\n{}",
        n.console()
    );
}

/// A request longer than the link's `m` (1024) is skipped by its declared
/// lengths: its sender gets an error naming both sizes, a request hidden in
/// its payload never runs, and the link goes on.
fn an_oversized_request_is_skipped_whole_and_answered(heap: u32) {
    let (mut n, mut c) = standard(heap);
    let hidden = kw([
        ("a", path("ping")),
        ("d", kw([("m", s("smuggled"))])),
        ("i", int(100)),
    ]);
    let hidden_bytes = mux_runtime::msgpack::to_vec(&hidden);
    let smuggler = Value::map([
        ("a", path("cfg.w")),
        ("i", int(2)),
        (
            "d",
            kw([
                ("p", Value::Array(vec![s("junk")])),
                ("d", kw([("pad", s(&"x".repeat(1100))), ("z", hidden)])),
            ]),
        ),
    ]);
    let bytes = mux_runtime::msgpack::to_vec(&smuggler);
    // the hidden request is there, whole, for a resyncing decoder to find
    assert!(bytes.windows(hidden_bytes.len()).any(|w| w == hidden_bytes));
    c.send_raw(&bytes).unwrap();
    let m = c
        .answer(2, WAIT)
        .expect("the oversized request is answered");
    let want = format!(
        "E:size: message of {} bytes, this link takes 1024",
        bytes.len()
    );
    assert_eq!(m.get("e"), Some(&s(&want)), "{m}");
    // a big request with its i at the end (canonical order), then a ping
    let i = c.request("ping", kw([("m", s(&"y".repeat(3000)))]), None);
    let m = c
        .answer(i, WAIT)
        .expect("the second oversized request is answered");
    assert!(m.get("e").is_some(), "{m}");
    assert_eq!(
        c.ok("ping", kw([("m", s("after"))])),
        kw([("m", s("after"))])
    );
    assert!(c.answer(100, SHORT).is_none(), "the hidden request ran");
    assert!(n.running(), "{}", n.console());
}

fn stdio_link_carries_messages_and_console(heap: u32) {
    let mut n = Node::new(heap);
    n.write_file("tapp.py", TAPP);
    n.write_cfg(
        "moat.cfg",
        &Value::map([
            ("link", kw([("stdio", none())])),
            ("apps", kw([("t", s("tapp.T")), ("fs", s("fs.Files"))])),
        ]),
    );
    let mut c = n.start_stdio();
    let up = c.wait_unsolicited(&path("link"), WAIT).expect("link up");
    assert_eq!(up.get("d"), Some(&Value::Bool(true)));
    assert_eq!(c.ok("ping", kw([("m", s("x"))])), kw([("m", s("x"))]));
    // every byte value, including 0x03 (Ctrl-C) and CR/LF, passes unchanged
    let all: Vec<u8> = (0..=255u8).collect();
    let f = c.ok("fs.open", kw([("p", s("b")), ("m", s("w"))]));
    c.ok(
        "fs.wr",
        kw([("f", f.clone()), ("d", Value::Bin(all.clone()))]),
    );
    c.ok("fs.cl", kw([("f", f)]));
    let f = c.ok("fs.open", kw([("p", s("b"))]));
    assert_eq!(
        c.ok("fs.rd", kw([("f", f), ("n", int(300))])),
        Value::Bin(all)
    );
    // errors print to the console (ASCII) between messages
    c.fails("t.custom", none());
    assert_eq!(c.ok("t.1.who", none()), s("one"));
    c.wait_console("error in");
    // closing stdin ends the node cleanly
    drop(c);
    let st = n.wait_exit(WAIT);
    assert!(st.success(), "exit status {st}");
}

fn failing_app_is_reported_and_restarted(heap: u32) {
    let (mut n, mut c) = standard(heap);
    let e = c
        .wait_unsolicited(&path("err.bad"), WAIT)
        .expect("no err message");
    assert_eq!(e.get("d"), Some(&s("E:ValueError('boom',)")));
    // restarted after a back-off: it fails again, reported again
    assert!(c.wait_unsolicited(&path("err.bad"), WAIT).is_some());
    // the rest of the node is unaffected
    assert_eq!(c.ok("t.get", none()), int(1));
    assert!(n.running());
    assert!(n.console().contains("app bad failed"), "{}", n.console());
}

/// The node's own request: `{a, d, i}` with an even `i`.
fn node_request(c: &mut Conn) -> (Value, Value, i128) {
    let m = c.next_within(WAIT).expect("no request from the node");
    let i = m
        .get("i")
        .and_then(Value::as_int)
        .expect("request without i");
    assert_eq!(i % 2, 0, "the node's own numbers are even: {m}");
    (
        m.get("a").cloned().unwrap(),
        m.get("d").cloned().unwrap(),
        i,
    )
}

fn apps_call_out_through_the_link(heap: u32) {
    let (_n, mut c) = standard(heap);
    let i = c.request("t.ask", kw([("v", int(5))]), None);
    let (a, d, j) = node_request(&mut c);
    assert_eq!(a, path("host.echo"));
    assert_eq!(d, kw([("v", int(5))]));
    c.send(&Value::map([("d", int(10)), ("i", Value::Int(j + 1))]));
    assert_eq!(c.answer(i, WAIT).unwrap().get("d"), Some(&int(10)));

    // an error reply raises in the app and travels on to our request
    let i = c.request("t.ask", kw([("v", int(6))]), None);
    let (_, _, j) = node_request(&mut c);
    c.send(&Value::map([
        ("d", Value::Array(vec![s("k")])),
        ("i", Value::Int(j + 1)),
        ("e", proxy("_KyErr")),
    ]));
    let m = c.answer(i, WAIT).unwrap();
    assert_eq!(m.get("e"), Some(&proxy("_KyErr")), "{m}");
    assert_eq!(m.get("d"), Some(&Value::Array(vec![s("k")])), "{m}");

    // cancelling our request cancels the node's own call upstream
    let i = c.request("t.ask", kw([("v", int(7))]), None);
    let (_, _, j) = node_request(&mut c);
    c.send(&Value::map([("i", Value::Int(i))]));
    let m = c.next_within(WAIT).expect("upstream cancellation");
    assert_eq!(m, Value::map([("i", Value::Int(j))]));
}

fn tcp_client_link_connects_out(heap: u32) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut n = Node::new(heap);
    n.write_cfg(
        "moat.cfg",
        &Value::map([(
            "link",
            kw([(
                "client",
                kw([
                    ("h", s("127.0.0.1")),
                    ("p", port.into()),
                    ("a", false.into()),
                ]),
            )]),
        )]),
    );
    n.start();
    let mut c = Conn::accept(&l);
    let up = c.wait_unsolicited(&path("link"), WAIT).expect("link up");
    assert_eq!(up.get("d"), Some(&Value::Bool(true)));
    assert_eq!(c.ok("ping", kw([("m", int(3))])), kw([("m", int(3))]));
    // the node reconnects after the host drops the connection
    drop(c);
    let mut c = Conn::accept(&l);
    assert_eq!(c.ok("ping", kw([("m", int(4))])), kw([("m", int(4))]));
    assert!(n.running());
}

fn uart_link_survives_byte_errors(heap: u32) {
    // 3 bytes in 1000 get a bit flipped, both ways: many frames are lost
    let mut h = UartHost::new(3, 200);
    let mut n = Node::new(heap);
    n.write_cfg(
        "moat.cfg",
        &Value::map([
            (
                "link",
                kw([(
                    "uart",
                    kw([
                        ("port", s(h.pty.path.to_str().unwrap())),
                        ("t", int(200)),
                        ("r", int(10)),
                    ]),
                )]),
            ),
            ("apps", kw([("fs", s("fs.Files"))])),
        ]),
    );
    n.start();
    h.connect();
    h.wait_link_up();
    for j in 0..30 {
        let m = s(&"x".repeat(j * 3));
        assert_eq!(
            h.call("ping", kw([("m", m.clone())])).unwrap(),
            kw([("m", m)])
        );
    }
    // binary data through the reliable layer, in chunks that fit 127-byte frames
    let all: Vec<u8> = (0..=255u8).collect();
    let f = h
        .call("fs.open", kw([("p", s("u")), ("m", s("w"))]))
        .unwrap();
    for (k, chunk) in all.chunks(64).enumerate() {
        let d = kw([
            ("f", f.clone()),
            ("d", Value::Bin(chunk.to_vec())),
            ("o", int(k as i64 * 64)),
        ]);
        assert_eq!(h.call("fs.wr", d).unwrap(), int(64));
    }
    h.call("fs.cl", kw([("f", f)])).unwrap();
    assert_eq!(std::fs::read(n.dir.path().join("u")).unwrap(), all);
    let f = h.call("fs.open", kw([("p", s("u"))])).unwrap();
    let mut got = Vec::new();
    while got.len() < 256 {
        let d = kw([
            ("f", f.clone()),
            ("o", int(got.len() as i64)),
            ("n", int(48)),
        ]);
        let Value::Bin(b) = h.call("fs.rd", d).unwrap() else {
            panic!("fs.rd")
        };
        got.extend(b);
    }
    assert_eq!(got, all);
    assert_eq!(h.call("nope", none()).unwrap_err().proxy(), Some("_NPErr"));
    let st = h.stats();
    assert!(h.flipped > 0, "no errors were injected");
    assert!(
        st.retransmits + st.fast_retransmits > 0,
        "errors injected but nothing retransmitted: {st:?}"
    );
    println!("uart: {} bytes flipped, host stats {st:?}", h.flipped);
    assert!(n.running());
}

#[test]
fn watchdog_ends_the_process_when_keepalives_stop() {
    let mut n = Node::new(64);
    n.write_cfg(
        "moat.cfg",
        &n.tcp_cfg(vec![
            ("wdt", kw([("t", int(1)), ("s", int(1)), ("n", int(-1))])),
            ("apps", kw([("wdt", s("wdt.Watchdog"))])),
        ]),
    );
    n.start();
    let mut c = n.connect();
    // keepalives for 3 timeouts keep it running
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        c.ok("sys.wdt", none());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(n.running(), "watchdog fired despite keepalives");
    let st = c.ok("wdt.state", none());
    assert_eq!(st.get("on"), Some(&Value::Bool(true)), "{st}");
    // then silence: the process ends with a nonzero status
    let st = n.wait_exit(WAIT);
    assert!(!st.success(), "watchdog exit status {st}");
    assert!(n.console().contains("watchdog"), "{}", n.console());
}

#[test]
fn watchdog_grace_period_and_manual_start() {
    // s=0: nothing happens until the first sys.wdt
    let mut n = Node::new(64);
    n.write_cfg(
        "moat.cfg",
        &n.tcp_cfg(vec![("wdt", kw([("t", int(1)), ("s", int(0))]))]),
    );
    n.start();
    let mut c = n.connect();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(n.running(), "watchdog started without sys.wdt");
    c.ok("sys.wdt", none());
    let st = n.wait_exit(WAIT);
    assert!(!st.success());

    // s=1 with the default grace (n=3, at least 60 s): the node feeds
    // itself, and the first sys.wdt ends the grace period
    let mut n = Node::new(64);
    n.write_cfg(
        "moat.cfg",
        &n.tcp_cfg(vec![("wdt", kw([("t", int(1)), ("s", int(1))]))]),
    );
    n.start();
    let mut c = n.connect();
    std::thread::sleep(Duration::from_millis(2000));
    assert!(n.running(), "watchdog fired during the grace period");
    c.ok("sys.wdt", none());
    let st = n.wait_exit(WAIT);
    assert!(!st.success());
}

#[test]
fn crash_switches_to_the_fallback_config() {
    let mut n = Node::new(64);
    let fb_port = moat_e2e::node::free_port();
    n.write_cfg("moat.cfg", &n.tcp_cfg(vec![("tag", s("main"))]));
    n.write_cfg(
        "moat_fb.cfg",
        &Value::map([
            (
                "link",
                kw([(
                    "tcp",
                    kw([
                        ("h", s("127.0.0.1")),
                        ("p", fb_port.into()),
                        ("a", false.into()),
                    ]),
                )]),
            ),
            ("tag", s("fallback")),
        ]),
    );
    n.start();
    let mut c = n.connect();
    assert_eq!(c.ok("cfg.r", kw([("p", path("tag"))])), s("main"));
    n.kill();

    n.start();
    let mut c = n.connect_port(fb_port);
    assert_eq!(c.ok("cfg.r", kw([("p", path("tag"))])), s("fallback"));
    assert!(n.console().contains("crashed"), "{}", n.console());
    // a clean soft reset from the fallback goes back to the normal config
    c.ok("sys.boot", kw([("m", int(1))]));
    assert!(c.closed_within(WAIT), "still connected:\n{}", n.console());
    let mut c = n.connect();
    assert_eq!(c.ok("cfg.r", kw([("p", path("tag"))])), s("main"));
}

#[test]
fn a_failing_link_is_retried_not_fatal() {
    // a UART whose device does not exist next to a working TCP link
    let mut n = Node::new(64);
    n.write_cfg(
        "moat.cfg",
        &Value::map([(
            "link",
            kw([
                (
                    "tcp",
                    kw([
                        ("h", s("127.0.0.1")),
                        ("p", n.port.into()),
                        ("a", false.into()),
                    ]),
                ),
                ("uart", kw([("port", s("/nonexistent/tty"))])),
            ]),
        )]),
    );
    n.start();
    let mut c = n.connect();
    assert_eq!(c.ok("ping", kw([("m", int(1))])), kw([("m", int(1))]));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(n.running());
    assert!(n.console().contains("link uart failed"), "{}", n.console());
}

#[test]
fn missing_or_corrupt_config_falls_back() {
    let mut n = Node::new(64);
    let fb = n.tcp_cfg(vec![("tag", s("fallback"))]);
    n.write_cfg("moat_fb.cfg", &fb);
    n.start();
    let mut c = n.connect();
    assert_eq!(c.ok("cfg.r", kw([("p", path("tag"))])), s("fallback"));
    assert!(n.console().contains("moat.cfg missing"), "{}", n.console());
    c.ok("sys.boot", kw([("m", int(2))]));
    n.wait_exit(WAIT);

    std::fs::write(n.dir.path().join("moat.cfg"), b"\x85\xa1a").unwrap();
    n.start();
    let mut c = n.connect();
    assert_eq!(c.ok("cfg.r", kw([("p", path("tag"))])), s("fallback"));
    assert!(n.console().contains("moat.cfg corrupt"), "{}", n.console());
}

#[test]
fn a_filesystem_module_overrides_one_frozen_module() {
    let mut n = Node::new(64);
    n.write_file(
        "fs.py",
        "from app import App\n\nclass Files(App):\n    def cmd_who(self):\n        return 'override'\n",
    );
    n.write_cfg(
        "moat.cfg",
        &n.tcp_cfg(vec![("apps", kw([("fs", s("fs.Files"))]))]),
    );
    n.start();
    let mut c = n.connect();
    assert_eq!(c.ok("fs.who", none()), s("override"));
    // its siblings are still the frozen ones
    assert!(c.ok("sys.dir", none()).get("c").is_some());
    assert_eq!(c.ok("ping", kw([("m", int(1))])), kw([("m", int(1))]));
    assert_eq!(c.fails("fs.ls", none()).proxy(), Some("_NPErr"));
}

#[test]
fn micropython_unit_tests_pass() {
    let fw = moat_e2e::node::firmware();
    let dir = moat_e2e::workspace_root().join("node-runtime/tests");
    let vectors = moat_e2e::workspace_root().join("tests/vectors");
    let mut ran = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("test_") && name.ends_with(".py")) {
            continue;
        }
        let out = run_script(&fw, &p, &[vectors.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("OK "),
            "{name} failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert!(
        ran >= 1,
        "no MicroPython unit tests found in {}",
        dir.display()
    );
}

#[test]
fn bench_heap_and_round_trips() {
    fn mem(c: &mut Conn, collect: bool) -> i128 {
        let m = c.ok("sys.mem", kw([("c", Value::Bool(collect))]));
        m.get("a").and_then(Value::as_int).unwrap()
    }
    // the runtime alone: one TCP link, no apps
    let mut n = Node::new(64);
    n.write_cfg("moat.cfg", &n.tcp_cfg(vec![]));
    n.start();
    let mut c = n.connect();
    let idle = mem(&mut c, true);
    // per request: allocation between two uncollected readings (the heap
    // has room for 8 requests without a collection in between)
    let k = 8;
    let a0 = mem(&mut c, false);
    for j in 0..k {
        c.ok("ping", kw([("m", int(j))]));
    }
    let a1 = mem(&mut c, false);
    let per = (a1 - a0) / (k as i128 + 1);
    let t0 = Instant::now();
    let rounds = 1000;
    for j in 0..rounds {
        c.ok("ping", kw([("m", int(j))]));
    }
    let rate = rounds as f64 / t0.elapsed().as_secs_f64();
    let after = mem(&mut c, true);
    // with the test apps (one compiled from the filesystem), fs and a failing app
    let (_m, mut c2) = standard(64);
    let apps = mem(&mut c2, true);
    println!(
        "node heap ({}, -X heapsize={}k, 64-bit unix): idle {idle} B (runtime + TCP link), \
         {apps} B with fs and test apps; ~{per} B allocated per ping request; \
         {after} B after {rounds} more pings; {rate:.0} request round trips/s over TCP",
        if n.fw.micropypath.is_some() {
            "runtime from source"
        } else {
            "frozen firmware"
        },
        n.heap_kb
    );
    assert!(n.running());
}
