//! A private three-master Redis Cluster (no replicas) on loopback, built from the machine's `redis-server` and
//! `redis-cli`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How many masters the cluster has.
const MASTERS: usize = 3;

/// A running cluster; its processes and files are gone when this is dropped.
pub struct RedisCluster {
    ports: Vec<u16>,
    children: Vec<Child>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts three nodes, joins them into a cluster with all 16384 slots assigned, and waits until every node
    /// reports the cluster healthy.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-redis-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("create the cluster's temp dir");
        // Each node's bus port is chosen too: the default (port + 10000) may be taken, or above 65535.
        let ports = distinct_free_ports(2 * MASTERS);
        let (ports, bus_ports) = ports.split_at(MASTERS);
        let mut cluster = Self {
            ports: ports.to_vec(),
            children: Vec::with_capacity(MASTERS),
            dir,
        };
        for (&port, &bus_port) in ports.iter().zip(bus_ports) {
            let child = cluster.spawn_node(port, bus_port);
            cluster.children.push(child);
        }
        for &port in ports {
            cluster.wait_for_node(port).await;
        }
        cluster.create().await;
        for &port in ports {
            cluster.wait_for_cluster_ok(port).await;
        }
        cluster
    }

    /// `redis://127.0.0.1:P1,redis://127.0.0.1:P2,redis://127.0.0.1:P3`: how `REDIS_URL` names a cluster.
    pub fn urls(&self) -> String {
        self.nodes().join(",")
    }

    /// Each node's URL (`redis://127.0.0.1:<port>`), e.g. for `redis::cluster::ClusterClient::new`.
    pub fn nodes(&self) -> Vec<String> {
        self.ports.iter().map(|p| node_url(*p)).collect()
    }

    fn spawn_node(&self, port: u16, bus_port: u16) -> Child {
        let dir = self.dir.display().to_string();
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--cluster-port",
                &bus_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("{dir}/nodes-{port}.conf"),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir,
                "--logfile",
                &format!("{dir}/redis-{port}.log"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed")
    }

    /// The node's log, for panic messages.
    fn node_log(&self, port: u16) -> String {
        std::fs::read_to_string(self.dir.join(format!("redis-{port}.log"))).unwrap_or_default()
    }

    async fn wait_for_node(&mut self, port: u16) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if query::<String>(port, &mut redis::cmd("PING"))
                .await
                .is_some()
            {
                return;
            }
            let index = self.ports.iter().position(|p| *p == port).unwrap_or(0);
            // A node that exited (say, its port was taken since it was picked) will never answer.
            if let Ok(Some(status)) = self.children[index].try_wait() {
                panic!(
                    "redis-server on port {port} exited ({status}); log:\n{}",
                    self.node_log(port)
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server on port {port} did not answer PING in 10 s; log:\n{}",
                self.node_log(port)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn create(&self) {
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(self.ports.iter().map(|p| format!("127.0.0.1:{p}")));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        // redis-cli sleeps while the nodes join; off the runtime's threads, so other tasks keep running.
        let output = tokio::task::spawn_blocking(move || {
            Command::new("redis-cli")
                .args(&args)
                .stdin(Stdio::null())
                .output()
        })
        .await
        .expect("redis-cli task")
        .expect("redis-cli must be installed");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    async fn wait_for_cluster_ok(&self, port: u16) {
        let expected = [
            "cluster_state:ok".to_owned(),
            "cluster_slots_assigned:16384".to_owned(),
            // Every node must know every other, or a client's first topology read may be partial.
            format!("cluster_known_nodes:{MASTERS}"),
            format!("cluster_size:{MASTERS}"),
        ];
        crate::wait::until(
            Duration::from_secs(30),
            &format!("redis cluster node {port} to report cluster_state:ok"),
            || async {
                let info: String = query(port, redis::cmd("CLUSTER").arg("INFO")).await?;
                let lines: Vec<&str> = info.lines().map(str::trim).collect();
                expected
                    .iter()
                    .all(|line| lines.contains(&line.as_str()))
                    .then_some(())
            },
        )
        .await;
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn node_url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

/// Runs one command on one node (not cluster-routed); `None` on any failure, for polling.
async fn query<T: redis::FromRedisValue>(port: u16, cmd: &mut redis::Cmd) -> Option<T> {
    let client = redis::Client::open(node_url(port)).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    cmd.query_async(&mut conn).await.ok()
}

/// `n` different free ports: [`crate::free_port`] may hand out the same port twice.
fn distinct_free_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let port = crate::free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}
