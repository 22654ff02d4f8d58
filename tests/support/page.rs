//! A web page on an origin of its own (a loopback port): what a customer's frontend is to the widgets and the
//! control plane's CORS. Serves the HTML documents set with [`PageServer::set`], by path; its origin is known
//! before any page is, so a control plane can be started allowing it.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

type Pages = Arc<RwLock<BTreeMap<String, String>>>;

/// A page server; stops when dropped.
pub struct PageServer {
    addr: SocketAddr,
    pages: Pages,
    task: tokio::task::JoinHandle<()>,
}

async fn serve(State(pages): State<Pages>, req: Request) -> Response {
    let page = pages
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(req.uri().path())
        .cloned();
    match page {
        Some(html) => ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

impl PageServer {
    /// An empty page server on a free loopback port.
    pub async fn start() -> Self {
        let pages = Pages::default();
        let router = Router::new().fallback(serve).with_state(Arc::clone(&pages));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the page server");
        let addr = listener.local_addr().expect("page server address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { addr, pages, task }
    }

    /// Serves `html` at `path` (`text/html`, not cached).
    pub fn set(&self, path: &str, html: String) {
        self.pages
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(path.to_owned(), html);
    }

    /// The page's origin, `http://127.0.0.1:<port>`, as a browser sends it in `Origin`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
