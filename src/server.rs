//! The accept loop: TCP, optional TLS, then hyper with upgrades.
//!
//! warp 0.4 serves only a `Filter`, and the session layer is a tower layer,
//! so palaver runs its own loop: every connection gets the tower stack
//! (client address → session layer → the route table) wrapped for hyper and
//! served with `serve_connection_with_upgrades` (WebSockets need upgrades).
//! Every connection is watched by hyper-util's `GracefulShutdown`, so that
//! shutdown can stop accepting, let in-flight requests finish, and close
//! idle keep-alive connections.

use std::{convert::Infallible, io, net::SocketAddr, sync::Arc, time::Duration};

use hyper::{body::Incoming, Request};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::watch,
};
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::config::TlsPaths;

/// Binds with a deep accept backlog: the default 128 drops SYNs under a burst
/// of reconnecting clients and stalls each of them for a second.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // A restarted instance can take its port back at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS_CERT {path}: {source}")]
    Cert { path: String, source: rustls::pki_types::pem::Error },
    #[error("cannot read TLS_KEY {path}: {source}")]
    Key { path: String, source: rustls::pki_types::pem::Error },
    #[error("TLS_CERT and TLS_KEY do not make a usable identity: {0}")]
    Config(#[from] rustls::Error),
}

/// Loads the certificate chain and key into a TLS acceptor (HTTP/2 and
/// HTTP/1.1 offered by ALPN; WebSockets use HTTP/1.1).
pub fn tls_acceptor(paths: &TlsPaths) -> Result<TlsAcceptor, TlsError> {
    let cert_path = paths.cert.display().to_string();
    let certs = CertificateDer::pem_file_iter(&paths.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Cert { path: cert_path, source })?;
    let key = PrivateKeyDer::from_pem_file(&paths.key)
        .map_err(|source| TlsError::Key { path: paths.key.display().to_string(), source })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

type Response = warp::reply::Response;

/// Accepts until `stop` turns true, serving each connection with the
/// service `make_service` builds for its peer. Returns the graceful-shutdown
/// handle of the connections still open.
pub async fn accept_loop<M, S>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    make_service: M,
    mut stop: watch::Receiver<bool>,
) -> GracefulShutdown
where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(make_service(peer));
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                    watcher.watch(conn).await
                }
                Some(tls) => match tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                        watcher.watch(conn).await
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(%err, %peer, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            if let Err(err) = result {
                tracing::debug!(%err, %peer, "connection ended with an error");
            }
        });
    }
    graceful
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received; shutting down"),
        _ = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}
