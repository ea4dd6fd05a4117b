//! Bad manifests are refused with a message naming the file, line:column,
//! the dotted key and what would be valid.

use moat::project::Project;
use std::path::Path;

/// Writes `text` as `moat.toml` in a fresh folder (with `apps/`) and loads
/// it; returns the error message.
fn load_err(text: &str) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("apps")).unwrap();
    std::fs::write(dir.path().join("moat.toml"), text).unwrap();
    let msg = match Project::load(dir.path()) {
        Ok(_) => panic!("manifest should be refused:\n{text}"),
        Err(e) => e.to_string(),
    };
    (msg, dir)
}

/// `FILE:LINE:COL: ` of the first occurrence of `needle` in `text`.
fn at(dir: &Path, text: &str, needle: &str) -> String {
    let pos = text.find(needle).expect("needle in text");
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap().chars().count() + 1;
    format!("{}:{line}:{col}: ", dir.join("moat.toml").display())
}

const HEAD: &str = "[project]\nname = \"garden\"\n\n";

#[test]
fn unknown_board_lists_the_known_boards_and_suggests_the_closest() {
    let text = format!("{HEAD}[nodes.pump]\nboard = \"esp8622\"\n");
    let (e, dir) = load_err(&text);
    assert_eq!(
        e,
        format!(
            "{}nodes.pump.board: unknown board `esp8622`; known boards: esp32, esp8266, \
             qemu-mps2, rpi-pico, unix (did you mean `esp8266`?)",
            at(dir.path(), &text, "\"esp8622\"")
        )
    );
}

#[test]
fn a_project_board_file_is_a_known_board() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("boards")).unwrap();
    std::fs::write(
        dir.path().join("boards/lab-rig.toml"),
        include_str!("../../boards/unix.toml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("moat.toml"),
        format!("{HEAD}[nodes.a]\nboard = \"lab-rig\"\n[nodes.b]\nboard = \"lab-rug\"\n"),
    )
    .unwrap();
    let e = Project::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("unknown board `lab-rug`; known boards: esp32, esp8266, lab-rig, qemu-mps2, rpi-pico, unix (did you mean `lab-rig`?)"),
        "{e}"
    );
}

#[test]
fn wrong_type_names_the_key_and_the_expected_type() {
    let text = format!(
        "{HEAD}[nodes.pump]\nboard = \"esp8266\"\nlink = {{ kind = \"serial\", baud = \"fast\" }}\n"
    );
    let (e, dir) = load_err(&text);
    assert_eq!(
        e,
        format!(
            "{}nodes.pump.link.baud: expected an integer, found a string",
            at(dir.path(), &text, "\"fast\"")
        )
    );

    let text = format!("{HEAD}[nodes.pump]\nboard = 8266\n");
    let (e, dir) = load_err(&text);
    assert_eq!(
        e,
        format!(
            "{}nodes.pump.board: expected a string, found an integer",
            at(dir.path(), &text, "8266")
        )
    );

    let text = format!("nodes = 3\n{HEAD}");
    let (e, _) = load_err(&text);
    assert!(
        e.contains("nodes: expected a table, found an integer"),
        "{e}"
    );
}

#[test]
fn a_manifest_without_nodes_says_how_to_add_one() {
    let (e, dir) = load_err(HEAD);
    assert_eq!(
        e,
        format!(
            "{}: nodes: no nodes defined; add a node, e.g.\n  [nodes.demo]\n  board = \"unix\"",
            dir.path().join("moat.toml").display()
        )
    );
}

#[test]
fn a_node_without_board_is_refused() {
    let text = format!("{HEAD}[nodes.pump]\nport = \"/dev/ttyUSB0\"\n");
    let (e, dir) = load_err(&text);
    assert_eq!(
        e,
        format!(
            "{}nodes.pump.board: missing; add `board = \"unix\"` to [nodes.pump]",
            at(dir.path(), &text, "[nodes.pump]")
        )
    );
}

#[test]
fn unknown_key_lists_the_valid_keys() {
    let text = format!("{HEAD}[nodes.pump]\nbord = \"esp8266\"\n");
    let (e, dir) = load_err(&text);
    assert_eq!(
        e,
        format!(
            "{}nodes.pump.bord: unknown key `bord`; valid keys: board, port, link, config, mux \
             (did you mean `board`?)",
            at(dir.path(), &text, "bord")
        )
    );

    let text = format!("{HEAD}[node.pump]\nboard = \"unix\"\n");
    let (e, _) = load_err(&text);
    assert!(
        e.contains(
            "node: unknown key `node`; valid keys: project, micropython, apps, defaults, nodes, toolchains, mqtt \
             (did you mean `nodes`?)"
        ),
        "{e}"
    );
}

#[test]
fn bad_link_kind_lists_the_valid_kinds() {
    let text = format!("{HEAD}[nodes.pump]\nboard = \"esp8266\"\nlink = {{ kind = \"wifi\" }}\n");
    let (e, dir) = load_err(&text);
    assert_eq!(
        e,
        format!(
            "{}nodes.pump.link.kind: unknown link kind `wifi`; valid kinds: tcp, process, serial, usb",
            at(dir.path(), &text, "\"wifi\"")
        )
    );

    let text =
        format!("{HEAD}[defaults.link]\nkind = \"seriel\"\n[nodes.pump]\nboard = \"esp8266\"\n");
    let (e, _) = load_err(&text);
    assert!(
        e.contains("defaults.link.kind: unknown link kind `seriel`; valid kinds: tcp, process, serial, usb (did you mean `serial`?)"),
        "{e}"
    );
}

#[test]
fn link_setting_of_another_kind_names_the_valid_ones() {
    let text = format!(
        "{HEAD}[nodes.host]\nboard = \"unix\"\nlink = {{ kind = \"process\", baud = 9600 }}\n"
    );
    let (e, _) = load_err(&text);
    assert!(
        e.contains("nodes.host.link.baud: `baud` does not apply to a process link; valid keys for a process link: kind"),
        "{e}"
    );
}

#[test]
fn out_of_range_values_give_the_range() {
    let text =
        format!("{HEAD}[nodes.h]\nboard = \"unix\"\nlink = {{ kind = \"tcp\", port = 70000 }}\n");
    let (e, dir) = load_err(&text);
    assert_eq!(
        e,
        format!(
            "{}nodes.h.link.port: 70000 is out of range; valid: 1 to 65535",
            at(dir.path(), &text, "70000")
        )
    );
}

#[test]
fn toml_syntax_errors_carry_line_and_column() {
    let text = format!("{HEAD}[nodes.h]\nboard = unix\n");
    let (e, dir) = load_err(&text);
    let prefix = at(dir.path(), &text, "unix\n");
    assert_eq!(e, format!("{prefix}invalid string; expected `\"`, `'`"));
}

#[test]
fn app_entries_must_name_module_and_class() {
    let text = format!(
        "{HEAD}[nodes.h]\nboard = \"unix\"\n[nodes.h.config]\napps = {{ t = \"counter\" }}\n"
    );
    let (e, _) = load_err(&text);
    assert!(
        e.contains("nodes.h.config.apps.t: expected \"module.Class\""),
        "{e}"
    );
}

#[test]
fn missing_app_folder_is_named() {
    let text = format!("{HEAD}[apps]\npaths = [\"apps\", \"lib\"]\n[nodes.h]\nboard = \"unix\"\n");
    let (e, dir) = load_err(&text);
    assert!(
        e.starts_with(&format!(
            "{}apps.paths[1]: folder `lib` does not exist",
            at(dir.path(), &text, "\"lib\"")
        )),
        "{e}"
    );
}

#[test]
fn micropython_source_must_be_one_of_version_path_git() {
    let text = format!(
        "{HEAD}[micropython]\nversion = \"1.25.0\"\ngit = \"x\"\n[nodes.h]\nboard = \"unix\"\n"
    );
    let (e, _) = load_err(&text);
    assert!(
        e.contains(
            "micropython.git: give only one of `version`, `path` or `git` (found version and git)"
        ),
        "{e}"
    );
    let text = format!("{HEAD}[micropython]\ngit = \"x\"\n[nodes.h]\nboard = \"unix\"\n");
    let (e, _) = load_err(&text);
    assert!(e.contains("micropython.rev: missing; add `rev = "), "{e}");
}

#[test]
fn missing_manifest_points_at_moat_init() {
    let dir = tempfile::tempdir().unwrap();
    let e = Project::find(dir.path()).unwrap_err().to_string();
    assert!(e.contains("no moat.toml in"), "{e}");
    assert!(e.contains("moat init"), "{e}");
}

#[test]
fn shared_link_defaults_are_checked_even_when_no_node_uses_them() {
    let text = format!("{HEAD}[defaults.link]\nwindow = 2\n[nodes.h]\nboard = \"unix\"\n");
    let (e, dir) = load_err(&text);
    assert_eq!(
        e,
        format!(
            "{}defaults.link.window: 2 is out of range; valid: 4 to 64",
            at(dir.path(), &text, "2\n")
        )
    );
}

#[test]
fn a_numeric_node_port_explains_where_tcp_ports_go() {
    let text = format!("{HEAD}[nodes.h]\nboard = \"unix\"\nport = 27587\n");
    let (e, _) = load_err(&text);
    assert!(
        e.contains("nodes.h.port: expected the device path (e.g. \"/dev/ttyUSB0\"), found an integer; a TCP port goes into `link = { kind = \"tcp\", port = … }`"),
        "{e}"
    );
}

#[test]
fn the_cli_reports_a_bad_manifest_relative_to_the_project_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("moat.toml"),
        format!("{HEAD}[nodes.pump]\nboard = \"esp8622\"\n"),
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["build", "--json"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("moat.toml:5:9: nodes.pump.board: unknown board `esp8622`; known boards:"),
        "{e}"
    );
    // --json: the same failure as one document on stdout (docs/json.md)
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["error"]["type"], serde_json::Value::Null);
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("moat.toml:5:9: nodes.pump.board"),
        "{doc}"
    );
}
