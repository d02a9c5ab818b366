//! Assembling a server: data directory, store, KEK, key manager, listeners.
//! `signet dev` and `signet server` both go through [`prepare`].

use std::{
    fs::{self, File},
    future::Future,
    net::SocketAddr,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::PathBuf,
    sync::Arc,
};

use anyhow::{Context, bail};
use tokio::{
    net::{TcpListener, UnixListener},
    sync::watch,
};

use crate::{
    clock::SystemClock,
    config::GrpcListen,
    crypto::KeySpec,
    http,
    keyring::{KeyManager, RingName},
    rpc,
    seal::KekSpec,
    store::{KeyStore, PostgresStore, SqliteStore},
};

/// What a server needs to start.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// gRPC listen address: TCP (mTLS, or plaintext loopback for `signet
    /// dev`) or a Unix socket.
    pub grpc_listen: GrpcListen,
    /// File mode and group of a gRPC Unix socket.
    pub grpc_socket: (u32, Option<String>),
    /// gRPC connections are closed after this long, with this grace for
    /// requests in flight.
    pub max_connection_age: (std::time::Duration, std::time::Duration),
    /// After the shutdown signal, how long connections may drain before
    /// those still open are closed.
    pub shutdown_grace: std::time::Duration,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// Separate `/metrics` listen address, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Data directory (SQLite store unless `store_url`, lock file, audit).
    pub data_dir: PathBuf,
    /// A shared PostgreSQL store instead of SQLite, with an optional schema.
    pub store_url: Option<(String, Option<String>)>,
    /// How often to re-read a shared store without a notification.
    pub refresh_interval: std::time::Duration,
    /// A replica on a shared store stops signing and serving its JWKS when
    /// its last successful refresh is older than this (`store.max_staleness`).
    pub max_staleness: std::time::Duration,
    /// KEK provider.
    pub kek: KekSpec,
    /// Rings to create when missing, with the issuer each must have (an
    /// existing ring with another issuer gets this one; `None` leaves a
    /// ring's issuer as stored).
    pub rings: Vec<(RingName, KeySpec, Option<crate::keyring::Issuer>)>,
    /// Serve sealed (only Status and Unseal do anything) instead of
    /// unsealing at start.
    pub start_sealed: bool,
    /// TLS with client certificates; `None` for plaintext on loopback.
    pub tls: Option<crate::tls::TlsFiles>,
    /// The grants policy file; `None` grants everything to the plaintext
    /// loopback caller (`signet dev`, or a loopback-only server).
    pub authz_policy: Option<PathBuf>,
    /// The audit log.
    pub audit: crate::audit::AuditConfig,
    /// Where each signed checkpoint is also sent, off the host.
    pub checkpoint_sinks: Vec<crate::audit::SinkSpec>,
    /// HTTPS on the HTTP listener (`[http_tls]`); `None` for plain HTTP.
    pub http_tls: Option<http::HttpTlsFiles>,
}

/// Gives ring `name` the configured `issuer` if it has another (or none).
/// A replica that loses the write to another one starting with the same
/// configuration re-reads the store and finds it done.
async fn apply_issuer(
    keys: &KeyManager,
    name: &RingName,
    issuer: &crate::keyring::Issuer,
) -> Result<(), crate::Error> {
    for attempt in 0..3 {
        let policy = keys.ring_info(name.as_str(), "ring")?.policy;
        if policy.issuer.as_ref() == Some(issuer) {
            return Ok(());
        }
        let from = policy.issuer.clone();
        let policy = crate::keyring::Policy {
            issuer: Some(issuer.clone()),
            ..policy
        };
        match keys.update_policy(name.as_str(), policy).await {
            Ok(_) => {
                tracing::info!(ring = %name, issuer = %issuer, from = ?from.as_ref().map(|i| i.as_str()), "issuer set from the configuration");
                return Ok(());
            }
            Err(crate::Error::Conflict(_)) if attempt < 2 => {
                keys.refresh().await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A server ready to serve: store open, keys unsealed (unless asked not
/// to), listeners bound.
pub struct Prepared {
    /// The key manager.
    pub keys: KeyManager,
    /// Bound gRPC address (port 0 resolved).
    pub grpc_addr: GrpcListen,
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    /// Bound metrics address, if separate.
    pub metrics_addr: Option<SocketAddr>,
    grpc: GrpcListener,
    http: TcpListener,
    metrics: Option<TcpListener>,
    /// The shared store, when replicas share one: its change notifications
    /// trigger refreshes.
    shared: Option<Arc<PostgresStore>>,
    /// Held for the life of the server: one process per data directory.
    /// The audit log, open, its file checked against the store's anchor.
    audit: crate::audit::AuditLog,
    /// The primary audit file, anchored in the store.
    anchored: Option<PathBuf>,
    _lock: File,
}

/// A handshake-rejection callback for [`crate::tls::Acceptor::incoming`]
/// that logs and audits each refused connection (no or untrusted client
/// certificate).
pub fn audit_rejected(
    audit: crate::audit::AuditLog,
) -> impl Fn(Option<SocketAddr>, String) + Send + Sync + 'static {
    move |addr, why| {
        tracing::info!(peer = ?addr, %why, "TLS connection refused");
        let mut rec = crate::audit::AuditRecord::new(
            "tls.handshake",
            crate::audit::Outcome::Denied,
            "UNAUTHENTICATED",
        );
        rec.peer_addr = addr.map(|a| a.to_string()).unwrap_or_default();
        rec.reason = Some(why);
        rec.request_id = {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(crate::crypto::random_bytes::<12>().unwrap_or_default())
        };
        let audit = audit.clone();
        tokio::spawn(async move {
            let _ = audit.append(rec).await;
        });
    }
}

/// A bound gRPC listener.
enum GrpcListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// Binds the gRPC Unix socket at `path` with `mode` and `group`. A socket
/// file left by a server that died is replaced; one that still answers, or
/// a file that is no socket, is not.
fn bind_unix(
    path: &std::path::Path,
    mode: u32,
    group: Option<&str>,
) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    let shown = path.display();
    if let Some(parent) = path.parent()
        && !parent.exists()
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .with_context(|| format!("listen.grpc unix:{shown}: cannot create its directory"))?;
    }
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "listen.grpc unix:{shown}: the path exists and is not a socket; refusing to replace it"
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("listen.grpc unix:{shown}: another server answers on this socket");
        }
        fs::remove_file(path)
            .with_context(|| format!("listen.grpc unix:{shown}: cannot remove the stale socket"))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("listen.grpc unix:{shown}: cannot listen"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("listen.grpc unix:{shown}: cannot set mode {mode:o}"))?;
    if let Some(group) = group {
        let gid = match group.parse::<u32>() {
            Ok(n) => nix::unistd::Gid::from_raw(n),
            Err(_) => nix::unistd::Group::from_name(group)
                .ok()
                .flatten()
                .map(|g| g.gid)
                .with_context(|| format!("listen.grpc_socket_group: no group named {group:?}"))?,
        };
        nix::unistd::chown(path, None, Some(gid)).with_context(|| {
            format!("listen.grpc_socket_group {group:?}: cannot give unix:{shown} to it")
        })?;
    }
    Ok(listener)
}

/// The SQLite file inside a data directory.
pub fn store_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("signet.db")
}

/// Creates the data directory (mode 0700) if needed; warns if others can
/// read it.
pub fn create_data_dir(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let shown = data_dir.display();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("data dir {shown}: cannot create it"))?;
    let mode = fs::metadata(data_dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(data_dir = %shown, mode = format!("{mode:03o}"), "data dir is accessible by group or others; chmod 700 it");
    }
    Ok(())
}

/// Creates the data directory (mode 0700) if needed and takes its lock.
pub fn lock_data_dir(data_dir: &std::path::Path) -> anyhow::Result<File> {
    create_data_dir(data_dir)?;
    let shown = data_dir.display();
    let lock_path = data_dir.join("signet.lock");
    let lock = File::create(&lock_path)
        .with_context(|| format!("data dir {shown}: cannot create its lock file"))?;
    if lock.try_lock().is_err() {
        bail!(
            "data dir {shown} is in use by another signet process (lock file {})",
            lock_path.display()
        );
    }
    Ok(lock)
}

/// Opens everything a server needs. On a KEK failure nothing on disk has
/// changed and the error says which provider failed and why.
pub async fn prepare(opts: &ServerOptions) -> anyhow::Result<Prepared> {
    let lock = lock_data_dir(&opts.data_dir)?;
    let (store, shared): (Arc<dyn KeyStore>, Option<Arc<PostgresStore>>) = match &opts.store_url {
        Some((url, schema)) => {
            // A replica that starts while the database is down waits for it,
            // saying why, rather than exiting.
            let mut attempt = 0u32;
            let pg = loop {
                let opened = match schema {
                    Some(schema) => PostgresStore::open_in_schema(url, schema).await,
                    None => PostgresStore::open(url).await,
                };
                match opened {
                    Ok(pg) => break pg,
                    Err(e) if attempt < 150 => {
                        attempt += 1;
                        tracing::warn!(error = %e, attempt, "waiting for the PostgreSQL store (retrying every 2s)");
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context(
                            "store.url: the PostgreSQL store stayed unreachable for 5 minutes",
                        ));
                    }
                }
            };
            let pg = Arc::new(pg);
            (pg.clone(), Some(pg))
        }
        None => (
            Arc::new(
                SqliteStore::open(&store_path(&opts.data_dir))
                    .await
                    .with_context(|| {
                        format!(
                            "data dir {}: cannot open the store",
                            opts.data_dir.display()
                        )
                    })?,
            ),
            None,
        ),
    };
    // The metrics recorder before anything counts (a ring refused at
    // Unseal is counted there).
    let _ = crate::telemetry::metrics_handle();
    let keys = KeyManager::open(store, Arc::new(SystemClock), Arc::new(opts.kek.clone())).await?;
    keys.set_legacy_audit_key_file(opts.data_dir.join("audit.key"));
    // Before Unseal: a store rolled back while this server was stopped is
    // caught against the generations this data directory saw.
    if let Err(e) = keys.track_generations(&opts.data_dir.join(crate::keyring::Generations::FILE)) {
        keys.close().await;
        anyhow::bail!("data dir: {e}");
    }
    // The audit log before anything is served or created: a file cut short
    // while the server was stopped (it ends before the checkpoint anchored
    // in the store) is refused here.
    let audit = match crate::audit::AuditLog::open(opts.audit.clone()).await {
        Ok(audit) => audit,
        Err(e) => {
            keys.close().await;
            return Err(anyhow::Error::new(e)
                .context("cannot open the audit log; refusing to serve without one"));
        }
    };
    let anchored = opts.audit.sinks.first().and_then(|s| match &s.spec {
        crate::audit::SinkSpec::File(path) => Some(path.clone()),
        crate::audit::SinkSpec::Stdout => None,
    });
    if let Some(path) = &anchored {
        let (seq, hash) = audit.head();
        if let Err(e) = crate::anchor::check(&keys, path, (seq, &hash)).await {
            keys.close().await;
            return Err(e);
        }
    }
    if shared.is_some() {
        let min = opts.refresh_interval * 10;
        keys.set_min_publish_lead(min);
        for ring in keys.snapshot().rings() {
            if ring.record().policy.publish_lead < min {
                tracing::warn!(
                    ring = %ring.name(),
                    "publish_lead is under 10 x refresh_interval: a replica could sign with a key another has not published yet; raise it with `signet policy set`"
                );
            }
        }
        // Only a replica on a shared store can miss a change made
        // elsewhere; the embedded store is its own truth and never stale.
        keys.set_max_staleness(Some(opts.max_staleness));
        for warning in keys.staleness_warnings() {
            tracing::warn!("{warning}");
        }
    }
    if opts.start_sealed {
        tracing::warn!("starting sealed: Sign is refused until `signet unseal`");
    } else {
        if let Err(e) = keys.unseal().await {
            keys.close().await;
            return Err(anyhow::Error::new(e)
                .context("cannot unseal; Signet stays sealed and nothing on disk was changed"));
        }
        for (name, spec, issuer) in &opts.rings {
            match keys.snapshot().ring(name) {
                Some(ring) if ring.record().spec != *spec => tracing::warn!(
                    ring = %name,
                    configured = %spec,
                    stored = %ring.record().spec,
                    "ring exists with another algorithm; keeping the stored one"
                ),
                Some(_) => {}
                None => match keys
                    .create_ring_with_issuer(name.as_str(), *spec, issuer.clone())
                    .await
                {
                    Ok(_) => {}
                    // Another replica created it first: take theirs.
                    Err(crate::Error::RingExists(_)) => {
                        keys.refresh().await?;
                    }
                    Err(e) => return Err(e.into()),
                },
            }
            if let Some(issuer) = issuer
                && let Err(e) = apply_issuer(&keys, name, issuer).await
            {
                keys.close().await;
                return Err(anyhow::Error::new(e)
                    .context(format!("ring {name}: cannot set the configured issuer")));
            }
        }
    }
    let (grpc, grpc_addr) = match &opts.grpc_listen {
        GrpcListen::Tcp(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen.grpc {addr}: cannot listen"))?;
            let bound = GrpcListen::Tcp(l.local_addr()?);
            (GrpcListener::Tcp(l), bound)
        }
        GrpcListen::Unix(path) => {
            let (mode, group) = &opts.grpc_socket;
            let l = bind_unix(path, *mode, group.as_deref())?;
            (
                GrpcListener::Unix(l, path.clone()),
                GrpcListen::Unix(path.clone()),
            )
        }
    };
    let http = TcpListener::bind(opts.http_listen)
        .await
        .with_context(|| format!("--http-listen {}: cannot listen", opts.http_listen))?;
    let metrics = match opts.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen.metrics {addr}: cannot listen"))?,
        ),
        None => None,
    };
    Ok(Prepared {
        shared,
        metrics_addr: metrics.as_ref().and_then(|l| l.local_addr().ok()),
        metrics,
        keys,
        grpc_addr,
        http_addr: http.local_addr()?,
        grpc,
        http,
        audit,
        anchored,
        _lock: lock,
    })
}

impl Prepared {
    /// Serves gRPC and HTTP until `shutdown` completes, then drains both.
    pub async fn serve(
        self,
        opts: &ServerOptions,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        use crate::rpc::guard::{AllowAll, Authorizer};
        // The recorder first: a metric set before it exists is lost.
        let _ = crate::telemetry::metrics_handle();
        let audit = self.audit.clone();
        let anchored = self.anchored.clone();
        let audit_key = if self.keys.is_sealed() {
            tracing::warn!(
                "sealed at start: audit records carry no claim digests and no signed \
                 checkpoints until `signet unseal`"
            );
            None
        } else {
            Some(Arc::new(
                self.keys
                    .audit_key(&opts.data_dir.join("audit.key"))
                    .await?,
            ))
        };
        let authz = match &opts.authz_policy {
            Some(path) => Some(crate::authz::SharedAuthz::new(
                crate::authz::Authz::load(path)
                    .with_context(|| format!("authz policy {}", path.display()))?,
            )),
            None => None,
        };
        let authorizer: Arc<dyn Authorizer> = match &authz {
            Some(a) => Arc::new(a.clone()),
            // Everything granted to anyone who connects: only `signet dev`,
            // plaintext on loopback, may run so.
            None => {
                let dev = opts.tls.is_none()
                    && matches!(opts.grpc_listen, GrpcListen::Tcp(a) if a.ip().is_loopback());
                if !dev {
                    bail!("no [authz] policy: refusing to serve gRPC to callers without grants");
                }
                tracing::warn!(
                    "no [authz] policy: the local caller has every grant (signet dev: loopback plaintext only)"
                );
                Arc::new(AllowAll)
            }
        };
        let acceptor = match &opts.tls {
            Some(files) => Some(Arc::new(crate::tls::Acceptor::load(files.clone())?)),
            None => None,
        };
        let http_tls = match &opts.http_tls {
            Some(files) => Some(Arc::new(http::HttpsAcceptor::load(files.clone())?)),
            None => None,
        };
        let parts = crate::rpc::AuditParts {
            log: audit.clone(),
            key: audit_key,
        };
        // SIGHUP: reload TLS files and the policy, reopen audit files.
        #[cfg(unix)]
        {
            let (acceptor, http_tls, authz, audit, policy) = (
                acceptor.clone(),
                http_tls.clone(),
                authz.clone(),
                audit.clone(),
                opts.authz_policy.clone(),
            );
            if let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        if let Some(a) = &acceptor {
                            match a.reload() {
                                Ok(()) => tracing::info!("TLS certificates reloaded"),
                                Err(e) => {
                                    tracing::error!(error = %e, "TLS reload failed; keeping the old certificates")
                                }
                            }
                        }
                        if let Some(a) = &http_tls {
                            match a.reload() {
                                Ok(()) => tracing::info!("HTTPS certificate reloaded"),
                                Err(e) => {
                                    tracing::error!(error = %e, "HTTPS reload failed; keeping the old certificate")
                                }
                            }
                        }
                        if let (Some(a), Some(path)) = (&authz, &policy) {
                            match a.reload(path) {
                                Ok(()) => {
                                    tracing::info!(policy = %path.display(), "authz policy reloaded")
                                }
                                Err(e) => {
                                    tracing::error!(error = %e, "authz policy rejected; keeping the old rules")
                                }
                            }
                        }
                        if let Err(e) = audit.reopen().await {
                            tracing::error!(error = %e, "audit log reopen failed");
                        }
                    }
                });
            }
        }
        let (stop_tx, stop_rx) = watch::channel(());
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                // Resolves when the sender signals or is dropped.
                let _ = rx.changed().await;
            }
        };
        let age = Some(opts.max_connection_age);
        let mut socket_file = None;
        let grpc_task = match (self.grpc, acceptor) {
            (GrpcListener::Tcp(listener), Some(acceptor)) => {
                let incoming = acceptor.incoming(listener, audit_rejected(audit.clone()));
                tokio::spawn(rpc::serve_configured(
                    incoming,
                    self.keys.clone(),
                    authorizer,
                    Some(parts),
                    age,
                    stopped(),
                ))
            }
            (GrpcListener::Tcp(listener), None) => tokio::spawn(rpc::serve_configured(
                crate::tls::plaintext_incoming(listener),
                self.keys.clone(),
                authorizer,
                Some(parts),
                age,
                stopped(),
            )),
            (GrpcListener::Unix(listener, path), _) => {
                socket_file = Some(path);
                tokio::spawn(rpc::serve_configured(
                    crate::tls::unix_incoming(listener),
                    self.keys.clone(),
                    authorizer,
                    Some(parts),
                    age,
                    stopped(),
                ))
            }
        };
        if let Some(pg) = self.shared.clone() {
            tokio::spawn(refresh_loop(
                self.keys.clone(),
                pg,
                opts.refresh_interval,
                stopped(),
            ));
        }
        let scheduler = tokio::spawn(crate::keyring::scheduler::run(
            self.keys.clone(),
            crate::keyring::scheduler::DEFAULT_TICK,
            Some(audit.clone()),
            stopped(),
        ));
        // /metrics and the status page: on the admin listener, or (signet
        // dev, which has none) on the HTTP listener.
        let admin = http::admin_router(self.keys.clone(), Some(audit.clone()));
        let public = http::router_with(self.keys.clone(), false);
        let (public, admin) = match self.metrics {
            Some(listener) => (public, Some((listener, admin))),
            None => (public.merge(admin), None),
        };
        let http_task = tokio::spawn(http::serve_with(
            self.http,
            public,
            http::HttpLimits::default(),
            http_tls,
            stopped(),
        ));
        let metrics_task = admin
            .map(|(listener, admin)| tokio::spawn(http::serve_router(listener, admin, stopped())));
        if let Some(path) = &anchored {
            tokio::spawn(crate::anchor::keep(
                self.keys.clone(),
                path.clone(),
                audit.anchors(),
                opts.checkpoint_sinks.clone(),
                stopped(),
            ));
        }
        shutdown.await;
        tracing::info!(grace = %humantime::format_duration(opts.shutdown_grace), "shutting down");
        drop(stop_tx);
        // Graceful: requests in flight finish and each connection closes
        // once its peer has seen GOAWAY; but a peer that never answers
        // holds its connection open. Past the grace, those are dropped.
        let deadline = tokio::time::Instant::now() + opts.shutdown_grace;
        drain("gRPC", grpc_task, deadline).await?;
        if let Some(path) = socket_file {
            let _ = fs::remove_file(path);
        }
        drain("HTTP", http_task, deadline).await?;
        if let Some(t) = metrics_task {
            drain("metrics", t, deadline).await?;
        }
        scheduler.await?;
        // The log ends signed, and the store knows where.
        if let Some(path) = &anchored {
            crate::anchor::finish(&self.keys, path, &audit, &opts.checkpoint_sinks).await;
        }
        self.keys.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Waits for a listener's server task to finish draining until `deadline`,
/// then aborts it and stops waiting. Connections still open (tasks of their
/// own) are dropped when the runtime shuts down as `serve` returns.
async fn drain<E>(
    what: &str,
    mut task: tokio::task::JoinHandle<Result<(), E>>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout_at(deadline, &mut task).await {
        Ok(joined) => joined?.with_context(|| format!("{what} server failed")),
        Err(_) => {
            tracing::warn!(
                listener = what,
                "connections still open at the end of the shutdown grace \
                 (listen.shutdown_grace); closing them"
            );
            task.abort();
            // Cancelled now, or it finished just as it was aborted.
            match task.await {
                Ok(result) => result.with_context(|| format!("{what} server failed")),
                Err(e) if e.is_cancelled() => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Keeps a replica's snapshot in step with the shared store: at once on a
/// change notification (LISTEN/NOTIFY), and every `every` regardless, in
/// case a notification was lost or the listener is reconnecting.
async fn refresh_loop(
    keys: KeyManager,
    store: Arc<PostgresStore>,
    every: std::time::Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut listener = None;
    let mut store_up = true;
    let mut stale = false;
    metrics::gauge!("signet_store_up").set(1.0);
    metrics::gauge!("signet_store_stale").set(0.0);
    loop {
        // A new subscription (at start, or after the listening connection
        // dropped) refreshes at once: changes committed before its LISTEN
        // (since the key set was loaded, or while it was down) announced
        // nothing it could hear.
        let mut subscribed = false;
        if listener.is_none() {
            listener = match store.subscribe().await {
                Ok(l) => {
                    tracing::info!(channel = store.channel(), "listening for store changes");
                    subscribed = true;
                    Some(l)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for store changes; polling only");
                    None
                }
            };
        }
        let notified = async {
            match listener.as_mut() {
                Some(l) => l.recv().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        if !subscribed {
            tokio::select! {
                () = &mut shutdown => return,
                ok = notified => if !ok {
                    listener = None; // reconnect on the next pass
                },
                () = tokio::time::sleep(every) => {}
            }
        }
        // A refresh can hang on a dead connection for a while: staleness
        // is reported as it sets in, not when the refresh gives up.
        let refresh = keys.refresh();
        tokio::pin!(refresh);
        let result = loop {
            tokio::select! {
                () = &mut shutdown => return,
                r = &mut refresh => break r,
                () = tokio::time::sleep(every) => report_staleness(&keys, &mut stale),
            }
        };
        match result {
            Ok(_) => {
                if !store_up {
                    tracing::info!("the shared store answers again; key set refreshed");
                }
                store_up = true;
            }
            Err(e) => {
                // Every failed pass is logged (each says why), the first
                // one with what it means for callers.
                if store_up {
                    tracing::warn!(
                        error = %e,
                        max_staleness = %keys.max_staleness().map(humantime::format_duration).map(|d| d.to_string()).unwrap_or_default(),
                        "the shared store does not answer: signing with the keys held and \
                         serving their JWKS until max_staleness passes, then refusing both; \
                         rotation and admin writes answer UNAVAILABLE; revocations made \
                         elsewhere are not seen until it returns"
                    );
                } else {
                    tracing::warn!(error = %e, "the shared store still does not answer");
                }
                store_up = false;
            }
        }
        report_staleness(&keys, &mut stale);
        metrics::gauge!("signet_store_up").set(if store_up { 1.0 } else { 0.0 });
    }
}

/// Logs when the key set goes stale (past `store.max_staleness`) and when
/// it is current again, once per change (the refusal itself is on every
/// Sign), and sets `signet_store_stale`.
fn report_staleness(keys: &KeyManager, stale: &mut bool) {
    match (keys.check_fresh(), *stale) {
        (Err(e), false) => {
            tracing::error!(
                "{e}; Sign answers UNAVAILABLE and /readyz and the JWKS 503 until the store answers"
            );
            *stale = true;
        }
        (Ok(()), true) => {
            tracing::info!("the key set is current again: signing and serving the JWKS");
            *stale = false;
        }
        _ => {}
    }
    metrics::gauge!("signet_store_stale").set(if *stale { 1.0 } else { 0.0 });
}
