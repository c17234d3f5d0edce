//! `function.json`: the bindings of each function, and the catalog of all of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ncrontab::Schedule;

/// One binding of a function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    #[serde(rename = "type")]
    pub kind: String,
    pub direction: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_on_startup: Option<bool>,
}

/// What starts a function.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// Forwarded HTTP: served as a plain route under `/api`.
    Http { route: String, methods: Vec<String> },
    /// A timer with its schedule.
    Timer { binding: String, schedule: Schedule },
    /// A Storage queue message.
    Queue { binding: String, queue: String },
}

/// One function: its name, trigger and output queues.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionDefinition {
    pub name: String,
    pub trigger: Trigger,
    /// Queue output bindings: binding name -> queue name.
    pub queue_outputs: BTreeMap<String, String>,
    pub bindings: Vec<Binding>,
}

/// Why a function.json was refused.
#[derive(Debug, thiserror::Error)]
#[error("functions/{function}/function.json: {reason}")]
pub struct DefinitionError {
    pub function: String,
    pub reason: String,
}

#[derive(Deserialize)]
struct FunctionJson {
    bindings: Vec<Binding>,
}

impl FunctionDefinition {
    /// Parses and checks one function.json.
    pub fn parse(name: &str, json: &str) -> Result<FunctionDefinition, DefinitionError> {
        let fail = |reason: String| DefinitionError {
            function: name.to_string(),
            reason,
        };
        let parsed: FunctionJson = serde_json::from_str(json).map_err(|e| fail(e.to_string()))?;
        let triggers: Vec<&Binding> = parsed
            .bindings
            .iter()
            .filter(|b| b.direction == "in" && b.kind.ends_with("Trigger"))
            .collect();
        let [trigger] = triggers.as_slice() else {
            return Err(fail(format!(
                "expected exactly one trigger, found {}",
                triggers.len()
            )));
        };
        let trigger = match trigger.kind.as_str() {
            "httpTrigger" => {
                let has_http_out = parsed
                    .bindings
                    .iter()
                    .any(|b| b.kind == "http" && b.direction == "out");
                if !has_http_out {
                    return Err(fail(
                        "an httpTrigger needs an `http` out binding to be forwarded".into(),
                    ));
                }
                Trigger::Http {
                    route: trigger
                        .route
                        .clone()
                        .unwrap_or_else(|| name.to_ascii_lowercase()),
                    methods: trigger.methods.clone().unwrap_or_default(),
                }
            }
            "timerTrigger" => {
                let expr = trigger
                    .schedule
                    .as_deref()
                    .ok_or_else(|| fail("a timerTrigger needs a schedule".into()))?;
                Trigger::Timer {
                    binding: trigger.name.clone(),
                    schedule: expr
                        .parse()
                        .map_err(|e: crate::ncrontab::ScheduleError| fail(e.to_string()))?,
                }
            }
            "queueTrigger" => Trigger::Queue {
                binding: trigger.name.clone(),
                queue: queue_name(trigger).map_err(fail)?,
            },
            other => return Err(fail(format!("trigger type {other} is not supported"))),
        };
        let mut queue_outputs = BTreeMap::new();
        for b in parsed
            .bindings
            .iter()
            .filter(|b| b.kind == "queue" && b.direction == "out")
        {
            queue_outputs.insert(b.name.clone(), queue_name(b).map_err(fail)?);
        }
        Ok(FunctionDefinition {
            name: name.to_string(),
            trigger,
            queue_outputs,
            bindings: parsed.bindings,
        })
    }
}

fn queue_name(binding: &Binding) -> Result<String, String> {
    let name = binding
        .queue_name
        .as_deref()
        .ok_or_else(|| format!("queue binding {} has no queueName", binding.name))?;
    let valid = (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if valid {
        Ok(name.to_string())
    } else {
        Err(format!(
            "queue name {name:?}: 3-63 lowercase letters, digits and single dashes"
        ))
    }
}

/// Every function of the app, by name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    functions: BTreeMap<String, FunctionDefinition>,
}

impl Catalog {
    /// Builds the catalog from `(function name, function.json text)` pairs.
    pub fn from_sources<'a>(
        sources: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Catalog, DefinitionError> {
        let mut functions = BTreeMap::new();
        for (name, json) in sources {
            functions.insert(name.to_string(), FunctionDefinition::parse(name, json)?);
        }
        Ok(Catalog { functions })
    }

    /// One function by name (case-insensitive, as the host routes).
    pub fn get(&self, name: &str) -> Option<&FunctionDefinition> {
        self.functions.get(name).or_else(|| {
            self.functions
                .values()
                .find(|f| f.name.eq_ignore_ascii_case(name))
        })
    }

    /// All functions in name order.
    pub fn iter(&self) -> impl Iterator<Item = &FunctionDefinition> {
        self.functions.values()
    }

    /// The first function that triggers on or writes to a Storage queue, with that queue:
    /// `None` means the app needs no queue service.
    pub fn queue_use(&self) -> Option<(&str, &str)> {
        self.functions.values().find_map(|f| match &f.trigger {
            Trigger::Queue { queue, .. } => Some((f.name.as_str(), queue.as_str())),
            _ => f
                .queue_outputs
                .values()
                .next()
                .map(|q| (f.name.as_str(), q.as_str())),
        })
    }

    /// The functions triggered by messages on `queue`.
    pub fn queue_consumers<'a>(
        &'a self,
        queue: &'a str,
    ) -> impl Iterator<Item = &'a FunctionDefinition> + 'a {
        self.functions
            .values()
            .filter(move |f| matches!(&f.trigger, Trigger::Queue { queue: q, .. } if q == queue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_timer_and_queue_functions_parse() {
        let catalog = Catalog::from_sources([
            (
                "Health",
                r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req","authLevel":"anonymous","methods":["get"],"route":"health"},{"type":"http","direction":"out","name":"res"}]}"#,
            ),
            (
                "Tick",
                r#"{"bindings":[{"name":"timer","type":"timerTrigger","direction":"in","schedule":"0 */15 * * * *"},{"type":"queue","direction":"out","name":"work","queueName":"tenant-work","connection":"AzureWebJobsStorage"}]}"#,
            ),
            (
                "Work",
                r#"{"bindings":[{"name":"message","type":"queueTrigger","direction":"in","queueName":"tenant-work","connection":"AzureWebJobsStorage"}]}"#,
            ),
        ])
        .unwrap();
        assert!(
            matches!(&catalog.get("health").unwrap().trigger, Trigger::Http { route, .. } if route == "health")
        );
        let tick = catalog.get("Tick").unwrap();
        assert!(matches!(&tick.trigger, Trigger::Timer { binding, .. } if binding == "timer"));
        assert_eq!(tick.queue_outputs["work"], "tenant-work");
        let consumers: Vec<_> = catalog
            .queue_consumers("tenant-work")
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(consumers, ["Work"]);
    }

    #[test]
    fn broken_definitions_name_the_function_and_the_problem() {
        for (json, needle) in [
            (r#"{"bindings":[]}"#, "exactly one trigger"),
            (
                r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"t"}]}"#,
                "needs a schedule",
            ),
            (
                r#"{"bindings":[{"type":"timerTrigger","direction":"in","name":"t","schedule":"* * *"}]}"#,
                "six fields",
            ),
            (
                r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req"}]}"#,
                "`http` out",
            ),
            (
                r#"{"bindings":[{"type":"queueTrigger","direction":"in","name":"m","queueName":"Bad_Name"}]}"#,
                "queue name",
            ),
            (
                r#"{"bindings":[{"type":"blobTrigger","direction":"in","name":"b"}]}"#,
                "not supported",
            ),
            ("{", "EOF"),
        ] {
            let err = FunctionDefinition::parse("Broken", json)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("functions/Broken/function.json") && err.contains(needle),
                "{err}"
            );
        }
    }
}
