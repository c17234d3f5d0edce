//! Applies a plan step by step, idempotently: each step is recorded in a journal before
//! and after its write, so an apply run again after a crash skips what was done and redoes
//! only what may not have been. A user is never created twice: before every create the
//! UPN is read fresh from Entra, and a user found there carrying the step's employee id
//! (the marker every created user gets) is the one an earlier attempt made.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::plan::{Action, Applied, Plan, Step, UserRef};
use crate::store::HrStoreError;

/// Writes sent per round trip (Graph's `$batch` limit).
pub const CHUNK: usize = 20;

/// One call to Entra, in domain terms; the writer turns it into Graph requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A fresh read of a UPN.
    FindUser {
        upn: String,
    },
    CreateUser {
        upn: String,
        mail_nickname: String,
        properties: BTreeMap<String, String>,
    },
    UpdateUser {
        user: Uuid,
        changes: BTreeMap<String, Option<String>>,
    },
    SetEnabled {
        user: Uuid,
        enabled: bool,
    },
    AddMember {
        group: Uuid,
        user: Uuid,
    },
    RemoveMember {
        group: Uuid,
        user: Uuid,
    },
    /// A generated temporary password, never shown or kept.
    ResetPassword {
        user: Uuid,
    },
    SetManager {
        user: Uuid,
        manager: Uuid,
    },
    RevokeSessions {
        user: Uuid,
    },
    /// Removes the user's manager (done when there is none).
    RemoveManager {
        user: Uuid,
    },
}

/// What a write answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    Done,
    Created(Uuid),
    Found {
        id: Uuid,
        employee_id: Option<String>,
    },
    Missing,
}

/// Why a write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WriteErrorKind {
    /// Graph's 400 for a UPN already in use.
    UpnInUse,
    /// 403 `Authorization_RequestDenied`: a permission or role is missing.
    Forbidden,
    /// Still throttled after the waits Graph asked for.
    Throttled,
    NotFound,
    Rejected,
    /// The connection no longer works (consent revoked, credential refused).
    AccessRevoked,
    Unavailable,
}

/// A failed write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteError {
    pub kind: WriteErrorKind,
    pub message: String,
}

/// Sends writes to Entra (through `$batch`: a slice is at most [`CHUNK`] long).
#[async_trait]
pub trait EntraWriter: Send + Sync {
    /// One answer per write, in order.
    async fn run(&self, writes: &[Write]) -> Vec<Result<WriteOutcome, WriteError>>;
}

/// A step's state in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StepState {
    /// The write was (or was about to be) sent; its outcome is unknown.
    Started,
    Done {
        user_id: Option<Uuid>,
    },
    Failed {
        reason: String,
    },
}

/// Each plan's step journal.
#[async_trait]
pub trait StepJournal: Send + Sync {
    /// The states recorded for a plan's steps.
    async fn states(
        &self,
        tenant: Uuid,
        plan: Uuid,
    ) -> Result<HashMap<usize, StepState>, HrStoreError>;
    /// Records states (one transaction per call where the store can).
    async fn record_states(
        &self,
        tenant: Uuid,
        plan: Uuid,
        states: &[(usize, StepState)],
    ) -> Result<(), HrStoreError>;
}

/// What applies did per employee (the user made or matched, the manager set).
#[async_trait]
pub trait AppliedStore: Send + Sync {
    /// Every employee's record.
    async fn applied(&self, tenant: Uuid) -> Result<HashMap<String, Applied>, HrStoreError>;
    /// Replaces some employees' records.
    async fn record_applied(
        &self,
        tenant: Uuid,
        entries: &[(String, Applied)],
    ) -> Result<(), HrStoreError>;
}

/// The one place every change an apply makes goes through (for the audit trail).
#[async_trait]
pub trait HrEvents: Send + Sync {
    /// A step finished (done, already done, or failed).
    async fn step_finished(&self, tenant: Uuid, plan: Uuid, step: &Step, result: &StepResult);
}

/// [`HrEvents`] that records nothing.
pub struct NoEvents;

#[async_trait]
impl HrEvents for NoEvents {
    async fn step_finished(&self, _: Uuid, _: Uuid, _: &Step, _: &StepResult) {}
}

/// How a step ended in this apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Done,
    /// Done by an earlier apply of the same plan.
    AlreadyDone,
    Failed,
}

/// One step's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StepResult {
    pub index: usize,
    pub action: &'static str,
    pub employee_id: String,
    pub status: StepStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<WriteErrorKind>,
}

/// An apply's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"plan_id": "c0ffee00-1234-4abc-9def-0123456789ab", "done": 1, "already_done": 0, "failed": 1, "results": [{"index": 0, "action": "create_user", "employee_id": "E-10442", "status": "done", "user_id": "1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b"}, {"index": 1, "action": "disable_user", "employee_id": "E-09120", "status": "failed", "user_id": "9c7d1a52-3e2b-4c7a-9a5e-0b1f2d3c4e5f", "error": "Microsoft Graph answered 429", "error_kind": "throttled"}]}))]
pub struct ApplyReport {
    pub plan_id: Uuid,
    pub done: usize,
    pub already_done: usize,
    pub failed: usize,
    pub results: Vec<StepResult>,
}

/// The engine's collaborators.
pub struct Applier<'a> {
    pub writer: &'a dyn EntraWriter,
    pub journal: &'a dyn StepJournal,
    pub applied: &'a dyn AppliedStore,
    pub events: &'a dyn HrEvents,
}

/// How many other UPNs are tried when the planned one was taken meanwhile.
const MORE_UPNS: u32 = 20;

fn next_candidates(upn: &str) -> Vec<String> {
    let (local, domain) = upn.split_once('@').unwrap_or((upn, ""));
    let (base, start) = match local.trim_end_matches(|c: char| c.is_ascii_digit()) {
        b if b.len() < local.len() && !b.is_empty() => {
            (b, local[b.len()..].parse::<u32>().unwrap_or(1) + 1)
        }
        _ => (local, 2),
    };
    (start..start + MORE_UPNS)
        .map(|n| format!("{base}{n}@{domain}"))
        .collect()
}

impl Applier<'_> {
    /// Applies the steps of `plan` that `include` selects.
    pub async fn apply(
        &self,
        plan: &Plan,
        include: &(dyn Fn(&Step) -> bool + Sync),
    ) -> Result<ApplyReport, HrStoreError> {
        let tenant = plan.tenant_id;
        let states = self.journal.states(tenant, plan.id).await?;
        let mut applied = self.applied.applied(tenant).await?;
        let mut results: Vec<StepResult> = Vec::new();
        let selected: Vec<&Step> = plan.steps.iter().filter(|s| include(s)).collect();
        let mut created: HashMap<String, Uuid> = HashMap::new();
        // users made by this plan in an earlier attempt
        for s in &plan.steps {
            if let (Action::CreateUser { .. }, Some(StepState::Done { user_id: Some(id) })) =
                (&s.action, states.get(&s.index))
            {
                created.insert(s.employee_id.clone(), *id);
            }
        }
        let mut pending: Vec<&Step> = Vec::new();
        for s in selected {
            if let Some(StepState::Done { user_id }) = states.get(&s.index) {
                results.push(result(s, StepStatus::AlreadyDone, *user_id, None));
            } else {
                pending.push(s);
            }
        }
        let (creates, rest): (Vec<&Step>, Vec<&Step>) = pending
            .into_iter()
            .partition(|s| matches!(s.action, Action::CreateUser { .. }));
        let (managers, others): (Vec<&Step>, Vec<&Step>) = rest
            .into_iter()
            .partition(|s| matches!(s.action, Action::SetManager { .. }));

        for chunk in creates.chunks(CHUNK) {
            let outcomes = self.create_chunk(tenant, plan.id, chunk).await?;
            let mut links = Vec::new();
            for (s, r) in chunk.iter().zip(outcomes) {
                if let Some(id) = r.user_id {
                    created.insert(s.employee_id.clone(), id);
                    let entry = applied.entry(s.employee_id.clone()).or_default();
                    entry.entra_id = Some(id);
                    links.push((s.employee_id.clone(), entry.clone()));
                }
                self.events.step_finished(tenant, plan.id, s, &r).await;
                results.push(r);
            }
            self.applied.record_applied(tenant, &links).await?;
        }
        let known: HashMap<String, Uuid> = applied
            .iter()
            .filter_map(|(e, a)| a.entra_id.map(|id| (e.clone(), id)))
            .chain(created)
            .collect();
        let resolve = |user: UserRef, employee: &str| -> Option<Uuid> {
            match user {
                UserRef::Existing(id) => Some(id),
                UserRef::Created => known.get(employee).copied(),
            }
        };
        let mut manager_links = Vec::new();
        for phase in [others, managers] {
            for chunk in phase.chunks(CHUNK) {
                let mut writes = Vec::new();
                let mut sent: Vec<&Step> = Vec::new();
                for s in chunk {
                    match write_for(s, &resolve) {
                        Ok(w) => {
                            writes.push(w);
                            sent.push(s);
                        }
                        Err(why) => {
                            let r = StepResult {
                                error_kind: None,
                                ..result(s, StepStatus::Failed, None, Some(why.clone()))
                            };
                            self.journal
                                .record_states(
                                    tenant,
                                    plan.id,
                                    &[(s.index, StepState::Failed { reason: why })],
                                )
                                .await?;
                            self.events.step_finished(tenant, plan.id, s, &r).await;
                            results.push(r);
                        }
                    }
                }
                if writes.is_empty() {
                    continue;
                }
                let started: Vec<(usize, StepState)> =
                    sent.iter().map(|s| (s.index, StepState::Started)).collect();
                self.journal
                    .record_states(tenant, plan.id, &started)
                    .await?;
                let outcomes = self.writer.run(&writes).await;
                let mut finished = Vec::new();
                let mut chunk_results = Vec::new();
                for ((s, w), outcome) in sent.iter().zip(&writes).zip(outcomes) {
                    let user = write_user(w);
                    let r = match outcome {
                        Ok(_) => {
                            finished.push((s.index, StepState::Done { user_id: user }));
                            let manager = match &s.action {
                                Action::SetManager {
                                    manager_employee_id,
                                    ..
                                } => Some(Some(manager_employee_id.clone())),
                                Action::RemoveManager { .. } => Some(None),
                                _ => None,
                            };
                            if let Some(manager) = manager {
                                let entry = applied.entry(s.employee_id.clone()).or_default();
                                entry.manager_employee_id = manager;
                                manager_links.push((s.employee_id.clone(), entry.clone()));
                            }
                            result(s, StepStatus::Done, user, None)
                        }
                        Err(e) => {
                            finished.push((
                                s.index,
                                StepState::Failed {
                                    reason: e.message.clone(),
                                },
                            ));
                            StepResult {
                                error_kind: Some(e.kind),
                                ..result(s, StepStatus::Failed, user, Some(e.message))
                            }
                        }
                    };
                    chunk_results.push((*s, r));
                }
                self.journal
                    .record_states(tenant, plan.id, &finished)
                    .await?;
                for (s, r) in chunk_results {
                    self.events.step_finished(tenant, plan.id, s, &r).await;
                    results.push(r);
                }
            }
        }
        self.applied.record_applied(tenant, &manager_links).await?;
        results.sort_by_key(|r| r.index);
        let count = |st: StepStatus| results.iter().filter(|r| r.status == st).count();
        Ok(ApplyReport {
            plan_id: plan.id,
            done: count(StepStatus::Done),
            already_done: count(StepStatus::AlreadyDone),
            failed: count(StepStatus::Failed),
            results,
        })
    }

    /// Creates the users of up to [`CHUNK`] steps: fresh reads of their UPNs first (a
    /// user there with the step's employee id is the one an earlier attempt made; one
    /// without it means the UPN went to someone else, and the next free one is taken).
    async fn create_chunk(
        &self,
        tenant: Uuid,
        plan: Uuid,
        chunk: &[&Step],
    ) -> Result<Vec<StepResult>, HrStoreError> {
        let upns: Vec<String> = chunk
            .iter()
            .map(|s| match &s.action {
                Action::CreateUser { upn, .. } => upn.clone(),
                _ => unreachable!("only creates"),
            })
            .collect();
        let reads: Vec<Write> = upns
            .iter()
            .map(|u| Write::FindUser { upn: u.clone() })
            .collect();
        let found = self.writer.run(&reads).await;
        let mut out: Vec<Option<StepResult>> = vec![None; chunk.len()];
        let mut to_create: Vec<(usize, String)> = Vec::new();
        for (i, (s, answer)) in chunk.iter().zip(found).enumerate() {
            match answer {
                Ok(WriteOutcome::Found { id, employee_id })
                    if employee_id.as_deref() == Some(s.employee_id.as_str()) =>
                {
                    out[i] = Some(result(s, StepStatus::Done, Some(id), None));
                }
                Ok(WriteOutcome::Found { .. }) => match self.free_upn(&upns[i]).await {
                    Ok(Some(upn)) => to_create.push((i, upn)),
                    Ok(None) => {
                        out[i] = Some(failed(
                            s,
                            WriteErrorKind::UpnInUse,
                            format!("{} and the next {MORE_UPNS} UPNs are in use", upns[i]),
                        ))
                    }
                    Err(e) => out[i] = Some(failed(s, e.kind, e.message)),
                },
                Ok(_) => to_create.push((i, upns[i].clone())),
                Err(e) => out[i] = Some(failed(s, e.kind, e.message)),
            }
        }
        let started: Vec<(usize, StepState)> = to_create
            .iter()
            .map(|(i, _)| (chunk[*i].index, StepState::Started))
            .collect();
        if !started.is_empty() {
            self.journal.record_states(tenant, plan, &started).await?;
        }
        let writes: Vec<Write> = to_create
            .iter()
            .map(|(i, upn)| match &chunk[*i].action {
                Action::CreateUser { properties, .. } => Write::CreateUser {
                    mail_nickname: upn.split('@').next().unwrap_or_default().to_string(),
                    upn: upn.clone(),
                    properties: properties.clone(),
                },
                _ => unreachable!("only creates"),
            })
            .collect();
        let answers = if writes.is_empty() {
            Vec::new()
        } else {
            self.writer.run(&writes).await
        };
        for ((i, upn), answer) in to_create.iter().zip(answers) {
            let s = chunk[*i];
            out[*i] = Some(match answer {
                Ok(WriteOutcome::Created(id)) => result(s, StepStatus::Done, Some(id), None),
                Ok(other) => failed(
                    s,
                    WriteErrorKind::Rejected,
                    format!("unexpected answer to a create: {other:?}"),
                ),
                Err(e) if e.kind == WriteErrorKind::UpnInUse => {
                    // taken between the read and the create: ours only if it carries the marker
                    match self
                        .writer
                        .run(&[Write::FindUser { upn: upn.clone() }])
                        .await
                        .pop()
                    {
                        Some(Ok(WriteOutcome::Found { id, employee_id }))
                            if employee_id.as_deref() == Some(s.employee_id.as_str()) =>
                        {
                            result(s, StepStatus::Done, Some(id), None)
                        }
                        _ => failed(
                            s,
                            WriteErrorKind::UpnInUse,
                            format!("{upn} was taken meanwhile; plan again"),
                        ),
                    }
                }
                Err(e) => failed(s, e.kind, e.message),
            });
        }
        let out: Vec<StepResult> = out
            .into_iter()
            .map(|r| r.expect("every step answered"))
            .collect();
        let finished: Vec<(usize, StepState)> = chunk
            .iter()
            .zip(&out)
            .map(|(s, r)| {
                (
                    s.index,
                    match r.status {
                        StepStatus::Failed => StepState::Failed {
                            reason: r.error.clone().unwrap_or_default(),
                        },
                        _ => StepState::Done { user_id: r.user_id },
                    },
                )
            })
            .collect();
        self.journal.record_states(tenant, plan, &finished).await?;
        Ok(out)
    }

    /// The first of the next UPNs Entra does not know.
    async fn free_upn(&self, upn: &str) -> Result<Option<String>, WriteError> {
        for candidate in next_candidates(upn) {
            match self
                .writer
                .run(&[Write::FindUser {
                    upn: candidate.clone(),
                }])
                .await
                .pop()
            {
                Some(Ok(WriteOutcome::Missing)) => return Ok(Some(candidate)),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(WriteError {
                        kind: WriteErrorKind::Unavailable,
                        message: "no answer".into(),
                    });
                }
            }
        }
        Ok(None)
    }
}

fn result(
    s: &Step,
    status: StepStatus,
    user_id: Option<Uuid>,
    error: Option<String>,
) -> StepResult {
    StepResult {
        index: s.index,
        action: s.action.name(),
        employee_id: s.employee_id.clone(),
        status,
        user_id,
        error,
        error_kind: None,
    }
}

fn failed(s: &Step, kind: WriteErrorKind, message: String) -> StepResult {
    StepResult {
        error_kind: Some(kind),
        ..result(s, StepStatus::Failed, None, Some(message))
    }
}

fn write_user(w: &Write) -> Option<Uuid> {
    match w {
        Write::UpdateUser { user, .. }
        | Write::SetEnabled { user, .. }
        | Write::AddMember { user, .. }
        | Write::RemoveMember { user, .. }
        | Write::ResetPassword { user }
        | Write::SetManager { user, .. }
        | Write::RevokeSessions { user }
        | Write::RemoveManager { user } => Some(*user),
        Write::FindUser { .. } | Write::CreateUser { .. } => None,
    }
}

fn write_for(s: &Step, resolve: &dyn Fn(UserRef, &str) -> Option<Uuid>) -> Result<Write, String> {
    let user = |u: UserRef| {
        resolve(u, &s.employee_id)
            .ok_or_else(|| "the user's create_user step has not succeeded".to_string())
    };
    Ok(match &s.action {
        Action::CreateUser { .. } => unreachable!("creates are applied apart"),
        Action::UpdateUser {
            user: u, changes, ..
        } => Write::UpdateUser {
            user: user(*u)?,
            changes: changes.clone(),
        },
        Action::EnableUser { user: u } => Write::SetEnabled {
            user: user(*u)?,
            enabled: true,
        },
        Action::DisableUser { user: u } => Write::SetEnabled {
            user: user(*u)?,
            enabled: false,
        },
        Action::AddMember { group_id, user: u } => Write::AddMember {
            group: *group_id,
            user: user(*u)?,
        },
        Action::RemoveMember { group_id, user: u } => Write::RemoveMember {
            group: *group_id,
            user: user(*u)?,
        },
        Action::ResetPassword { user: u } => Write::ResetPassword { user: user(*u)? },
        Action::RevokeSessions { user: u } => Write::RevokeSessions { user: user(*u)? },
        Action::RemoveManager { user: u, .. } => Write::RemoveManager { user: user(*u)? },
        Action::SetManager {
            user: u,
            manager_employee_id,
            manager,
        } => {
            let manager = match manager {
                Some(m) => *m,
                None => resolve(UserRef::Created, manager_employee_id).ok_or_else(|| {
                    format!("manager {manager_employee_id:?} has no Entra user yet")
                })?,
            };
            Write::SetManager {
                user: user(*u)?,
                manager,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upns_after_a_collision_count_on() {
        assert_eq!(
            next_candidates("ada.lovelace@c.com")[0],
            "ada.lovelace2@c.com"
        );
        assert_eq!(
            next_candidates("ada.lovelace2@c.com")[0],
            "ada.lovelace3@c.com"
        );
    }
}
