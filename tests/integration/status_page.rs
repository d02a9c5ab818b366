//! The status page of the admin listener, read by a real browser: Debian's
//! headless Chromium, installed by `scripts/chromium-setup` when missing.
//! Without it these tests fail; they never skip.

use std::{
    path::Path,
    process::{Command, Output},
};

use signet::pb::{self, signer_client::SignerClient};

use crate::common::{
    http_get,
    process::{BIN, Proc, kek_file, write_config},
};

/// A reason an operator could type: markup and quotes that must reach the
/// page as text.
const HOSTILE: &str = "</td></table><script>alert(1)</script><img src=x onerror=alert(2)>\"'&";

fn repo() -> &'static str {
    env!("CARGO_MANIFEST_DIR")
}

/// The chromium binary, installed first if missing.
fn chromium() -> String {
    let out = Command::new(format!("{}/scripts/chromium-setup", repo()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/chromium-setup failed (the browser test needs Chromium): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Headless Chromium on `url` with `args`, its own profile in `profile`,
/// console messages (CSP violations among them) on stderr.
fn browse(chromium: &str, profile: &Path, args: &[&str], url: &str) -> Output {
    let out = Command::new("timeout")
        .arg("120")
        .arg(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium {args:?} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The kids of `ring`, from `signet keys --json`.
fn kids(server: &Proc, ring: &str) -> Vec<String> {
    let json: serde_json::Value =
        serde_json::from_str(&server.ok(&["keys", "--ring", ring, "--json"])).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// A PNG's width and height, from its IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG ({} bytes)",
        bytes.len()
    );
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

/// The page lists every ring and kid, draws a chart per ring with today
/// marked, counts reported failures by reason, shows the audit head, and
/// shows an operator's hostile reason as text; the browser applies its
/// style sheet under the CSP without a complaint; the page is absent from
/// the public listener.
#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_in_headless_chromium() {
    let chromium = chromium();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kek = kek_file(&dir.path().join("kek"));
    let config = write_config(
        dir.path(),
        &data,
        &kek,
        &[("payments", "ES256"), ("internal", "EdDSA")],
    );
    let server = Proc::spawn(&["server", "--config", config.to_str().unwrap()], &[]).unwrap();
    server.ok(&["rotate", "--ring", "payments", "--reason", HOSTILE]);
    SignerClient::new(server.channel().await)
        .report_verification_failures(pb::ReportVerificationFailuresRequest {
            key_ring: "payments".into(),
            verifier: "gateway".into(),
            counts: vec![pb::FailureCount {
                reason: pb::VerifyFailure::BadSignature as i32,
                count: 5,
            }],
        })
        .await
        .unwrap();

    // Over plain HTTP: the headers, and the escaping in the bytes sent.
    let admin = server.metrics_addr();
    assert_ne!(admin, server.http_addr(), "the admin listener is its own");
    let (status, head, body) = http_get(admin, "/status").await;
    assert_eq!(status, 200, "{head}");
    for header in [
        "content-type: text/html; charset=utf-8",
        "cache-control: no-store",
        "x-content-type-options: nosniff",
        "content-security-policy: default-src 'none'; style-src 'sha256-",
    ] {
        assert!(head.contains(header), "{header} missing from {head}");
    }
    assert!(
        !body.contains(HOSTILE) && !body.contains("<script"),
        "{body}"
    );
    assert!(
        !body.contains(data.to_str().unwrap()),
        "no path on the page"
    );
    assert!(!body.contains(&kek), "no KEK spec on the page");
    let (status, _, _) = http_get(server.http_addr(), "/status").await;
    assert_eq!(status, 404, "not on the public JWKS listener");

    // The DOM after load, in the browser.
    let url = format!("http://{admin}/status");
    let profile = tempfile::tempdir().unwrap();
    let out = browse(&chromium, profile.path(), &["--dump-dom"], &url);
    let dom = String::from_utf8(out.stdout).unwrap();
    let console = String::from_utf8_lossy(&out.stderr);
    for ring in ["payments", "internal"] {
        assert!(
            dom.contains(&format!("data-ring=\"{ring}\"")),
            "{ring}: {dom}"
        );
        let kids = kids(&server, ring);
        assert!(!kids.is_empty());
        for kid in kids {
            assert!(
                dom.contains(&format!("<tr data-kid=\"{kid}\">")),
                "{kid} listed"
            );
            assert!(
                dom.contains(&format!("<g class=\"row\" data-kid=\"{kid}\">")),
                "{kid} charted: {dom}"
            );
        }
    }
    assert_eq!(dom.matches("<svg class=\"chart\"").count(), 2, "{dom}");
    assert_eq!(dom.matches("<line class=\"today\"").count(), 2, "{dom}");
    assert!(dom.contains("class=\"seg active\""), "{dom}");
    assert!(dom.contains("data-kid=\"next 1\""), "projected successors");
    let failures = dom.split("data-reason=\"bad_signature\"").nth(1).unwrap();
    let row = failures.split("</tr>").next().unwrap();
    assert!(row.contains("<td class=\"n\">5</td>"), "{row}");
    assert!(dom.contains("chain head"), "{dom}");
    // The hostile reason is a text node: no element came of it.
    assert!(!dom.contains("<script") && !dom.contains("<img"), "{dom}");
    assert!(
        dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{dom}"
    );
    assert!(
        !console.contains("Content Security Policy"),
        "the browser refused something: {console}"
    );

    // And a picture of it.
    let png = dir.path().join("status.png");
    let shot = format!("--screenshot={}", png.display());
    browse(
        &chromium,
        profile.path(),
        &[&shot, "--window-size=1100,1400", "--hide-scrollbars"],
        &url,
    );
    assert_eq!(png_size(&std::fs::read(&png).unwrap()), (1100, 1400));
    assert!(server.terminate().success());
}

/// `scripts/status-screenshot` starts `signet dev` with a few rings, a
/// rotation, a revocation and failures, and writes the PNG and the DOM.
#[test]
fn the_screenshot_script_writes_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("shot.png");
    let out = Command::new(format!("{}/scripts/status-screenshot", repo()))
        .arg(&png)
        .arg("1000x1200")
        .env("SIGNET", BIN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(png_size(&std::fs::read(&png).unwrap()), (1000, 1200));
    let dom = std::fs::read_to_string(dir.path().join("shot.html")).unwrap();
    for ring in ["default", "partners", "payments"] {
        assert!(
            dom.contains(&format!("data-ring=\"{ring}\"")),
            "{ring}: {dom}"
        );
    }
    assert!(dom.contains("state revoked"), "the revoked key: {dom}");
    assert!(dom.contains("data-reason=\"unknown_kid\""), "{dom}");
}
