//! A TCP hop a test controls, put between a client and a server (the proxy and PostgreSQL) to cut the network
//! between them mid-test and restore it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards every connection accepted on a loopback port to a target address, until [`TcpForwarder::cut`].
///
/// Forwarding stops, and every forwarded connection is closed, when the forwarder is dropped.
pub struct TcpForwarder {
    addr: SocketAddr,
    // `true` while cut. Tasks hold receivers; dropping this sender is what stops them.
    cut: watch::Sender<bool>,
    live: Arc<AtomicUsize>,
}

impl TcpForwarder {
    /// Listens on `127.0.0.1:0` and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind TCP forwarder");
        let addr = listener.local_addr().expect("TCP forwarder address");
        let (cut, state) = watch::channel(false);
        let live = Arc::new(AtomicUsize::new(0));
        tokio::spawn(accept_loop(listener, target, state, Arc::clone(&live)));
        Self { addr, cut, live }
    }

    /// The address clients connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every forwarded connection and closes new ones as soon as they are accepted, until
    /// [`TcpForwarder::restore`].
    ///
    /// The open connections close within moments, not before this returns: wait on
    /// [`TcpForwarder::connections`] reaching 0 when a test needs them gone.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards new connections again (connections closed by the cut stay closed).
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// Forwarded connections currently open.
    pub fn connections(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mut state: watch::Receiver<bool>,
    live: Arc<AtomicUsize>,
) {
    loop {
        let client = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                // Per-connection failures (e.g. the peer reset before accept) must not stop the forwarder.
                Err(_) => continue,
            },
            changed = state.changed() => match changed {
                Ok(()) => continue,
                // The forwarder was dropped.
                Err(_) => return,
            },
        };
        if *state.borrow_and_update() {
            // Accepting and closing (rather than not accepting) fails the client at once instead of leaving
            // it to time out in the backlog.
            drop(client);
            continue;
        }
        live.fetch_add(1, Ordering::SeqCst);
        let guard = LiveGuard(Arc::clone(&live));
        tokio::spawn(forward(client, target, state.clone(), guard));
    }
}

/// Counts a forwarded connection until its task ends, however it ends.
struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn forward(
    mut client: TcpStream,
    target: SocketAddr,
    mut state: watch::Receiver<bool>,
    _guard: LiveGuard,
) {
    let cut = async {
        // Either a cut or the forwarder being dropped ends the connection.
        let _ = state.wait_for(|cut| *cut).await;
    };
    tokio::pin!(cut);
    let mut server = tokio::select! {
        biased;
        () = &mut cut => return,
        connected = TcpStream::connect(target) => match connected {
            Ok(server) => server,
            // The client sees the target's refusal as a closed connection, as it would through a real hop.
            Err(_) => return,
        },
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        // Checked first so that bytes sent after a cut are never forwarded.
        biased;
        () = &mut cut => {}
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
    }
    // Both streams drop here, closing the connection on both sides.
}
