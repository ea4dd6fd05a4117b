use super::*;
use crate::hash_table::HASH_LEN;
use crate::update::table::NodeFile;

const APP: &str = r#"
"""Thermometers."""
from app import App
from probe import Probe as P


class Reader(App):
    """Reads the temperature."""

    def __init__(self, cfg, name, root):
        super().__init__(cfg, name, root)
        self.apps = {"probe": P(cfg, "probe", root), "aux": Aux(cfg, "aux", root)}

    def sub(self, key):
        if key == "late":
            from late import Late

            return Late({}, "late", self.root)
        return super().sub(key)

    def cmd_temp(self, unit="C", *, digits=1):
        """The temperature.

        In `unit` (C or F)."""
        return 20

    async def cmd_set(self, v, t=0x10, **kw):  # set the target
        pass

    async def stream_temp(self, send, r, unit="C"):
        """never shown: cmd_temp's doc wins"""

    async def stream_raw(self, send, r, n=[1, 2]):
        # raw readings, n at a time
        send(1)

    def helper(self):
        pass


class Aux(App):
    def cmd_x(self):
        pass


class Plain:
    pass
"#;

fn extract_text(name: &str, text: &str) -> ModuleDocs {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("m.py");
    std::fs::write(&f, text).unwrap();
    extract(&[(name.to_owned(), f)])
        .unwrap()
        .remove(name)
        .unwrap()
}

#[test]
fn extraction_reads_classes_commands_streams_docs_and_sub_apps() {
    let m = extract_text("thermo", APP);
    assert_eq!(m.doc.as_deref(), Some("Thermometers."));
    assert_eq!(
        m.classes.keys().collect::<Vec<_>>(),
        ["Aux", "Reader"],
        "classes without commands are left out"
    );
    let r = &m.classes["Reader"];
    assert_eq!(r.doc.as_deref(), Some("Reads the temperature."));
    assert_eq!(r.bases, ["app.App"]);
    assert_eq!(
        r.subs,
        BTreeMap::from([
            ("probe".into(), "probe.Probe".into()),
            ("aux".into(), "thermo.Aux".into()),
            ("late".into(), "late.Late".into()),
        ])
    );
    let t = &r.cmds["temp"];
    assert_eq!(
        t.doc.as_deref(),
        Some("The temperature.\n\nIn `unit` (C or F).")
    );
    assert_eq!(
        t.params,
        [
            ("unit".into(), Some("\"C\"".into())),
            ("digits".into(), Some("1".into()))
        ]
    );
    assert!(t.cmd && t.stream && !t.is_async);
    let s = &r.cmds["set"];
    assert_eq!(
        s.doc.as_deref(),
        Some("set the target"),
        "a comment on the def line"
    );
    assert_eq!(
        s.params,
        [("v".into(), None), ("t".into(), Some("0x10".into()))]
    );
    assert_eq!(s.kw.as_deref(), Some("kw"));
    assert!(s.is_async && !s.stream);
    let raw = &r.cmds["raw"];
    assert!(raw.stream && !raw.cmd, "a stream without cmd_raw");
    assert_eq!(
        raw.params,
        [("n".into(), Some("[1, 2]".into()))],
        "send and r are not parameters"
    );
    assert_eq!(raw.doc.as_deref(), Some("raw readings, n at a time"));
    assert!(!r.cmds.contains_key("helper"));
}

#[test]
fn extraction_reports_a_module_it_cannot_parse() {
    let m = extract_text("bad", "def f(:\n");
    assert!(
        m.error.as_deref().unwrap().starts_with("SyntaxError"),
        "{m:?}"
    );
}

#[test]
fn the_runtime_documents_its_built_ins() {
    let dir = tempfile::tempdir().unwrap();
    let mut list = vec![];
    for (p, b) in crate::embedded::NODE_RUNTIME {
        if ["root.py", "sys_app.py", "cfg.py", "app.py"].contains(p) {
            let f = dir.path().join(p);
            std::fs::write(&f, b).unwrap();
            list.push((p.trim_end_matches(".py").to_owned(), f));
        }
    }
    let docs = extract(&list).unwrap();
    let root = &docs["root"].classes["Root"];
    assert_eq!(root.subs["sys"], "sys_app.Sys");
    assert_eq!(root.subs["cfg"], "cfg.Cfg");
    assert!(root.cmds["ping"].doc.is_some());
    let sys = &docs["sys_app"].classes["Sys"];
    assert_eq!(sys.subs["up"], "update.Update");
    assert!(sys.cmds["info"].doc.is_some());
    assert_eq!(
        docs["cfg"].classes["Cfg"].cmds["r"].params,
        [("p".into(), Some("()".into()))]
    );
    assert!(docs["app"].classes["App"].cmds.contains_key("dir"));
}

fn h(b: u8) -> [u8; HASH_LEN] {
    [b; HASH_LEN]
}

#[test]
fn a_file_on_the_node_beats_the_frozen_module_in_search_order() {
    let mut frozen = HashTable::default();
    frozen.insert("counter".into(), h(1));
    frozen.insert("extra".into(), h(2));
    frozen.insert("lib_only".into(), h(3));
    let table = NodeTable {
        frozen,
        search: vec!["".into(), FROZEN.into(), "lib".into()],
        files: vec![
            NodeFile {
                path: "counter.mpy".into(),
                hash: h(9),
            },
            NodeFile {
                path: "counter.py".into(),
                hash: h(8),
            },
            NodeFile {
                path: "lib/extra.py".into(),
                hash: h(7),
            },
            NodeFile {
                path: "lib/new.py".into(),
                hash: h(6),
            },
            NodeFile {
                path: "x.py.moat-tmp".into(),
                hash: h(5),
            },
        ],
        ..NodeTable::default()
    };
    let e = effective(&table);
    assert_eq!(
        e["counter"],
        Effective {
            hash: hex::encode(h(8)),
            origin: Origin::Override {
                file: "counter.py".into(),
                form: Form::Py
            }
        }
    );
    assert_eq!(
        e["extra"].origin,
        Origin::Firmware,
        "lib comes after .frozen"
    );
    assert_eq!(e["new"].hash, hex::encode(h(6)));
    assert_eq!(e.len(), 4, "{e:?}");
}

#[test]
fn mux_commands_are_documented() {
    let all = describe_mux(&[]).unwrap();
    let names: Vec<&str> = all["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"][0].as_str().unwrap())
        .collect();
    assert!(names.contains(&"ls") && names.contains(&"doc"), "{names:?}");
    let ls = describe_mux(&[PathElem::Name("ls".into())]).unwrap();
    assert_eq!(ls["command"]["stream"], true);
    assert_eq!(ls["basis"], "mux");
    let text = render(&ls);
    assert!(text.starts_with("mux ls()\n"), "{text}");
    assert!(text.contains("streams: yes"), "{text}");
    assert!(describe_mux(&[PathElem::Name("nope".into())]).is_err());
}

#[test]
fn rendering_shows_parameters_and_notes() {
    let doc = json!({
        "node": "demo", "path": ["c", "add"], "basis": "build", "class": "counter.Counter",
        "module": {"name": "counter", "hash": "0011223344556677", "from": "build"},
        "command": {"name": "add", "doc": "Add n.\n\nReturns the count.", "params": [{"name": "n", "default": "1"}],
                    "kw": "kw", "cmd": true, "stream": false, "async": false},
        "notes": ["node not reached (x): docs of its latest build"],
    });
    let text = render(&doc);
    assert!(
        text.starts_with("demo c.add(n=1, **kw)\n    Add n.\n\n    Returns the count.\n"),
        "{text}"
    );
    assert!(
        text.contains("from: counter.Counter (module counter 0011223344556677, as last built)"),
        "{text}"
    );
    assert!(text.contains("note: node not reached"), "{text}");
}

#[test]
fn summaries_are_the_first_sentence_and_short() {
    assert_eq!(summary(None), "");
    assert_eq!(summary(Some("Add n.\n\nMore.")), "Add n.");
    assert_eq!(
        summary(Some(
            "Read the subtree at `p`\n(whole when it fits). Secrets hidden."
        )),
        "Read the subtree at `p` (whole when it fits)."
    );
    let long = "x".repeat(300);
    assert_eq!(summary(Some(&long)).chars().count(), SUMMARY_MAX);
}
