//! Errors a peer reports back over the wire (docs/protocol.md: Encoding, errors).
//!
//! Well-known exception types travel as ext-4 proxies named `_FnErr` … with
//! the exception's args in `d`; anything else travels as the string
//! `"E:" + repr(exc)`. [`RemoteError`] is the receiving side's view of both.

use std::fmt;

use crate::value::Value;

/// The well-known error types every node maps to a native exception.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WellKnown {
    /// `_FnErr`: FileNotFoundError.
    FileNotFound,
    /// `_FxErr`: FileExistsError.
    FileExists,
    /// `_KyErr`: KeyError.
    Key,
    /// `_AtErr`: AttributeError.
    Attribute,
    /// `_NiErr`: NotImplementedError.
    NotImplemented,
    /// `_VaErr`: ValueError.
    Value,
    /// `_TyErr`: TypeError.
    Type,
    /// `_OsErr`: OSError; args `(errno, text)`.
    Os,
    /// `_NPErr`: no such command path; args `(path, reason)`.
    NoPath,
    /// `_StpErr`: the request was cancelled or its task stopped.
    Stopped,
    /// `_LnkErr`: the link to the target is down.
    LinkDown,
    /// `_DupErr`: a request reused a sequence number that is still open.
    Duplicate,
    /// `_AuErr`: authentication failed (docs/auth.md); args `(reason)`.
    /// The peer that gets it is closed; nothing it sent ran.
    Auth,
}

impl WellKnown {
    /// Every well-known error, in the order protocol.md lists them.
    pub const ALL: [WellKnown; 13] = [
        WellKnown::FileNotFound,
        WellKnown::FileExists,
        WellKnown::Key,
        WellKnown::Attribute,
        WellKnown::NotImplemented,
        WellKnown::Value,
        WellKnown::Type,
        WellKnown::Os,
        WellKnown::NoPath,
        WellKnown::Stopped,
        WellKnown::LinkDown,
        WellKnown::Duplicate,
        WellKnown::Auth,
    ];

    /// The proxy name on the wire, e.g. `_FnErr`.
    pub fn wire_name(self) -> &'static str {
        match self {
            WellKnown::FileNotFound => "_FnErr",
            WellKnown::FileExists => "_FxErr",
            WellKnown::Key => "_KyErr",
            WellKnown::Attribute => "_AtErr",
            WellKnown::NotImplemented => "_NiErr",
            WellKnown::Value => "_VaErr",
            WellKnown::Type => "_TyErr",
            WellKnown::Os => "_OsErr",
            WellKnown::NoPath => "_NPErr",
            WellKnown::Stopped => "_StpErr",
            WellKnown::LinkDown => "_LnkErr",
            WellKnown::Duplicate => "_DupErr",
            WellKnown::Auth => "_AuErr",
        }
    }

    /// The well-known error with this proxy name, if any.
    pub fn from_wire_name(name: &str) -> Option<WellKnown> {
        WellKnown::ALL.into_iter().find(|k| k.wire_name() == name)
    }

    /// What went wrong, in words (the start of the human message).
    pub fn description(self) -> &'static str {
        match self {
            WellKnown::FileNotFound => "file not found",
            WellKnown::FileExists => "file exists",
            WellKnown::Key => "no such key",
            WellKnown::Attribute => "no such attribute",
            WellKnown::NotImplemented => "not implemented",
            WellKnown::Value => "bad value",
            WellKnown::Type => "wrong type",
            WellKnown::Os => "OS error",
            WellKnown::NoPath => "no such command path",
            WellKnown::Stopped => "cancelled",
            WellKnown::LinkDown => "link to the target is down",
            WellKnown::Duplicate => "duplicate sequence number",
            WellKnown::Auth => "authentication failed",
        }
    }
}

impl fmt::Display for WellKnown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire_name())
    }
}

/// An error reported by the remote side of a request.
#[derive(Clone, Debug, PartialEq)]
pub enum RemoteError {
    /// A well-known type with the exception's args.
    WellKnown { kind: WellKnown, args: Vec<Value> },
    /// An error proxy this side has no mapping for (a newer peer's type).
    Named { name: String, args: Vec<Value> },
    /// Anything else: the wire text, normally `"E:" + repr(exc)`.
    Generic(String),
}

impl RemoteError {
    /// A well-known error with its args.
    pub fn well_known(kind: WellKnown, args: Vec<Value>) -> RemoteError {
        RemoteError::WellKnown { kind, args }
    }

    /// An error travelling as a proxy named `name`; well-known names map to
    /// [`RemoteError::WellKnown`].
    pub fn named(name: &str, args: Vec<Value>) -> RemoteError {
        match WellKnown::from_wire_name(name) {
            Some(kind) => RemoteError::WellKnown { kind, args },
            None => RemoteError::Named {
                name: name.to_owned(),
                args,
            },
        }
    }

    /// A generic error from its text; `"E:"` is prepended unless present.
    pub fn generic(text: impl Into<String>) -> RemoteError {
        let text = text.into();
        if text.starts_with("E:") {
            RemoteError::Generic(text)
        } else {
            RemoteError::Generic(format!("E:{text}"))
        }
    }

    /// `_NPErr` for `path` with a reason, as a node reports an unknown command.
    pub fn no_path(path: Vec<Value>, reason: &str) -> RemoteError {
        RemoteError::well_known(WellKnown::NoPath, vec![Value::Array(path), reason.into()])
    }

    /// The well-known kind, if this is one.
    pub fn kind(&self) -> Option<WellKnown> {
        match self {
            RemoteError::WellKnown { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// The exception's args (empty for generic errors).
    pub fn args(&self) -> &[Value] {
        match self {
            RemoteError::WellKnown { args, .. } | RemoteError::Named { args, .. } => args,
            RemoteError::Generic(_) => &[],
        }
    }

    /// The `e` value on the wire: a proxy or the generic text.
    pub fn wire_value(&self) -> Value {
        match self {
            RemoteError::WellKnown { kind, .. } => Value::Proxy(kind.wire_name().to_owned()),
            RemoteError::Named { name, .. } => Value::Proxy(name.clone()),
            RemoteError::Generic(text) => Value::Str(text.clone()),
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteError::WellKnown { kind, args } => {
                f.write_str(kind.description())?;
                match (kind, args.as_slice()) {
                    // "no such command path ['nope']: no such app"
                    (WellKnown::NoPath, [path, reason]) => {
                        write!(f, " {}: {}", repr(path), plain(reason))
                    }
                    // Python's own rendering: "[Errno 2] ENOENT"
                    (WellKnown::Os, [errno, text]) => {
                        write!(f, ": [Errno {}] {}", repr(errno), plain(text))
                    }
                    (_, []) => Ok(()),
                    (_, args) => write!(f, ": {}", join(args)),
                }
            }
            RemoteError::Named { name, args } if args.is_empty() => {
                write!(f, "remote error {name}")
            }
            RemoteError::Named { name, args } => {
                write!(f, "remote error {name}: {}", join(args))
            }
            RemoteError::Generic(text) => {
                write!(
                    f,
                    "remote error: {}",
                    text.strip_prefix("E:").unwrap_or(text)
                )
            }
        }
    }
}

impl std::error::Error for RemoteError {}

fn join(args: &[Value]) -> String {
    args.iter().map(repr).collect::<Vec<_>>().join(", ")
}

/// A string as itself, anything else in Python notation.
fn plain(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        other => repr(other),
    }
}

/// Python's `repr`, which is what a MicroPython user expects to read.
fn repr(v: &Value) -> String {
    match v {
        Value::Str(s) => {
            let mut out = String::with_capacity(s.len() + 2);
            out.push('\'');
            for c in s.chars() {
                match c {
                    '\'' => out.push_str("\\'"),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('\'');
            out
        }
        Value::Array(items) => format!("[{}]", join(items)),
        Value::Map(pairs) => {
            let inner: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}: {}", repr(k), repr(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wire_name_maps_back_to_its_kind() {
        for kind in WellKnown::ALL {
            assert_eq!(WellKnown::from_wire_name(kind.wire_name()), Some(kind));
        }
        assert_eq!(WellKnown::from_wire_name("_Nope"), None);
    }

    #[test]
    fn no_path_reads_like_python() {
        let e = RemoteError::no_path(vec!["nope".into()], "no such app");
        assert_eq!(e.to_string(), "no such command path ['nope']: no such app");
    }

    #[test]
    fn os_error_shows_errno_and_text() {
        let e = RemoteError::well_known(WellKnown::Os, vec![2.into(), "ENOENT".into()]);
        assert_eq!(e.to_string(), "OS error: [Errno 2] ENOENT");
    }

    #[test]
    fn other_well_known_list_their_args() {
        let e = RemoteError::well_known(WellKnown::FileNotFound, vec!["x.py".into()]);
        assert_eq!(e.to_string(), "file not found: 'x.py'");
        let e = RemoteError::well_known(WellKnown::Stopped, vec![]);
        assert_eq!(e.to_string(), "cancelled");
    }

    #[test]
    fn auth_errors_name_their_reason() {
        let e = RemoteError::named("_AuErr", vec!["wrong key".into()]);
        assert_eq!(e.kind(), Some(WellKnown::Auth));
        assert_eq!(e.to_string(), "authentication failed: 'wrong key'");
    }

    #[test]
    fn generic_gets_its_prefix_once_and_shows_without_it() {
        let e = RemoteError::generic("ValueError('bad')");
        assert_eq!(e, RemoteError::Generic("E:ValueError('bad')".into()));
        assert_eq!(RemoteError::generic("E:ValueError('bad')"), e);
        assert_eq!(e.to_string(), "remote error: ValueError('bad')");
    }

    #[test]
    fn unknown_proxy_names_are_kept() {
        let e = RemoteError::named("_NewErr", vec![1.into()]);
        assert_eq!(e.wire_value(), Value::Proxy("_NewErr".into()));
        assert_eq!(e.to_string(), "remote error _NewErr: 1");
        assert_eq!(
            RemoteError::named("_KyErr", vec![]).kind(),
            Some(WellKnown::Key)
        );
    }
}
