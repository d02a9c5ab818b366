//! A real OpenBao server for the plugin tests: started on a free loopback
//! port with its own plugin directory, driven through its CLI and HTTP API.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::common::{eventually, process::BIN};

/// The `bao` binary: SIGNET_TEST_BAO or what `scripts/openbao-setup` finds
/// or installs.
pub fn bao_bin() -> String {
    if let Ok(bin) = std::env::var("SIGNET_TEST_BAO")
        && !bin.is_empty()
    {
        return bin;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/openbao-setup");
    let out = Command::new(script).output().unwrap();
    assert!(
        out.status.success(),
        "scripts/openbao-setup failed (OpenBao is required for these tests): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A loopback port that is free, and whose successor (OpenBao's cluster
/// port) is free too.
fn free_port() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// A plain HTTP/1.1 request: (status, lower-cased head, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String, String) {
    try_http(addr, method, path, token).unwrap_or_else(|| panic!("{method} {path}: no answer"))
}

pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let auth = token.map_or(String::new(), |t| format!("X-Vault-Token: {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, head.to_ascii_lowercase(), body.to_owned()))
}

/// One OpenBao server and its files.
pub struct Bao {
    pub bin: String,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub child: Option<Child>,
    pub token: String,
}

impl Bao {
    pub fn plugins(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("bao.log")
    }

    /// A server with nothing started yet, the plugin binary copied into its
    /// plugin directory as `signet`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        std::fs::copy(BIN, dir.path().join("plugins/signet")).unwrap();
        Self {
            bin: bao_bin(),
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            dir,
            child: None,
            token: "root".into(),
        }
    }

    /// `bao server -dev` (in-memory storage, unsealed, root token `root`),
    /// with a file audit device writing to [`Bao::audit_log`].
    pub fn dev() -> Self {
        let mut bao = Self::new();
        let config = bao.dir.path().join("audit.hcl");
        std::fs::write(
            &config,
            format!(
                "audit \"file\" \"signet-audit\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                bao.audit_log().display()
            ),
        )
        .unwrap();
        let args = vec![
            "server".to_owned(),
            "-dev".into(),
            format!("-config={}", config.display()),
            format!("-dev-plugin-dir={}", bao.plugins().display()),
            "-dev-root-token-id=root".into(),
            format!("-dev-listen-address={}", bao.addr),
        ];
        bao.spawn(&args);
        bao
    }

    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    pub fn spawn(&mut self, args: &[String]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let child = Command::new(&self.bin)
            .args(args)
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = self.addr;
        eventually(Duration::from_secs(30), "OpenBao answers HTTP", || {
            try_http(addr, "GET", "/v1/sys/health", None).is_some()
        });
    }

    /// Stops the server (SIGTERM, then waits).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Runs the CLI with `token`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env("BAO_ADDR", format!("http://{}", self.addr))
            .env("BAO_TOKEN", token)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs the CLI as root; must succeed; its stdout parsed as JSON when
    /// it is JSON, else as a string.
    pub fn ok(&self, args: &[&str]) -> Value {
        let out = self.cli_as(&self.token, args);
        assert!(
            out.status.success(),
            "bao {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }

    /// `bao write -format=json PATH k=v...` as root: the response's data.
    pub fn write(&self, path: &str, kv: &[&str]) -> Value {
        let mut args = vec!["write", "-format=json"];
        args.extend(kv.iter().filter(|a| a.starts_with('-')));
        args.push(path);
        args.extend(kv.iter().filter(|a| !a.starts_with('-')));
        self.ok(&args)["data"].clone()
    }

    pub fn read(&self, path: &str) -> Value {
        self.ok(&["read", "-format=json", path])["data"].clone()
    }

    /// A request as `token` that must fail: its stderr.
    pub fn refused_as(&self, token: &str, args: &[&str]) -> String {
        let out = self.cli_as(token, args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "bao {args:?} succeeded; expected a refusal"
        );
        err
    }

    pub fn refused(&self, args: &[&str]) -> String {
        self.refused_as(&self.token, args)
    }

    /// Registers the plugin under `signet` with its SHA-256 and mounts it
    /// at `signet/`.
    pub fn register_and_enable(&self) {
        use rsa::sha2::{Digest, Sha256};
        let sha = hex::encode(Sha256::digest(
            std::fs::read(self.plugins().join("signet")).unwrap(),
        ));
        self.ok(&[
            "plugin",
            "register",
            &format!("-sha256={sha}"),
            "-command=signet",
            "secret",
            "signet",
        ]);
        self.ok(&["secrets", "enable", "-path=signet", "signet"]);
    }

    /// The unauthenticated JWKS of `ring`: checks the content type and
    /// returns the body.
    pub fn jwks(&self, ring: &str) -> String {
        let (status, head, body) = http(self.addr, "GET", &format!("/v1/signet/jwks/{ring}"), None);
        assert_eq!(status, 200, "JWKS of {ring} without a token: {body}");
        assert!(
            head.contains("content-type: application/jwk-set+json"),
            "raw JWKS content type: {head}"
        );
        body
    }

    /// The pid of the running plugin process (the copy in our plugin
    /// directory), if any.
    pub fn plugin_pid(&self) -> Option<u32> {
        let exe = self.plugins().join("signet");
        std::fs::read_dir("/proc").ok()?.find_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            (std::fs::read_link(e.path().join("exe")).ok()? == exe).then_some(pid)
        })
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- OpenBao log (last 40 lines, newest first) ---");
            for line in tail {
                eprintln!("{line}");
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn sign(bao: &Bao, ring: &str, claims: Value) -> Value {
    bao.write(
        &format!("signet/sign/{ring}"),
        &[&format!("claims={claims}")],
    )
}
