//! The bridge's topic layout (sans-I/O): which topic carries what, and
//! what an incoming topic is (docs/mqtt.md §Topics).
//!
//! ```text
//! <prefix>/<node>/state        retained node state (MsgPack map)
//! <prefix>/<node>/req          requests to the node (protocol messages)
//! <prefix>/<node>/msg          the node's unsolicited messages
//! <prefix>/_r/<session>/<node> answers for one session's requests to one node
//! <prefix>/_s/<session>        a session's presence: up, or down (last will)
//! <prefix>/<node>/availability online|offline (Home Assistant)
//! <prefix>/<node>/ha/<id>/state|set  a Home Assistant entity's state, command
//! ```
//!
//! Names that start with `_` are the bridge's own, so node names cannot
//! (the project's names are letters, digits, `-` and `_` after a letter).

/// The topic level holding the bridge's own reply topics.
const REPLIES: &str = "_r";
/// The topic level holding session presence.
const SESSIONS: &str = "_s";

/// Why a prefix or a name cannot be used in a topic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("the MQTT topic prefix is empty: leave it out to get moat/<project>")]
    EmptyPrefix,
    #[error(
        "the MQTT topic prefix `{0}` has a wildcard (+ or #) or an empty level \
         (a leading, trailing or doubled /): use plain levels like moat/garden"
    )]
    BadPrefix(String),
    #[error(
        "`{0}` cannot be a topic level: names on the broker must be non-empty, \
         must not start with _ and must not contain /, + or #"
    )]
    BadName(String),
}

/// What an incoming topic is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    State { node: String },
    Request { node: String },
    Notice { node: String },
    Reply { session: String, node: String },
    Session { session: String },
    HaCommand { node: String, entity: String },
}

/// The topics under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

/// Whether `name` can be one topic level of ours.
pub fn check_name(name: &str) -> Result<(), TopicError> {
    let bad = name.is_empty() || name.starts_with('_') || name.contains(['/', '+', '#', '\0']);
    if bad {
        Err(TopicError::BadName(name.to_owned()))
    } else {
        Ok(())
    }
}

impl Topics {
    pub fn new(prefix: &str) -> Result<Topics, TopicError> {
        if prefix.is_empty() {
            return Err(TopicError::EmptyPrefix);
        }
        if prefix.contains(['+', '#', '\0']) || prefix.split('/').any(str::is_empty) {
            return Err(TopicError::BadPrefix(prefix.to_owned()));
        }
        Ok(Topics {
            prefix: prefix.to_owned(),
        })
    }

    /// The default prefix of project `project`.
    pub fn default_prefix(project: &str) -> String {
        format!("moat/{project}")
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn state(&self, node: &str) -> String {
        format!("{}/{node}/state", self.prefix)
    }

    pub fn request(&self, node: &str) -> String {
        format!("{}/{node}/req", self.prefix)
    }

    pub fn notice(&self, node: &str) -> String {
        format!("{}/{node}/msg", self.prefix)
    }

    pub fn reply(&self, session: &str, node: &str) -> String {
        format!("{}/{REPLIES}/{session}/{node}", self.prefix)
    }

    pub fn session(&self, session: &str) -> String {
        format!("{}/{SESSIONS}/{session}", self.prefix)
    }

    pub fn availability(&self, node: &str) -> String {
        format!("{}/{node}/availability", self.prefix)
    }

    pub fn ha_state(&self, node: &str, entity: &str) -> String {
        format!("{}/{node}/ha/{entity}/state", self.prefix)
    }

    pub fn ha_command(&self, node: &str, entity: &str) -> String {
        format!("{}/{node}/ha/{entity}/set", self.prefix)
    }

    /// Every node's state.
    pub fn all_states(&self) -> String {
        format!("{}/+/state", self.prefix)
    }

    /// Every node's unsolicited messages.
    pub fn all_notices(&self) -> String {
        format!("{}/+/msg", self.prefix)
    }

    /// The answers to `session`'s requests, whatever the node.
    pub fn replies_to(&self, session: &str) -> String {
        format!("{}/{REPLIES}/{session}/+", self.prefix)
    }

    /// Every session's presence.
    pub fn all_sessions(&self) -> String {
        format!("{}/{SESSIONS}/+", self.prefix)
    }

    /// What `topic` is, `None` when it is not one of ours.
    pub fn parse(&self, topic: &str) -> Option<Inbound> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let levels: Vec<&str> = rest.split('/').collect();
        let name = |s: &str| check_name(s).is_ok().then(|| s.to_owned());
        match levels.as_slice() {
            [REPLIES, session, node] => Some(Inbound::Reply {
                session: name(session)?,
                node: name(node)?,
            }),
            [SESSIONS, session] => Some(Inbound::Session {
                session: name(session)?,
            }),
            [node, "state"] => Some(Inbound::State { node: name(node)? }),
            [node, "req"] => Some(Inbound::Request { node: name(node)? }),
            [node, "msg"] => Some(Inbound::Notice { node: name(node)? }),
            [node, "ha", entity, "set"] => Some(Inbound::HaCommand {
                node: name(node)?,
                entity: name(entity)?,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Topics {
        Topics::new("moat/garden").unwrap()
    }

    #[test]
    fn every_topic_parses_back_to_what_it_carries() {
        let t = t();
        let cases = [
            (
                t.state("pump"),
                Inbound::State {
                    node: "pump".into(),
                },
            ),
            (
                t.request("pump"),
                Inbound::Request {
                    node: "pump".into(),
                },
            ),
            (
                t.notice("pump"),
                Inbound::Notice {
                    node: "pump".into(),
                },
            ),
            (
                t.reply("mux-a", "pump"),
                Inbound::Reply {
                    session: "mux-a".into(),
                    node: "pump".into(),
                },
            ),
            (
                t.session("mux-a"),
                Inbound::Session {
                    session: "mux-a".into(),
                },
            ),
        ];
        for (topic, what) in cases {
            assert_eq!(t.parse(&topic), Some(what), "{topic}");
        }
        assert_eq!(t.state("pump"), "moat/garden/pump/state");
        assert_eq!(t.reply("s1", "pump"), "moat/garden/_r/s1/pump");
    }

    #[test]
    fn foreign_topics_and_bad_names_are_not_ours() {
        let t = t();
        for topic in [
            "moat/gardenx/pump/state",
            "moat/garden/pump/other",
            "moat/garden/pump",
            "moat/garden/_x/state",
            "moat/garden/_r/s1",
            "other/pump/state",
        ] {
            assert_eq!(t.parse(topic), None, "{topic}");
        }
    }

    #[test]
    fn prefixes_and_names_with_wildcards_or_empty_levels_are_refused() {
        assert_eq!(Topics::new(""), Err(TopicError::EmptyPrefix));
        for p in ["moat/#", "a/+/b", "/moat", "moat/", "a//b"] {
            assert!(
                matches!(Topics::new(p), Err(TopicError::BadPrefix(_))),
                "{p}"
            );
        }
        for n in ["", "_r", "a/b", "a+", "#"] {
            assert!(check_name(n).is_err(), "{n}");
        }
        assert!(check_name("pump-1").is_ok());
        assert!(TopicError::BadName("a/b".into())
            .to_string()
            .contains("must not contain /"));
    }
}
