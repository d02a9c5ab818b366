//! The accept loop of the HTTP listeners, hardened for a public port.
//!
//! `axum::serve` has no timeouts and no connection cap: a client that opens
//! connections and sends half a request header (slow loris) holds them for
//! ever, and enough of them starve every verifier. Here each connection is
//! served by hyper's HTTP/1 connection under a watchdog that knows where
//! the connection is:
//!
//! - from accept (TLS handshake included) or from the first byte of a later
//!   request until its header is complete: [`HttpLimits::header_read_timeout`];
//! - between requests on a keep-alive connection: [`HttpLimits::idle_timeout`];
//! - while a request is being answered: no limit, until shutdown.
//!
//! At most [`HttpLimits::max_connections`] are open at once; one more waits
//! [`HttpLimits::over_limit_wait`] for a slot, then is closed and counted in
//! `signet_http_connections_refused_total`. On shutdown the listener closes,
//! connections with no request in flight close at once, requests in flight
//! get [`HttpLimits::shutdown_deadline`] to finish, and then everything
//! left is dropped so the process can exit.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::Router;
use hyper_util::rt::TokioIo;
use metrics::counter;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, Semaphore, watch},
    task::JoinSet,
    time::Instant,
};
use tower::ServiceExt;

use super::tls::HttpsAcceptor;
use crate::telemetry;

/// Limits of an HTTP listener. The defaults suit a public JWKS endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// How long a client has, from connecting (TLS handshake included) or
    /// from the first byte of a request, to send the complete request
    /// header. Default 10 s.
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may sit between requests. Default
    /// 60 s.
    pub idle_timeout: Duration,
    /// Open connections at most. Default 1024.
    pub max_connections: usize,
    /// How long a connection beyond `max_connections` waits for a slot
    /// before it is closed. Default 250 ms.
    pub over_limit_wait: Duration,
    /// After the shutdown signal, how long requests in flight may take to
    /// finish before their connections are dropped. Default 10 s.
    pub shutdown_deadline: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            over_limit_wait: Duration::from_millis(250),
            shutdown_deadline: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` with `limits`, over TLS if `tls` is given,
/// until `shutdown` completes; returns once every connection is closed or
/// dropped (at most [`HttpLimits::shutdown_deadline`] after `shutdown`).
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: Option<Arc<HttpsAcceptor>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let _ = telemetry::metrics_handle();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, usually: back off rather
                    // than spin on the error.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Waiting here, in the accept loop, is the back-pressure: while the
        // listener is full, further connections queue in the kernel.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                match tokio::time::timeout(limits.over_limit_wait, slots.clone().acquire_owned())
                    .await
                {
                    Ok(Ok(slot)) => slot,
                    _ => {
                        counter!(telemetry::HTTP_CONNECTIONS_REFUSED).increment(1);
                        drop(tcp);
                        continue;
                    }
                }
            }
        };
        let conn = Connection {
            router: router.clone(),
            limits,
            activity: Arc::new(Activity::new()),
            stop: stop_rx.clone(),
        };
        let tls = tls.clone();
        conns.spawn(async move {
            conn.run(tcp, tls).await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.shutdown_deadline, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            connections = conns.len(),
            "HTTP shutdown deadline passed; dropping the connections left"
        );
        conns.shutdown().await;
    }
    Ok(())
}

/// Where a connection is, for its watchdog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading a request header (or the TLS handshake) since then.
    Head(Instant),
    /// Answering a request.
    Busy,
    /// Between requests since then.
    Idle(Instant),
}

struct ActivityState {
    phase: Phase,
    in_flight: u32,
    /// Bytes arrived while busy: the next request (pipelined) has begun.
    read_while_busy: bool,
}

/// A connection's phase, moved by its reads and its requests. A std mutex:
/// held for a few instructions, never across an await, and touched by one
/// connection's reads and its own task only.
struct Activity {
    state: Mutex<ActivityState>,
    /// Woken when the phase changes to one with an earlier deadline.
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new(ActivityState {
                phase: Phase::Head(Instant::now()),
                in_flight: 0,
                read_while_busy: false,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        // Poisoned only by a panic in the few lines below; the state is
        // still consistent (plain assignments).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn on_read(&self) {
        let mut s = self.lock();
        match s.phase {
            Phase::Idle(_) => {
                s.phase = Phase::Head(Instant::now());
                drop(s);
                self.changed.notify_one();
            }
            Phase::Busy => s.read_while_busy = true,
            Phase::Head(_) => {}
        }
    }

    fn begin(self: &Arc<Self>) -> BusyGuard {
        let mut s = self.lock();
        s.in_flight += 1;
        s.phase = Phase::Busy;
        s.read_while_busy = false;
        BusyGuard(self.clone())
    }

    fn busy(&self) -> bool {
        self.lock().phase == Phase::Busy
    }

    /// When the current phase runs out; `None` while busy.
    fn deadline(&self, limits: &HttpLimits) -> Option<Instant> {
        match self.lock().phase {
            Phase::Head(t) => Some(t + limits.header_read_timeout),
            Phase::Idle(t) => Some(t + limits.idle_timeout),
            Phase::Busy => None,
        }
    }
}

/// Ends a request's busy phase when its response is ready (or the request
/// is dropped).
struct BusyGuard(Arc<Activity>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            let now = Instant::now();
            s.phase = if s.read_while_busy {
                Phase::Head(now)
            } else {
                Phase::Idle(now)
            };
            drop(s);
            self.0.changed.notify_one();
        }
    }
}

struct Connection {
    router: Router,
    limits: HttpLimits,
    activity: Arc<Activity>,
    stop: watch::Receiver<bool>,
}

impl Connection {
    async fn run(mut self, tcp: TcpStream, tls: Option<Arc<HttpsAcceptor>>) {
        let _ = tcp.set_nodelay(true);
        let io = Watched {
            inner: tcp,
            activity: self.activity.clone(),
        };
        let Some(tls) = tls else {
            return self.serve(io).await;
        };
        let handshake = tls.acceptor().accept(io);
        let deadline = self
            .activity
            .deadline(&self.limits)
            .unwrap_or_else(Instant::now);
        let stream = tokio::select! {
            r = tokio::time::timeout_at(deadline, handshake) => match r {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "HTTPS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("HTTPS handshake timed out");
                    return;
                }
            },
            _ = self.stop.wait_for(|stop| *stop) => return,
        };
        self.serve(stream).await;
    }

    async fn serve<S>(mut self, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (router, activity) = (self.router.clone(), self.activity.clone());
        let service = hyper::service::service_fn(move |req| {
            let busy = activity.begin();
            let router = router.clone();
            async move {
                let response = router.oneshot(req).await;
                drop(busy);
                response
            }
        });
        // Header and idle timeouts are the watchdog's below: hyper's own
        // header timer also runs between requests, so it cannot tell a
        // slow header from an idle keep-alive connection.
        let conn = hyper::server::conn::http1::Builder::new()
            .header_read_timeout(None)
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let mut draining = false;
        loop {
            let deadline = self.activity.deadline(&self.limits);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "HTTP connection ended with an error");
                    }
                    return;
                }
                () = sleep_until(deadline) => {
                    if self.activity.deadline(&self.limits).is_some_and(|d| d <= Instant::now()) {
                        tracing::debug!("HTTP connection closed: header or idle timeout");
                        return;
                    }
                }
                () = self.activity.changed.notified() => {}
                _ = self.stop.wait_for(|stop| *stop), if !draining => {
                    if !self.activity.busy() {
                        return;
                    }
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A stream that tells its connection's [`Activity`] when bytes arrive.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.on_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
