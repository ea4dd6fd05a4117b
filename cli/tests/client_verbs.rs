//! The client verbs' pieces that need no satellite: reading `k=v`
//! arguments, rendering values (human and `--json`), finding the mux's
//! socket, picking the node, installing a local node.

use moat::args::{parse_cmd, parse_kwargs, parse_path, parse_value};
use moat::client::{choose_socket, default_socket, pick_node, SocketChoice};
use moat::local_node;
use moat::project::Project;
use moat::render::{human, human_compact, json, json_error};
use mux_runtime::error::{RemoteError, WellKnown};
use mux_runtime::message::PathElem;
use mux_runtime::{msgpack, notation, Value};
use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn v(text: &str) -> Value {
    parse_value(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
}

// ---- arguments ------------------------------------------------------------

#[test]
fn scalars_read_like_yaml_and_json() {
    assert_eq!(v("5"), Value::Int(5));
    assert_eq!(v("-3"), Value::Int(-3));
    assert_eq!(v("+7"), Value::Int(7));
    assert_eq!(v("0x1f"), Value::Int(31));
    assert_eq!(v("0o17"), Value::Int(15));
    assert_eq!(v("0b101"), Value::Int(5));
    assert_eq!(v("18446744073709551615"), Value::Int(u64::MAX.into()));
    assert_eq!(v("-9223372036854775808"), Value::Int(i64::MIN.into()));
    assert_eq!(v("1.5"), Value::Float(1.5));
    assert_eq!(v("1e3"), Value::Float(1000.0));
    assert_eq!(v(".5"), Value::Float(0.5));
    assert_eq!(v("2."), Value::Float(2.0));
    assert_eq!(v("-inf"), Value::Float(f64::NEG_INFINITY));
    assert_eq!(v(".inf"), Value::Float(f64::INFINITY));
    assert!(matches!(v("nan"), Value::Float(x) if x.is_nan()));
    for t in ["true", "True", "TRUE"] {
        assert_eq!(v(t), Value::Bool(true));
    }
    for f in ["false", "False"] {
        assert_eq!(v(f), Value::Bool(false));
    }
    for n in ["null", "~", "None", "Null"] {
        assert_eq!(v(n), Value::Nil);
    }
}

#[test]
fn words_that_are_not_numbers_or_keywords_stay_strings() {
    for s in [
        "hi",
        "",
        "/lib/x.py",
        "1.2.3",
        "0x",
        "e5",
        "yes",
        "no",
        "fs.Files",
        "hello world",
        "-",
        "infinity",
    ] {
        assert_eq!(v(s), Value::from(s), "{s:?}");
    }
}

#[test]
fn quoted_strings_keep_what_would_otherwise_be_numbers_or_keywords() {
    assert_eq!(v("\"5\""), Value::from("5"));
    assert_eq!(v("'true'"), Value::from("true"));
    assert_eq!(v("'it''s'"), Value::from("it's"));
    assert_eq!(v(r#""a\tb\u00e9""#), Value::from("a\tbé"));
    assert_eq!(v("''"), Value::from(""));
}

#[test]
fn bytes_literals_give_binary_values() {
    assert_eq!(v(r"b'\x00ab\xff'"), Value::Bin(vec![0, b'a', b'b', 0xff]));
    assert_eq!(v(r#"b"\n\\""#), Value::Bin(vec![b'\n', b'\\']));
    assert_eq!(v("b''"), Value::Bin(vec![]));
}

#[test]
fn collections_read_as_json_or_yaml_flow() {
    let expected = Value::Array(vec![1.into(), "a".into(), Value::map([("b", Value::Nil)])]);
    assert_eq!(v(r#"[1, "a", {"b": null}]"#), expected);
    assert_eq!(v("[1, a, {b: null}]"), expected);
    assert_eq!(v("[]"), Value::Array(vec![]));
    assert_eq!(v("{}"), Value::Map(vec![]));
    assert_eq!(
        v("{t: 10, s: 1, n: [wdt, 'x, y']}"),
        Value::map([
            ("t", 10.into()),
            ("s", 1.into()),
            ("n", Value::Array(vec!["wdt".into(), "x, y".into()])),
        ])
    );
    // Map keys keep their order.
    assert_eq!(
        v("{z: 1, a: 2}"),
        Value::Map(vec![("z".into(), 1.into()), ("a".into(), 2.into())])
    );
}

#[test]
fn json_vector_notation_gives_bytes_proxies_and_any_key_maps() {
    assert_eq!(v(r#"{"$bin": "00ff"}"#), Value::Bin(vec![0, 0xff]));
    assert_eq!(v(r#"{"$proxy": "-"}"#), Value::Proxy("-".into()));
    assert_eq!(
        v(r#"{"$map": [[1, "one"]]}"#),
        Value::Map(vec![(1.into(), "one".into())])
    );
}

#[test]
fn malformed_values_are_errors_not_strings() {
    for bad in [
        "[1, 2",
        "{a: 1",
        "{a 1}",
        "\"open",
        "'open",
        "b'\\q'",
        "b'open",
        "[1] x",
        "18446744073709551616",
        "-9223372036854775809",
    ] {
        assert!(parse_value(bad).is_err(), "{bad:?} should be refused");
    }
    let e = parse_value("99999999999999999999").unwrap_err();
    assert!(e.to_string().contains("does not fit"), "{e}");
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    assert!(parse_value(&deep).is_err());
    let flow = "[".repeat(10_000) + "a" + &"]".repeat(10_000);
    assert!(parse_value(&flow).is_err());
}

#[test]
fn keyword_arguments_keep_order_and_refuse_duplicates_and_bad_keys() {
    assert_eq!(
        parse_kwargs(&["m=hi", "n=5", "x="]).unwrap(),
        Value::map([("m", "hi".into()), ("n", 5.into()), ("x", "".into())])
    );
    // Only the first `=` splits.
    assert_eq!(
        parse_kwargs(&["q=a=b"]).unwrap(),
        Value::map([("q", "a=b".into())])
    );
    let dup = parse_kwargs(&["m=1", "m=2"]).unwrap_err();
    assert!(dup.to_string().contains("given twice"), "{dup}");
    assert!(parse_kwargs(&["=1"]).is_err());
    assert!(parse_kwargs(&["1x=1"]).is_err());
    let no_eq = parse_kwargs(&["hi"]).unwrap_err();
    assert!(no_eq.to_string().contains("key=value"), "{no_eq}");
}

#[test]
fn dotted_paths_split_on_dots_and_integers_index() {
    assert_eq!(
        parse_path("sys.info").unwrap(),
        vec![PathElem::from("sys"), PathElem::from("info")]
    );
    assert_eq!(
        parse_path("s.3.r").unwrap(),
        vec![PathElem::from("s"), PathElem::Index(3), PathElem::from("r")]
    );
    for bad in ["", "a..b", ".a", "a."] {
        assert!(parse_path(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn cmd_takes_the_node_first_or_from_the_flag() {
    let a = parse_cmd(None, &["ping", "m=hi"]).unwrap();
    assert_eq!(a.node, None);
    assert_eq!(a.path, vec![PathElem::from("ping")]);
    assert_eq!(a.kwargs, Value::map([("m", "hi".into())]));

    let b = parse_cmd(None, &["pump", "sys.dir"]).unwrap();
    assert_eq!(b.node.as_deref(), Some("pump"));
    assert_eq!(b.path, vec![PathElem::from("sys"), PathElem::from("dir")]);

    let c = parse_cmd(Some("pump"), &["sys.dir"]).unwrap();
    assert_eq!(c.node.as_deref(), Some("pump"));

    assert!(parse_cmd(Some("pump"), &["pump", "sys.dir"]).is_err());
    assert!(parse_cmd(None, &["a", "b", "c"]).is_err());
    assert!(parse_cmd(None, &["m=hi"]).is_err());
}

// ---- rendering --------------------------------------------------------------

#[test]
fn human_output_reads_like_python_with_light_quoting() {
    assert_eq!(human(&Value::map([("m", "hi".into())])), "{m: hi}");
    assert_eq!(human(&Value::Nil), "None");
    assert_eq!(human(&Value::Bool(true)), "True");
    assert_eq!(human(&Value::Float(1.0)), "1.0");
    assert_eq!(human(&Value::Float(f64::NEG_INFINITY)), "-inf");
    assert_eq!(
        human(&Value::Bin(vec![0, b'a', b'\'', 0xff])),
        r"b'\x00a\'\xff'"
    );
    assert_eq!(human(&Value::Proxy("_FnErr".into())), "Proxy(_FnErr)");
    // Strings that would read back as something else are quoted.
    assert_eq!(
        human(&Value::Array(vec![
            "5".into(),
            "true".into(),
            "".into(),
            "a, b".into(),
            "x: y".into(),
            " pad".into(),
            "line\n".into(),
        ])),
        r#"["5", "true", "", "a, b", "x: y", " pad", "line\n"]"#
    );
    assert_eq!(
        human(&Value::Map(vec![(1.into(), "one".into())])),
        "{1: one}"
    );
}

#[test]
fn long_values_break_into_indented_lines() {
    let long: Vec<Value> = (0..30).map(|i| Value::from(format!("item{i}"))).collect();
    let v = Value::map([
        ("c", Value::Array(long)),
        ("d", Value::map([("x", 1.into())])),
    ]);
    let text = human(&v);
    assert!(text.starts_with("{\n  c: [\n    item0,\n"), "{text}");
    assert!(text.ends_with("\n  ],\n  d: {x: 1},\n}"), "{text}");
    assert!(text.lines().all(|l| l.len() <= 80), "{text}");
}

/// Values the human notation can express (proxies and other extension
/// types are shown, not read back).
fn plain_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("NaN never equals itself", |x| !x.is_nan())
            .prop_map(Value::Float),
        ".*".prop_map(Value::Str),
        "[a-z0-9 .:,_-]{0,12}".prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(Value::Bin),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec(("[a-z_]{1,6}".prop_map(Value::Str), inner), 0..6)
                .prop_map(Value::Map),
        ]
    })
}

proptest! {
    #[test]
    fn human_output_reads_back_as_the_same_value(v in plain_value()) {
        let text = human_compact(&v);
        let back = parse_value(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(back, v.clone(), "{}", text);
        // The multi-line form too.
        let pretty = human(&v);
        prop_assert_eq!(parse_value(&pretty).ok(), Some(v), "{}", pretty);
    }

    #[test]
    fn json_output_is_exact_vector_notation(v in plain_value()) {
        let j = json(&v);
        let back = notation::from_json(&j).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // Compare encodings: float32/64 and int widths agree through MsgPack.
        prop_assert_eq!(msgpack::to_vec(&back), msgpack::to_vec(&v));
    }
}

#[test]
fn json_output_is_plain_json_where_json_can_say_it() {
    let v = Value::map([
        ("m", "hi".into()),
        ("n", 5.into()),
        ("f", 1.0.into()),
        ("l", Value::Array(vec![Value::Nil, true.into()])),
    ]);
    assert_eq!(
        json(&v).to_string(),
        r#"{"m":"hi","n":5,"f":1.0,"l":[null,true]}"#
    );
    assert_eq!(
        json(&Value::Bin(vec![0, 255])).to_string(),
        r#"{"$bin":"00ff"}"#
    );
    assert_eq!(
        json(&Value::Proxy("p1".into())).to_string(),
        r#"{"$proxy":"p1"}"#
    );
    assert_eq!(
        json(&Value::Map(vec![(1.into(), 2.into())])).to_string(),
        r#"{"$map":[[1,2]]}"#
    );
    // A string key that looks like a tag cannot be a plain object key.
    assert_eq!(
        json(&Value::map([("$bin", "x".into())])).to_string(),
        r#"{"$map":[["$bin","x"]]}"#
    );
}

#[test]
fn json_errors_name_the_proxy_its_args_and_the_meaning() {
    let e = RemoteError::no_path(vec!["nope".into()], "no such command");
    assert_eq!(
        json_error(&e).to_string(),
        r#"{"error":{"type":"_NPErr","args":[["nope"],"no such command"],"message":"no such command path ['nope']: no such command"}}"#
    );
    let g = RemoteError::generic("ZeroDivisionError('x')");
    assert_eq!(json_error(&g)["error"]["type"], serde_json::Value::Null);
    let os = RemoteError::well_known(WellKnown::Os, vec![2.into(), "ENOENT".into()]);
    assert_eq!(json_error(&os)["error"]["type"], "_OsErr");
}

// ---- finding the mux --------------------------------------------------------

#[test]
fn clients_look_for_the_socket_where_the_mux_binds_it() {
    // The project id is in the name: two projects called `garden` never
    // share a socket.
    let a = default_socket("garden", "0123456789abcdef");
    assert_eq!(
        a.parent(),
        Some(mux_runtime::mux::socket::default_dir().as_path())
    );
    assert!(
        a.ends_with("garden-0123456789abcdef.sock"),
        "{}",
        a.display()
    );
    assert_ne!(a, default_socket("garden", "fedcba9876543210"));
}

#[test]
fn socket_flag_beats_environment_beats_project_default() {
    let default = |p: &str| PathBuf::from(format!("/d/{p}.sock"));
    assert_eq!(
        choose_socket(
            Some(Path::new("/f.sock")),
            Some("/e.sock".into()),
            Some("g"),
            default
        ),
        Some(SocketChoice {
            path: "/f.sock".into(),
            explicit: true
        })
    );
    assert_eq!(
        choose_socket(None, Some("/e.sock".into()), Some("g"), default),
        Some(SocketChoice {
            path: "/e.sock".into(),
            explicit: true
        })
    );
    assert_eq!(
        choose_socket(None, Some("".into()), Some("g"), default),
        Some(SocketChoice {
            path: "/d/g.sock".into(),
            explicit: false
        })
    );
    assert_eq!(choose_socket(None, None, None, default), None);
}

// ---- projects and local nodes -------------------------------------------------

fn project(nodes: &str) -> (tempfile::TempDir, Project) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("apps")).unwrap();
    let text = format!("[project]\nname = \"garden\"\n\n{nodes}");
    std::fs::write(dir.path().join("moat.toml"), text).unwrap();
    let p = Project::load(dir.path()).unwrap();
    (dir, p)
}

#[test]
fn the_only_node_is_the_default_and_several_need_a_name() {
    let (_d, one) = project("[nodes.pump]\nboard = \"unix\"\n");
    assert_eq!(pick_node(&one, None).unwrap().name, "pump");
    let e = pick_node(&one, Some("pmup")).unwrap_err().to_string();
    assert!(e.contains("no node `pmup`") && e.contains("pump"), "{e}");

    let (_d, two) = project(
        "[nodes.a]\nboard = \"unix\"\n[nodes.b]\nboard = \"unix\"\nlink = { kind = \"tcp\", port = 27600 }\n",
    );
    let e = pick_node(&two, None).unwrap_err().to_string();
    assert!(e.contains("a, b") && e.contains("--node"), "{e}");
    assert_eq!(pick_node(&two, Some("b")).unwrap().name, "b");
}

#[test]
fn install_puts_firmware_and_configs_in_the_node_folder_and_keeps_user_files() {
    let (_d, p) = project(
        "[nodes.pump]\nboard = \"unix\"\nlink = { kind = \"tcp\", port = 27600 }\n\
         [nodes.pump.config]\napps = { fs = \"fs.Files\" }\n",
    );
    let node = p.node("pump").unwrap().clone();
    let built = local_node::build_dir(&p, "pump").join("firmware");
    std::fs::create_dir_all(&built).unwrap();

    // Nothing built yet: the error says what to run.
    let e = local_node::install(&p, &node).unwrap_err().to_string();
    assert!(e.contains("moat build --node pump"), "{e}");

    std::fs::write(built.join("micropython"), b"image 1").unwrap();
    let dir = local_node::node_dir(&p, "pump");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("user.txt"), b"mine").unwrap();

    let first = local_node::install(&p, &node).unwrap();
    assert!(first.firmware_changed);
    assert_eq!(first.firmware, dir.join("micropython"));
    assert_eq!(std::fs::read(dir.join("micropython")).unwrap(), b"image 1");
    let cfg = msgpack::decode_exact(
        &std::fs::read(dir.join("moat.cfg")).unwrap(),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(cfg, node.config());
    let fallback = msgpack::decode_exact(
        &std::fs::read(dir.join("moat_fb.cfg")).unwrap(),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(
        fallback,
        Value::map([
            ("link", cfg.get("link").unwrap().clone()),
            ("apps", Value::map([("fs", "fs.Files".into())])),
        ]),
        "the fallback keeps the links and the file app, nothing else"
    );
    assert_eq!(std::fs::read(dir.join("user.txt")).unwrap(), b"mine");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("micropython"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "the firmware is executable");

    let again = local_node::install(&p, &node).unwrap();
    assert!(!again.firmware_changed);

    std::fs::write(built.join("micropython"), b"image 2").unwrap();
    assert!(local_node::install(&p, &node).unwrap().firmware_changed);
    assert_eq!(std::fs::read(dir.join("micropython")).unwrap(), b"image 2");
    // No temporary files are left behind.
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["micropython", "moat.cfg", "moat_fb.cfg", "user.txt"]
    );
}

#[test]
fn the_run_command_starts_the_installed_firmware_in_the_node_folder() {
    let (_d, p) = project("[nodes.pump]\nboard = \"unix\"\n");
    let node = p.node("pump").unwrap().clone();
    let e = local_node::command(&p, &node).unwrap_err().to_string();
    assert!(e.contains("moat flash --node pump"), "{e}");
    let dir = local_node::node_dir(&p, "pump");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("micropython"), b"").unwrap();
    let cmd = local_node::command(&p, &node).unwrap();
    assert_eq!(cmd.get_program(), dir.join("micropython").as_os_str());
    let args: Vec<_> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_eq!(args[args.len() - 2..], ["-m", "main"]);
    assert!(args.iter().any(|a| a.starts_with("heapsize=")), "{args:?}");
    assert_eq!(cmd.get_current_dir(), Some(dir.as_path()));
}

#[test]
fn boards_that_do_not_run_here_are_not_installed_locally() {
    let (_d, p) = project("[nodes.pump]\nboard = \"esp8266\"\nport = \"/dev/ttyUSB0\"\n");
    let node = p.node("pump").unwrap().clone();
    let e = local_node::install(&p, &node).unwrap_err().to_string();
    assert!(e.contains("esp8266") && e.contains("flash method"), "{e}");
    assert!(local_node::command(&p, &node).is_err());
}
