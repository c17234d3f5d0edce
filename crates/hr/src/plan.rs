//! The plan: a pure comparison of HR records with a view of Entra, giving the steps that
//! would make Entra follow HR (each with its reason and the HR record behind it), the
//! events that are not due yet, and what was left alone and why. Nothing is written here.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use time::{Date, Duration, OffsetDateTime};
use uuid::Uuid;

use crate::record::HrRecord;
use crate::rules::CompiledRules;

/// An Entra user as the plan sees it (from directory sync, refreshed where touched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraUser {
    pub id: Uuid,
    pub upn: String,
    pub employee_id: Option<String>,
    pub enabled: bool,
    /// Entra properties by Graph name (`jobTitle`...), as they are now.
    pub properties: BTreeMap<String, String>,
    /// Direct group memberships.
    pub groups: BTreeSet<Uuid>,
}

/// What an earlier apply did for an employee: the Entra user it made or matched, and the
/// manager it set (Graph's manager is not part of directory sync).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub entra_id: Option<Uuid>,
    pub manager_employee_id: Option<String>,
}

/// Everything the plan compares HR with.
#[derive(Debug, Clone, Default)]
pub struct DirectoryView {
    pub users: Vec<EntraUser>,
    /// Members of directory roles: never disabled by a plan.
    pub privileged: HashSet<Uuid>,
    /// UPNs in use in Entra (lower case), beyond those of `users`.
    pub taken_upns: HashSet<String>,
    pub applied: HashMap<String, Applied>,
    /// The tenant's user count for the disable threshold (`users.len()` when 0).
    pub total_users: usize,
}

/// A user a step writes to: one that exists, or the one this plan creates for the step's
/// employee (known once its `create_user` step has run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UserRef {
    Existing(Uuid),
    Created,
}

/// One write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    CreateUser {
        upn: String,
        mail_nickname: String,
        properties: BTreeMap<String, String>,
    },
    /// Only the properties that change; `None` clears one.
    UpdateUser {
        user: UserRef,
        changes: BTreeMap<String, Option<String>>,
        /// What the changed properties held in Entra when the plan compared them (a
        /// property that had no value is absent): the audit trail records old and new.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        old: BTreeMap<String, String>,
    },
    EnableUser {
        user: UserRef,
    },
    DisableUser {
        user: UserRef,
    },
    AddMember {
        group_id: Uuid,
        user: UserRef,
    },
    RemoveMember {
        group_id: Uuid,
        user: UserRef,
    },
    /// A new temporary password that is never shown or kept: the old one stops working.
    ResetPassword {
        user: UserRef,
    },
    SetManager {
        user: UserRef,
        manager_employee_id: String,
        /// The manager's user when it exists; else the one this plan creates for them.
        manager: Option<Uuid>,
    },
    RevokeSessions {
        user: UserRef,
    },
    /// HR no longer names a manager: the one Entra has is removed.
    RemoveManager {
        user: UserRef,
        /// The employee id of the manager an apply set, the one removed (a plan made
        /// before it was kept has none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        manager_employee_id: Option<String>,
    },
}

impl Action {
    /// The step's name.
    pub fn name(&self) -> &'static str {
        match self {
            Action::CreateUser { .. } => "create_user",
            Action::UpdateUser { .. } => "update_user",
            Action::EnableUser { .. } => "enable_user",
            Action::DisableUser { .. } => "disable_user",
            Action::AddMember { .. } => "add_member",
            Action::RemoveMember { .. } => "remove_member",
            Action::ResetPassword { .. } => "reset_password",
            Action::SetManager { .. } => "set_manager",
            Action::RevokeSessions { .. } => "revoke_sessions",
            Action::RemoveManager { .. } => "remove_manager",
        }
    }

    /// The user the action writes to (None for a create).
    pub fn user(&self) -> Option<UserRef> {
        match self {
            Action::CreateUser { .. } => None,
            Action::UpdateUser { user, .. }
            | Action::EnableUser { user }
            | Action::DisableUser { user }
            | Action::AddMember { user, .. }
            | Action::RemoveMember { user, .. }
            | Action::ResetPassword { user }
            | Action::SetManager { user, .. }
            | Action::RevokeSessions { user }
            | Action::RemoveManager { user, .. } => Some(*user),
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Step {
    pub index: usize,
    pub employee_id: String,
    #[serde(flatten)]
    pub action: Action,
    pub reason: String,
    /// The dated HR event that made the step due (a start or an end date), if any.
    #[serde(
        default,
        with = "crate::record::ymd_opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = Date)]
    pub due_on: Option<Date>,
}

/// An HR event that is not due yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Waiting {
    pub employee_id: String,
    /// `hire` or `leave`.
    pub event: String,
    #[serde(with = "crate::record::ymd")]
    #[schema(value_type = String, format = Date)]
    pub due_on: Date,
}

/// An employee the plan leaves alone, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Skipped {
    pub employee_id: String,
    pub reason: String,
}

/// A computed plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "c0ffee00-1234-4abc-9def-0123456789ab", "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "created_at": "2026-12-01T09:00:00Z", "today": "2026-12-01", "steps": [{"index": 0, "employee_id": "E-10442", "reason": "joiner: starts on 2026-12-02", "due_on": "2026-12-01", "action": "create_user", "upn": "ada.lovelace@contoso.com", "mail_nickname": "ada.lovelace", "properties": {"displayName": "Ada Lovelace", "givenName": "Ada", "surname": "Lovelace", "usageLocation": "GB"}}, {"index": 1, "employee_id": "E-09120", "reason": "leaver: left on 2026-11-30", "due_on": "2026-11-30", "action": "disable_user", "user": {"existing": "9c7d1a52-3e2b-4c7a-9a5e-0b1f2d3c4e5f"}}], "waiting": [{"employee_id": "E-10501", "event": "hire", "due_on": "2027-01-04"}], "skipped": [{"employee_id": "E-10007", "reason": "no start_date in the future and no account to match"}], "disables": 1, "directory_users": 120, "max_disable_percent": 10.0, "needs_confirmation": false}))]
pub struct Plan {
    pub id: Uuid,
    pub tenant_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "crate::record::ymd")]
    #[schema(value_type = String, format = Date)]
    pub today: Date,
    pub steps: Vec<Step>,
    pub waiting: Vec<Waiting>,
    pub skipped: Vec<Skipped>,
    /// Users the plan disables, and the share of the tenant's users that is.
    pub disables: usize,
    pub directory_users: usize,
    pub max_disable_percent: f64,
    /// Over the threshold: applied only when confirmed explicitly.
    pub needs_confirmation: bool,
}

/// Inputs of one planning.
pub struct PlanInput<'a> {
    pub tenant_id: Uuid,
    pub today: Date,
    pub records: &'a [HrRecord],
    pub rules: &'a CompiledRules,
    pub view: &'a DirectoryView,
    pub max_disable_percent: f64,
}

enum Stage {
    Waiting(Date),
    /// Due since this date (the start date less the joiner lead days).
    Active(Date),
    Leaver(Date),
}

fn stage(r: &HrRecord, rules: &CompiledRules, today: Date) -> Stage {
    let leave_on = r
        .end_date
        .map(|end| end + Duration::days(rules.rules.leaver.grace_days.into()));
    if let Some(d) = leave_on
        && today >= d
    {
        return Stage::Leaver(d);
    }
    let create_on = r.start_date - Duration::days(rules.rules.joiner_days_before_start.into());
    if today >= create_on {
        Stage::Active(create_on)
    } else {
        Stage::Waiting(create_on)
    }
}

/// Computes the plan. Pure: the same input gives the same steps.
pub fn compute(input: PlanInput<'_>) -> Plan {
    let PlanInput {
        tenant_id,
        today,
        records,
        rules,
        view,
        max_disable_percent,
    } = input;
    let by_id: HashMap<Uuid, &EntraUser> = view.users.iter().map(|u| (u.id, u)).collect();
    let mut by_employee: HashMap<&str, Vec<&EntraUser>> = HashMap::new();
    for u in &view.users {
        if let Some(e) = &u.employee_id {
            by_employee.entry(e.as_str()).or_default().push(u);
        }
    }
    let mut taken: HashSet<String> = view.taken_upns.clone();
    taken.extend(view.users.iter().map(|u| u.upn.to_lowercase()));

    // the user each HR record stands for: what an earlier apply recorded, else the one
    // Entra user carrying its employee id; two carrying it is ambiguous and left alone
    let matched = |employee_id: &str| -> Result<Option<&EntraUser>, String> {
        if let Some(id) = view.applied.get(employee_id).and_then(|a| a.entra_id)
            && let Some(u) = by_id.get(&id)
        {
            return Ok(Some(u));
        }
        match by_employee.get(employee_id).map(Vec::as_slice) {
            None | Some([]) => Ok(None),
            Some([one]) => Ok(Some(one)),
            Some(many) => Err(format!(
                "{} Entra users carry employee id {employee_id:?}; none is written to",
                many.len()
            )),
        }
    };
    let in_hr: HashSet<&str> = records.iter().map(|r| r.employee_id.as_str()).collect();

    let mut steps: Vec<Step> = Vec::new();
    let mut waiting = Vec::new();
    let mut skipped = Vec::new();
    let mut disables = 0usize;
    let push =
        |steps: &mut Vec<Step>, r: &HrRecord, action: Action, reason: String, due: Option<Date>| {
            steps.push(Step {
                index: steps.len(),
                employee_id: r.employee_id.clone(),
                action,
                reason,
                due_on: due,
            })
        };

    for r in records {
        let user = match matched(&r.employee_id) {
            Ok(u) => u,
            Err(why) => {
                skipped.push(Skipped {
                    employee_id: r.employee_id.clone(),
                    reason: why,
                });
                continue;
            }
        };
        match stage(r, rules, today) {
            Stage::Waiting(on) => waiting.push(Waiting {
                employee_id: r.employee_id.clone(),
                event: "hire".into(),
                due_on: on,
            }),
            Stage::Leaver(on) => {
                let Some(u) = user else {
                    continue;
                };
                let due = Some(on);
                let target = UserRef::Existing(u.id);
                if view.privileged.contains(&u.id) {
                    skipped.push(Skipped {
                        employee_id: r.employee_id.clone(),
                        reason: "holds a directory role: a privileged account is never disabled by a plan".into(),
                    });
                    continue;
                }
                if u.enabled {
                    disables += 1;
                    push(
                        &mut steps,
                        r,
                        Action::DisableUser { user: target },
                        format!(
                            "leaver: end date {}",
                            crate::record::date_text(r.end_date.expect("a leaver has an end date"))
                        ),
                        due,
                    );
                    if rules.rules.leaver.revoke_sessions {
                        push(
                            &mut steps,
                            r,
                            Action::RevokeSessions { user: target },
                            "leaver: sign-in sessions revoked".into(),
                            due,
                        );
                    }
                }
                if rules.rules.leaver.remove_groups {
                    for g in u.groups.intersection(&rules.managed_groups) {
                        push(
                            &mut steps,
                            r,
                            Action::RemoveMember {
                                group_id: *g,
                                user: target,
                            },
                            "leaver: leaves the groups the rules manage".into(),
                            due,
                        );
                    }
                }
            }
            Stage::Active(since) => {
                // the position held today drives job title and department (see `as_of`)
                let current = r.as_of(today);
                let desired: BTreeMap<String, String> =
                    rules.properties(&current).into_iter().collect();
                let groups = rules.groups_for(&current);
                let (target, due, current_groups) = match user {
                    None => {
                        let Some(local) = rules.upn_local(r) else {
                            skipped.push(Skipped {
                                employee_id: r.employee_id.clone(),
                                reason: "the UPN pattern gives an empty name".into(),
                            });
                            continue;
                        };
                        let upn = (1..)
                            .map(|n| rules.upn_candidate(&local, n))
                            .find(|c| !taken.contains(&c.to_lowercase()))
                            .expect("some candidate is free");
                        taken.insert(upn.to_lowercase());
                        let due = Some(since);
                        push(
                            &mut steps,
                            r,
                            Action::CreateUser {
                                mail_nickname: upn
                                    .split('@')
                                    .next()
                                    .unwrap_or_default()
                                    .to_string(),
                                upn,
                                properties: desired.clone(),
                            },
                            "joiner: no Entra user yet".into(),
                            due,
                        );
                        (UserRef::Created, due, BTreeSet::new())
                    }
                    Some(u) => {
                        let target = UserRef::Existing(u.id);
                        if !u.enabled {
                            push(
                                &mut steps,
                                r,
                                Action::EnableUser { user: target },
                                "rehire: the HR record is active again".into(),
                                Some(since),
                            );
                            push(
                                &mut steps,
                                r,
                                Action::ResetPassword { user: target },
                                "rehire: the former password stops working".into(),
                                Some(since),
                            );
                        }
                        let mut changes = BTreeMap::new();
                        let mut old = BTreeMap::new();
                        for (p, v) in &desired {
                            if u.properties.get(p) != Some(v) {
                                changes.insert(p.clone(), Some(v.clone()));
                            }
                        }
                        // a mapped property HR no longer has a value for is cleared
                        for (p, _) in &rules.mappings {
                            if !desired.contains_key(p) && u.properties.contains_key(p) {
                                changes.insert(p.clone(), None);
                            }
                        }
                        for p in changes.keys() {
                            if let Some(was) = u.properties.get(p) {
                                old.insert(p.clone(), was.clone());
                            }
                        }
                        if !changes.is_empty() {
                            let names: Vec<&str> = changes.keys().map(String::as_str).collect();
                            push(
                                &mut steps,
                                r,
                                Action::UpdateUser {
                                    user: target,
                                    changes: changes.clone(),
                                    old,
                                },
                                format!("HR data changed: {}", names.join(", ")),
                                None,
                            );
                        }
                        for g in u.groups.intersection(&rules.managed_groups) {
                            if !groups.contains(g) {
                                push(
                                    &mut steps,
                                    r,
                                    Action::RemoveMember {
                                        group_id: *g,
                                        user: target,
                                    },
                                    "mover: no rule puts them in this group any more".into(),
                                    None,
                                );
                            }
                        }
                        (target, None, u.groups.clone())
                    }
                };
                for g in groups.difference(&current_groups) {
                    push(
                        &mut steps,
                        r,
                        Action::AddMember {
                            group_id: *g,
                            user: target,
                        },
                        "a group rule matches".into(),
                        due,
                    );
                }
                let applied_manager = view
                    .applied
                    .get(&r.employee_id)
                    .and_then(|a| a.manager_employee_id.as_deref());
                if r.manager_employee_id.is_none()
                    && let Some(was) = applied_manager
                {
                    // the manager an apply set stays in Entra until it is removed
                    push(
                        &mut steps,
                        r,
                        Action::RemoveManager {
                            user: target,
                            manager_employee_id: Some(was.to_string()),
                        },
                        format!("HR no longer names a manager (was {was:?})"),
                        due,
                    );
                }
                if let Some(m) = &r.manager_employee_id
                    && applied_manager != Some(m.as_str())
                {
                    let manager = matched(m).ok().flatten().map(|u| u.id);
                    if manager.is_none() && !in_hr.contains(m.as_str()) {
                        skipped.push(Skipped {
                            employee_id: r.employee_id.clone(),
                            reason: format!("manager {m:?} has no Entra user and no HR record"),
                        });
                    } else {
                        push(
                            &mut steps,
                            r,
                            Action::SetManager {
                                user: target,
                                manager_employee_id: m.clone(),
                                manager,
                            },
                            "HR names a manager".into(),
                            due,
                        );
                    }
                }
                if let Some(end) = r.end_date {
                    waiting.push(Waiting {
                        employee_id: r.employee_id.clone(),
                        event: "leave".into(),
                        due_on: end + Duration::days(rules.rules.leaver.grace_days.into()),
                    });
                }
            }
        }
    }
    let directory_users = if view.total_users == 0 {
        view.users.len()
    } else {
        view.total_users
    };
    let needs_confirmation = disables > 0
        && (disables as f64) * 100.0 > max_disable_percent * directory_users.max(1) as f64;
    Plan {
        id: Uuid::new_v4(),
        tenant_id,
        created_at: OffsetDateTime::now_utc(),
        today,
        steps,
        waiting,
        skipped,
        disables,
        directory_users,
        max_disable_percent,
        needs_confirmation,
    }
}
