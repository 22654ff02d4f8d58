//! The `tollgate-control-plane` binary as a child process, for tests that kill a control plane outright (SIGKILL:
//! no graceful shutdown, a call to Stripe cut off between its answer and the commit that records it).

use crate::clerk::Jwks;
use crate::db::TestDb;
use crate::proxy::{INHERITED_ENV, workspace_binary};
use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// How long the control plane may take to answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `tollgate-control-plane`; killed when dropped. A test that panics while holding one prints its log.
pub struct ControlPlaneProcess {
    child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
    // What its settings refer to, kept alive with it.
    _db: Arc<TestDb>,
    _jwks: Jwks,
}

impl ControlPlaneProcess {
    /// Starts the binary with `env` (plus `TOLLGATE_CP_LISTEN` on `listen` or a free port, and JSON logs) and waits
    /// until `/healthz` answers.
    pub(crate) async fn start(
        mut env: HashMap<String, String>,
        db: Arc<TestDb>,
        jwks: Jwks,
        listen: Option<SocketAddr>,
    ) -> Self {
        let addr = listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], crate::free_port())));
        env.insert("TOLLGATE_CP_LISTEN".to_owned(), addr.to_string());
        env.insert("TOLLGATE_LOG_FORMAT".to_owned(), "json".to_owned());
        let log_path = std::env::temp_dir().join(format!(
            "tollgate-control-plane-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("create the control plane's log file");
        let stderr = log.try_clone().expect("clone the log file");
        let binary = workspace_binary("tollgate-control-plane", "TOLLGATE_CONTROL_PLANE_BIN");
        let child = Command::new(&binary)
            .env_clear()
            .envs(
                INHERITED_ENV
                    .iter()
                    .filter_map(|k| std::env::var_os(k).map(|v| (*k, v))),
            )
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let mut cp = Self {
            child,
            addr,
            log_path,
            _db: db,
            _jwks: jwks,
        };
        cp.wait_healthy().await;
        cp
    }

    async fn wait_healthy(&mut self) {
        let http = reqwest::Client::new();
        let url = self.url("/healthz");
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(r) = http.get(&url).send().await
                && r.status() == reqwest::StatusCode::OK
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "tollgate-control-plane exited during startup ({status}); log:\n{}",
                    self.log()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tollgate-control-plane not healthy at {url}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Kills it with SIGKILL and reaps it: whatever it was doing stops mid-way.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything it wrote so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- control plane log ---\n{}--- end ---", self.log());
        }
        self.kill();
        let _ = std::fs::remove_file(&self.log_path);
    }
}
