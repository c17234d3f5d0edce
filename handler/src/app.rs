//! The application state every function adapter receives.

use std::sync::Arc;

use crate::store::{RunLog, TableNames, TableRunLog};

/// How the handler was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Under the Functions host: the host fires timers and moves queue messages.
    Host,
    /// On its own: the handler fires timers and delivers queue outputs itself.
    Standalone,
}

impl Mode {
    /// The mode's name in health output and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Host => "host",
            Mode::Standalone => "standalone",
        }
    }
}

/// Shared state: the stores and what health reports.
pub struct App {
    pub version: &'static str,
    pub mode: Mode,
    pub tables: tables::TableServiceClient,
    pub table_names: TableNames,
    pub run_log: Arc<dyn RunLog>,
}

impl App {
    /// Builds the state over one storage account. Sends nothing over the network.
    pub fn new(mode: Mode, tables: tables::TableServiceClient, table_names: TableNames) -> App {
        let run_log = Arc::new(TableRunLog::new(tables.table(table_names.runs())));
        App {
            version: env!("CARGO_PKG_VERSION"),
            mode,
            tables,
            table_names,
            run_log,
        }
    }

    /// Creates every table this version uses (idempotent). Run in the background after
    /// the port is bound; writes also create their table on first use.
    pub async fn ensure_tables(&self) -> Result<(), tables::Error> {
        for name in self.table_names.all() {
            self.tables.create_table_if_not_exists(&name).await?;
        }
        Ok(())
    }
}
