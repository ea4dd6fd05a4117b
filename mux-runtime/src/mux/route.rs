//! Where a path goes in the mux's tree (sans-I/O).
//!
//! The mux root holds one sub-tree per node (`[node, …path]`), its own
//! `mux` app and two root commands (`dir`, `ping`). Requests are re-issued
//! per hop by the node's endpoint with the mux's own sequence numbers; this
//! module only decides the hop.

use crate::error::RemoteError;
use crate::message::{Path, PathElem};
use crate::value::Value;

/// The name of the mux's own app at the root.
pub const MUX_APP: &str = "mux";

/// Where a request goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Route {
    /// To node `node`, with the node name taken off the path.
    Node { node: String, rest: Path },
    /// To the mux's own app (`["mux", …]`), with `mux` taken off.
    Mux { rest: Path },
    /// A command of the root itself (`dir`, `ping`).
    Root { command: String },
    /// Nowhere: the `_NPErr` to answer with.
    Nowhere(RemoteError),
}

/// The root commands.
pub const ROOT_COMMANDS: [&str; 2] = ["dir", "ping"];

/// Decides the hop for `path` given the nodes' names. A node called `mux`
/// would be unreachable, so the project model refuses that name; here the
/// node wins to keep the user's tree intact.
pub fn route<'a>(path: &Path, mut nodes: impl Iterator<Item = &'a str>) -> Route {
    let Some(PathElem::Name(first)) = path.first() else {
        return Route::Nowhere(no_path(path, "the mux root has names, not indices"));
    };
    let rest: Path = path[1..].to_vec();
    if nodes.any(|n| n == first) {
        if rest.is_empty() {
            return Route::Nowhere(no_path(
                path,
                "a node name alone is not a command; try [node, \"dir\"]",
            ));
        }
        return Route::Node {
            node: first.clone(),
            rest,
        };
    }
    if first == MUX_APP {
        return Route::Mux { rest };
    }
    if rest.is_empty() && ROOT_COMMANDS.contains(&first.as_str()) {
        return Route::Root {
            command: first.clone(),
        };
    }
    Route::Nowhere(no_path(path, "no such node or command at the mux root"))
}

/// A node's unsolicited message as the clients see it: node name first.
pub fn prefixed(node: &str, path: &Path) -> Path {
    let mut out = Vec::with_capacity(path.len() + 1);
    out.push(PathElem::Name(node.to_owned()));
    out.extend(path.iter().cloned());
    out
}

/// `_NPErr` for `path`.
pub fn no_path(path: &Path, reason: &str) -> RemoteError {
    RemoteError::no_path(path.iter().map(Value::from).collect(), reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::WellKnown;
    use crate::message::path;

    const NODES: [&str; 2] = ["pump", "valve"];

    fn go(p: Path) -> Route {
        route(&p, NODES.iter().copied())
    }

    #[test]
    fn a_node_name_first_goes_to_that_node_without_it() {
        assert_eq!(
            go(path(["pump", "t", "temp"])),
            Route::Node {
                node: "pump".into(),
                rest: path(["t", "temp"])
            }
        );
        assert_eq!(
            go(path(["valve", "sys", "dir"])),
            Route::Node {
                node: "valve".into(),
                rest: path(["sys", "dir"])
            }
        );
    }

    #[test]
    fn mux_paths_go_to_the_mux_app() {
        assert_eq!(go(path(["mux", "ls"])), Route::Mux { rest: path(["ls"]) });
    }

    #[test]
    fn dir_and_ping_alone_are_root_commands() {
        assert_eq!(
            go(path(["dir"])),
            Route::Root {
                command: "dir".into()
            }
        );
        assert_eq!(
            go(path(["ping"])),
            Route::Root {
                command: "ping".into()
            }
        );
    }

    #[test]
    fn unknown_names_bare_nodes_and_indices_are_nowhere() {
        for p in [
            path(["nope", "x"]),
            path(["pump"]),
            path(["dir", "x"]),
            vec![PathElem::Index(0), PathElem::Name("x".into())],
        ] {
            match go(p.clone()) {
                Route::Nowhere(e) => assert_eq!(e.kind(), Some(WellKnown::NoPath), "{p:?}"),
                other => panic!("{p:?} routed to {other:?}"),
            }
        }
    }

    #[test]
    fn unsolicited_paths_get_the_node_name_first() {
        assert_eq!(prefixed("pump", &path(["link"])), path(["pump", "link"]));
    }
}
