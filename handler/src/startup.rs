//! Builds the application from settings and serves it: bind first, then everything else.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::app::{App, Mode};
use crate::config::Settings;
use crate::functions::{self, Dispatcher};
use crate::routes::{self, Invocations};

/// Why the handler could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Functions(#[from] host::DefinitionError),
    #[error("table storage client: {0}")]
    Tables(#[from] tables::Error),
    #[error("queue storage: {0}")]
    Queues(#[from] queues::Error),
    #[error("standalone runtime: {0}")]
    Standalone(#[from] host::StartError),
    #[error("development signing key: {0}")]
    DevKey(String),
}

/// Where the development signing key lives.
pub fn dev_key_path(settings: &Settings) -> std::path::PathBuf {
    settings.local_data_dir.join("dev-auth-key.p8")
}

/// Binds 127.0.0.1 on the configured port, then builds the app and serves until a shutdown signal.
pub async fn run(settings: Settings, mode: Mode) -> Result<(), StartError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, settings.port));
    // The host waits for this port; nothing touches the network before it is bound.
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;

    let catalog = Arc::new(functions::catalog()?);
    let storage = settings.storage_account()?;
    let tables = tables::TableServiceClient::new(storage.clone())?;
    // Queues need a queue endpoint; only `handler serve` with queue functions insists on one.
    let queues = match queues::Queues::new(&storage) {
        Ok(queues) => Some(queues),
        Err(e) if mode == Mode::Standalone && catalog.queue_use().is_some() => return Err(e.into()),
        Err(e) => {
            tracing::debug!(error = %e, "no queue service");
            None
        }
    };
    let dev_key = if settings.entra.dev_auth {
        let signer = entra::dev::DevSigner::load_or_create(&dev_key_path(&settings))
            .map_err(StartError::DevKey)?;
        tracing::warn!(
            kid = signer.kid(),
            "ENTRA_DEV_AUTH is on: development tokens are trusted (never use this in production)"
        );
        Some(signer.verifying_key())
    } else {
        None
    };
    let vault = settings.vault()?;
    let sync_queue = queues
        .as_ref()
        .and_then(|q| q.queue(functions::sync::QUEUE).ok());
    let notification_queue = queues
        .as_ref()
        .and_then(|q| q.queue(crate::notifications::QUEUE).ok());
    let app = Arc::new(App::new(
        mode,
        &settings,
        tables,
        dev_key,
        vault,
        sync_queue,
        notification_queue,
    ));
    tokio::spawn(app.notifications.clone().run());
    let invocations = match mode {
        Mode::Host => Invocations::Host(Dispatcher::new(app.clone())),
        // real Storage queues, so that any number of `handler serve` share the work
        Mode::Standalone => Invocations::Standalone(host::Standalone::start(
            catalog.clone(),
            Arc::new(Dispatcher::new(app.clone())),
            queues.map(|q| (q, settings.queues.clone())),
        )?),
    };
    tracing::info!(%addr, mode = mode.as_str(), version = app.version, functions = catalog.iter().count(), "listening");

    let usage = app.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            tick.tick().await;
            usage.access.flush_usage().await;
            usage.access.sweep_caches();
            usage.scim.sweep_caches();
        }
    });

    let setup = app.clone();
    tokio::spawn(async move {
        if let Err(e) = setup.ensure_tables().await {
            tracing::warn!(error = %e, "tables not created at start-up; they are created on first write");
        }
        // before the first SCIM request, so that no unauthenticated request waits for it
        if let Err(e) = setup.scim.load_token_key().await {
            tracing::warn!(error = %e, "the SCIM token key is not loaded yet; it is loaded on first use");
        }
    });

    warp::serve(routes::table(app, Arc::new(invocations)))
        .incoming(listener)
        .graceful(shutdown_signal())
        .run()
        .await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
