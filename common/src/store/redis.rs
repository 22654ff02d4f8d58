//! The Redis connection: one multiplexed, self-reconnecting connection to a single node, or a cluster connection
//! when `REDIS_URL` names several nodes. Both are cheap to clone and safe to share across tasks.

use crate::config::RedisSettings;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use secrecy::ExposeSecret;
use std::time::Duration;

/// How long one command may take before it fails; keeps a blackholed Redis from stalling callers.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A Redis connection of either topology.
#[derive(Clone)]
pub enum RedisConn {
    /// A single node.
    Single(ConnectionManager),
    /// Redis Cluster.
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// Connects. A single node connects lazily (the first command connects, and later ones reconnect after
    /// failures); a cluster must answer now so its slot map can be read.
    pub async fn connect(settings: &RedisSettings) -> redis::RedisResult<Self> {
        match settings.nodes.as_slice() {
            [one] => {
                let client = redis::Client::open(one.expose_secret())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                Ok(Self::Single(ConnectionManager::new_lazy_with_config(
                    client, config,
                )?))
            }
            nodes => {
                let client = redis::cluster::ClusterClientBuilder::new(
                    nodes.iter().map(|n| n.expose_secret()),
                )
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .build()?;
                Ok(Self::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// Whether this is a Redis Cluster connection (pipelines must then stay within one hash slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// A round trip, for health checks.
    pub async fn ping(&mut self) -> redis::RedisResult<()> {
        redis::cmd("PING").query_async::<()>(self).await
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Listens on `channels` until the caller drops the future, reconnecting 500 ms after a failure. In a cluster,
/// `PUBLISH` reaches every node, so the first node is enough. `on_resubscribed` runs each time a subscription is
/// made again after the first (what was published meanwhile is lost); `on_message(channel, payload)` for each
/// message.
pub async fn listen(
    settings: &RedisSettings,
    channels: &[String],
    mut on_resubscribed: impl FnMut(),
    mut on_message: impl FnMut(&str, &str),
) {
    use futures_util::StreamExt;
    let Some(url) = settings.nodes.first() else {
        return;
    };
    let mut subscribed_before = false;
    loop {
        let result = async {
            let client = redis::Client::open(url.expose_secret())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channels).await?;
            if std::mem::replace(&mut subscribed_before, true) {
                on_resubscribed();
            }
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                if let Ok(payload) = message.get_payload::<String>() {
                    on_message(message.get_channel_name(), &payload);
                }
            }
            Ok::<(), redis::RedisError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "subscription to {channels:?} lost; reconnecting");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
