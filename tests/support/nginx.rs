//! A real nginx as the customer's API: every request is answered with the path nginx resolved for it (`$uri`:
//! decoded, slashes merged, dot segments removed), so a test can compare what Tollgate priced with what nginx
//! served. nginx is installed by `./scripts/test` (apt) like PostgreSQL and Redis.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The response header carrying the path nginx served (also the body).
pub const SERVED: &str = "x-served-uri";

/// A running nginx, one process (`master_process off`), stopped when dropped.
pub struct Nginx {
    addr: SocketAddr,
    dir: PathBuf,
    child: Child,
}

/// The nginx binary: `$NGINX`, else on `PATH` or in `/usr/sbin`.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NGINX") {
        return PathBuf::from(path);
    }
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin")]);
    for dir in candidates {
        let path = dir.join("nginx");
        if path.is_file() {
            return path;
        }
    }
    panic!("nginx is not installed: run ./scripts/test, which installs it with apt");
}

impl Nginx {
    /// Starts nginx on a free loopback port and waits until it accepts connections.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("tg-nginx-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let port = crate::free_port();
        let d = dir.display();
        let conf = format!(
            r#"daemon off;
master_process off;
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            add_header {SERVED} "$uri" always;
            return 200 "$uri";
        }}
    }}
}}
"#
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("write nginx.conf");
        let child = Command::new(binary())
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        crate::wait::until(Duration::from_secs(10), "nginx to listen", || async move {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        Self { addr, dir, child }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
