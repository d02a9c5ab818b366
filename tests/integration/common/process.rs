//! The real `signet` binary in a child process.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_signet");

/// A running `signet dev` or `signet server`; killed when dropped.
pub struct Proc {
    pub child: Child,
    pub grpc: String,
    pub http: String,
    /// Everything the process wrote to stderr so far (logs).
    pub stderr: Arc<Mutex<String>>,
}

fn drain(r: impl std::io::Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            let mut s = into.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
}

impl Proc {
    /// `signet dev` on port 0 with `extra` arguments; waits for the banner.
    pub fn dev(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Result<Proc, String> {
        let mut args = vec![
            "dev",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Self::spawn(&args, env)
    }

    /// Spawns `signet ARGS` and waits for the addresses it prints (the dev
    /// banner, or the server's "listening" log line). Returns the stderr
    /// text if the process exits first.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Result<Proc, String> {
        let mut cmd = Command::new(BIN);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        drain(child.stderr.take().unwrap(), stderr.clone());
        let stdout = Arc::new(Mutex::new(String::new()));
        drain(child.stdout.take().unwrap(), stdout.clone());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = {
                let out = stdout.lock().unwrap();
                let err = stderr.lock().unwrap();
                addresses(&out).or_else(|| addresses(&err))
            };
            if let Some((grpc, http)) = found {
                return Ok(Proc {
                    child,
                    grpc,
                    http,
                    stderr,
                });
            }
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                let err = stderr.lock().unwrap().clone();
                return Err(format!("exited with {status}: {err}"));
            }
            assert!(Instant::now() < deadline, "signet did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs a client subcommand against this process.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("SIGNET_ADDR", &self.grpc)
            .output()
            .unwrap()
    }

    /// Runs a client subcommand that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "signet {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) -> ExitStatus {
        signal(&self.child, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "signet ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(mut self) {
        signal(&self.child, "-KILL");
        let _ = self.child.wait();
    }

    /// The HTTP listener's address (from the dev banner's JWKS URL or the
    /// server's `http=` log field).
    pub fn http_addr(&self) -> std::net::SocketAddr {
        let rest = self.http.trim_start_matches("http://");
        rest.split('/').next().unwrap().parse().unwrap()
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.grpc.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args([sig, &pid]).status();
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds `gRPC http://A` and `JWKS http://B/...` (dev banner) or
/// `grpc=A http=B` (server log line).
fn addresses(text: &str) -> Option<(String, String)> {
    let word_after = |key: &str| {
        text.lines().find_map(|l| {
            let i = l.find(key)?;
            l[i + key.len()..]
                .split_whitespace()
                .next()
                .map(|w| w.trim_matches('"').to_owned())
        })
    };
    if let (Some(g), Some(h)) = (word_after("gRPC  "), word_after("JWKS  ")) {
        return Some((g, h));
    }
    match (word_after("grpc="), word_after("http=")) {
        (Some(g), Some(h)) => Some((format!("http://{g}"), format!("http://{h}"))),
        _ => None,
    }
}

/// Writes a server config for `data_dir` with one ring per `(name, alg)`,
/// every listener on port 0 (the metrics listener's default port is fixed,
/// and tests run side by side).
pub fn write_config(
    dir: &Path,
    data_dir: &Path,
    kek: &str,
    rings: &[(&str, &str)],
) -> std::path::PathBuf {
    let mut text = format!(
        "[listen]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\n\n[store]\ndata_dir = {:?}\n\n[seal]\nkek = {kek:?}\nallow_unlocked_memory = true\n",
        data_dir.display().to_string()
    );
    for (name, alg) in rings {
        text.push_str(&format!(
            "\n[[rings]]\nname = \"{name}\"\nalgorithm = \"{alg}\"\n"
        ));
    }
    let path = dir.join("signet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Creates a KEK file of 32 random bytes with mode 0600.
pub fn kek_file(path: &Path) -> String {
    signet::seal::LocalKek::create_file(path).unwrap();
    format!("file:{}", path.display())
}
