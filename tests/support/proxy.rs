//! The `tollgate-proxy` binary run as a child process, as it runs in production: configured by environment,
//! logging JSON, shut down by SIGTERM.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// How long the proxy may take to report healthy.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`ProxyProcess::terminate`] waits for the exit after SIGTERM.
const TERM_TIMEOUT: Duration = Duration::from_secs(10);

/// Environment passed through from the test process; everything else is cleared so that a developer's
/// `DATABASE_URL`, `REDIS_URL` or `TOLLGATE_*` cannot leak into a test.
pub(crate) const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "LANG",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "RUST_LIB_BACKTRACE",
];

/// The `tollgate-proxy` binary: `TOLLGATE_PROXY_BIN` if set, else the one Cargo built next to this test
/// executable (`target/<profile>/`, the test being in `target/<profile>/deps/`).
pub fn proxy_binary() -> PathBuf {
    workspace_binary("tollgate-proxy", "TOLLGATE_PROXY_BIN")
}

/// A binary of the workspace: `$override_var` if set, else the one Cargo built next to this test executable.
pub fn workspace_binary(name: &str, override_var: &str) -> PathBuf {
    if let Some(bin) = std::env::var_os(override_var) {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "{override_var}={} is not a file",
            bin.display()
        );
        return bin;
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(&file))
        .collect();
    candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name} not found (looked at {candidates:?}); build it with cargo build --workspace --bins, \
                 or point {override_var} at it"
            )
        })
}

/// A running `tollgate-proxy`; killed when dropped. A test that panics while holding one prints its log.
pub struct ProxyProcess {
    child: Child,
    exit: Option<ExitStatus>,
    listen: SocketAddr,
    metrics_listen: SocketAddr,
    log_path: PathBuf,
    http: reqwest::Client,
}

impl ProxyProcess {
    /// Starts `binary` with `TOLLGATE_PROXY_LISTEN` and `TOLLGATE_METRICS_LISTEN` on free loopback ports and
    /// `TOLLGATE_LOG_FORMAT=json`, then `env` (which wins), and waits until `/healthz` on the metrics listener
    /// answers 200. Panics with the proxy's log if it exits first or is not healthy within 60 s.
    pub async fn start(binary: &Path, env: &[(String, String)]) -> Self {
        let mut vars: BTreeMap<String, String> = BTreeMap::from([
            (
                "TOLLGATE_PROXY_LISTEN".to_owned(),
                format!("127.0.0.1:{}", crate::free_port()),
            ),
            (
                "TOLLGATE_METRICS_LISTEN".to_owned(),
                format!("127.0.0.1:{}", crate::free_port()),
            ),
            ("TOLLGATE_LOG_FORMAT".to_owned(), "json".to_owned()),
        ]);
        // `free_port` may return the same port twice.
        while vars["TOLLGATE_METRICS_LISTEN"] == vars["TOLLGATE_PROXY_LISTEN"] {
            vars.insert(
                "TOLLGATE_METRICS_LISTEN".to_owned(),
                format!("127.0.0.1:{}", crate::free_port()),
            );
        }
        vars.extend(env.iter().cloned());
        let listen = connectable(&vars["TOLLGATE_PROXY_LISTEN"]);
        let metrics_listen = connectable(&vars["TOLLGATE_METRICS_LISTEN"]);

        let log_path = std::env::temp_dir().join(format!(
            "tollgate-proxy-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        // One file for both streams; append mode keeps their writes from overwriting each other.
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("create the proxy's log file");
        let stderr = log.try_clone().expect("clone the proxy's log file");
        let mut cmd = Command::new(binary);
        cmd.env_clear()
            .envs(
                INHERITED_ENV
                    .iter()
                    .filter_map(|k| std::env::var_os(k).map(|v| (*k, v))),
            )
            .envs(&vars)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let mut proxy = Self {
            child,
            exit: None,
            listen,
            metrics_listen,
            log_path,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("HTTP client"),
        };
        proxy.wait_healthy().await;
        proxy
    }

    async fn wait_healthy(&mut self) {
        let url = format!("{}/healthz", self.metrics_url());
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(r) = self.http.get(&url).send().await
                && r.status() == reqwest::StatusCode::OK
            {
                return;
            }
            if !self.is_running() {
                panic!(
                    "tollgate-proxy exited during startup ({:?}); log:\n{}",
                    self.exit,
                    self.log()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tollgate-proxy not healthy at {url} after {START_TIMEOUT:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The proxy's base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// The metrics listener's base URL (serving `/healthz` and `/metrics`).
    pub fn metrics_url(&self) -> String {
        format!("http://{}", self.metrics_listen)
    }

    /// The body of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.metrics_url());
        let r = self
            .http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}; log:\n{}", self.log()));
        assert_eq!(r.status(), reqwest::StatusCode::OK, "GET {url}");
        r.text().await.expect("metrics body")
    }

    /// Everything the proxy wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The process id, e.g. to send other signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (reaping it if it has exited).
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("poll the proxy process");
        }
        self.exit.is_none()
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.is_running();
        self.exit
    }

    /// Sends SIGTERM (once more if already sent; nothing if the process has exited).
    pub fn signal_term(&mut self) {
        if !self.is_running() {
            return;
        }
        // `kill(1)` rather than libc: this crate forbids unsafe code.
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        // The process may have exited between the check and the signal.
        assert!(
            status.success() || !self.is_running(),
            "kill -TERM {} failed: {status}",
            self.child.id()
        );
    }

    /// Waits up to `timeout` for the process to exit, without blocking the runtime, and returns its status
    /// (`None` if still running). Pair with [`ProxyProcess::signal_term`] when the test itself has requests in
    /// flight through the proxy: [`ProxyProcess::terminate`] blocks the thread those requests may need.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.is_running() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.exit
    }

    /// Sends SIGTERM and waits (blocking) up to 10 s for the exit; the exit status, or `None` if the process
    /// is still running (it is killed when dropped).
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.signal_term();
        let deadline = std::time::Instant::now() + TERM_TIMEOUT;
        while self.is_running() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.exit
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- tollgate-proxy log ({}) ---\n{}--- end of tollgate-proxy log ---",
                self.log_path.display(),
                self.log()
            );
        }
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// A listen address as a client reaches it: an unspecified IP (`0.0.0.0`, `::`) becomes loopback.
fn connectable(listen: &str) -> SocketAddr {
    let mut addr: SocketAddr = listen
        .parse()
        .unwrap_or_else(|e| panic!("listen address {listen:?}: {e}"));
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    addr
}
