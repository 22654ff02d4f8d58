//! `tollgate-control-plane`: reads its settings, migrates, serves until SIGTERM or Ctrl-C.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use std::process::ExitCode;
use tollgate_common::config::ProcessEnv;
use tollgate_common::telemetry;
use tollgate_control_plane::{App, Config};

fn main() -> ExitCode {
    let config = match Config::from_env(&ProcessEnv) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tollgate-control-plane: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = telemetry::init(
        "tollgate-control-plane",
        config.common.log_format,
        config.common.sentry_dsn.as_ref(),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate-control-plane: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "control plane stopped");
            eprintln!("tollgate-control-plane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let app = App::start(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding TOLLGATE_CP_LISTEN {listen}"))?;
    tracing::info!(listen = %listener.local_addr()?, "control plane listening");
    tollgate_control_plane::run(app, listener, shutdown_signal()).await?;
    tracing::info!("control plane stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
