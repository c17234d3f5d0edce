//! Incidents: one notification when something starts failing, repeats counted into it, a
//! reminder at most daily while it lasts, and a recovery notice when it clears.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::event::{Event, Outcome};

/// What can fail in a way someone must hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// Directory sync rounds failing.
    SyncFailing,
    /// Entra's SCIM requests failing.
    ScimFailing,
    /// The tenant withdrew its consent (Graph refuses the app).
    ConsentRevoked,
    /// A CA or app credential certificate expires within 30 days.
    CertificateExpiring,
    /// A queue message could not be processed and went to the poison queue.
    PoisonMessage,
}

impl IncidentKind {
    /// Every kind, for settings.
    pub const ALL: [IncidentKind; 5] = [
        IncidentKind::SyncFailing,
        IncidentKind::ScimFailing,
        IncidentKind::ConsentRevoked,
        IncidentKind::CertificateExpiring,
        IncidentKind::PoisonMessage,
    ];

    /// The kind's name in settings and payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::SyncFailing => "sync_failing",
            IncidentKind::ScimFailing => "scim_failing",
            IncidentKind::ConsentRevoked => "consent_revoked",
            IncidentKind::CertificateExpiring => "certificate_expiring",
            IncidentKind::PoisonMessage => "poison_message",
        }
    }

    /// The kind from its name.
    pub fn parse(s: &str) -> Option<IncidentKind> {
        IncidentKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What an event says about incidents: a failure of a kind, or that kinds work again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    Failure { kind: IncidentKind, reason: String },
    Recovery(&'static [IncidentKind]),
}

/// The queue incident notices travel through: its poison messages are recorded, never
/// notified (a notice about notices failing would take the road that fails).
pub const NOTICE_QUEUE: &str = "notifications";

/// The incident signal of an event, if any. SCIM's 404 and 412 are Entra's normal flow
/// (matching, concurrency), not failures.
pub fn signal_of(event: &Event) -> Option<Signal> {
    let failure = |kind, code: &str, reason: &str| {
        Some(Signal::Failure {
            kind,
            reason: format!("{}: {reason} ({code})", event.action),
        })
    };
    if event.action.starts_with("scim.user.") || event.action.starts_with("scim.group.") {
        return match &event.outcome {
            Outcome::Failure { code, .. } if code == "404" || code == "412" => None,
            Outcome::Failure { code, reason } => failure(IncidentKind::ScimFailing, code, reason),
            Outcome::Success => Some(Signal::Recovery(&[IncidentKind::ScimFailing])),
            Outcome::Pending => None,
        };
    }
    if event.action == "sync.round" {
        return match &event.outcome {
            Outcome::Failure { code, reason } if code == "access_revoked" => {
                failure(IncidentKind::ConsentRevoked, code, reason)
            }
            Outcome::Failure { code, reason } => failure(IncidentKind::SyncFailing, code, reason),
            // a round that completes also ends a poisoned sync message's incident: the
            // tenant's sync works again
            Outcome::Success => Some(Signal::Recovery(&[
                IncidentKind::SyncFailing,
                IncidentKind::ConsentRevoked,
                IncidentKind::PoisonMessage,
            ])),
            Outcome::Pending => None,
        };
    }
    // a certificate within 30 days of its expiry; success: none is any more (renewed)
    if event.action == "certificate.expiring" {
        return match &event.outcome {
            Outcome::Failure { code, reason } => {
                failure(IncidentKind::CertificateExpiring, code, reason)
            }
            Outcome::Success => Some(Signal::Recovery(&[IncidentKind::CertificateExpiring])),
            Outcome::Pending => None,
        };
    }
    // `queue.poison`: the failure's code is the queue the message came from
    if event.action == "queue.poison" {
        return match &event.outcome {
            Outcome::Failure { code, .. } if code == NOTICE_QUEUE => None,
            // a message naming no tenant is recorded in the admin tenant's trail, but no
            // sync round of that tenant would ever close an incident about it
            Outcome::Failure { .. } if event.target.kind != "tenant" => None,
            Outcome::Failure { code, reason } => failure(IncidentKind::PoisonMessage, code, reason),
            _ => None,
        };
    }
    None
}

/// An open incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub kind: IncidentKind,
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_failure_at: OffsetDateTime,
    /// Failures counted into it, the first included.
    pub failures: u64,
    /// When the last notification about it was sent (opened or reminder).
    #[serde(with = "time::serde::rfc3339")]
    pub last_notified_at: OffsetDateTime,
    /// The first failure's reason.
    pub reason: String,
    /// The latest failure's reason.
    pub last_reason: String,
}

/// Which notification a change of an incident sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    Opened,
    Reminder,
    Recovered,
    /// Sent by the test button.
    Test,
}

/// How often an open incident is reminded of.
pub const REMINDER_EVERY: Duration = Duration::days(1);

/// The incident after a failure, and the notice to send (opened, or a daily reminder).
pub fn on_failure(
    current: Option<Incident>,
    kind: IncidentKind,
    reason: &str,
    now: OffsetDateTime,
) -> (Incident, Option<NoticeKind>) {
    on_failures(current, kind, reason, now, 1)
}

/// [`on_failure`] for `count` failures at once (those that made a rate cross its
/// threshold are all counted into the incident they open).
pub fn on_failures(
    current: Option<Incident>,
    kind: IncidentKind,
    reason: &str,
    now: OffsetDateTime,
    count: u64,
) -> (Incident, Option<NoticeKind>) {
    let count = count.max(1);
    match current {
        None => (
            Incident {
                kind,
                opened_at: now,
                last_failure_at: now,
                failures: count,
                last_notified_at: now,
                reason: reason.to_string(),
                last_reason: reason.to_string(),
            },
            Some(NoticeKind::Opened),
        ),
        Some(mut open) => {
            open.failures += count;
            open.last_failure_at = now;
            open.last_reason = reason.to_string();
            if now - open.last_notified_at >= REMINDER_EVERY {
                open.last_notified_at = now;
                (open, Some(NoticeKind::Reminder))
            } else {
                (open, None)
            }
        }
    }
}

/// After a success: an open incident closes with a recovery notice.
pub fn on_success(current: Option<&Incident>) -> Option<NoticeKind> {
    current.map(|_| NoticeKind::Recovered)
}

/// How long SCIM requests are counted for their failure rate.
pub const RATE_WINDOW: Duration = Duration::minutes(5);

/// When failing SCIM requests are an incident: at least `percent` of the requests of the
/// last [`RATE_WINDOW`] failed, over at least `min_requests` requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateThreshold {
    pub percent: u8,
    pub min_requests: u32,
}

impl Default for RateThreshold {
    fn default() -> Self {
        RateThreshold {
            percent: 10,
            min_requests: 10,
        }
    }
}

impl RateThreshold {
    /// Whether `failures` of `requests` cross it.
    pub fn crossed(&self, requests: u64, failures: u64) -> bool {
        requests > 0
            && requests >= u64::from(self.min_requests)
            && failures * 100 >= u64::from(self.percent) * requests
    }

    /// Whether an open incident has cleared (hysteresis: a success alone is not enough,
    /// else a steady rate above the threshold would open and close it every few requests):
    /// the rate is under the threshold over at least `min_requests` requests, or a whole
    /// window (`whole_window`: counted for at least [`RATE_WINDOW`]) passed with requests
    /// and without a failure.
    pub fn cleared(&self, requests: u64, failures: u64, whole_window: bool) -> bool {
        let under = requests >= u64::from(self.min_requests.max(1))
            && failures * 100 < u64::from(self.percent) * requests;
        let quiet = whole_window && requests > 0 && failures == 0;
        under || quiet
    }
}

/// One tenant's SCIM requests over the last [`RATE_WINDOW`], counted per second (bounded
/// memory whatever the traffic) by the time each happened, so a signal processed late or
/// out of order still counts in its own second.
#[derive(Debug, Clone, Default)]
pub struct FailureRate {
    /// (unix second, requests, failures), oldest first.
    seconds: std::collections::VecDeque<(i64, u64, u64)>,
    /// The earliest request counted: whether the window is whole yet.
    since: Option<OffsetDateTime>,
}

impl FailureRate {
    /// Counts a request made at `at`.
    pub fn record(&mut self, at: OffsetDateTime, failed: bool) {
        let second = at.unix_timestamp();
        let newest = self.newest().max(second);
        self.forget_before(newest);
        if second <= newest - RATE_WINDOW.whole_seconds() {
            return; // older than the window
        }
        self.since = Some(self.since.map_or(at, |s| s.min(at)));
        let failed = u64::from(failed);
        match self.seconds.iter().rposition(|(s, _, _)| *s <= second) {
            Some(i) if self.seconds[i].0 == second => {
                self.seconds[i].1 += 1;
                self.seconds[i].2 += failed;
            }
            Some(i) => self.seconds.insert(i + 1, (second, 1, failed)),
            None => self.seconds.push_front((second, 1, failed)),
        }
    }

    /// (requests, failures) of the window ending at `now` (or at the newest request
    /// counted, when that is later).
    pub fn counts(&mut self, now: OffsetDateTime) -> (u64, u64) {
        self.forget_before(self.newest().max(now.unix_timestamp()));
        self.seconds
            .iter()
            .fold((0, 0), |(r, f), (_, requests, failures)| {
                (r + requests, f + failures)
            })
    }

    /// Whether requests were counted for a whole [`RATE_WINDOW`] up to `now`: only then
    /// does a window without failures say that none happened.
    pub fn whole_window(&self, now: OffsetDateTime) -> bool {
        self.since.is_some_and(|s| now - s >= RATE_WINDOW)
    }

    fn newest(&self) -> i64 {
        self.seconds.back().map_or(i64::MIN, |(s, _, _)| *s)
    }

    fn forget_before(&mut self, newest_second: i64) {
        let oldest = newest_second - RATE_WINDOW.whole_seconds();
        while self.seconds.front().is_some_and(|(s, _, _)| *s <= oldest) {
            self.seconds.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn a_thousand_failures_notify_once_and_a_recovery_once() {
        let mut now = datetime!(2026-12-01 10:00 UTC);
        let mut incident = None;
        let mut notices = Vec::new();
        for _ in 0..1000 {
            let (next, notice) = on_failure(incident.take(), IncidentKind::ScimFailing, "x", now);
            notices.extend(notice);
            incident = Some(next);
            now += Duration::seconds(1);
        }
        assert_eq!(notices, vec![NoticeKind::Opened]);
        assert_eq!(incident.as_ref().unwrap().failures, 1000);
        assert_eq!(on_success(incident.as_ref()), Some(NoticeKind::Recovered));
        assert_eq!(on_success(None), None);
    }

    #[test]
    fn a_few_failures_among_many_successes_stay_under_the_rate() {
        let threshold = RateThreshold::default();
        let mut rate = FailureRate::default();
        let now = datetime!(2026-12-01 10:00 UTC);
        for i in 0..100 {
            rate.record(now + Duration::milliseconds(i * 10), i % 20 == 0);
        }
        let (requests, failures) = rate.counts(now + Duration::seconds(2));
        assert_eq!((requests, failures), (100, 5));
        assert!(!threshold.crossed(requests, failures));
        // too few requests to judge, however many failed
        assert!(!threshold.crossed(9, 9));
        assert!(threshold.crossed(10, 1));
        // requests older than the window no longer count
        assert_eq!(
            rate.counts(now + RATE_WINDOW + Duration::seconds(2)),
            (0, 0)
        );
    }

    #[test]
    fn an_open_rate_incident_clears_only_under_the_rate_over_enough_requests_or_after_a_quiet_window()
     {
        let threshold = RateThreshold::default(); // 10 % over at least 10
        // a steady 20 %: a success among them does not clear it
        assert!(!threshold.cleared(10, 2, false));
        assert!(!threshold.cleared(1000, 200, true));
        // exactly at the rate is still failing
        assert!(!threshold.cleared(100, 10, false));
        assert!(threshold.cleared(100, 9, false));
        // too few requests to say the rate is down, unless a whole window had no failure
        assert!(!threshold.cleared(5, 0, false));
        assert!(threshold.cleared(5, 0, true));
        assert!(!threshold.cleared(0, 0, true));
    }

    #[test]
    fn requests_count_in_the_second_they_happened_even_when_counted_out_of_order() {
        let now = datetime!(2026-12-01 10:00 UTC);
        let mut rate = FailureRate::default();
        rate.record(now + Duration::seconds(10), true);
        // a request of an earlier second whose signal came later
        rate.record(now + Duration::seconds(3), false);
        rate.record(now + Duration::seconds(10), false);
        assert_eq!(rate.counts(now + Duration::seconds(10)), (3, 1));
        // the earlier second leaves the window first
        assert_eq!(
            rate.counts(now + RATE_WINDOW + Duration::seconds(5)),
            (2, 1)
        );
        // one older than the window of the newest is not counted
        rate.record(now + Duration::seconds(10) - RATE_WINDOW, true);
        assert_eq!(rate.counts(now + Duration::seconds(10)), (2, 1));
        // counted from the earliest request on
        assert!(!rate.whole_window(now + Duration::seconds(10)));
        assert!(rate.whole_window(now + RATE_WINDOW + Duration::seconds(3)));
    }

    fn poisoned(queue: &str) -> Event {
        Event::new(
            uuid::Uuid::nil(),
            crate::Actor::system("SyncTenantPoison"),
            "queue.poison",
            crate::Target::new("tenant", uuid::Uuid::nil()),
        )
        .failed(queue, "moved to the poison queue")
    }

    #[test]
    fn a_poisoned_sync_message_opens_a_poison_incident_but_a_poisoned_notice_does_not() {
        match signal_of(&poisoned("sync-tenants")) {
            Some(Signal::Failure { kind, reason }) => {
                assert_eq!(kind, IncidentKind::PoisonMessage);
                assert!(reason.contains("sync-tenants"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(signal_of(&poisoned(NOTICE_QUEUE)), None);
    }

    #[test]
    fn a_poisoned_message_naming_no_tenant_opens_no_incident() {
        let mut event = poisoned("sync-tenants");
        event.target = crate::Target::new("queue", "sync-tenants-poison");
        assert_eq!(signal_of(&event), None);
    }

    #[test]
    fn an_incident_that_lasts_is_reminded_of_daily() {
        let start = datetime!(2026-12-01 10:00 UTC);
        let (open, _) = on_failure(None, IncidentKind::SyncFailing, "x", start);
        let (open, notice) = on_failure(
            Some(open),
            IncidentKind::SyncFailing,
            "x",
            start + Duration::hours(23),
        );
        assert_eq!(notice, None);
        let (_, notice) = on_failure(
            Some(open),
            IncidentKind::SyncFailing,
            "x",
            start + Duration::hours(25),
        );
        assert_eq!(notice, Some(NoticeKind::Reminder));
    }
}
