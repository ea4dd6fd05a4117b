//! Home Assistant MQTT discovery (sans-I/O): entities declared in
//! `moat.toml` become discovery configs, JSON states and commands
//! (docs/mqtt.md §Home Assistant). The bridge of the mux holding the node
//! publishes them.

use serde_json::json;

use super::topic::Topics;
use crate::message::{Path, PathElem};
use crate::notation;
use crate::value::Value;

/// Where Home Assistant looks for discovery configs.
pub const DISCOVERY_PREFIX: &str = "homeassistant";

/// What an entity is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A value streamed from a command every `every_ms`.
    Sensor,
    /// On/off: the command is called with `v=True|False`.
    Switch,
    /// The command is called with no arguments.
    Button,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "sensor" => Some(Kind::Sensor),
            "switch" => Some(Kind::Switch),
            "button" => Some(Kind::Button),
            _ => None,
        }
    }

    /// Home Assistant's component name.
    pub fn component(self) -> &'static str {
        match self {
            Kind::Sensor => "sensor",
            Kind::Switch => "switch",
            Kind::Button => "button",
        }
    }
}

/// One entity.
#[derive(Clone, Debug, PartialEq)]
pub struct Entity {
    pub id: String,
    pub node: String,
    pub kind: Kind,
    /// The command, relative to the node (`["t", "temp"]`).
    pub path: Path,
    pub name: Option<String>,
    pub every_ms: u32,
    pub unit: Option<String>,
    pub device_class: Option<String>,
}

/// A dotted command path as a [`Path`] (all-digit parts are indices).
pub fn dotted(path: &str) -> Path {
    path.split('.')
        .map(|p| match p.parse::<i64>() {
            Ok(i) => PathElem::Index(i),
            Err(_) => PathElem::Name(p.to_owned()),
        })
        .collect()
}

fn unique_id(project: &str, e: &Entity) -> String {
    format!("moat_{project}_{}_{}", e.node, e.id)
}

/// The discovery topic and its JSON config (retained).
pub fn discovery(topics: &Topics, project: &str, e: &Entity) -> (String, String) {
    let uid = unique_id(project, e);
    let mut config = json!({
        "name": e.name.clone().unwrap_or_else(|| e.id.clone()),
        "unique_id": uid,
        "object_id": uid,
        "availability_topic": topics.availability(&e.node),
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": {
            "identifiers": [format!("moat_{project}_{}", e.node)],
            "name": e.node,
            "manufacturer": "moat",
            "model": format!("moat node ({project})"),
        },
    });
    let obj = config.as_object_mut().expect("an object");
    match e.kind {
        Kind::Sensor => {
            obj.insert("state_topic".into(), topics.ha_state(&e.node, &e.id).into());
        }
        Kind::Switch => {
            obj.insert("state_topic".into(), topics.ha_state(&e.node, &e.id).into());
            obj.insert(
                "command_topic".into(),
                topics.ha_command(&e.node, &e.id).into(),
            );
        }
        Kind::Button => {
            obj.insert(
                "command_topic".into(),
                topics.ha_command(&e.node, &e.id).into(),
            );
        }
    }
    if let Some(u) = &e.unit {
        obj.insert("unit_of_measurement".into(), u.clone().into());
    }
    if let Some(c) = &e.device_class {
        obj.insert("device_class".into(), c.clone().into());
    }
    let topic = format!("{DISCOVERY_PREFIX}/{}/{uid}/config", e.kind.component());
    (topic, config.to_string())
}

/// The arguments a command payload from Home Assistant calls with, `None`
/// for a payload the entity does not take.
pub fn command_args(kind: Kind, payload: &[u8]) -> Option<Value> {
    match (kind, payload) {
        (Kind::Switch, b"ON") => Some(Value::map([("v", Value::Bool(true))])),
        (Kind::Switch, b"OFF") => Some(Value::map([("v", Value::Bool(false))])),
        (Kind::Button, b"PRESS") => Some(Value::Map(Vec::new())),
        _ => None,
    }
}

/// A state payload: a sensor's value as JSON; a switch's `ON`/`OFF` (the
/// command's answer when it is a bool, else what was asked).
pub fn state(kind: Kind, value: &Value, asked: Option<bool>) -> String {
    match kind {
        Kind::Switch => {
            let on = match value {
                Value::Bool(b) => *b,
                _ => asked.unwrap_or(false),
            };
            (if on { "ON" } else { "OFF" }).to_owned()
        }
        _ => match value {
            // A plain string is the state itself, unquoted.
            Value::Str(s) => s.clone(),
            other => notation::to_json(other).to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sensor() -> Entity {
        Entity {
            id: "temp".into(),
            node: "pump".into(),
            kind: Kind::Sensor,
            path: dotted("t.temp"),
            name: Some("Pump temperature".into()),
            every_ms: 10_000,
            unit: Some("°C".into()),
            device_class: Some("temperature".into()),
        }
    }

    #[test]
    fn a_sensor_config_has_the_documented_fields() {
        let t = Topics::new("moat/garden").unwrap();
        let (topic, config) = discovery(&t, "garden", &sensor());
        assert_eq!(topic, "homeassistant/sensor/moat_garden_pump_temp/config");
        let v: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(v["state_topic"], "moat/garden/pump/ha/temp/state");
        assert_eq!(v["availability_topic"], "moat/garden/pump/availability");
        assert_eq!(v["unit_of_measurement"], "°C");
        assert_eq!(v["device_class"], "temperature");
        assert_eq!(v["device"]["name"], "pump");
        assert!(v.get("command_topic").is_none());
    }

    #[test]
    fn switches_and_buttons_take_their_payloads_only() {
        assert_eq!(
            command_args(Kind::Switch, b"ON"),
            Some(Value::map([("v", Value::Bool(true))]))
        );
        assert_eq!(command_args(Kind::Switch, b"PRESS"), None);
        assert_eq!(
            command_args(Kind::Button, b"PRESS"),
            Some(Value::Map(vec![]))
        );
        assert_eq!(state(Kind::Switch, &Value::Nil, Some(true)), "ON");
        assert_eq!(state(Kind::Switch, &Value::Bool(false), Some(true)), "OFF");
        assert_eq!(state(Kind::Sensor, &Value::from(21), None), "21");
        assert_eq!(
            dotted("a.0.b"),
            vec![PathElem::from("a"), PathElem::Index(0), PathElem::from("b")]
        );
    }
}
