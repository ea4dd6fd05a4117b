//! Trust at the project level: node keys and where they come from, the
//! secrets a manifest refers to, and what a node's config carries (no
//! node needed; the end-to-end side is tests/trust.rs of moat-e2e).

use moat::project::Project;
use mux_runtime::Value;
use std::path::Path;
use std::process::{Command, Output};

const MANIFEST: &str = "[project]\nname = \"s\"\nid = \"00112233445566aa\"\n\
[nodes.pump-1]\nboard = \"unix\"\nlink = { kind = \"tcp\", port = 4001 }\n\
[nodes.pump-1.config]\nwifi = { ssid = \"garden\", pw = { secret = \"wifi_pw\" } }\n";

fn project(secrets: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("moat.toml"), MANIFEST).unwrap();
    if let Some(s) = secrets {
        std::fs::write(dir.path().join("secrets.toml"), s).unwrap();
    }
    // What `moat build` leaves (its content does not matter to
    // `moat flash --plan`).
    let fw = dir.path().join(".moat/build/pump-1/firmware");
    std::fs::create_dir_all(&fw).unwrap();
    std::fs::write(fw.join("micropython"), b"fw").unwrap();
    dir
}

fn moat(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_moat"));
    c.args(args).current_dir(cwd).env_remove("MOAT_KEY_PUMP_1");
    c.env_remove("MOAT_SECRET_WIFI_PW");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run moat")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The node's config as `moat flash --plan --json` would install it,
/// read back through the library (same process rules as the binary).
fn config(dir: &Path) -> Value {
    let p = Project::load(dir).unwrap_or_else(|e| panic!("{e}"));
    p.node("pump-1").unwrap().config()
}

#[test]
fn a_secret_comes_from_secrets_toml_and_its_path_is_listed_in_sec() {
    let dir = project(Some("wifi_pw = \"hunter2\"\n"));
    let cfg = config(dir.path());
    let wifi = cfg.get("wifi").unwrap();
    assert_eq!(wifi.get("pw"), Some(&Value::from("hunter2")));
    assert_eq!(wifi.get("ssid"), Some(&Value::from("garden")));
    assert_eq!(
        cfg.get("sec"),
        Some(&Value::Array(vec![Value::Array(vec![
            "wifi".into(),
            "pw".into()
        ])]))
    );
}

#[test]
fn a_missing_secret_names_the_place_the_file_and_the_variable() {
    let dir = project(None);
    // Through the binary: the environment is the test's own.
    let o = moat(dir.path(), &["flash", "--plan", "--json"], &[]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("moat.toml:8:43: nodes.pump-1.config.wifi.pw: secret `wifi_pw` is not set")
            && e.contains("secrets.toml")
            && e.contains("$MOAT_SECRET_WIFI_PW"),
        "{e}"
    );
    // The environment is enough (and wins over the file).
    let o = moat(
        dir.path(),
        &["flash", "--plan", "--json"],
        &[("MOAT_SECRET_WIFI_PW", "from-env")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn build_gives_a_node_without_a_key_one_and_the_environment_overrides_it() {
    let dir = project(Some("wifi_pw = \"x\"\n"));
    assert_eq!(config(dir.path()).get("auth"), None, "no key yet");
    let o = moat(dir.path(), &["build", "--node", "nope"], &[]);
    assert!(!o.status.success());
    assert!(
        !dir.path().join(".moat/keys/pump-1").exists(),
        "a refused selection makes nothing"
    );
    let o = moat(dir.path(), &["flash", "--plan", "--json"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("node `pump-1`: made a new key in .moat/keys/pump-1"),
        "{}",
        stderr(&o)
    );
    let text = std::fs::read_to_string(dir.path().join(".moat/keys/pump-1")).unwrap();
    let key = hex::decode(text.trim()).unwrap();
    let auth = config(dir.path()).get("auth").cloned().unwrap();
    assert_eq!(auth.get("k"), Some(&Value::Bin(key)));
    assert_eq!(auth.get("n"), Some(&Value::from("pump-1")));
    assert_eq!(auth.get("p"), Some(&Value::from("00112233445566aa")));
    // A second run keeps it.
    let o = moat(dir.path(), &["flash", "--plan", "--json"], &[]);
    assert!(!stderr(&o).contains("made a new key"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(dir.path().join(".moat/keys/pump-1")).unwrap(),
        text
    );
    // MOAT_KEY_<NODE> (dash → underscore) wins; a bad one is an error.
    let o = moat(
        dir.path(),
        &["key", "rotate"],
        &[("MOAT_KEY_PUMP_1", &"ab".repeat(32))],
    );
    assert!(
        stderr(&o).contains("node `pump-1`'s key comes from $MOAT_KEY_PUMP_1"),
        "{}",
        stderr(&o)
    );
    let o = moat(
        dir.path(),
        &["flash", "--plan", "--json"],
        &[("MOAT_KEY_PUMP_1", "abc")],
    );
    assert!(
        stderr(&o).contains("$MOAT_KEY_PUMP_1 is not a node key: it must be 64 hex digits"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_host_authenticates_where_the_manifest_says_with_current_then_pending_key() {
    let dir = project(Some("wifi_pw = \"x\"\n"));
    let p = Project::load(dir.path()).unwrap();
    let e = moat::client::host_auth(&p, p.node("pump-1").unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("node `pump-1` has no key") && e.contains("`moat build` makes one"),
        "{e}"
    );
    let mut p = Project::load(dir.path()).unwrap();
    p.ensure_keys().unwrap();
    let next = moat::keys::random().unwrap();
    moat::keys::write(&moat::keys::pending_path(dir.path(), "pump-1"), &next).unwrap();
    let auth = moat::client::host_auth(&p, p.node("pump-1").unwrap())
        .unwrap()
        .expect("tcp links authenticate");
    assert_eq!(auth.keys.len(), 2);
    assert_eq!(auth.keys[1], next);
    assert_eq!(
        (auth.node.as_str(), auth.project_id.as_str()),
        ("pump-1", "00112233445566aa")
    );
    // A process link does not, unless the manifest says `auth = true`.
    let text = MANIFEST.replace("{ kind = \"tcp\", port = 4001 }", "\"process\"");
    std::fs::write(dir.path().join("moat.toml"), text).unwrap();
    let p = Project::load(dir.path()).unwrap();
    assert!(moat::client::host_auth(&p, p.node("pump-1").unwrap())
        .unwrap()
        .is_none());
}
