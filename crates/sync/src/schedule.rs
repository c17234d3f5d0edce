//! When a tenant is due. NCRONTAB cannot say "every 45 minutes", so a timer ticks every few
//! minutes and queues the tenants whose slot has come: each tenant's slots are the
//! interval's multiples shifted by an offset drawn from its id, which spreads tenants over
//! the interval instead of starting them all at :00.

use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::state::{Phase, Requests, SyncState};

/// The sync schedule.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// A tenant is synced once per interval (`SYNC_INTERVAL_MINUTES`).
    pub interval: Duration,
    /// A queued round that has not started after this long is queued again (its message
    /// was lost or went to the poison queue).
    pub requeue_after: Duration,
}

/// Why a round is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncRequest {
    /// Its slot came.
    Due,
    /// An unfinished round to resume (killed, throttled, or storage failed).
    Resume,
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1)
}

impl Schedule {
    /// This tenant's offset within the interval, in seconds, stable across processes.
    pub fn offset(&self, tenant: Uuid) -> i64 {
        let h = tenant.as_u128();
        ((h ^ (h >> 64)) as u64 % secs(self.interval) as u64) as i64
    }

    /// The start of the tenant's latest slot at or before `now`.
    pub fn slot_start(&self, tenant: Uuid, now: OffsetDateTime) -> OffsetDateTime {
        let interval = secs(self.interval);
        let t = now.unix_timestamp() - self.offset(tenant);
        let start = t.div_euclid(interval) * interval + self.offset(tenant);
        OffsetDateTime::from_unix_timestamp(start).unwrap_or(now)
    }

    /// When the tenant's next round is due.
    pub fn next_due(&self, state: &SyncState, now: OffsetDateTime) -> OffsetDateTime {
        let interval = time::Duration::seconds(secs(self.interval));
        let by_slot = match state.last_success_started {
            None => now,
            Some(last) if last < self.slot_start(state.tenant, now) => now,
            Some(_) => self.slot_start(state.tenant, now) + interval,
        };
        match state.next_attempt_at {
            Some(t) if t > by_slot => t,
            _ => by_slot,
        }
    }

    /// Whether to queue a round for an active tenant now.
    pub fn due(
        &self,
        state: &SyncState,
        requests: &Requests,
        now: OffsetDateTime,
    ) -> Option<SyncRequest> {
        if state.is_running(now) || state.next_attempt_at.is_some_and(|t| t > now) {
            return None;
        }
        // queued and not started yet: wait for that message unless it looks lost
        let requeue = time::Duration::seconds(secs(self.requeue_after));
        let started = state
            .round_started
            .or(state.last.as_ref().map(|l| l.started));
        if let Some(queued) = requests.queued_at
            && started.is_none_or(|s| s < queued)
            && now - queued < requeue
        {
            return None;
        }
        if state.phase != Phase::Idle {
            return Some(SyncRequest::Resume);
        }
        (self.next_due(state, now) <= now).then_some(SyncRequest::Due)
    }

    /// Whether a round that is about to start (from an idle state) is still due: a message
    /// that repeats after its round already ran is dropped.
    pub fn still_due(&self, state: &SyncState, now: OffsetDateTime) -> bool {
        self.next_due(state, now) <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn schedule() -> Schedule {
        Schedule {
            interval: Duration::from_secs(45 * 60),
            requeue_after: Duration::from_secs(10 * 60),
        }
    }

    #[test]
    fn a_tenant_never_synced_is_due_at_once() {
        let s = SyncState::new(Uuid::new_v4());
        let now = datetime!(2026-12-01 10:00 UTC);
        assert_eq!(
            schedule().due(&s, &Requests::default(), now),
            Some(SyncRequest::Due)
        );
    }

    #[test]
    fn a_tenant_is_due_once_per_slot_and_slots_spread() {
        let sch = schedule();
        let tenant = Uuid::new_v4();
        let now = datetime!(2026-12-01 10:00 UTC);
        let mut s = SyncState::new(tenant);
        s.last_success_started = Some(sch.slot_start(tenant, now) + time::Duration::SECOND);
        assert_eq!(sch.due(&s, &Requests::default(), now), None);
        let next = sch.next_due(&s, now);
        assert_eq!(
            next - sch.slot_start(tenant, now),
            time::Duration::minutes(45)
        );
        assert_eq!(
            sch.due(&s, &Requests::default(), next),
            Some(SyncRequest::Due)
        );
        // 100 tenants: their offsets are not all in one minute
        let offsets: std::collections::HashSet<i64> =
            (0..100).map(|_| sch.offset(Uuid::new_v4()) / 60).collect();
        assert!(offsets.len() > 20, "{offsets:?}");
    }

    #[test]
    fn queued_running_and_backed_off_tenants_are_not_queued_again() {
        let sch = schedule();
        let now = datetime!(2026-12-01 10:00 UTC);
        let mut s = SyncState::new(Uuid::new_v4());
        let queued = Requests {
            queued_at: Some(now - time::Duration::minutes(2)),
            ..Requests::default()
        };
        assert_eq!(sch.due(&s, &queued, now), None);
        let lost = Requests {
            queued_at: Some(now - time::Duration::minutes(11)),
            ..Requests::default()
        };
        assert_eq!(sch.due(&s, &lost, now), Some(SyncRequest::Due));
        s.lease_until = Some(now + time::Duration::SECOND);
        assert_eq!(sch.due(&s, &Requests::default(), now), None);
        s.lease_until = None;
        s.next_attempt_at = Some(now + time::Duration::minutes(1));
        assert_eq!(sch.due(&s, &Requests::default(), now), None);
        s.next_attempt_at = None;
        s.phase = Phase::Groups;
        assert_eq!(
            sch.due(&s, &Requests::default(), now),
            Some(SyncRequest::Resume)
        );
    }
}
