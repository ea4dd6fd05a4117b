//! `moat init` scaffolds a project that loads, for every board, and never
//! overwrites one; `moat boards --json` lists the boards with their status.

use moat::board::LinkKind;
use moat::manifest::Link;
use moat::project::Project;
use mux_runtime::Value;
use std::path::Path;
use std::process::{Command, Output};

fn moat(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .output()
        .expect("run moat")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const BOARDS: [&str; 5] = ["esp32", "esp8266", "qemu-mps2", "rpi-pico", "unix"];

#[test]
fn init_creates_a_unix_project_with_a_tcp_node_and_an_example_app() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("my proj");
    let o = moat(tmp.path(), &["init", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["moat.toml", "apps/counter.py", "README.md", ".gitignore"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let gitignore = std::fs::read_to_string(dir.join(".gitignore")).unwrap();
    assert!(gitignore.lines().any(|l| l == ".moat/"), "{gitignore}");
    assert!(
        gitignore.lines().any(|l| l == "secrets.toml"),
        "{gitignore}"
    );
    let app = std::fs::read_to_string(dir.join("apps/counter.py")).unwrap();
    assert!(app.contains("class Counter(App):"), "{app}");
    assert!(app.contains("def cmd_get(self)"), "{app}");
    assert!(app.contains("def stream_get(self, send, r"), "{app}");

    let p = Project::load(&dir).unwrap();
    assert_eq!(p.name(), "my-proj");
    assert_eq!(p.id().len(), 16, "a random project id: {}", p.id());
    assert_eq!(p.manifest.nodes.len(), 1);
    let demo = p.node("demo").unwrap();
    assert_eq!(demo.board, "unix");
    let Link::Tcp { host, port, listen } = &demo.link else {
        panic!("a tcp link: {:?}", demo.link)
    };
    assert_eq!((host.as_str(), listen.as_str()), ("127.0.0.1", "127.0.0.1"));
    assert!(
        (27600..=28599).contains(port),
        "port {port} outside the documented range"
    );
    assert_eq!(p.manifest.app_paths, [Path::new("apps")]);
    let cfg = demo.config();
    assert_eq!(
        cfg.get("apps"),
        Some(&Value::map([
            ("fs", Value::from("fs.Files")),
            ("c", Value::from("counter.Counter")),
        ]))
    );
    assert_eq!(
        cfg.get("link"),
        Some(&Value::map([(
            "tcp",
            Value::map([
                ("h", Value::from("127.0.0.1")),
                ("p", Value::from(*port)),
                ("a", Value::from(true)),
                ("e", Value::from(false))
            ])
        )]))
    );
    // The node's key: made by init, private, and in the node's config.
    let key_file = dir.join(".moat/keys/demo");
    let text = std::fs::read_to_string(&key_file).unwrap();
    let key = hex::decode(text.trim()).unwrap();
    assert_eq!(key.len(), 32);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // The node configs under .moat/ hold copies of the key.
    let mode = std::fs::metadata(dir.join(".moat"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert_eq!(
        cfg.get("auth"),
        Some(&Value::map([
            ("k", Value::Bin(key)),
            ("n", Value::from("demo")),
            ("p", Value::from(p.id())),
            ("q", Value::from(p.name())),
        ]))
    );
    let manifest = std::fs::read_to_string(dir.join("moat.toml")).unwrap();
    assert!(
        !manifest.contains(text.trim()),
        "the key stays out of moat.toml"
    );
}

#[test]
fn two_inits_pick_different_ids_and_usually_different_ports() {
    let tmp = tempfile::tempdir().unwrap();
    let load = |name: &str| {
        assert!(moat(tmp.path(), &["init", name, "--name", "q"])
            .status
            .success());
        let p = Project::load(&tmp.path().join(name)).unwrap();
        let Link::Tcp { port, .. } = p.node("demo").unwrap().link else {
            panic!("tcp")
        };
        (p.id().to_owned(), port)
    };
    let (a, b) = (load("a"), load("b"));
    assert_ne!(a.0, b.0);
    // 1 in 1000 that two random picks agree; a third must then differ.
    if a.1 == b.1 {
        assert_ne!(a.1, load("c").1);
    }
}

#[test]
fn a_manifest_without_an_id_is_given_one() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(moat(tmp.path(), &["init", "p"]).status.success());
    let file = tmp.path().join("p/moat.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let old: String = text
        .lines()
        .filter(|l| !l.starts_with("id = "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, &old).unwrap();
    let o = moat(&tmp.path().join("p"), &["flash", "--plan", "--json"]);
    assert!(
        stderr(&o).contains("added `[project] id = "),
        "{}",
        stderr(&o)
    );
    let p = Project::load(&tmp.path().join("p")).unwrap();
    assert_eq!(p.id().len(), 16);
    let again = std::fs::read_to_string(&file).unwrap();
    assert!(again.contains(&format!("id = \"{}\"", p.id())), "{again}");
    assert!(
        again.contains("# The node's config"),
        "comments kept:\n{again}"
    );
}

#[test]
fn init_refuses_to_overwrite_an_existing_project() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    assert!(moat(tmp.path(), &["init", "p"]).status.success());
    std::fs::write(dir.join("apps/counter.py"), "# mine\n").unwrap();
    let before = std::fs::read_to_string(dir.join("moat.toml")).unwrap();

    let o = moat(tmp.path(), &["init", "p", "--board", "esp8266"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("moat.toml already exists"), "{e}");
    assert!(e.contains("never overwrites"), "{e}");
    assert_eq!(
        std::fs::read_to_string(dir.join("moat.toml")).unwrap(),
        before
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("apps/counter.py")).unwrap(),
        "# mine\n"
    );
}

#[test]
fn init_keeps_existing_files_and_extends_gitignore() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("README.md"), "mine\n").unwrap();
    std::fs::write(tmp.path().join(".gitignore"), "target/").unwrap();
    let o = moat(tmp.path(), &["init", ".", "--name", "keep", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["name"], "keep");
    assert_eq!(
        j["created"],
        serde_json::json!(["moat.toml", "apps/counter.py"])
    );
    assert_eq!(j["kept"], serde_json::json!(["README.md", ".gitignore"]));
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("README.md")).unwrap(),
        "mine\n"
    );
    let gi = std::fs::read_to_string(tmp.path().join(".gitignore")).unwrap();
    assert!(gi.starts_with("target/\n"), "{gi}");
    assert!(gi.lines().any(|l| l == ".moat/"), "{gi}");
    assert!(gi.lines().any(|l| l == "secrets.toml"), "{gi}");
}

#[test]
fn init_accepts_every_board_and_uses_its_default_link() {
    let tmp = tempfile::tempdir().unwrap();
    for board in BOARDS {
        let o = moat(tmp.path(), &["init", board, "--board", board]);
        assert!(o.status.success(), "{board}: {}", stderr(&o));
        let p = Project::load(&tmp.path().join(board)).unwrap();
        let demo = p.node("demo").unwrap();
        assert_eq!(demo.board, board);
        let expected = p.boards.get(board).unwrap().link;
        assert_eq!(demo.link.kind(), expected, "{board}");
        if expected == LinkKind::Serial {
            assert!(demo.config().get("link").unwrap().get("uart").is_some());
        }
    }
}

#[test]
fn init_rejects_an_unknown_board_with_the_choices() {
    let tmp = tempfile::tempdir().unwrap();
    let o = moat(tmp.path(), &["init", "p", "--board", "esp8622"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("unknown board `esp8622`; known boards: esp32, esp8266, qemu-mps2, rpi-pico, unix (did you mean `esp8266`?)"),
        "{e}"
    );
    assert!(!tmp.path().join("p/moat.toml").exists());
}

#[test]
fn boards_json_lists_all_five_with_status() {
    let tmp = tempfile::tempdir().unwrap();
    let o = moat(tmp.path(), &["boards", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let rows = j.as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, BOARDS);
    for r in rows {
        let status = r["status"].as_str().unwrap();
        let missing = r["missing"].as_array().unwrap();
        match status {
            "buildable" => assert!(missing.is_empty(), "{r}"),
            "missing" => {
                assert!(!missing.is_empty(), "{r}");
                for m in missing {
                    assert!(!m["hint"].as_str().unwrap().is_empty(), "{r}");
                }
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // The ESP8266 compiler is not packaged for Debian: it is named as missing
    // together with what to do.
    let esp = rows.iter().find(|r| r["name"] == "esp8266").unwrap();
    if esp["status"] == "missing" {
        assert!(esp["missing"][0]["hint"]
            .as_str()
            .unwrap()
            .contains("esp-open-sdk"));
    }
}

#[test]
fn boards_in_a_project_include_its_own_board_files() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(moat(tmp.path(), &["init", "p"]).status.success());
    let dir = tmp.path().join("p");
    std::fs::create_dir(dir.join("boards")).unwrap();
    let board = include_str!("../../boards/unix.toml").replace(
        "toolchain = [",
        "toolchain = [\n    { command = \"moat-test-missing-cc\", hint = \"get it\" },",
    );
    std::fs::write(dir.join("boards/unix.toml"), board).unwrap();
    std::fs::create_dir(dir.join("apps/sub")).unwrap();
    let o = moat(&dir.join("apps/sub"), &["boards", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let unix = j
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "unix")
        .unwrap();
    assert_eq!(unix["status"], "missing");
    assert_eq!(unix["missing"][0]["name"], "moat-test-missing-cc");
    assert!(unix["origin"]
        .as_str()
        .unwrap()
        .ends_with("boards/unix.toml"));

    let o = moat(&dir, &["boards"]);
    assert!(
        stdout(&o).contains("moat-test-missing-cc` not found on PATH: get it"),
        "{}",
        stdout(&o)
    );
}
