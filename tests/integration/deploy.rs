//! The packaging in `Dockerfile` and `deploy/`: the configurations it ships
//! load and pass `--check-config` (the Kubernetes one starts a replica on
//! PostgreSQL), the manifests and the Dockerfile parse with the tools that
//! read them, and `signet health` (the image's HEALTHCHECK) probes
//! `/readyz`. The Python modules used here are installed by
//! `scripts/deploy-check` (scripts/test runs it first); without them these
//! tests fail, they never skip.

use std::{path::Path, process::Command};

use rcgen::SanType;
use serde_json::Value;

use crate::common::{
    certs::{ca, leaf},
    http_get,
    postgres::{fresh_schema, url as postgres_url},
    process::{BIN, Proc, kek_file},
};

fn repo() -> &'static str {
    env!("CARGO_MANIFEST_DIR")
}

/// Runs a Python program that prints JSON, with `args`.
fn python_json(program: &str, args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(program)
        .args(args)
        .current_dir(repo())
        .output()
        .expect("python3 (scripts/deploy-check installs its modules)");
    assert!(
        out.status.success(),
        "python3 failed (run scripts/deploy-check to install pyyaml and dockerfile): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every document of the Kubernetes manifests, as JSON.
fn manifests() -> Vec<Value> {
    let files: Vec<String> = std::fs::read_dir(format!("{}/deploy/kubernetes", repo()))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    assert!(!files.is_empty());
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let docs = python_json(
        "import json, sys, yaml\n\
         print(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f))]))",
        &args,
    );
    docs.as_array().unwrap().clone()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"))
}

/// Whether no setting (comments aside) still names one of `paths`.
fn moved(toml: &str, paths: &[&str]) -> bool {
    toml.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .all(|l| paths.iter().all(|p| !l.contains(p)))
}

/// Runs `signet server --config PATH --check-config`; panics with its
/// report unless it passes.
fn check_config(config: &Path, env: &[(&str, &str)]) {
    let out = Command::new(BIN)
        .args([
            "server",
            "--config",
            config.to_str().unwrap(),
            "--check-config",
        ])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}{}",
        config.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The manifests: three replicas probed on /readyz, a disruption budget,
/// non-root read-only containers without capabilities, the KEK from a
/// Secret; and the kinds kustomize applies.
#[test]
fn kubernetes_manifests_parse_and_hold_what_the_docs_say() {
    let docs = manifests();
    for k in [
        "ConfigMap",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Kustomization",
    ] {
        kind(&docs, k);
    }
    let sts = kind(&docs, "StatefulSet");
    assert_eq!(sts["spec"]["replicas"], 3);
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let containers = pod["containers"].as_array().unwrap();
    let init = pod["initContainers"].as_array().unwrap();
    for c in containers.iter().chain(init) {
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", c["name"]);
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    }
    let signet = &containers[0];
    assert_eq!(signet["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(signet["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(
        signet["resources"]["requests"], signet["resources"]["limits"],
        "Guaranteed QoS: never swapped"
    );
    let kek = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "kek")
        .unwrap();
    assert_eq!(kek["secret"]["secretName"], "signet-kek");
    let pdb = kind(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 2);
    let listed = kind(&docs, "Kustomization")["resources"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(listed, 5, "every manifest is in the kustomization");
}

/// The ConfigMap's signet.toml, its paths moved into a temp dir and its
/// store pointed at the test PostgreSQL, passes `--check-config` and
/// starts a replica that is ready and serves the status page on its admin
/// port; its policy.toml grants what its comments say.
#[test]
fn the_kubernetes_config_starts_a_replica_on_postgres() {
    let docs = manifests();
    let data = &kind(&docs, "ConfigMap")["data"];
    let (toml, policy) = (
        data["signet.toml"].as_str().unwrap(),
        data["policy.toml"].as_str().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let kek = dir.path().join("kek");
    kek_file(&kek);
    let server_ca = ca("signet test CA");
    let (cert, key) = leaf(
        &server_ca,
        "signet",
        vec![SanType::DnsName("signet".try_into().unwrap())],
    );
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), key).unwrap();
    std::fs::write(dir.path().join("ca.crt"), &server_ca.pem).unwrap();
    let schema = fresh_schema("deploy");
    let text: String = toml
        .lines()
        .map(|l| {
            if l.starts_with("url = ") {
                format!("url = {:?}", postgres_url())
            } else if l.starts_with("schema = ") {
                format!("schema = {schema:?}")
            } else {
                l.replace("/var/lib/signet/data", &format!("{d}/data"))
                    .replace("/run/signet/kek", &kek.display().to_string())
                    .replace("/etc/signet/tls", &d)
                    .replace("/etc/signet/config", &d)
                    .replace("0.0.0.0:50051", "127.0.0.1:0")
                    .replace("0.0.0.0:8080", "127.0.0.1:0")
                    .replace("0.0.0.0:9090", "127.0.0.1:0")
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(moved(&text, &["/etc/signet", "/run/signet"]), "{text}");
    let config = dir.path().join("signet.toml");
    std::fs::write(&config, text).unwrap();
    check_config(&config, &[]);

    let server = Proc::spawn(&["server", "--config", config.to_str().unwrap()], &[]).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, _, body) = rt.block_on(http_get(server.http_addr(), "/readyz"));
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, _, body) = rt.block_on(http_get(server.metrics_addr(), "/status"));
    assert_eq!(status, 200);
    assert!(body.contains("data-ring=\"default\"") && body.contains("store postgres"));
    assert!(server.terminate().success());

    let decide = |identity: &str, action: &str, ring: &str| {
        Command::new(BIN)
            .args(["authz", "check", "--policy", &format!("{d}/policy.toml")])
            .args(["--identity", identity, "--action", action, "--ring", ring])
            .output()
            .unwrap()
            .status
            .success()
    };
    let issuer = "uri:spiffe://example.org/ns/payments/sa/checkout";
    assert!(decide(issuer, "sign", "default"));
    assert!(!decide(issuer, "rotate", "default"));
    let admin = "uri:spiffe://example.org/ns/security/sa/signet-admin";
    assert!(decide(admin, "seal", "*"));
}

/// The systemd unit's and the container image's signet.toml, paths moved
/// into a temp dir, pass `--check-config`.
#[test]
fn the_systemd_and_container_configs_pass_check_config() {
    for (file, kek_path) in [
        (
            "deploy/systemd/signet.toml",
            "/run/credentials/signet.service/kek",
        ),
        ("deploy/container/signet.toml", "/etc/signet/kek"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let kek = dir.path().join("kek");
        kek_file(&kek);
        std::fs::copy(
            format!("{}/signet.policy.example.toml", repo()),
            dir.path().join("policy.toml"),
        )
        .unwrap();
        let text = std::fs::read_to_string(format!("{}/{file}", repo()))
            .unwrap()
            .replace(kek_path, &kek.display().to_string())
            .replace("/var/lib/signet", &format!("{d}/data"))
            .replace("/etc/signet/policy.toml", &format!("{d}/policy.toml"))
            .replace("/run/signet/grpc.sock", &format!("{d}/grpc.sock"))
            // The group the unit's install steps create; gid 0 here.
            .replace("\"signet-clients\"", "\"0\"")
            .replace("0.0.0.0:8080", "127.0.0.1:0")
            .replace("127.0.0.1:9090", "127.0.0.1:0")
            .replace("0.0.0.0:9090", "127.0.0.1:0")
            .replace(
                "allow_unlocked_memory = false",
                "allow_unlocked_memory = true",
            );
        assert!(moved(&text, &["/etc/signet", "/run/"]), "{file}: {text}");
        let config = dir.path().join("signet.toml");
        std::fs::write(&config, text).unwrap();
        check_config(&config, &[]);
    }
}

/// The Dockerfile, read by BuildKit's parser: a build stage that runs
/// `cargo build --release --locked`, a runtime stage as a non-root user
/// with `signet server` as entrypoint and `signet health` on /readyz as
/// healthcheck, copying only files that exist and the build context keeps.
#[test]
fn the_dockerfile_builds_in_two_stages_and_runs_as_non_root() {
    let cmds = python_json(
        "import dockerfile, json\n\
         print(json.dumps([{'cmd': c.cmd, 'flags': c.flags, 'value': c.value}\n\
                           for c in dockerfile.parse_file('Dockerfile')]))",
        &[],
    );
    let cmds = cmds.as_array().unwrap();
    let of = |cmd: &str| -> Vec<&Value> { cmds.iter().filter(|c| c["cmd"] == cmd).collect() };
    let stages: Vec<&str> = of("FROM")
        .iter()
        .map(|c| {
            c["value"]
                .as_array()
                .unwrap()
                .last()
                .unwrap()
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(stages, ["build", "runtime"]);
    let runs = serde_json::to_string(&of("RUN")).unwrap();
    assert!(runs.contains("cargo build --release --locked"), "{runs}");
    let user = of("USER");
    assert_eq!(user.len(), 1);
    assert_ne!(
        user[0]["value"][0].as_str().unwrap().split(':').next(),
        Some("0")
    );
    assert_ne!(user[0]["value"][0], "root");
    assert_eq!(
        of("ENTRYPOINT")[0]["value"],
        serde_json::json!([
            "/usr/local/bin/signet",
            "server",
            "--config",
            "/etc/signet/signet.toml"
        ])
    );
    assert_eq!(
        of("HEALTHCHECK")[0]["value"],
        serde_json::json!([
            "CMD",
            "/usr/local/bin/signet",
            "health",
            "http://127.0.0.1:8080/readyz"
        ])
    );
    let ignored = std::fs::read_to_string(format!("{}/.dockerignore", repo())).unwrap();
    for copy in of("COPY") {
        if copy["flags"].as_array().unwrap().is_empty() {
            let src = copy["value"][0].as_str().unwrap();
            assert!(Path::new(repo()).join(src).exists(), "COPY {src}");
            let top = src.split('/').next().unwrap();
            assert!(
                !ignored.lines().any(|l| l.trim_end_matches('/') == top),
                "COPY {src} is excluded by .dockerignore"
            );
        }
    }
}

/// `signet health URL`: exit 0 and the body on 200; non-zero, naming the
/// status, on 404 and while sealed (503); non-zero when nothing answers;
/// a usage error (2) for a URL that is not http://.
#[test]
fn signet_health_probes_readyz() {
    let dir = tempfile::tempdir().unwrap();
    let server = Proc::dev(&dir.path().join("data"), &[], &[]).unwrap();
    let http = server.http_addr();
    let health = |url: &str| Command::new(BIN).args(["health", url]).output().unwrap();
    let out = health(&format!("http://{http}/readyz"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ready\n");

    let out = health(&format!("http://{http}/nope"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));

    server.ok(&["seal", "--reason", "health probe test"]);
    let out = health(&format!("http://{http}/readyz"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("503") && err.contains("sealed"), "{err}");

    let out = health(&format!("https://{http}/readyz"));
    assert_eq!(out.status.code(), Some(2));
    assert!(server.terminate().success());
    let out = health(&format!("http://{http}/readyz"));
    assert_eq!(out.status.code(), Some(1), "nothing listens any more");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no answer"));
}

/// The Dockerfile's ENTRYPOINT and HEALTHCHECK, run by
/// `scripts/container-smoke` under the image's conditions without Docker
/// (uid 10001, no capabilities, read-only root, only the two volumes
/// writable, the image's default config): ready, socket and store in the
/// volumes, clean exit on SIGTERM. Needs root and namespaces, as CI has.
#[test]
fn the_image_entrypoint_runs_on_a_read_only_root_as_uid_10001() {
    let out = Command::new(format!("{}/scripts/container-smoke", repo()))
        .arg(BIN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "HEALTHCHECK (ready): ok",
        "root file system: read-only",
        "SIGTERM: clean exit",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
}
