//! The node's `fs` app and its clients' open files, on a real unix-port
//! satellite over TCP: a file belongs to the link that opened it and is
//! closed when that link goes away, so clients that vanish without `fs.cl`
//! cannot use up the node's few file handles.

use moat_e2e::node::{kw, path, Conn, Node, NodeErr, WAIT};
use mux_runtime::Value;
use std::time::{Duration, Instant};

/// Open files the `fs` app allows at once (its default `f`).
const MAX_OPEN: usize = 4;

fn s(v: &str) -> Value {
    Value::from(v)
}

/// A node running `fs` on TCP, with the files `a` and `b` in its root.
fn fs_node(heap: u32) -> Node {
    let mut n = Node::new(heap);
    n.write_file("a", "alpha");
    n.write_file("b", "beta");
    let cfg = n.tcp_cfg(vec![("apps", kw([("fs", s("fs.Files"))]))]);
    n.write_cfg("moat.cfg", &cfg);
    n.start();
    n
}

/// A new client whose link the node has announced.
fn client(n: &mut Node) -> Conn {
    let mut c = n.connect();
    c.wait_unsolicited(&path("link"), WAIT)
        .expect("no link message");
    c
}

fn open(c: &mut Conn, p: &str) -> Result<Value, NodeErr> {
    c.call("fs.open", kw([("p", s(p))]))
}

fn read_all(c: &mut Conn, f: &Value) -> Vec<u8> {
    match c.ok("fs.rd", kw([("f", f.clone())])) {
        Value::Bin(b) => b,
        v => panic!("fs.rd answered {v}, not bytes"),
    }
}

/// The node learns of a closed connection asynchronously: a new client may
/// get in before the old link is detached, so opening is retried until it
/// works (or [`WAIT`] passes, which is the failure).
fn open_eventually(c: &mut Conn, p: &str) -> Value {
    let end = Instant::now() + WAIT;
    loop {
        match open(c, p) {
            Ok(f) => return f,
            Err(e) if Instant::now() < end => {
                assert_eq!(e.proxy(), Some("_OsErr"), "fs.open failed: {e:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("fs.open still fails after the old clients left: {e:?}"),
        }
    }
}

fn files_of_a_client_that_disconnects_are_closed(heap: u32) {
    let mut n = fs_node(heap);
    // clients that open files and vanish without closing them: together
    // many times more files than the node may hold open
    for round in 0..3 * MAX_OPEN {
        let mut c = client(&mut n);
        let f = open_eventually(&mut c, "a");
        assert_eq!(read_all(&mut c, &f), b"alpha", "round {round}");
        drop(c);
    }
    // a fresh client can open as many files as the node allows
    let mut c = client(&mut n);
    let mut fds = vec![open_eventually(&mut c, "b")];
    for _ in 1..MAX_OPEN {
        fds.push(open(&mut c, "b").expect("open up to the limit"));
    }
    for f in &fds {
        assert_eq!(read_all(&mut c, f), b"beta");
    }
    assert!(n.running(), "node died:\n{}", n.console());
}

fn too_many_open_files_is_an_os_error(heap: u32) {
    let mut n = fs_node(heap);
    let mut c = client(&mut n);
    let mut fds = Vec::new();
    for _ in 0..MAX_OPEN {
        fds.push(open(&mut c, "a").expect("open up to the limit"));
    }
    let e = open(&mut c, "a").expect_err("one file more than the limit");
    // POSIX EMFILE (24), which MicroPython's errno module has no name for
    assert_eq!(e.proxy(), Some("_OsErr"), "{e:?}");
    assert_eq!(
        e.d.as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_int),
        Some(24),
        "{e:?}"
    );
    // closing one makes room again
    c.ok("fs.cl", kw([("f", fds[0].clone())]));
    open(&mut c, "a").expect("open after a close");
}

fn a_leaving_client_closes_only_its_own_files(heap: u32) {
    let mut n = fs_node(heap);
    let mut stays = client(&mut n);
    let kept = open(&mut stays, "a").expect("open");
    let mut leaves = client(&mut n);
    for _ in 1..MAX_OPEN {
        open(&mut leaves, "b").expect("open up to the limit");
    }
    drop(leaves);
    // the leaver's files are freed: the one who stays can fill the limit
    let mut mine = vec![open_eventually(&mut stays, "b")];
    for _ in 2..MAX_OPEN {
        mine.push(open(&mut stays, "b").expect("open up to the limit"));
    }
    // and its own first file is still open and readable
    assert_eq!(read_all(&mut stays, &kept), b"alpha");
    for f in &mine {
        assert_eq!(read_all(&mut stays, f), b"beta");
    }
    assert!(n.running(), "node died:\n{}", n.console());
}

use moat_e2e::both_heaps;

both_heaps!(
    files_of_a_client_that_disconnects_are_closed,
    too_many_open_files_is_an_os_error,
    a_leaving_client_closes_only_its_own_files,
);
