//! `signet bench`: Sign throughput and latency over gRPC, next to the raw
//! rate of the same signing code in-process, measured in the same run.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use tokio::net::TcpListener;

use super::{client, parse_duration};
use crate::{
    clock::SystemClock,
    crypto::{Algorithm, Jwk, KeySpec},
    keyring::{JwkSet, KeyManager, SignParams},
    pb::{self, signer_client::SignerClient},
    rpc,
};

/// Options of `signet bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Server to drive. Omit and pass --in-process to start one here.
    #[arg(long, env = "SIGNET_ADDR", conflicts_with = "in_process")]
    addr: Option<String>,
    /// Start a server in this process on 127.0.0.1:0, with a fresh ring of --alg.
    #[arg(long)]
    in_process: bool,
    /// Algorithm of the in-process ring: RS256, PS256, ES256, EdDSA, Ed25519.
    #[arg(long, default_value = "RS256")]
    alg: String,
    /// Ring to sign with.
    #[arg(long, default_value = "default")]
    ring: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How long to measure each phase, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Send exactly this many Signs instead of measuring for --duration,
    /// with no warm-up and no raw phase: a fixed amount of work, for
    /// counting instructions per Sign (e.g. under `valgrind
    /// --tool=callgrind`, comparing two counts).
    #[arg(long, conflicts_with = "duration")]
    requests: Option<u64>,
    /// HTTP/2 connections the requests are spread over.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// The claims every request signs.
    #[arg(
        long,
        default_value = r#"{"sub":"bench-user","aud":"api.example","scope":"read write"}"#
    )]
    claims: String,
    /// With --in-process: the access layer to serve through. `none`: plaintext
    /// loopback, everything allowed, no decision made (the layer passes
    /// requests straight through). `grant`: a Unix socket and a policy whose
    /// one rule grants this process's uid `sign` (every request decided).
    /// `claim-rule`: the same rule with a [rule.sign] of three constraints
    /// (aud allow-list, sub glob, max_ttl) checked on every Sign.
    #[arg(long, value_enum, default_value = "none", requires = "in_process")]
    authz: BenchAuthz,
    /// With --in-process: record every request in an audit log (a file in a
    /// temporary directory, fsync per group of records, signed checkpoints,
    /// claims digests): the production configuration. Without it the server
    /// records nothing.
    #[arg(long, requires = "in_process")]
    audit: bool,
    /// With --audit: the audit file's fsync policy (`always`, the
    /// production default; `interval:1s`; `never`), to see what durability
    /// per record costs.
    #[arg(long, default_value = "always", requires = "audit")]
    audit_fsync: String,
    /// With --audit: the longest a write round waits for appends already
    /// on their way (group commit); `0s` turns the wait off.
    #[arg(long, default_value = "2ms", value_parser = parse_duration, requires = "audit")]
    audit_commit_wait: Duration,
    /// With --in-process: the audit log's cost in one run. ROUNDS rounds,
    /// each an unaudited server then an audited one (fresh servers, same
    /// options otherwise, no raw phase), so both see the same machine;
    /// prints each round's ratio and the median of each side.
    #[arg(long, value_name = "ROUNDS", requires = "in_process", conflicts_with_all = ["audit", "requests"],
          value_parser = clap::value_parser!(u32).range(1..=20))]
    compare_audit: Option<u32>,
    /// Print the results as one JSON object (with --compare-audit: one per
    /// run, then the summary).
    #[arg(long)]
    json: bool,
}

/// The access layer `signet bench --in-process` serves through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchAuthz {
    /// No decision: everything allowed, plaintext loopback.
    None,
    /// A policy grant decided per request, over a Unix socket.
    Grant,
    /// That grant with a claim rule of three constraints.
    ClaimRule,
}

/// The policy of `--authz grant|claim-rule`: this process's uid may sign on
/// `ring`, with three claim constraints for `claim-rule`. The default bench
/// claims satisfy them.
fn bench_policy(ring: &str, authz: BenchAuthz) -> anyhow::Result<crate::authz::Authz> {
    let mut text = format!(
        "[[rule]]\nidentity = \"unix:uid:{}\"\nactions = [\"sign\", \"read\"]\nrings = [{ring:?}]\n",
        nix::unistd::getuid()
    );
    if authz == BenchAuthz::ClaimRule {
        text.push_str(
            "[rule.sign]\naud = [\"api.example\", \"other.example\"]\nsub = \"bench-*\"\nmax_ttl = \"1h\"\n",
        );
    }
    Ok(crate::authz::Authz::from_toml(&text)?)
}

/// Measured results of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// JWS algorithm of the ring.
    pub alg: String,
    /// The access layer of an in-process server.
    pub authz: BenchAuthz,
    /// Whether the in-process server wrote an audit log.
    pub audited: bool,
    /// Audit bytes written per Sign (the file's size over its records).
    pub audit_bytes_per_sign: Option<f64>,
    /// Appends per audit write round (group commit: one write and, with
    /// fsync = always, one fsync per round), warm-up included.
    pub audit_appends_per_round: Option<f64>,
    /// Mean time of an audit write round (write and fsync), milliseconds.
    pub audit_round_ms: Option<f64>,
    /// CPU time of the whole process (server, load generator, audit
    /// threads) per successful Sign, user and kernel, microseconds; only
    /// with `--in-process`.
    pub cpu_us_per_sign: Option<(f64, f64)>,
    /// Requests in flight.
    pub concurrency: usize,
    /// Successful Signs per second over gRPC.
    pub grpc_per_sec: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Slowest request, milliseconds.
    pub max_ms: f64,
    /// Failed requests.
    pub errors: u64,
    /// Signs per second of `KeyManager::sign` without gRPC.
    pub raw_per_sec: f64,
    /// Threads the raw phase used (the machine's cores).
    pub raw_threads: usize,
    /// grpc_per_sec / raw_per_sec.
    pub ratio: f64,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.connections == 0 {
        bail!("--concurrency and --connections must be at least 1");
    }
    match args.compare_audit {
        Some(rounds) => compare_audit(&args, rounds).await,
        None => measure(&args, true).await.map(drop),
    }
}

/// One round's Sign rates without and with the audit log.
#[derive(Debug, serde::Serialize)]
struct AuditRound {
    unaudited_per_sec: f64,
    audited_per_sec: f64,
    ratio: f64,
}

/// What `--compare-audit` prints last.
#[derive(Debug, serde::Serialize)]
struct AuditComparison {
    alg: String,
    authz: BenchAuthz,
    concurrency: usize,
    rounds: Vec<AuditRound>,
    median_unaudited_per_sec: f64,
    median_audited_per_sec: f64,
    /// median audited / median unaudited.
    ratio_of_medians: f64,
}

async fn compare_audit(args: &BenchArgs, rounds: u32) -> anyhow::Result<()> {
    let mut results = Vec::new();
    let mut alg = String::new();
    for _ in 0..rounds {
        let mut run = args.clone();
        run.audit = false;
        let unaudited = measure(&run, false).await?;
        run.audit = true;
        let audited = measure(&run, false).await?;
        alg.clone_from(&audited.alg);
        results.push(AuditRound {
            unaudited_per_sec: unaudited.grpc_per_sec,
            audited_per_sec: audited.grpc_per_sec,
            ratio: audited.grpc_per_sec / unaudited.grpc_per_sec.max(f64::MIN_POSITIVE),
        });
    }
    let median = |f: fn(&AuditRound) -> f64| {
        let mut v: Vec<f64> = results.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (unaudited, audited) = (
        median(|r| r.unaudited_per_sec),
        median(|r| r.audited_per_sec),
    );
    let summary = AuditComparison {
        alg,
        authz: args.authz,
        concurrency: args.concurrency,
        median_unaudited_per_sec: unaudited,
        median_audited_per_sec: audited,
        ratio_of_medians: audited / unaudited.max(f64::MIN_POSITIVE),
        rounds: results,
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(());
    }
    println!(
        "signet bench --compare-audit: {} rounds, {}, concurrency {}",
        rounds, summary.alg, summary.concurrency
    );
    for (i, r) in summary.rounds.iter().enumerate() {
        println!(
            "  round {}   unaudited {:>9.0} /s   audited {:>9.0} /s   {:>5.1} %",
            i + 1,
            r.unaudited_per_sec,
            r.audited_per_sec,
            r.ratio * 100.0
        );
    }
    println!(
        "  median     unaudited {:>9.0} /s   audited {:>9.0} /s   {:>5.1} % (audited / unaudited)",
        summary.median_unaudited_per_sec,
        summary.median_audited_per_sec,
        summary.ratio_of_medians * 100.0
    );
    Ok(())
}

/// One measurement: a server (in-process or `--addr`), the gRPC phase,
/// then (with `raw`, and without `--requests`) the raw signing phase;
/// prints the report and returns it.
async fn measure(args: &BenchArgs, raw: bool) -> anyhow::Result<BenchReport> {
    let claims = args.claims.clone().into_bytes();
    let mut audit_log: Option<crate::audit::AuditLog> = None;
    let (addr, server) = if args.in_process {
        let alg: Algorithm = args.alg.parse().context("--alg")?;
        let keys = KeyManager::ephemeral(Arc::new(SystemClock)).await?;
        keys.create_ring(&args.ring, KeySpec::new(alg, 0)?).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let dir = tempfile_dir()?;
        let audit = if args.audit {
            let fsync: crate::audit::FsyncPolicy =
                args.audit_fsync.parse().context("--audit-fsync")?;
            let log = crate::audit::AuditLog::open(crate::audit::AuditConfig {
                commit_wait: args.audit_commit_wait,
                ..crate::audit::AuditConfig::new(vec![crate::audit::SinkConfig {
                    fsync,
                    ..crate::audit::SinkConfig::file(dir.join("audit.log"))
                }])
            })
            .await?;
            let key = crate::audit::AuditKey::from_bytes(zeroize::Zeroizing::new(
                crate::crypto::random_bytes::<32>()?,
            ));
            audit_log = Some(log.clone());
            Some(rpc::AuditParts {
                log: log.clone(),
                key: Some(Arc::new(key)),
            })
        } else {
            None
        };
        if args.authz == BenchAuthz::None {
            let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            let addr = format!("http://{}", listener.local_addr()?);
            let task = tokio::spawn(rpc::serve_with(
                crate::tls::plaintext_incoming(listener),
                keys,
                Arc::new(rpc::guard::AllowAll),
                audit,
                stopped,
            ));
            (addr, Some((stop, task, dir)))
        } else {
            let path = dir.join("grpc.sock");
            let listener = tokio::net::UnixListener::bind(&path)?;
            let authz = crate::authz::SharedAuthz::new(bench_policy(&args.ring, args.authz)?);
            let task = tokio::spawn(rpc::serve_with(
                crate::tls::unix_incoming(listener),
                keys,
                Arc::new(authz),
                audit,
                stopped,
            ));
            (format!("unix:{}", path.display()), Some((stop, task, dir)))
        }
    } else {
        let addr = args
            .addr
            .clone()
            .context("give --addr (or SIGNET_ADDR) of a running server, or --in-process")?;
        (addr, None)
    };

    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        channels.push(client::connect(&addr).await?);
    }
    let jwks = SignerClient::new(channels[0].clone())
        .get_jwks(pb::GetJwksRequest {
            key_ring: args.ring.clone(),
        })
        .await
        .map_err(client::status_error)?
        .into_inner();
    let spec = spec_of(&jwks.jwks_json)?;

    let cpu_before = process_cpu()?;
    let grpc = grpc_phase(args, &channels, &claims).await?;
    let cpu_us_per_sign = server.is_some().then(|| -> anyhow::Result<(f64, f64)> {
        let after = process_cpu()?;
        let signs = grpc.completed.max(1) as f64;
        Ok((
            (after.0 - cpu_before.0).as_secs_f64() * 1e6 / signs,
            (after.1 - cpu_before.1).as_secs_f64() * 1e6 / signs,
        ))
    });
    let cpu_us_per_sign = cpu_us_per_sign.transpose()?;
    drop(channels);
    let mut audit_bytes_per_sign = None;
    let log = audit_log.take();
    let audit_appends_per_round = log.as_ref().map(|log| {
        let (rounds, appends) = log.rounds();
        appends as f64 / rounds.max(1) as f64
    });
    let audit_round_ms = log
        .as_ref()
        .map(|log| log.mean_round_write().as_secs_f64() * 1e3);
    drop(log);
    if let Some((stop, task, dir)) = server {
        let _ = stop.send(());
        task.await??;
        let log = dir.join("audit.log");
        if let Ok(text) = std::fs::read_to_string(&log) {
            let signs = text.lines().filter(|l| l.contains("Signer/Sign")).count();
            if signs > 0 {
                audit_bytes_per_sign = Some(text.len() as f64 / signs as f64);
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
    let raw_threads = thread::available_parallelism().map_or(2, |n| n.get());
    let raw_per_sec = if args.requests.is_some() || !raw {
        0.0
    } else {
        raw_phase(spec, raw_threads, args.duration, &claims).await?
    };

    let report = BenchReport {
        alg: spec.alg().name().to_owned(),
        authz: args.authz,
        audited: args.audit,
        audit_bytes_per_sign,
        audit_appends_per_round,
        audit_round_ms,
        cpu_us_per_sign,
        concurrency: args.concurrency,
        grpc_per_sec: grpc.per_sec,
        p50_ms: grpc.percentile(0.50),
        p99_ms: grpc.percentile(0.99),
        max_ms: grpc.percentile(1.0),
        errors: grpc.errors,
        raw_per_sec,
        raw_threads,
        ratio: if raw_per_sec > 0.0 {
            grpc.per_sec / raw_per_sec
        } else {
            0.0
        },
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "signet bench: ring {} ({spec}) at {addr}{}, concurrency {}, {} connections, {}",
            args.ring,
            match (args.in_process, args.authz) {
                (false, _) => String::new(),
                (true, BenchAuthz::None) => " (in-process)".to_owned(),
                (true, BenchAuthz::Grant) => " (in-process, policy grant)".to_owned(),
                (true, BenchAuthz::ClaimRule) => {
                    " (in-process, policy grant with a 3-constraint claim rule)".to_owned()
                }
            } + if args.audit { ", audited" } else { "" },
            args.concurrency,
            args.connections,
            match args.requests {
                Some(n) => format!("{n} requests"),
                None => humantime::format_duration(args.duration).to_string(),
            },
        );
        println!(
            "  gRPC Sign  {:>9.0} /s   p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms   errors {}",
            report.grpc_per_sec, report.p50_ms, report.p99_ms, report.max_ms, report.errors
        );
        if report.raw_per_sec > 0.0 {
            println!(
                "  raw sign   {:>9.0} /s   ({} threads, KeyManager::sign without gRPC)",
                report.raw_per_sec, report.raw_threads
            );
            println!("  ratio      {:>9.1} % of raw", report.ratio * 100.0);
        }
        if let Some(bytes) = report.audit_bytes_per_sign {
            println!("  audit      {bytes:>9.0} bytes per Sign (checkpoints included)");
        }
        if let Some(batch) = report.audit_appends_per_round {
            println!("  audit      {batch:>9.1} appends per write round (group commit)");
        }
        if let Some(ms) = report.audit_round_ms {
            println!("  audit      {ms:>9.3} ms per write round (write and fsync), mean");
        }
        if let Some((user, sys)) = report.cpu_us_per_sign {
            println!(
                "  CPU        {:>9.1} µs per Sign: user {user:.1}, kernel {sys:.1} (whole process)",
                user + sys
            );
        }
    }
    if let Some(e) = grpc.first_error {
        eprintln!(
            "signet bench: {} requests failed; first error: {e}",
            grpc.errors
        );
    }
    Ok(report)
}

/// User and kernel CPU time of this process so far (every thread).
fn process_cpu() -> anyhow::Result<(std::time::Duration, std::time::Duration)> {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    let time = |t: nix::sys::time::TimeVal| {
        std::time::Duration::new(
            u64::try_from(t.tv_sec()).unwrap_or(0),
            u32::try_from(t.tv_usec()).unwrap_or(0) * 1000,
        )
    };
    Ok((time(usage.user_time()), time(usage.system_time())))
}

/// A private directory for the bench's Unix socket.
pub(super) fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let name = format!(
        "signet-bench-{}-{}",
        std::process::id(),
        hex::encode(crate::crypto::random_bytes::<4>()?)
    );
    let dir = std::env::temp_dir().join(name);
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// The key spec of the ring's current keys, read from its JWKS.
fn spec_of(jwks_json: &str) -> anyhow::Result<KeySpec> {
    let set: JwkSet = serde_json::from_str(jwks_json).context("the server sent a bad JWKS")?;
    let jwk: &Jwk = set.keys.last().context("the ring's JWKS is empty")?;
    let alg: Algorithm = jwk.alg.parse()?;
    let bits = if alg.is_rsa() {
        let n = jwk.n.as_deref().unwrap_or_default();
        // base64url without padding: 4 characters per 3 bytes.
        u32::try_from(n.len() * 6 / 8 * 8).unwrap_or(0)
    } else {
        0
    };
    Ok(KeySpec::new(alg, bits)?)
}

struct GrpcResult {
    per_sec: f64,
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
    /// Successful Signs over the whole phase, warm-up included (the
    /// window the CPU time is measured over).
    completed: u64,
}

impl GrpcResult {
    fn percentile(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let last = self.latencies_us.len() - 1;
        // Rounds to the nearest rank; q = 1.0 is the maximum.
        let idx = ((last as f64) * q).round() as usize;
        f64::from(self.latencies_us[idx.min(last)]) / 1000.0
    }
}

async fn grpc_phase(
    args: &BenchArgs,
    channels: &[tonic::transport::Channel],
    claims: &[u8],
) -> anyhow::Result<GrpcResult> {
    // Warm up connections and caches; these requests are not counted.
    let warmup = (args.duration / 5).min(Duration::from_secs(1));
    // With --requests: no warm-up, and each task takes requests from this
    // budget until it is spent.
    let budget = Arc::new(AtomicU64::new(args.requests.unwrap_or(u64::MAX)));
    let measuring = Arc::new(AtomicBool::new(args.requests.is_some()));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(args.concurrency);
    for i in 0..args.concurrency {
        let mut client = SignerClient::new(channels[i % channels.len()].clone());
        let request = pb::SignRequest {
            key_ring: args.ring.clone(),
            claims_json: claims.to_vec(),
            ttl: None,
            header_json: Vec::new(),
        };
        let (measuring, stop, errors) = (measuring.clone(), stop.clone(), errors.clone());
        let completed = completed.clone();
        let budget = budget.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let mut first_error = None;
            while !stop.load(Ordering::Relaxed)
                && budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
            {
                let start = Instant::now();
                let result = client.sign(request.clone()).await;
                let took = start.elapsed();
                if result.is_ok() {
                    completed.fetch_add(1, Ordering::Relaxed);
                }
                if !measuring.load(Ordering::Relaxed) {
                    continue;
                }
                match result {
                    Ok(_) => latencies.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX)),
                    Err(s) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
                    }
                }
            }
            (latencies, first_error)
        }));
    }
    let start = if args.requests.is_some() {
        Instant::now()
    } else {
        tokio::time::sleep(warmup).await;
        measuring.store(true, Ordering::Relaxed);
        let start = Instant::now();
        tokio::time::sleep(args.duration).await;
        measuring.store(false, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        start
    };
    let mut latencies_us = Vec::new();
    let mut first_error = None;
    for t in tasks {
        let (l, e) = t.await?;
        latencies_us.extend(l);
        if first_error.is_none() {
            first_error = e;
        }
    }
    let elapsed = start.elapsed();
    latencies_us.sort_unstable();
    Ok(GrpcResult {
        per_sec: latencies_us.len() as f64 / elapsed.as_secs_f64(),
        latencies_us,
        errors: errors.load(Ordering::Relaxed),
        first_error,
        completed: completed.load(Ordering::Relaxed),
    })
}

/// Signs with `KeyManager::sign` on `threads` OS threads (each a
/// single-threaded runtime with a few requests in flight, so the RSA pool
/// never idles) for `duration`, and returns signs per second.
async fn raw_phase(
    spec: KeySpec,
    threads: usize,
    duration: Duration,
    claims: &[u8],
) -> anyhow::Result<f64> {
    let keys = KeyManager::ephemeral(Arc::new(SystemClock)).await?;
    keys.create_ring("bench-raw", spec).await?;
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let mut handles = Vec::with_capacity(threads);
    for _ in 0..threads {
        let (keys, count, claims) = (keys.clone(), count.clone(), claims.to_vec());
        // Named, so a profile can tell the raw phase from the gRPC one.
        let builder = thread::Builder::new().name("signet-bench-raw".into());
        handles.push(builder.spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().build()?;
            rt.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..4 {
                    let (keys, count, claims) = (keys.clone(), count.clone(), claims.clone());
                    set.spawn(async move {
                        while Instant::now() < deadline {
                            let params = SignParams {
                                ring: "bench-raw",
                                claims_json: &claims,
                                ttl: None,
                                header_json: &[],
                                grant: None,
                            };
                            keys.sign(params).await?;
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok::<(), crate::Error>(())
                    });
                }
                while let Some(r) = set.join_next().await {
                    r??;
                }
                Ok(())
            })
        })?);
    }
    let joined = tokio::task::spawn_blocking(move || {
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a raw bench thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<()>>>()
    })
    .await?;
    joined?;
    Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}
