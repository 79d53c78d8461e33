//! The accept loop shared by every svc listener: hyper with TCP_NODELAY, a
//! watchdog per connection for the header timeout (`watchdog`), and a
//! graceful shutdown that stops accepting, lets in-flight requests finish
//! within a grace period, and closes idle keep-alive connections.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::extract::ConnectInfo;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{
    Front,
    watchdog::{self, Progress, Watched},
};

#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    /// A connection that has not sent a complete request head within this
    /// (and has no request in progress, and nothing being written) is
    /// closed: a slow or silent client, or an idle keep-alive connection.
    pub header_timeout: Duration,
    /// How long in-flight requests may run on after shutdown begins.
    pub grace: Duration,
    /// Whether handlers need the client's address (`ConnectInfo`): only the
    /// rate limiter does, and the extension costs an allocation per request.
    pub client_addresses: bool,
}

/// Serves `front` on `listener` until `shutdown` is cancelled, then drains.
pub async fn serve(
    listener: TcpListener,
    front: Front,
    settings: ServerSettings,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No header-read timeout of hyper's: the watchdog does that job.
    builder.http1().keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let front = front.clone();
        let client_addresses = settings.client_addresses;
        let progress = Arc::new(Progress::default());
        let requests = progress.clone();
        let service = service_fn(move |mut request: hyper::Request<Incoming>| {
            let answering = requests.begin();
            if client_addresses {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
            }
            let answered = front.call(request);
            async move {
                let response = answered.await;
                drop(answering);
                response
            }
        });
        let stream = Watched::new(stream, progress.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        let connection = tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, %peer, "connection ended with an error");
            }
        });
        tokio::spawn(watchdog::watch(
            progress,
            connection,
            settings.header_timeout,
        ));
    }

    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "stopped accepting; draining in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(settings.grace) => {
            tracing::warn!(grace_secs = settings.grace.as_secs(), "grace period over; closing remaining connections");
        }
    }
}
