//! The diff-update planner (sans-I/O): what the project wants a node to
//! import, what the node imports now, and the fewest file operations that
//! take it from one to the other.
//!
//! Per module:
//!
//! | project has it | node imports                    | action                          |
//! |----------------|---------------------------------|---------------------------------|
//! | = frozen copy  | the frozen copy                 | nothing                         |
//! | = frozen copy  | an override (any content)       | delete the override(s)          |
//! | ≠ frozen copy  | a file with the wanted content  | nothing (a stale sibling of the other form is deleted) |
//! | ≠ frozen copy  | anything else                   | upload to the first folder, then delete a stale sibling |
//! | no, frozen     | an override                     | delete the override(s)          |
//! | no, not frozen | a file diff-update put there    | delete it                       |
//! | no, not frozen | a file of the user's            | nothing                         |
//! | package module, ≠ frozen | —                     | refused: needs a reflash        |
//!
//! "Wanted content" is the source (`.py`) or its mpy-cross output
//! (`.mpy`, with `--mpy`). Interrupted uploads (`*.moat-tmp`) are removed.

use super::table::{Form, NodeFile, NodeTable, FROZEN};
use crate::hash_table::ModuleHash;
use std::collections::{BTreeMap, BTreeSet};

/// One module of the project as the firmware would freeze it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub name: String,
    /// `sha256(source)[:8]`: compared with the frozen table.
    pub source_hash: ModuleHash,
    /// Hash of the file that would be uploaded (the source, or the
    /// `.mpy`); `None` for modules that cannot be uploaded as a file
    /// (inside a package, or a package itself).
    pub file_hash: Option<ModuleHash>,
}

/// What to do about one module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Unchanged,
    /// Upload the module to `path` (temporary name, verify, rename), then
    /// delete `delete` (stale files of the other form).
    Upload {
        path: String,
        delete: Vec<String>,
    },
    /// Delete these files (overrides no longer wanted).
    Delete {
        paths: Vec<String>,
    },
    /// The module differs but lives in a package: only a reflash helps.
    Reflash,
}

/// Where a module comes from on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Frozen,
    File(String),
    Missing,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Frozen => f.write_str("frozen"),
            Source::File(p) => f.write_str(p),
            Source::Missing => f.write_str("-"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub module: String,
    /// What the node imports now.
    pub now: Source,
    pub action: Action,
    /// Why, for humans.
    pub why: &'static str,
    /// Whether the project has this module.
    pub in_project: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// One item per module of the project, the firmware or the node's
    /// module folders, in name order.
    pub items: Vec<Item>,
    /// Leftover temporary files to remove.
    pub cleanup: Vec<String>,
    /// The ledger once the plan is carried out.
    pub ledger: BTreeSet<String>,
    /// Whether the ledger file must be rewritten.
    pub ledger_changed: bool,
}

impl Plan {
    pub fn uploads(&self) -> impl Iterator<Item = &Item> {
        self.items
            .iter()
            .filter(|i| matches!(i.action, Action::Upload { .. }))
    }

    pub fn deletions(&self) -> impl Iterator<Item = &Item> {
        self.items
            .iter()
            .filter(|i| matches!(i.action, Action::Delete { .. }))
    }

    pub fn refused(&self) -> impl Iterator<Item = &Item> {
        self.items
            .iter()
            .filter(|i| matches!(i.action, Action::Reflash))
    }

    /// Project modules the node already imports as wanted.
    pub fn unchanged(&self) -> usize {
        self.items
            .iter()
            .filter(|i| i.in_project && i.action == Action::Unchanged)
            .count()
    }

    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.items.iter().all(|i| i.action == Action::Unchanged)
            && self.cleanup.is_empty()
            && !self.ledger_changed
    }

    /// Modules whose imported code changes.
    pub fn changed(&self) -> Vec<&str> {
        self.items
            .iter()
            .filter(|i| matches!(i.action, Action::Upload { .. } | Action::Delete { .. }))
            .map(|i| i.module.as_str())
            .collect()
    }
}

/// The module files of one folder: module → (form → file).
type Folder<'a> = BTreeMap<&'a str, BTreeMap<Form, &'a NodeFile>>;

/// Plans the update of a node (`node`) to the project's modules
/// (`wanted`), uploading in `form`.
pub fn plan(wanted: &[Wanted], node: &NodeTable, form: Form) -> Plan {
    let frozen_at = node.search.iter().position(|s| s == FROZEN);
    // Folders in search order, each with its module files.
    let mut folders: Vec<(&str, Folder)> = node
        .search
        .iter()
        .filter(|s| s.as_str() != FROZEN)
        .map(|s| (s.as_str(), Folder::new()))
        .collect();
    let mut cleanup = vec![];
    for f in &node.files {
        if f.is_temp() {
            cleanup.push(f.path.clone());
            continue;
        }
        let Some((m, fm)) = f.module() else { continue };
        let (dir, _) = f.split();
        if let Some((_, folder)) = folders.iter_mut().find(|(d, _)| *d == dir) {
            folder.entry(m).or_default().insert(fm, f);
        }
    }
    // Whether a folder comes before the firmware in the search order.
    let shadows = |dir: &str| {
        let at = node.search.iter().position(|s| s == dir);
        match (at, frozen_at) {
            (Some(a), Some(f)) => a < f,
            (Some(_), None) => true,
            _ => false,
        }
    };
    // Uploads go to the first folder.
    let target = folders.first().map(|(d, _)| *d);

    let wanted_by: BTreeMap<&str, &Wanted> = wanted.iter().map(|w| (w.name.as_str(), w)).collect();
    let mut names: BTreeSet<&str> = wanted_by.keys().copied().collect();
    names.extend(node.frozen.iter().map(|(n, _)| n));
    for (_, folder) in &folders {
        names.extend(folder.keys().copied());
    }
    names.extend(node.ledger.iter().map(String::as_str));

    let mut items = vec![];
    let mut ledger = node.ledger.clone();
    for name in names {
        let frozen = node.frozen.get(name);
        // Files of this module, in search order (py before mpy per folder).
        let files: Vec<(&str, Form, &NodeFile)> = folders
            .iter()
            .filter_map(|(d, folder)| folder.get(name).map(|fs| (*d, fs)))
            .flat_map(|(d, fs)| fs.iter().map(move |(fm, f)| (d, *fm, *f)))
            .collect();
        let now = now(&node.search, &files, frozen.is_some());
        let overrides: Vec<String> = files
            .iter()
            .filter(|(d, _, _)| shadows(d))
            .map(|(_, _, f)| f.path.clone())
            .collect();
        let (action, why) = match wanted_by.get(name) {
            Some(w) if frozen == Some(&w.source_hash) => {
                if overrides.is_empty() {
                    (Action::Unchanged, "frozen copy is current")
                } else {
                    (
                        Action::Delete { paths: overrides },
                        "override equals the frozen copy",
                    )
                }
            }
            Some(w) => match (w.file_hash, target) {
                (None, _) => (Action::Reflash, "inside a package: reflash"),
                (Some(_), None) => (Action::Reflash, "the node has no module folder"),
                (Some(h), Some(target)) => wanted_file(
                    name,
                    h,
                    form,
                    &now,
                    &files,
                    target,
                    frozen.is_some(),
                    &shadows,
                ),
            },
            None if frozen.is_some() => {
                if overrides.is_empty() {
                    (Action::Unchanged, "not in the project (frozen)")
                } else {
                    (
                        Action::Delete { paths: overrides },
                        "override of a module the project no longer has",
                    )
                }
            }
            None if node.ledger.contains(name) => {
                let ours: Vec<String> = files
                    .iter()
                    .filter(|(d, _, _)| Some(*d) == target)
                    .map(|(_, _, f)| f.path.clone())
                    .collect();
                if ours.is_empty() {
                    (Action::Unchanged, "gone")
                } else {
                    (
                        Action::Delete { paths: ours },
                        "module the project no longer has",
                    )
                }
            }
            None => (Action::Unchanged, "not the project's: left alone"),
        };
        // The ledger names the modules whose file in the first folder
        // diff-update put there (and the firmware lacks).
        let in_target = files.iter().any(|(d, _, _)| Some(*d) == target);
        let ours = frozen.is_none()
            && match &action {
                Action::Upload { .. } => true,
                Action::Delete { .. } => false,
                _ => in_target && node.ledger.contains(name),
            };
        if ours {
            ledger.insert(name.to_owned());
        } else {
            ledger.remove(name);
        }
        if frozen.is_none() && files.is_empty() && !wanted_by.contains_key(name) {
            continue; // a ledger entry whose file is gone
        }
        items.push(Item {
            module: name.to_owned(),
            now,
            action,
            why,
            in_project: wanted_by.contains_key(name),
        });
    }
    let ledger_changed = ledger != node.ledger;
    Plan {
        items,
        cleanup,
        ledger,
        ledger_changed,
    }
}

/// What the node imports for a module with these files.
fn now(search: &[String], files: &[(&str, Form, &NodeFile)], frozen: bool) -> Source {
    for s in search {
        if s == FROZEN {
            if frozen {
                return Source::Frozen;
            }
            continue;
        }
        if let Some((_, _, f)) = files.iter().find(|(d, _, _)| d == s) {
            return Source::File(f.path.clone());
        }
    }
    Source::Missing
}

/// The action for a project module whose frozen copy (if any) is not
/// current: it must come from a file with hash `h` in form `form`.
#[allow(clippy::too_many_arguments)]
fn wanted_file(
    name: &str,
    h: ModuleHash,
    form: Form,
    now: &Source,
    files: &[(&str, Form, &NodeFile)],
    target: &str,
    frozen: bool,
    shadows: &dyn Fn(&str) -> bool,
) -> (Action, &'static str) {
    // The file the node imports, if it is one.
    let current = match now {
        Source::File(p) => files.iter().find(|(_, _, f)| &f.path == p),
        _ => None,
    };
    let stale_sibling = |dir: &str| -> Vec<String> {
        files
            .iter()
            .filter(|(d, fm, _)| *d == dir && *fm == form.other())
            .map(|(_, _, f)| f.path.clone())
            .collect()
    };
    if let Some((dir, fm, f)) = current {
        // A frozen module is only replaced by a file that shadows it.
        if *fm == form && f.hash == h && (!frozen || shadows(dir)) {
            let stale = stale_sibling(dir);
            return if stale.is_empty() {
                (Action::Unchanged, "file is current")
            } else {
                (
                    Action::Delete { paths: stale },
                    "stale file of the other form",
                )
            };
        }
    }
    let path = if target.is_empty() {
        format!("{name}.{}", form.ext())
    } else {
        format!("{target}/{name}.{}", form.ext())
    };
    let why = match now {
        Source::Missing => "new module",
        Source::Frozen => "differs from the frozen copy",
        Source::File(_) => "differs from the node's file",
    };
    (
        Action::Upload {
            path,
            delete: stale_sibling(target),
        },
        why,
    )
}

/// How the node takes up changed modules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Nothing changed.
    Nothing,
    /// Forget `drop` (so the next import reads the new files), then
    /// restart these apps.
    Apps {
        drop: Vec<String>,
        apps: Vec<String>,
    },
    /// A module of the runtime changed: restart the runtime (a hard reset
    /// where the node comes back by itself, else in place).
    Runtime,
    /// `--reboot`: `sys.boot m=2`.
    Reboot,
}

/// The module of an app spec (`counter.Counter` → `counter`).
fn app_module(spec: &str) -> String {
    spec.rsplit_once('.').map_or(spec, |(m, _)| m).to_owned()
}

/// Decides how the node takes up `changed` modules. `apps` are the node's
/// configured apps (`name → "module.Class"`), `runtime` the modules that
/// come with moat and MicroPython (not from the project's app folders),
/// `project_apps` the modules of the project's app folders.
pub fn restart(
    changed: &[&str],
    apps: &BTreeMap<String, String>,
    runtime: &BTreeSet<String>,
    project_apps: &BTreeSet<String>,
    reboot: bool,
) -> Restart {
    if changed.is_empty() {
        return Restart::Nothing;
    }
    if reboot {
        return Restart::Reboot;
    }
    if changed.iter().any(|m| runtime.contains(*m)) {
        return Restart::Runtime;
    }
    let app_modules: BTreeSet<String> = apps.values().map(|s| app_module(s)).collect();
    if changed.iter().all(|m| app_modules.contains(*m)) {
        // Only modules apps are made from: restart exactly those apps.
        let apps = apps
            .iter()
            .filter(|(_, s)| changed.contains(&app_module(s).as_str()))
            .map(|(n, _)| n.clone())
            .collect();
        return Restart::Apps {
            drop: changed.iter().map(|m| (*m).to_owned()).collect(),
            apps,
        };
    }
    // A helper changed: who imports it is unknown, so every app made from
    // a project module restarts with every project module read afresh.
    let mut drop: BTreeSet<String> = project_apps.clone();
    drop.extend(changed.iter().map(|m| (*m).to_owned()));
    let apps = apps
        .iter()
        .filter(|(_, s)| drop.contains(&app_module(s)))
        .map(|(n, _)| n.clone())
        .collect();
    Restart::Apps {
        drop: drop.into_iter().collect(),
        apps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash_table::HashTable;

    const OLD: ModuleHash = [1; 8];
    const NEW: ModuleHash = [2; 8];
    const MPY: ModuleHash = [3; 8];
    const OTHER: ModuleHash = [9; 8];

    fn want(name: &str, source: ModuleHash) -> Wanted {
        Wanted {
            name: name.into(),
            source_hash: source,
            file_hash: Some(source),
        }
    }

    fn node(frozen: &[(&str, ModuleHash)], files: &[(&str, ModuleHash)]) -> NodeTable {
        let mut t = HashTable::default();
        for (n, h) in frozen {
            t.insert((*n).into(), *h);
        }
        NodeTable {
            frozen: t,
            search: vec!["".into(), FROZEN.into(), "lib".into()],
            files: files
                .iter()
                .map(|(p, h)| NodeFile {
                    path: (*p).into(),
                    hash: *h,
                })
                .collect(),
            ledger: BTreeSet::new(),
            mpy: None,
        }
    }

    fn action(p: &Plan, m: &str) -> Action {
        p.items
            .iter()
            .find(|i| i.module == m)
            .unwrap_or_else(|| panic!("no item for {m}: {p:?}"))
            .action
            .clone()
    }

    fn upload(path: &str, delete: &[&str]) -> Action {
        Action::Upload {
            path: path.into(),
            delete: delete.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn delete(paths: &[&str]) -> Action {
        Action::Delete {
            paths: paths.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn current_frozen_module_is_left_alone() {
        let p = plan(&[want("a", OLD)], &node(&[("a", OLD)], &[]), Form::Py);
        assert_eq!(action(&p, "a"), Action::Unchanged);
        assert!(p.is_empty());
        assert_eq!(p.unchanged(), 1);
    }

    #[test]
    fn module_differing_from_the_frozen_copy_is_uploaded_to_the_root() {
        let p = plan(&[want("a", NEW)], &node(&[("a", OLD)], &[]), Form::Py);
        assert_eq!(action(&p, "a"), upload("a.py", &[]));
        assert_eq!(p.changed(), vec!["a"]);
        assert!(!p.ledger_changed, "frozen modules are not in the ledger");
    }

    #[test]
    fn current_override_is_left_alone() {
        let p = plan(
            &[want("a", NEW)],
            &node(&[("a", OLD)], &[("a.py", NEW)]),
            Form::Py,
        );
        assert_eq!(action(&p, "a"), Action::Unchanged);
        assert!(p.is_empty());
    }

    #[test]
    fn outdated_override_is_replaced() {
        let p = plan(
            &[want("a", NEW)],
            &node(&[("a", OLD)], &[("a.py", OTHER)]),
            Form::Py,
        );
        assert_eq!(action(&p, "a"), upload("a.py", &[]));
    }

    #[test]
    fn override_equal_to_the_frozen_copy_is_deleted() {
        let p = plan(
            &[want("a", OLD)],
            &node(&[("a", OLD)], &[("a.py", OLD)]),
            Form::Py,
        );
        assert_eq!(action(&p, "a"), delete(&["a.py"]));
        assert_eq!(p.changed(), vec!["a"]);
    }

    #[test]
    fn any_override_of_a_current_frozen_module_is_deleted() {
        let p = plan(
            &[want("a", OLD)],
            &node(&[("a", OLD)], &[("a.py", OTHER), ("a.mpy", OTHER)]),
            Form::Py,
        );
        assert_eq!(action(&p, "a"), delete(&["a.py", "a.mpy"]));
    }

    #[test]
    fn file_after_the_firmware_in_the_search_order_does_not_count_as_override() {
        // lib/ comes after .frozen: the frozen copy is what is imported.
        let p = plan(
            &[want("a", OLD)],
            &node(&[("a", OLD)], &[("lib/a.py", OTHER)]),
            Form::Py,
        );
        assert_eq!(action(&p, "a"), Action::Unchanged);
        // ... and it cannot stand in for a new version either.
        let p = plan(
            &[want("a", NEW)],
            &node(&[("a", OLD)], &[("lib/a.py", NEW)]),
            Form::Py,
        );
        assert_eq!(action(&p, "a"), upload("a.py", &[]));
    }

    #[test]
    fn new_module_is_uploaded_and_recorded_in_the_ledger() {
        let p = plan(&[want("n", NEW)], &node(&[], &[]), Form::Py);
        assert_eq!(action(&p, "n"), upload("n.py", &[]));
        assert!(p.ledger.contains("n"));
        assert!(p.ledger_changed);
    }

    #[test]
    fn non_frozen_module_served_from_lib_with_the_wanted_content_is_unchanged() {
        let p = plan(
            &[want("n", NEW)],
            &node(&[], &[("lib/n.py", NEW)]),
            Form::Py,
        );
        assert_eq!(action(&p, "n"), Action::Unchanged);
    }

    #[test]
    fn override_of_a_module_the_project_dropped_is_deleted() {
        let p = plan(&[], &node(&[("gone", OLD)], &[("gone.py", NEW)]), Form::Py);
        assert_eq!(action(&p, "gone"), delete(&["gone.py"]));
        // The frozen copy alone stays (only a reflash removes it).
        let p = plan(&[], &node(&[("gone", OLD)], &[]), Form::Py);
        assert_eq!(action(&p, "gone"), Action::Unchanged);
    }

    #[test]
    fn module_we_uploaded_and_the_project_dropped_is_deleted() {
        let mut n = node(&[], &[("extra.py", NEW)]);
        n.ledger.insert("extra".into());
        let p = plan(&[], &n, Form::Py);
        assert_eq!(action(&p, "extra"), delete(&["extra.py"]));
        assert!(!p.ledger.contains("extra"));
        assert!(p.ledger_changed);
    }

    #[test]
    fn users_own_files_are_left_alone() {
        let p = plan(
            &[],
            &node(&[], &[("mine.py", NEW), ("lib/x.mpy", NEW)]),
            Form::Py,
        );
        assert_eq!(action(&p, "mine"), Action::Unchanged);
        assert_eq!(action(&p, "x"), Action::Unchanged);
        assert!(p.is_empty());
    }

    #[test]
    fn ledger_entry_whose_file_is_gone_is_forgotten() {
        let mut n = node(&[], &[]);
        n.ledger.insert("old".into());
        let p = plan(&[], &n, Form::Py);
        assert!(p.ledger.is_empty());
        assert!(p.ledger_changed);
    }

    #[test]
    fn mpy_upload_removes_a_stale_py() {
        let w = Wanted {
            name: "a".into(),
            source_hash: NEW,
            file_hash: Some(MPY),
        };
        let p = plan(
            std::slice::from_ref(&w),
            &node(&[("a", OLD)], &[("a.py", NEW)]),
            Form::Mpy,
        );
        assert_eq!(action(&p, "a"), upload("a.mpy", &["a.py"]));
        // Already there as .mpy: nothing, or only the stale .py goes.
        let p = plan(
            std::slice::from_ref(&w),
            &node(&[("a", OLD)], &[("a.mpy", MPY)]),
            Form::Mpy,
        );
        assert_eq!(action(&p, "a"), Action::Unchanged);
    }

    #[test]
    fn py_upload_removes_a_stale_mpy() {
        let p = plan(
            &[want("a", NEW)],
            &node(&[("a", OLD)], &[("a.mpy", MPY)]),
            Form::Py,
        );
        assert_eq!(action(&p, "a"), upload("a.py", &["a.mpy"]));
    }

    #[test]
    fn current_file_with_a_shadowed_sibling_of_the_other_form_loses_the_sibling() {
        let p = plan(
            &[want("a", NEW)],
            &node(&[("a", OLD)], &[("a.py", NEW), ("a.mpy", MPY)]),
            Form::Py,
        );
        assert_eq!(action(&p, "a"), delete(&["a.mpy"]));
    }

    #[test]
    fn changed_module_inside_a_package_is_refused() {
        let w = Wanted {
            name: "asyncio.core".into(),
            source_hash: NEW,
            file_hash: None,
        };
        let p = plan(
            std::slice::from_ref(&w),
            &node(&[("asyncio.core", OLD)], &[]),
            Form::Py,
        );
        assert_eq!(action(&p, "asyncio.core"), Action::Reflash);
        assert_eq!(p.refused().count(), 1);
        // Unchanged package modules are fine.
        let p = plan(&[w], &node(&[("asyncio.core", NEW)], &[]), Form::Py);
        assert_eq!(action(&p, "asyncio.core"), Action::Unchanged);
    }

    #[test]
    fn leftover_temporary_files_are_cleaned_up() {
        let p = plan(
            &[want("a", OLD)],
            &node(&[("a", OLD)], &[("a.py.moat-tmp", NEW)]),
            Form::Py,
        );
        assert_eq!(p.cleanup, vec!["a.py.moat-tmp".to_string()]);
        assert!(!p.is_empty());
    }

    #[test]
    fn plan_after_carrying_it_out_is_empty() {
        // Simulate: after the plan, the node has what was uploaded.
        let wanted = [want("a", NEW), want("b", OLD), want("n", NEW)];
        let before = node(&[("a", OLD), ("b", OLD)], &[("b.py", OTHER)]);
        let p = plan(&wanted, &before, Form::Py);
        assert_eq!(p.changed(), vec!["a", "b", "n"]);
        let mut after = node(&[("a", OLD), ("b", OLD)], &[("a.py", NEW), ("n.py", NEW)]);
        after.ledger = p.ledger.clone();
        assert!(plan(&wanted, &after, Form::Py).is_empty());
    }

    fn apps(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn changed_app_module_restarts_only_its_apps() {
        let a = apps(&[
            ("c", "counter.Counter"),
            ("d", "counter.Other"),
            ("fs", "fs.Files"),
        ]);
        let r = restart(
            &["counter"],
            &a,
            &set(&["fs"]),
            &set(&["counter", "helper"]),
            false,
        );
        assert_eq!(
            r,
            Restart::Apps {
                drop: vec!["counter".into()],
                apps: vec!["c".into(), "d".into()]
            }
        );
    }

    #[test]
    fn changed_helper_restarts_every_project_app() {
        let a = apps(&[("c", "counter.Counter"), ("fs", "fs.Files")]);
        let r = restart(
            &["helper"],
            &a,
            &set(&["fs"]),
            &set(&["counter", "helper"]),
            false,
        );
        assert_eq!(
            r,
            Restart::Apps {
                drop: vec!["counter".into(), "helper".into()],
                apps: vec!["c".into()]
            }
        );
    }

    #[test]
    fn changed_runtime_module_restarts_the_runtime() {
        let a = apps(&[("c", "counter.Counter")]);
        assert_eq!(
            restart(&["proto"], &a, &set(&["proto"]), &set(&["counter"]), false),
            Restart::Runtime
        );
    }

    #[test]
    fn module_the_project_dropped_is_treated_like_a_helper() {
        let a = apps(&[("c", "counter.Counter")]);
        let r = restart(&["extra"], &a, &set(&["fs"]), &set(&["counter"]), false);
        assert_eq!(
            r,
            Restart::Apps {
                drop: vec!["counter".into(), "extra".into()],
                apps: vec!["c".into()]
            }
        );
    }

    #[test]
    fn reboot_when_asked_and_nothing_when_nothing_changed() {
        let a = apps(&[]);
        assert_eq!(
            restart(&["x"], &a, &set(&[]), &set(&["x"]), true),
            Restart::Reboot
        );
        assert_eq!(
            restart(&[], &a, &set(&[]), &set(&[]), true),
            Restart::Nothing
        );
    }
}
