//! Files compiled into the binary by `build.rs`: the node runtime
//! (`node-runtime/`, frozen into every firmware) and the default templates
//! (`templates/`). Each entry is `(path relative to its folder, bytes)`.

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The repository's `node-runtime/` modules a firmware freezes: every
    /// `.py` outside `tests/`.
    fn runtime_on_disk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if p.is_dir() {
                if name != "tests" && name != "__pycache__" && !name.starts_with('.') {
                    runtime_on_disk(&p, &rel, out);
                }
            } else if name.ends_with(".py") {
                out.push(rel);
            }
        }
    }

    #[test]
    fn binary_embeds_every_runtime_module_and_no_tests() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../node-runtime");
        let mut on_disk = vec![];
        runtime_on_disk(&dir, "", &mut on_disk);
        on_disk.sort();
        let embedded: Vec<String> = super::NODE_RUNTIME
            .iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(embedded, on_disk);
        assert!(embedded.iter().any(|p| p == "main.py"), "{embedded:?}");
        for (p, bytes) in super::NODE_RUNTIME {
            assert_eq!(
                *bytes,
                std::fs::read(dir.join(p)).unwrap().as_slice(),
                "{p}"
            );
        }
    }

    #[test]
    fn binary_embeds_the_build_templates() {
        let names: Vec<&str> = super::TEMPLATES.iter().map(|(p, _)| *p).collect();
        assert!(names.contains(&"manifest.py.j2"), "{names:?}");
        assert!(names.contains(&"_hash.py.j2"), "{names:?}");
    }
}
