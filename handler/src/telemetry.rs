//! Logging through `tracing`: JSON lines or text on stdout. Nothing logs headers, and the
//! HTTP client crates are held at `warn` so their debug output cannot leak them either.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Crates whose debug output could include request details, and warp, whose per-request
/// events duplicate the Functions host's own request log (server errors still show).
const QUIET: &[(&str, &str)] = &[
    ("hyper", "warn"),
    ("hyper_util", "warn"),
    ("reqwest", "warn"),
    ("h2", "warn"),
    ("rustls", "warn"),
    ("azure_core", "warn"),
    ("azure_identity", "warn"),
    ("typespec_client_core", "warn"),
    ("warp", "error"),
];

/// Installs the global subscriber.
pub fn init(format: LogFormat, level: &str) {
    let mut filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    for (name, quiet) in QUIET {
        if !level.contains(name) {
            filter = filter.add_directive(
                format!("{name}={quiet}")
                    .parse()
                    .expect("a valid directive"),
            );
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder.compact().with_ansi(false).init(),
    }
}
