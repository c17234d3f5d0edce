//! What an audit event says: who did what to which object, how it ended, what changed.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

/// Who or what made a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActorKind {
    /// An operator of this service, from the admin token (`oid`, `name`).
    Admin,
    /// Entra's provisioning service calling the SCIM endpoint.
    EntraProvisioning,
    /// A directory sync round reading Microsoft Graph.
    GraphSync,
    /// An administrator of a customer tenant (consent), known by what Entra says.
    TenantAdmin,
    /// A caller of the Connector API (user or service principal with a grant).
    Principal,
    /// Timers and background work.
    System,
}

impl ActorKind {
    /// The kind as stored and queried (`entra-provisioning`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Admin => "admin",
            ActorKind::EntraProvisioning => "entra-provisioning",
            ActorKind::GraphSync => "graph-sync",
            ActorKind::TenantAdmin => "tenant-admin",
            ActorKind::Principal => "principal",
            ActorKind::System => "system",
        }
    }

    /// The kind from its stored name.
    pub fn parse(s: &str) -> Option<ActorKind> {
        [
            ActorKind::Admin,
            ActorKind::EntraProvisioning,
            ActorKind::GraphSync,
            ActorKind::TenantAdmin,
            ActorKind::Principal,
            ActorKind::System,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// The actor of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub kind: ActorKind,
    /// The object id, the service's name (`entra-provisioning`) or the timer's name.
    pub id: String,
    /// A name a person recognises, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Actor {
    /// An admin of this service, by object id and display name.
    pub fn admin(id: impl Into<String>, name: Option<String>) -> Actor {
        Actor {
            kind: ActorKind::Admin,
            id: id.into(),
            name,
        }
    }

    /// Entra's provisioning service (the SCIM client).
    pub fn entra_provisioning() -> Actor {
        Actor {
            kind: ActorKind::EntraProvisioning,
            id: "entra-provisioning".into(),
            name: Some("Microsoft Entra provisioning service".into()),
        }
    }

    /// A directory sync round.
    pub fn graph_sync() -> Actor {
        Actor {
            kind: ActorKind::GraphSync,
            id: "graph-sync".into(),
            name: Some("Directory sync".into()),
        }
    }

    /// A timer or background task, by name (`Housekeeping`).
    pub fn system(task: impl Into<String>) -> Actor {
        Actor {
            kind: ActorKind::System,
            id: task.into(),
            name: None,
        }
    }

    /// A tenant's administrator acting through Entra (consent).
    pub fn tenant_admin(id: impl Into<String>) -> Actor {
        Actor {
            kind: ActorKind::TenantAdmin,
            id: id.into(),
            name: None,
        }
    }
}

/// The object an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// `user`, `group`, `grant`, `tenant`, `certificate`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

impl Target {
    /// A target by type and id.
    pub fn new(kind: impl Into<String>, id: impl ToString) -> Target {
        Target {
            kind: kind.into(),
            id: id.to_string(),
            display: None,
        }
    }

    /// The same target with a display name.
    pub fn display(mut self, display: impl Into<String>) -> Target {
        let display = display.into();
        self.display = (!display.is_empty()).then_some(display);
        self
    }
}

/// How a change ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    Success,
    /// Recorded before the change was made; replaced by how it ended. One that stays
    /// pending is a change whose end could not be recorded (the request answered 503).
    Pending,
    /// `code` is machine-readable (an HTTP status, a SCIM type, an error code); `reason`
    /// is for a person.
    Failure {
        code: String,
        reason: String,
    },
}

impl Outcome {
    /// A failure with its code and reason.
    pub fn failure(code: impl ToString, reason: impl Into<String>) -> Outcome {
        Outcome::Failure {
            code: code.to_string(),
            reason: reason.into(),
        }
    }

    /// `success` or `failure`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Pending => "pending",
            Outcome::Failure { .. } => "failure",
        }
    }
}

/// What a secret's old and new value are shown as.
pub const SECRET_CHANGED: &str = "changed";

/// One attribute's change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub attribute: String,
    #[serde(default)]
    pub old: Option<Value>,
    #[serde(default)]
    pub new: Option<Value>,
}

impl Change {
    /// An attribute that went from `old` to `new` (None: absent).
    pub fn new(attribute: impl Into<String>, old: Option<Value>, new: Option<Value>) -> Change {
        Change {
            attribute: attribute.into(),
            old,
            new,
        }
    }

    /// A secret (token, key, password, certificate key) that changed: its values are never
    /// recorded, only that it changed.
    pub fn secret(attribute: impl Into<String>) -> Change {
        Change {
            attribute: attribute.into(),
            old: None,
            new: Some(Value::String(SECRET_CHANGED.into())),
        }
    }
}

/// The attributes that differ between two JSON objects, one level deep (a nested object
/// such as `name` is compared attribute by attribute as `name.givenName`). Attributes
/// whose name says they hold a secret are shown only as changed.
pub fn diff(old: &Value, new: &Value) -> Vec<Change> {
    let mut changes = Vec::new();
    diff_into("", old, new, 0, &mut changes);
    changes
}

fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["password", "secret", "token", "privatekey", "private_key"]
        .iter()
        .any(|s| lower.contains(s))
}

fn diff_into(prefix: &str, old: &Value, new: &Value, depth: usize, out: &mut Vec<Change>) {
    let empty = serde_json::Map::new();
    let (Some(a), Some(b)) = (
        old.as_object().or(old.is_null().then_some(&empty)),
        new.as_object().or(new.is_null().then_some(&empty)),
    ) else {
        if old != new {
            out.push(Change::new(prefix, some(old), some(new)));
        }
        return;
    };
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        if name == "meta" && depth == 0 {
            continue;
        }
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let (x, y) = (
            a.get(name).unwrap_or(&Value::Null),
            b.get(name).unwrap_or(&Value::Null),
        );
        if x == y {
            continue;
        }
        if is_secret_name(name) {
            out.push(Change::secret(path));
        } else if depth == 0 && (x.is_object() || y.is_object()) {
            diff_into(&path, x, y, depth + 1, out);
        } else {
            out.push(Change::new(path, some(x), some(y)));
        }
    }
}

fn some(v: &Value) -> Option<Value> {
    (!v.is_null()).then(|| v.clone())
}

/// One audit event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique within the tenant; derived from the work for idempotent writers (sync).
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub tenant: Uuid,
    pub actor: Actor,
    /// Dotted, most general first: `scim.user.create`, `sync.user.disable`, `grant.create`.
    pub action: String,
    pub target: Target,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    /// The Functions invocation id (or the handler's own request id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation_id: Option<String>,
    /// What ties the event to its cause: the SCIM request's id, the sync round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<String>,
}

impl Event {
    /// A successful event happening now, with a fresh id; refine it with the builder methods.
    pub fn new(tenant: Uuid, actor: Actor, action: impl Into<String>, target: Target) -> Event {
        Event {
            id: Uuid::new_v4().simple().to_string(),
            time: OffsetDateTime::now_utc(),
            tenant,
            actor,
            action: action.into(),
            target,
            outcome: Outcome::Success,
            changes: Vec::new(),
            invocation_id: None,
            correlation: None,
        }
    }

    /// The attributes changed.
    pub fn changes(mut self, changes: Vec<Change>) -> Event {
        self.changes = changes;
        self
    }

    /// Adds one change.
    pub fn change(mut self, change: Change) -> Event {
        self.changes.push(change);
        self
    }

    /// How it ended.
    pub fn outcome(mut self, outcome: Outcome) -> Event {
        self.outcome = outcome;
        self
    }

    /// Ended in failure.
    pub fn failed(self, code: impl ToString, reason: impl Into<String>) -> Event {
        self.outcome(Outcome::failure(code, reason))
    }

    /// The invocation that made it.
    pub fn invocation(mut self, id: Option<String>) -> Event {
        self.invocation_id = id;
        self
    }

    /// What ties it to its cause.
    pub fn correlation(mut self, correlation: impl Into<String>) -> Event {
        self.correlation = Some(correlation.into());
        self
    }

    /// An id derived from `parts` (stable across retries) and a fixed time, so writing the
    /// same event twice stores it once.
    pub fn idempotent(mut self, time: OffsetDateTime, parts: &[&str]) -> Event {
        self.time = time;
        let name = parts.join("\u{1f}");
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
        self.id = digest.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_names_nested_attributes_and_hides_secrets() {
        let old =
            json!({"userName": "a", "name": {"givenName": "A"}, "password": "x", "meta": {"v": 1}});
        let new = json!({"userName": "b", "name": {"givenName": "B", "familyName": "C"}, "password": "y", "meta": {"v": 2}});
        let changes = diff(&old, &new);
        assert_eq!(
            changes,
            vec![
                Change::new("name.familyName", None, Some(json!("C"))),
                Change::new("name.givenName", Some(json!("A")), Some(json!("B"))),
                Change::secret("password"),
                Change::new("userName", Some(json!("a")), Some(json!("b"))),
            ]
        );
    }

    #[test]
    fn idempotent_events_have_the_same_id_for_the_same_work() {
        let t = OffsetDateTime::now_utc();
        let tenant = Uuid::new_v4();
        let a = Event::new(
            tenant,
            Actor::graph_sync(),
            "sync.user.create",
            Target::new("user", "1"),
        )
        .idempotent(t, &["round", "1", "create"]);
        let b = Event::new(
            tenant,
            Actor::graph_sync(),
            "sync.user.create",
            Target::new("user", "1"),
        )
        .idempotent(t, &["round", "1", "create"]);
        assert_eq!(a.id, b.id);
    }
}
