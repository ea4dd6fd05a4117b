//! `moat demo` names every missing build tool in one line, with the one
//! `apt-get install` that brings them, before it starts anything.

use std::process::Command;

#[test]
fn demo_without_build_tools_names_them_all_before_starting() {
    let empty = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("p");
    let out = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["demo", "--dir"])
        .arg(&project)
        // A PATH without any program: nothing of the build can be found.
        .env("PATH", empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("missing "))
        .unwrap_or_else(|| panic!("no line naming what is missing:\n{err}"));
    for program in ["gcc", "make", "python3", "pkg-config", "libffi"] {
        assert!(line.contains(program), "{program} not named in: {line}");
    }
    assert!(
        line.contains("sudo apt-get install build-essential make python3 pkg-config")
            && line.contains("libffi-dev"),
        "no install command in: {line}"
    );
    assert!(
        !project.exists(),
        "the demo started (made {}) before checking its tools",
        project.display()
    );
}
