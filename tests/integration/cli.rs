//! The real `signet` binary: `dev` in a child process, clients against it.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_signet");

struct Dev {
    child: Child,
    _data: tempfile::TempDir,
    grpc: String,
    http: String,
}

impl Dev {
    fn start() -> Dev {
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(BIN)
            .args([
                "dev",
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut grpc, mut http) = (None, None);
        while grpc.is_none() || http.is_none() {
            let line = lines.next().expect("banner ended early").unwrap();
            let word = |prefix: &str| {
                line.trim()
                    .strip_prefix(prefix)
                    .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
            };
            grpc = grpc.or(word("gRPC"));
            http = http.or(word("JWKS"));
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Dev {
            child,
            _data: data,
            grpc: grpc.unwrap(),
            http: http.unwrap(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("SIGNET_ADDR", &self.grpc)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "signet {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "signet dev ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn dev_sign_jwks_keys_rotate() {
    let dev = Dev::start();
    assert!(dev.grpc.starts_with("http://127.0.0.1:"), "{}", dev.grpc);
    assert!(dev.http.ends_with("/.well-known/jwks.json"), "{}", dev.http);

    let token = dev.ok(&["sign", "--claims", r#"{"sub":"alice"}"#, "--ttl", "5m"]);
    let token = token.trim();
    assert_eq!(
        token.split('.').count(),
        3,
        "stdout is the token alone: {token:?}"
    );

    let jwks: serde_json::Value = serde_json::from_str(&dev.ok(&["jwks"])).unwrap();
    let kid0 = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
    assert_eq!(
        jwks["keys"][0]["alg"], "RS256",
        "dev's default ring is RS256"
    );

    let table = dev.ok(&["keys"]);
    assert!(table.starts_with("KID"), "{table}");
    assert!(table.contains(&kid0) && table.contains("active"), "{table}");

    let rotated = dev.ok(&["rotate", "--now", "--reason", "cli test"]);
    assert!(
        rotated.contains(&format!("key {kid0} signs until ")),
        "{rotated}"
    );

    let keys: serde_json::Value = serde_json::from_str(&dev.ok(&["keys", "--json"])).unwrap();
    let states: Vec<_> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["retiring", "active"]);

    let created = dev.ok(&["rings", "create", "edge", "--alg", "EdDSA"]);
    assert!(
        created.starts_with("created ring edge (EdDSA)"),
        "{created}"
    );
    let token = dev.ok(&["sign", "--ring", "edge", "--claims", "{}"]);
    assert_eq!(token.trim().split('.').count(), 3);

    // Claims from a file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("claims.json");
    std::fs::write(&file, r#"{"sub":"from-file"}"#).unwrap();
    let arg = format!("@{}", file.display());
    dev.ok(&["sign", "--claims", &arg]);

    let status = dev.terminate();
    assert!(status.success(), "clean shutdown on SIGTERM: {status:?}");
}

#[test]
fn errors_are_one_clear_line_and_nonzero() {
    let dev = Dev::start();
    let out = dev.run(&["sign", "--claims", "[1]"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err,
        "signet: InvalidArgument: claims_json: must be a JSON object, not an array\n"
    );
    assert!(out.stdout.is_empty(), "no token on failure");

    let out = dev.run(&["sign", "--claims", "{}", "--ttl", "2h"]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("ttl: 2h exceeds the ring's max_token_ttl of 1h")
    );

    let out = dev.run(&["jwks", "--ring", "missing"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "signet: NotFound: key ring \"missing\" not found\n"
    );

    let out = Command::new(BIN)
        .args(["jwks", "--addr", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("signet: cannot connect to http://127.0.0.1:1"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn dev_refuses_non_loopback() {
    let out = Command::new(BIN)
        .args([
            "dev",
            "--grpc-listen",
            "0.0.0.0:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--grpc-listen 0.0.0.0:0: signet dev serves plaintext"),
        "{err}"
    );
}

#[test]
fn help_teaches() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for sub in ["dev", "sign", "jwks", "keys", "rotate", "rings", "bench"] {
        assert!(help.contains(sub), "--help lists {sub}");
    }
    assert!(
        help.contains("signet sign --claims"),
        "--help shows an example"
    );
}

#[test]
fn bench_reports_grpc_and_raw_rates() {
    let out = Command::new(BIN)
        .args([
            "bench",
            "--in-process",
            "--alg",
            "ES256",
            "--duration",
            "1s",
            "--concurrency",
            "4",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["alg"], "ES256");
    assert_eq!(r["errors"], 0);
    let grpc = r["grpc_per_sec"].as_f64().unwrap();
    let raw = r["raw_per_sec"].as_f64().unwrap();
    assert!(grpc > 0.0 && raw > 0.0, "{r}");
    assert!((r["ratio"].as_f64().unwrap() - grpc / raw).abs() < 1e-9);
    let (p50, p99, max) = (
        r["p50_ms"].as_f64().unwrap(),
        r["p99_ms"].as_f64().unwrap(),
        r["max_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{r}");
}

/// The bench drives a server that decides every request by policy, with and
/// without a claim rule; its claims pass the rule (no request fails), and
/// claims that break it fail every request.
#[test]
fn bench_through_a_policy_and_a_claim_rule() {
    let bench = |authz: &str, claims: &str| {
        let out = Command::new(BIN)
            .args([
                "bench",
                "--in-process",
                "--alg",
                "EdDSA",
                "--duration",
                "1s",
            ])
            .args([
                "--concurrency",
                "4",
                "--json",
                "--authz",
                authz,
                "--claims",
                claims,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (r, String::from_utf8_lossy(&out.stderr).to_string())
    };
    let good = r#"{"sub":"bench-user","aud":"api.example","scope":"read write"}"#;
    for authz in ["grant", "claim-rule"] {
        let (r, _) = bench(authz, good);
        assert_eq!(r["authz"], authz);
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["grpc_per_sec"].as_f64().unwrap() > 0.0);
    }
    // The production configuration: every Sign audited before it answers.
    let out = Command::new(BIN)
        .args([
            "bench",
            "--in-process",
            "--alg",
            "EdDSA",
            "--duration",
            "1s",
        ])
        .args([
            "--concurrency",
            "4",
            "--json",
            "--authz",
            "grant",
            "--audit",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["audited"].as_bool(), r["errors"].as_u64()),
        (Some(true), Some(0)),
        "{r}"
    );
    let bytes = r["audit_bytes_per_sign"].as_f64().unwrap();
    assert!((200.0..1000.0).contains(&bytes), "{r}");
    let (r, stderr) = bench("claim-rule", r#"{"sub":"root","aud":"api.example"}"#);
    assert_eq!(r["grpc_per_sec"], 0.0, "{r}");
    assert!(
        stderr.contains("PermissionDenied: claims_json.sub: \"root\" is not allowed for unix:uid:"),
        "{stderr}"
    );
}

/// `--compare-audit` measures an unaudited and an audited server per round
/// in one run and reports what each did, with the CPU and the audit's write
/// rounds of the audited ones; it refuses to be mixed with `--audit`.
#[test]
fn bench_compares_audited_and_unaudited_in_one_run() {
    let out = Command::new(BIN)
        .args([
            "bench",
            "--in-process",
            "--alg",
            "EdDSA",
            "--authz",
            "grant",
        ])
        .args([
            "--duration",
            "500ms",
            "--concurrency",
            "4",
            "--compare-audit",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Two rounds of (unaudited, audited), then the summary.
    assert_eq!(lines.len(), 5, "{text}");
    let runs = &lines[..4];
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(r["audited"].as_bool(), Some(i % 2 == 1), "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert_eq!(r["raw_per_sec"], 0.0, "no raw phase: {r}");
        let cpu = r["cpu_us_per_sign"].as_array().unwrap();
        assert!(cpu.iter().all(|c| c.as_f64().unwrap() >= 0.0), "{r}");
        assert!(cpu[0].as_f64().unwrap() > 0.0, "user CPU per Sign: {r}");
        if i % 2 == 1 {
            assert!(r["audit_appends_per_round"].as_f64().unwrap() >= 1.0, "{r}");
            assert!(r["audit_round_ms"].as_f64().unwrap() > 0.0, "{r}");
        } else {
            assert!(r["audit_round_ms"].is_null(), "{r}");
        }
    }
    let summary = &lines[4];
    let rounds = summary["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{summary}");
    for (round, pair) in rounds.iter().zip(runs.chunks(2)) {
        let (u, a) = (
            pair[0]["grpc_per_sec"].as_f64().unwrap(),
            pair[1]["grpc_per_sec"].as_f64().unwrap(),
        );
        assert_eq!(round["unaudited_per_sec"].as_f64(), Some(u), "{summary}");
        assert_eq!(round["audited_per_sec"].as_f64(), Some(a), "{summary}");
        assert!(
            (round["ratio"].as_f64().unwrap() - a / u).abs() < 1e-9,
            "{summary}"
        );
    }
    let ratio = summary["ratio_of_medians"].as_f64().unwrap();
    let medians = summary["median_audited_per_sec"].as_f64().unwrap()
        / summary["median_unaudited_per_sec"].as_f64().unwrap();
    assert!((ratio - medians).abs() < 1e-9, "{summary}");

    let out = Command::new(BIN)
        .args(["bench", "--in-process", "--audit", "--compare-audit", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--compare-audit") && stderr.contains("--audit"),
        "{stderr}"
    );
}

/// `signet timeline --simulate` is pinned by a snapshot: under the default
/// policy (publish_lead 6d, grace 7d) it shows the practice's example, a key
/// published six days before it signs and its predecessor removed seven
/// days after that.
#[test]
fn timeline_simulate_snapshot() {
    let out = Command::new(BIN)
        .args([
            "timeline",
            "--simulate",
            "--days",
            "200",
            "--start",
            "2026-01-01",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8(out.stdout).unwrap();
    let want = include_str!("snapshots/timeline_simulate_200d.txt");
    assert_eq!(
        got, want,
        "update tests/snapshots/timeline_simulate_200d.txt if the change is intended"
    );
    assert!(got.contains(
        "key 2  published 2026-03-26  signs 2026-04-01 .. 2026-06-30  leaves the JWKS 2026-07-07"
    ));
    assert!(got.contains(
        "key 1  published 2026-01-01  signs 2026-01-01 .. 2026-04-01  leaves the JWKS 2026-04-08"
    ));
}

#[test]
fn policy_revoke_and_keys_commands() {
    let dev = Dev::start();
    let shown = dev.ok(&["policy", "show"]);
    assert!(shown.contains("rotation_period    90d"), "{shown}");
    assert!(shown.contains("publish_lead       6d"), "{shown}");

    let out = dev.run(&["policy", "check", "--grace", "1h"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("policy: grace (1h) must be >= max_token_ttl + jwks_max_age + clock_skew"),
        "{err}"
    );

    let ok = dev.ok(&["policy", "check", "--publish-lead", "2h"]);
    assert!(ok.contains("warning: publish_lead 2h is under 24h"), "{ok}");
    assert!(
        ok.contains("OK: the policy keeps every valid token verifiable"),
        "{ok}"
    );

    let set = dev.ok(&["policy", "set", "--rotation-period", "120d"]);
    assert!(set.contains("rotation_period    120d"), "{set}");
    assert!(
        dev.ok(&["policy", "show"])
            .contains("rotation_period    120d")
    );

    let scheduled = dev.ok(&["rotate", "--reason", "planned"]);
    assert!(
        scheduled.contains("is published and signs from"),
        "{scheduled}"
    );
    let keys: serde_json::Value = serde_json::from_str(&dev.ok(&["keys", "--json"])).unwrap();
    let states: Vec<_> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["active", "published"]);
    let waiting = keys[1]["kid"].as_str().unwrap().to_owned();
    assert_eq!(keys[1]["reason"], "planned");

    let out = dev.ok(&["revoke", &waiting, "--reason", "bad batch"]);
    assert!(out.contains(&format!("key {waiting} revoked at")), "{out}");
    let table = dev.ok(&["keys"]);
    assert!(
        table.contains("revoked") && table.contains("bad batch"),
        "{table}"
    );
    assert!(!dev.ok(&["jwks"]).contains(&waiting));

    let out = dev.run(&["revoke", &waiting, "--reason", "again"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("signet: FailedPrecondition: key"));

    let chart = dev.ok(&["timeline", "--days", "400"]);
    assert!(
        chart.contains("ring default (RS256): rotation_period 120d"),
        "{chart}"
    );
    assert!(chart.contains("^ today"), "{chart}");
    assert!(chart.contains("next 1"), "projected successor: {chart}");
}
