//! Group commit: calls that arrive while a writer is busy are handed to it together, so a burst costs one
//! transaction (one WAL flush, one round trip per statement) per batch instead of one per call.
//!
//! A [`Batcher`] is a bounded queue in front of a few writer tasks. Each writer takes what is waiting (at most
//! `max_batch` items), writes it with [`Write::write`] and answers every caller with its own reply. Nothing waits
//! for a batch to fill: a lone call is written at once, as a batch of one.

use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot};

/// Writes one batch.
pub trait Write: Send + Sync + 'static {
    /// One call's input.
    type Item: Send + 'static;
    /// One call's answer.
    type Reply: Send + 'static;

    /// Writes `batch`; returns one reply per item, in the same order.
    fn write(&self, batch: Vec<Self::Item>) -> impl Future<Output = Vec<Self::Reply>> + Send;
}

type Queued<W> = (<W as Write>::Item, oneshot::Sender<<W as Write>::Reply>);

/// The queue in front of the writers.
pub struct Batcher<W: Write> {
    queue: mpsc::Sender<Queued<W>>,
}

/// The batcher's writers are gone (the process is stopping).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the writer has stopped")]
pub struct Stopped;

impl<W: Write> Batcher<W> {
    /// Starts `writers` tasks on the current runtime, each writing at most `max_batch` items at a time.
    pub fn start(writer: W, writers: usize, max_batch: usize) -> Self {
        let (queue, rx) = mpsc::channel(4 * max_batch);
        let rx = Arc::new(Mutex::new(rx));
        let writer = Arc::new(writer);
        for _ in 0..writers {
            tokio::spawn(run(Arc::clone(&writer), Arc::clone(&rx), max_batch));
        }
        Self { queue }
    }

    /// Writes `item` (with whatever else arrives meanwhile) and returns its reply.
    pub async fn submit(&self, item: W::Item) -> Result<W::Reply, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((item, reply)).await.map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }
}

async fn run<W: Write>(
    writer: Arc<W>,
    rx: Arc<Mutex<mpsc::Receiver<Queued<W>>>>,
    max_batch: usize,
) {
    loop {
        let mut batch = Vec::new();
        {
            // One writer gathers at a time; the others are writing meanwhile.
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut batch, max_batch).await == 0 {
                return;
            }
        }
        let (items, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let answers = writer.write(items).await;
        for (reply, answer) in replies.into_iter().zip(answers) {
            // A caller that stopped waiting is no error: its item was written all the same.
            let _ = reply.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    /// Doubles each item; notes the size of each batch; holds every batch until the test opens `gate`.
    struct Doubler {
        sizes: Arc<std::sync::Mutex<Vec<usize>>>,
        gate: Arc<Semaphore>,
    }

    impl Write for Doubler {
        type Item = u32;
        type Reply = u32;

        async fn write(&self, batch: Vec<u32>) -> Vec<u32> {
            self.sizes.lock().unwrap().push(batch.len());
            let _permit = self.gate.acquire().await;
            batch.into_iter().map(|n| n * 2).collect()
        }
    }

    #[tokio::test]
    async fn each_caller_gets_its_own_reply_and_a_burst_shares_one_batch() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let batcher = Arc::new(Batcher::start(
            Doubler {
                sizes: Arc::clone(&sizes),
                gate: Arc::clone(&gate),
            },
            1,
            64,
        ));
        let calls: Vec<_> = (0..50_u32)
            .map(|n| {
                let batcher = Arc::clone(&batcher);
                tokio::spawn(async move { (n, batcher.submit(n).await) })
            })
            .collect();
        // Until every call is either in the first (held) batch or waiting in the queue.
        loop {
            let first = sizes.lock().unwrap().first().copied();
            let queued = batcher.queue.max_capacity() - batcher.queue.capacity();
            if first.is_some_and(|first| first + queued == 50) {
                break;
            }
            tokio::task::yield_now().await;
        }
        gate.add_permits(100);
        for call in calls {
            let (n, reply) = call.await.unwrap();
            assert_eq!(reply.unwrap(), n * 2, "call {n} got another call's reply");
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 50);
        assert!(
            sizes.len() <= 2,
            "what queued behind the first batch is written as one: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn a_stopped_writer_is_an_error_not_a_hang() {
        struct Never;
        impl Write for Never {
            type Item = ();
            type Reply = ();
            async fn write(&self, _: Vec<()>) -> Vec<()> {
                Vec::new() // answers nobody: each caller sees its reply dropped
            }
        }
        let batcher = Batcher::start(Never, 1, 8);
        assert!(batcher.submit(()).await.is_err());
    }
}
