//! The example projects load, and their nodes get the links the READMEs
//! promise (building them is `tests/build.rs`'s job).

use moat::manifest::Link;
use moat::project::Project;
use mux_runtime::Value;
use std::path::Path;

fn example(name: &str) -> Project {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    Project::load(&dir).unwrap_or_else(|e| panic!("example {name}: {e}"))
}

#[test]
fn blink_has_a_pico_node_and_a_buildable_unix_twin() {
    let p = example("blink");
    let boards: Vec<(&str, &str)> = p
        .manifest
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.board.as_str()))
        .collect();
    assert_eq!(boards, [("pico", "rpi-pico"), ("sim", "unix")]);
    assert_eq!(p.node("pico").unwrap().link, Link::Usb);
    assert_eq!(
        p.node("pico").unwrap().config().get("link"),
        Some(&Value::map([("stdio", Value::Map(vec![]))]))
    );
    assert!(p.app_dirs()[0].join("blink.py").is_file());
}

#[test]
fn garden_nodes_share_link_defaults_across_boards() {
    let p = example("garden");
    let host = p.node("host").unwrap();
    let pump = p.node("pump").unwrap();
    assert_ne!(host.board, pump.board);
    assert_eq!(
        host.link,
        Link::Tcp {
            host: "127.0.0.1".into(),
            port: 27590,
            listen: "127.0.0.1".into()
        }
    );
    let Link::Serial(s) = &pump.link else {
        panic!("pump should be on a serial link: {:?}", pump.link)
    };
    assert_eq!((s.timeout_ms, s.retries, s.window), (500, 8, 8));
    let uart = pump.config();
    let uart = uart.get("link").and_then(|l| l.get("uart")).unwrap();
    assert_eq!(uart.get("t"), Some(&Value::from(500)));
    assert_eq!(uart.get("b"), Some(&Value::from(115200)));
    assert!(p.app_dirs()[0].join("moisture.py").is_file());
}
