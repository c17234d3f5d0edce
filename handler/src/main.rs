//! `handler`: the entra-connector Azure Functions custom handler.

mod access;
mod app;
mod app_credentials;
mod auth;
mod cache;
mod certificates;
mod config;
mod dev_token;
mod domain;
mod functions;
mod lifecycle;
mod notifications;
mod onboarding;
mod openapi;
mod provisioning;
mod routes;
mod startup;
mod store;
mod telemetry;
mod trail;
mod upgrades;
mod writeback;

use std::process::ExitCode;

use app::Mode;

const USAGE: &str = "usage: handler [serve | host | dev-token ... | openapi | version | help]

  (no command)  under the Functions host when FUNCTIONS_CUSTOMHANDLER_PORT is set,
                otherwise the same as `serve`
  serve         run on its own: the same routes, plus timers from functions/*/function.json
                and in-process delivery of queue outputs
  host          run for the Functions host (it fires timers and moves queue messages)
  dev-token     mint a development token (ENTRA_DEV_AUTH=true only; see handler dev-token --help)
  openapi       print the OpenAPI 3.1 document (handler openapi > docs/openapi.json)
  version       print the version

Settings come from the environment; see local.settings.sample.json and docs/settings.md.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mode = match args.first().map(String::as_str) {
        None if std::env::var_os("FUNCTIONS_CUSTOMHANDLER_PORT").is_some() => Mode::Host,
        None | Some("serve") => Mode::Standalone,
        Some("host") => Mode::Host,
        Some("version" | "--version" | "-V") => {
            println!("handler {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some("dev-token") => return dev_token::run(&args[1..]),
        Some("openapi") => return openapi::run(&args[1..]),
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("handler: unknown command {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.len() > 1 {
        eprintln!(
            "handler: unexpected arguments after {:?}\n\n{USAGE}",
            args[0]
        );
        return ExitCode::from(2);
    }
    let settings = match config::Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("handler: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_format, &settings.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("handler: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(startup::run(settings, mode)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            eprintln!("handler: {e}");
            ExitCode::FAILURE
        }
    }
}
