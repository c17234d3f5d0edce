//! Notifications: incidents from the audit trail's events, queued notices, and their
//! delivery by e-mail (SMTP with STARTTLS and authentication) and signed webhook.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use audit::incident::{self, FailureRate, IncidentKind, Signal};
use audit::notify::{Notice, NotificationSettings, NotificationStore};
use audit::{AuditError, Event, EventObserver};
use tokio::sync::mpsc;
use uuid::Uuid;

/// The queue notices wait in (see functions/NotificationDelivery/function.json).
pub const QUEUE: &str = audit::incident::NOTICE_QUEUE;
/// The header carrying a webhook body's HMAC-SHA256, as `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-entra-connector-signature";
/// Webhook attempts per delivery (the queue retries the delivery after that).
const WEBHOOK_ATTEMPTS: u32 = 3;
/// How long an instance trusts what it knows of a tenant's settings and incidents.
const CACHE_FOR: Duration = Duration::from_secs(30);

/// `SMTP_*`: the relay notices are mailed through.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    /// The vault secret holding the password (`SMTP_PASSWORD_SECRET_NAME`).
    pub password_secret: Option<String>,
    pub from: String,
    /// `SMTP_CA_FILE`: an extra trusted root (a private relay's CA), PEM.
    pub ca_file: Option<std::path::PathBuf>,
}

/// The vault secret a tenant's webhook signatures are made with.
pub fn webhook_secret_name(tenant: Uuid) -> String {
    format!("notifications-webhook-{tenant}")
}

/// Why a notice could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{0}")]
    Store(#[from] AuditError),
    #[error("vault: {0}")]
    Vault(String),
    #[error("e-mail: {0}")]
    Mail(String),
    #[error("webhook: {0}")]
    Webhook(String),
}

/// A signal, its tenant and when its event happened.
type Signalled = (Uuid, time::OffsetDateTime, Signal);
type Signals = mpsc::UnboundedSender<Signalled>;

/// Incidents and their notices.
pub struct Notifications {
    pub store: Arc<dyn NotificationStore>,
    vault: Arc<dyn vault::Vault>,
    queue: Option<queues::Queue>,
    smtp: Option<SmtpSettings>,
    http: reqwest::Client,
    signals: Signals,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Signalled>>>,
    settings: Mutex<HashMap<Uuid, (Instant, Option<NotificationSettings>)>>,
    /// Whether an incident is open, as last seen.
    open: Mutex<HashMap<(Uuid, IncidentKind), (Instant, bool)>>,
    /// Each tenant's SCIM requests of the last minutes, as this instance served them.
    scim_rates: Mutex<HashMap<Uuid, FailureRate>>,
}

/// Feeds recorded events to the incident worker without waiting for it.
struct Observer(Signals);

impl EventObserver for Observer {
    fn recorded(&self, event: &Event) {
        if let Some(signal) = incident::signal_of(event) {
            let _ = self.0.send((event.tenant, event.time, signal));
        }
    }
}

impl Notifications {
    /// The service; call [`Notifications::observer`] for the audit trail and
    /// [`Notifications::run`] once to process incidents.
    pub fn new(
        store: Arc<dyn NotificationStore>,
        vault: Arc<dyn vault::Vault>,
        queue: Option<queues::Queue>,
        smtp: Option<SmtpSettings>,
    ) -> Notifications {
        let (signals, receiver) = mpsc::unbounded_channel();
        Notifications {
            store,
            vault,
            queue,
            smtp,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client builds"),
            signals,
            receiver: Mutex::new(Some(receiver)),
            settings: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            scim_rates: Mutex::new(HashMap::new()),
        }
    }

    /// What the audit trail tells about each event.
    pub fn observer(&self) -> Arc<dyn EventObserver> {
        Arc::new(Observer(self.signals.clone()))
    }

    /// Forgets a tenant's cached settings (after they change).
    pub fn forget(&self, tenant: Uuid) {
        self.settings.lock().expect("not poisoned").remove(&tenant);
    }

    async fn settings_of(&self, tenant: Uuid) -> Result<Option<NotificationSettings>, AuditError> {
        if let Some((at, s)) = self.settings.lock().expect("not poisoned").get(&tenant)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(s.clone());
        }
        let s = self.store.settings(tenant).await?;
        self.settings
            .lock()
            .expect("not poisoned")
            .insert(tenant, (Instant::now(), s.clone()));
        Ok(s)
    }

    /// Processes incident signals one at a time until the service is dropped.
    pub async fn run(self: Arc<Self>) {
        let Some(mut receiver) = self.receiver.lock().expect("not poisoned").take() else {
            return;
        };
        while let Some((tenant, at, signal)) = receiver.recv().await {
            if let Err(e) = self.handle(tenant, at, signal).await {
                tracing::warn!(%tenant, error = %e, "incident not updated");
            }
        }
    }

    /// `at`: when the event happened (the SCIM rate counts by it, not by when the signal
    /// is processed, which may be much later under load).
    async fn handle(
        &self,
        tenant: Uuid,
        at: time::OffsetDateTime,
        signal: Signal,
    ) -> Result<(), AuditError> {
        let Some(settings) = self.settings_of(tenant).await? else {
            return Ok(());
        };
        match signal {
            Signal::Failure { kind, reason } if settings.wants(kind) => {
                let now = time::OffsetDateTime::now_utc();
                // SCIM failures are an incident only above the tenant's failure rate
                let window = (kind == IncidentKind::ScimFailing)
                    .then(|| self.count_scim(tenant, at, true))
                    .map(|(requests, failures, _)| (requests, failures));
                for _ in 0..8 {
                    let current = self.store.incident(tenant, kind).await?;
                    let count = match (&current, window) {
                        (None, Some((requests, failures)))
                            if !settings.scim_failure_rate.crossed(requests, failures) =>
                        {
                            return Ok(());
                        }
                        // the failures that crossed it are all counted into the incident
                        (None, Some((_, failures))) => failures,
                        _ => 1,
                    };
                    let version = current.as_ref().map(|(_, v)| v.clone());
                    let (next, notice) =
                        incident::on_failures(current.map(|(i, _)| i), kind, &reason, now, count);
                    if self
                        .store
                        .save_incident(tenant, &next, version.as_ref())
                        .await?
                    {
                        self.set_open(tenant, kind, true);
                        if let Some(notice) = notice {
                            self.enqueue(Notice {
                                id: Uuid::new_v4().to_string(),
                                tenant,
                                notice,
                                kind: Some(kind),
                                incident: Some(next),
                            })
                            .await;
                        }
                        return Ok(());
                    }
                }
                Ok(())
            }
            Signal::Recovery(kinds) => {
                // a SCIM success ends the incident only once the rate has cleared
                // (hysteresis), and the window is kept: a rate that stays above the
                // threshold keeps its one incident open
                let scim_cleared = kinds.contains(&IncidentKind::ScimFailing)
                    && settings.wants(IncidentKind::ScimFailing)
                    && {
                        let (requests, failures, whole) = self.count_scim(tenant, at, false);
                        settings
                            .scim_failure_rate
                            .cleared(requests, failures, whole)
                    };
                for kind in kinds.iter().copied().filter(|k| settings.wants(*k)) {
                    if (kind == IncidentKind::ScimFailing && !scim_cleared)
                        || self.known_closed(tenant, kind)
                    {
                        continue;
                    }
                    match self.store.incident(tenant, kind).await? {
                        None => self.set_open(tenant, kind, false),
                        Some((open, version)) => {
                            if self.store.close_incident(tenant, kind, &version).await? {
                                self.set_open(tenant, kind, false);
                                if let Some(notice) = incident::on_success(Some(&open)) {
                                    self.enqueue(Notice {
                                        id: Uuid::new_v4().to_string(),
                                        tenant,
                                        notice,
                                        kind: Some(kind),
                                        incident: Some(open),
                                    })
                                    .await;
                                }
                            }
                        }
                    }
                }
                Ok(())
            }
            Signal::Failure { .. } => Ok(()),
        }
    }

    /// Counts a SCIM request of `tenant` made at `at`; returns the window's (requests,
    /// failures) and whether it is a whole window.
    fn count_scim(&self, tenant: Uuid, at: time::OffsetDateTime, failed: bool) -> (u64, u64, bool) {
        let mut rates = self.scim_rates.lock().expect("not poisoned");
        let rate = rates.entry(tenant).or_default();
        rate.record(at, failed);
        let (requests, failures) = rate.counts(at);
        (requests, failures, rate.whole_window(at))
    }

    fn known_closed(&self, tenant: Uuid, kind: IncidentKind) -> bool {
        self.open
            .lock()
            .expect("not poisoned")
            .get(&(tenant, kind))
            .is_some_and(|(at, open)| !open && at.elapsed() < CACHE_FOR)
    }

    fn set_open(&self, tenant: Uuid, kind: IncidentKind, open: bool) {
        self.open
            .lock()
            .expect("not poisoned")
            .insert((tenant, kind), (Instant::now(), open));
    }

    /// Queues a notice for delivery; without a queue service it is delivered at once.
    async fn enqueue(&self, notice: Notice) {
        let message = serde_json::to_value(&notice).expect("a notice serializes");
        match &self.queue {
            Some(queue) => {
                let sent = match queue.send_json(&message).await {
                    // first use: the queue is made on demand
                    Err(queues::Error::QueueNotFound) => match queue.create_if_missing().await {
                        Ok(()) => queue.send_json(&message).await,
                        Err(e) => Err(e),
                    },
                    other => other,
                };
                if let Err(e) = sent {
                    tracing::error!(tenant = %notice.tenant, error = %e, "notice not queued");
                }
            }
            None => {
                if let Err(e) = self.deliver(&notice).await {
                    tracing::error!(tenant = %notice.tenant, error = %e, "notice not delivered");
                }
            }
        }
    }

    /// Sends a notice to the tenant's recipients and webhook.
    pub async fn deliver(&self, notice: &Notice) -> Result<(), DeliveryError> {
        let Some(settings) = self.store.settings(notice.tenant).await? else {
            return Ok(());
        };
        let mail = match settings.emails.is_empty() {
            true => Ok(()),
            false => self.mail(notice, &settings.emails).await,
        };
        let hook = match &settings.webhook_url {
            None => Ok(()),
            Some(url) => self.webhook(notice, url).await,
        };
        mail.and(hook)
    }

    async fn mail(&self, notice: &Notice, to: &[String]) -> Result<(), DeliveryError> {
        use lettre::message::Mailbox;
        use lettre::transport::smtp::authentication::Credentials;
        use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
        use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
        let smtp = self
            .smtp
            .as_ref()
            .ok_or_else(|| DeliveryError::Mail("SMTP_HOST is not set".into()))?;
        let bad = |e: &dyn std::fmt::Display| DeliveryError::Mail(e.to_string());
        let mut message = Message::builder()
            .from(smtp.from.parse::<Mailbox>().map_err(|e| bad(&e))?)
            .subject(notice.subject());
        for recipient in to {
            message = message.to(recipient.parse::<Mailbox>().map_err(|e| bad(&e))?);
        }
        let message = message.body(notice.text()).map_err(|e| bad(&e))?;
        let mut tls = TlsParameters::builder(smtp.host.clone());
        if let Some(file) = &smtp.ca_file {
            let pem = std::fs::read(file).map_err(|e| bad(&e))?;
            tls = tls.add_root_certificate(Certificate::from_pem(&pem).map_err(|e| bad(&e))?);
        }
        let tls = tls.build().map_err(|e| bad(&e))?;
        let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
            .port(smtp.port)
            // STARTTLS is required: the password never goes in the clear
            .tls(Tls::Required(tls))
            .timeout(Some(Duration::from_secs(20)));
        if let Some(user) = &smtp.username {
            let password = match &smtp.password_secret {
                Some(name) => self
                    .vault
                    .get_secret(name)
                    .await
                    .map_err(|e| DeliveryError::Vault(e.to_string()))?
                    .ok_or_else(|| DeliveryError::Vault(format!("no secret {name}")))?,
                None => String::new(),
            };
            transport = transport.credentials(Credentials::new(user.clone(), password));
        }
        transport
            .build()
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| bad(&e))
    }

    async fn webhook(&self, notice: &Notice, url: &str) -> Result<(), DeliveryError> {
        let secret = self
            .vault
            .get_secret(&webhook_secret_name(notice.tenant))
            .await
            .map_err(|e| DeliveryError::Vault(e.to_string()))?
            .ok_or_else(|| {
                DeliveryError::Webhook("no signing secret; PUT the settings again".into())
            })?;
        let mut payload = serde_json::to_value(notice).expect("a notice serializes");
        payload["subject"] = notice.subject().into();
        payload["text"] = notice.text().into();
        let body = serde_json::to_vec(&payload).expect("JSON serializes");
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
        let signature: String = aws_lc_rs::hmac::sign(&key, &body)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut last = String::new();
        for attempt in 0..WEBHOOK_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
            let sent = self
                .http
                .post(url)
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, format!("sha256={signature}"))
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return Ok(()),
                // a refusal other than overload or throttling will not change on retry
                Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                    return Err(DeliveryError::Webhook(format!("answered {}", r.status())));
                }
                Ok(r) => last = format!("answered {}", r.status()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(DeliveryError::Webhook(last))
    }
}

/// Checks a webhook URL: https, or http on a loopback address (tests, local runs).
pub fn check_webhook_url(raw: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("webhook_url: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err("webhook_url must be https (http only on loopback)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit::incident::Incident;

    /// Incidents in memory, versioned like the table's ETags.
    #[derive(Default)]
    struct Memory {
        settings: Option<NotificationSettings>,
        incidents: Mutex<HashMap<(Uuid, IncidentKind), (Incident, u64)>>,
    }

    #[async_trait::async_trait]
    impl NotificationStore for Memory {
        async fn settings(&self, _: Uuid) -> Result<Option<NotificationSettings>, AuditError> {
            Ok(self.settings.clone())
        }
        async fn put_settings(&self, _: Uuid, _: &NotificationSettings) -> Result<(), AuditError> {
            unimplemented!("not used")
        }
        async fn incident(
            &self,
            tenant: Uuid,
            kind: IncidentKind,
        ) -> Result<Option<(Incident, tables::ETag)>, AuditError> {
            let incidents = self.incidents.lock().unwrap();
            Ok(incidents
                .get(&(tenant, kind))
                .map(|(i, v)| (i.clone(), tables::ETag(v.to_string()))))
        }
        async fn save_incident(
            &self,
            tenant: Uuid,
            incident: &Incident,
            version: Option<&tables::ETag>,
        ) -> Result<bool, AuditError> {
            let mut incidents = self.incidents.lock().unwrap();
            let key = (tenant, incident.kind);
            let current = incidents.get(&key).map(|(_, v)| v.to_string());
            if current.as_deref() != version.map(|v| v.0.as_str()) {
                return Ok(false);
            }
            let next = current.map_or(1, |v| v.parse::<u64>().unwrap() + 1);
            incidents.insert(key, (incident.clone(), next));
            Ok(true)
        }
        async fn close_incident(
            &self,
            tenant: Uuid,
            kind: IncidentKind,
            version: &tables::ETag,
        ) -> Result<bool, AuditError> {
            let mut incidents = self.incidents.lock().unwrap();
            match incidents.get(&(tenant, kind)) {
                Some((_, v)) if v.to_string() == version.0 => {
                    incidents.remove(&(tenant, kind));
                    Ok(true)
                }
                _ => Ok(false),
            }
        }
    }

    fn service(store: Arc<Memory>) -> Notifications {
        let vault = vault::LocalVault::new(
            std::env::temp_dir().join(format!("notifications-unit-{}", Uuid::new_v4())),
        );
        // no queue and no SMTP: a notice's delivery fails at once, which is not looked at
        Notifications::new(store, Arc::new(vault), None, None)
    }

    #[tokio::test]
    async fn the_scim_rate_counts_each_request_at_its_event_time_not_when_it_is_processed() {
        let store = Arc::new(Memory {
            settings: Some(NotificationSettings {
                emails: vec!["ops@contoso.com".into()],
                webhook_url: None,
                notify_on: vec![IncidentKind::ScimFailing],
                scim_failure_rate: Default::default(),
            }),
            ..Memory::default()
        });
        let notifications = service(store.clone());
        let tenant = Uuid::new_v4();
        let failure = || Signal::Failure {
            kind: IncidentKind::ScimFailing,
            reason: "scim.user.update: refused (400)".into(),
        };
        let success = || Signal::Recovery(&[IncidentKind::ScimFailing]);
        let now = time::OffsetDateTime::now_utc();
        // nine failures ten minutes ago (too few to judge then), processed only now
        for _ in 0..9 {
            notifications
                .handle(tenant, now - time::Duration::minutes(10), failure())
                .await
                .unwrap();
        }
        // the last minute: ten successes and one failure, 9 %, under the default 10 %
        for _ in 0..10 {
            notifications.handle(tenant, now, success()).await.unwrap();
        }
        notifications.handle(tenant, now, failure()).await.unwrap();
        let open = store
            .incident(tenant, IncidentKind::ScimFailing)
            .await
            .unwrap();
        assert!(
            open.is_none(),
            "the failures of ten minutes ago are out of the window: {open:?}"
        );
    }

    #[test]
    fn webhooks_are_https_except_on_loopback() {
        assert!(check_webhook_url("https://hooks.example.com/x").is_ok());
        assert!(check_webhook_url("http://127.0.0.1:8080/x").is_ok());
        assert!(check_webhook_url("http://localhost/x").is_ok());
        assert!(check_webhook_url("http://hooks.example.com/x").is_err());
        assert!(check_webhook_url("ftp://127.0.0.1/x").is_err());
    }
}
