//! `tollgate-proxy` (stub): validates its settings and serves `/healthz` on the metrics listener. The metering
//! proxy itself lands with the proxy issue.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use std::process::ExitCode;
use tollgate_common::config::{CommonSettings, ProcessEnv, Reader};
use tollgate_common::telemetry;

const ENV_METRICS_LISTEN: &str = "TOLLGATE_METRICS_LISTEN";
const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9100";

fn main() -> ExitCode {
    let mut reader = Reader::new(&ProcessEnv);
    let common = CommonSettings::read(&mut reader);
    let routes = common.as_ref().and_then(|c| c.read_routes(&mut reader));
    let metrics_listen = reader.listen(ENV_METRICS_LISTEN, DEFAULT_METRICS_LISTEN);
    if let Err(e) = reader.finish() {
        eprintln!("tollgate-proxy: {e}");
        return ExitCode::from(2);
    }
    let (Some(common), Some(_routes)) = (common, routes) else {
        return ExitCode::from(2);
    };
    let _telemetry = telemetry::init(
        "tollgate-proxy",
        common.log_format,
        common.sentry_dsn.as_ref(),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve_health(metrics_listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_health(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {ENV_METRICS_LISTEN} {listen}"))?;
    tracing::info!(listen = %listen, "proxy stub serving /healthz");
    let app = Router::new().route("/healthz", get(|| async { "ok" }));
    axum::serve(listener, app).await?;
    Ok(())
}
