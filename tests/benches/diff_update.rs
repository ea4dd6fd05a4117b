//! Benchmark (not a test): what `moat diff-update` saves. A project of 30
//! app modules on a real unix-port satellite (the shared satellite
//! firmware, over TCP): first every module goes up (the full upload), then
//! one module changes and only it goes up, then nothing changes. Bytes are
//! the link layer's count (`bytes_sent` of `--json`); wall time is the
//! whole `moat diff-update` run. All in the same run.
//!
//!     cargo bench -p moat-e2e --bench diff_update

use moat_e2e::node::free_port;
use moat_e2e::{json_lines, moat, run_ok, satellite_project};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODULES: usize = 30;
/// Runs of each kind; the table shows the median time.
const RUNS: usize = 5;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// Module `k` in version `v`: a small app-like module of 0.5–3 KB.
fn module(k: usize, v: usize) -> String {
    let mut s = format!(
        "# bench module {k:02}, version {v}\nfrom app import App\n\n\nclass M{k:02}(App):\n    def cmd_v(self):\n        return {v}\n"
    );
    for j in 0..(5 + k) {
        s.push_str(&format!(
            "\n    def cmd_f{j:03}(self, x=0):\n        # helper {j} of module {k}\n        return x + {j}\n"
        ));
    }
    s
}

struct Node(Child);
impl Drop for Node {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// One `moat diff-update --json`: (bytes sent, file bytes, wall time).
fn run(root: &Path) -> (u64, u64, Duration, Vec<String>) {
    let t = Instant::now();
    let out = run_ok(
        moat(root)
            .args(["diff-update", "--direct", "--json"])
            .env_remove("MOAT_SOCKET"),
    )
    .expect("diff-update");
    let took = t.elapsed();
    let j = json_lines(&out.stdout).unwrap().pop().unwrap();
    let up = j["uploaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    (
        j["bytes_sent"].as_u64().unwrap(),
        j["file_bytes"].as_u64().unwrap(),
        took,
        up,
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let sat = satellite_project().expect("the shared satellite project builds");
    let dir = tempfile::tempdir().unwrap();
    let root: PathBuf = dir.path().join("proj");
    copy_dir(&sat.join("apps"), &root.join("apps"));
    let build = sat.join(".moat/build/demo");
    let mine = root.join(".moat/build/demo");
    copy_dir(&build.join("firmware"), &mine.join("firmware"));
    std::fs::copy(build.join("record.json"), mine.join("record.json")).unwrap();
    let port = free_port();
    let toml = std::fs::read_to_string(sat.join("moat.toml"))
        .unwrap()
        .replace("port = 27587", &format!("port = {port}"));
    std::fs::write(root.join("moat.toml"), toml).unwrap();
    run_ok(moat(&root).arg("flash")).unwrap();
    let node_dir = root.join(".moat/nodes/demo");
    let _node = Node(
        Command::new(node_dir.join("micropython"))
            .args(["-X", "heapsize=256k", "-m", "main"])
            .current_dir(&node_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let end = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "the node does not listen");
        std::thread::sleep(Duration::from_millis(20));
    }

    let write = |k: usize, v: usize| {
        std::fs::write(root.join(format!("apps/m{k:02}.py")), module(k, v)).unwrap();
    };
    let project_bytes: usize = (0..MODULES).map(|k| module(k, 0).len()).sum();
    let changed = 7;
    let changed_size = module(changed, 1).len();

    let (mut full, mut one, mut none) = (vec![], vec![], vec![]);
    let (mut full_bytes, mut one_bytes, mut none_bytes) = (0, 0, 0);
    let (mut full_files, mut one_files) = (0, 0);
    for r in 0..RUNS {
        // Full upload: every module new to the node (a fresh version of
        // each, so all 30 differ from what the node has).
        for k in 0..MODULES {
            write(k, 10 * r + 2);
        }
        let (b, f, t, up) = run(&root);
        assert_eq!(up.len(), MODULES, "full upload sends every module");
        full.push(t);
        (full_bytes, full_files) = (b, f);
        // One changed.
        write(changed, 10 * r + 3);
        let (b, f, t, up) = run(&root);
        assert_eq!(up, vec![format!("m{changed:02}")]);
        one.push(t);
        (one_bytes, one_files) = (b, f);
        // Nothing changed.
        let (b, _, t, up) = run(&root);
        assert!(up.is_empty());
        none.push(t);
        none_bytes = b;
    }
    let (tf, to, tn) = (median(full), median(one), median(none));
    println!("diff-update: {MODULES} app modules ({project_bytes} bytes of source), 1 changed ({changed_size} bytes), unix node over TCP, median of {RUNS} runs");
    println!(
        "{:<28} {:>12} {:>12} {:>10}",
        "case", "bytes sent", "file bytes", "wall ms"
    );
    println!(
        "{:<28} {:>12} {:>12} {:>10}",
        "full upload (30 modules)",
        full_bytes,
        full_files,
        tf.as_millis()
    );
    println!(
        "{:<28} {:>12} {:>12} {:>10}",
        "1 module changed",
        one_bytes,
        one_files,
        to.as_millis()
    );
    println!(
        "{:<28} {:>12} {:>12} {:>10}",
        "nothing changed",
        none_bytes,
        0,
        tn.as_millis()
    );
    println!(
        "1 changed: {:.2}x the module's size, {:.1}% of the full upload's bytes, {:.1}% of its wall time",
        one_bytes as f64 / changed_size as f64,
        100.0 * one_bytes as f64 / full_bytes as f64,
        100.0 * to.as_secs_f64() / tf.as_secs_f64()
    );
}
