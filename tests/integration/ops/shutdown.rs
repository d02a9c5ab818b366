//! A stop cannot be held up by a peer: past `listen.shutdown_grace` the
//! connections still open are closed and the server exits cleanly.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    time::Duration,
};

use crate::common::process::{Proc, kek_file, write_config};

/// A gRPC peer that opens an HTTP/2 connection and then goes silent: it
/// never acknowledges the server's SETTINGS, nor the PING that follows its
/// GOAWAY, so a graceful drain alone waits for it forever.
#[test]
fn a_peer_that_never_answers_goaway_cannot_hold_the_stop() {
    let dir = tempfile::tempdir().unwrap();
    let kek = kek_file(&dir.path().join("kek"));
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        &kek,
        &[("s", "EdDSA")],
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen("[listen]\n", "[listen]\nshutdown_grace = \"1s\"\n", 1),
    )
    .unwrap();
    let server = Proc::spawn(&["server", "--config", config.to_str().unwrap()], &[]).unwrap();

    let mut peer = UnixStream::connect(dir.path().join("grpc.sock")).unwrap();
    // The client preface and an empty SETTINGS frame, then nothing.
    peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    peer.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    // The server's SETTINGS frame: the connection is established (reading
    // it answers nothing).
    peer.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut frame = [0u8; 9];
    peer.read_exact(&mut frame).unwrap();
    assert_eq!(frame[3], 4, "a SETTINGS frame: {frame:?}");

    // `terminate` fails the test if the process is still running 20 s
    // after SIGTERM; without the grace it never exits.
    let logs = server.stderr.clone();
    let status = server.terminate();
    assert!(status.success(), "{status}");
    // The log pipe drains just after the exit.
    crate::common::eventually(Duration::from_secs(10), "the last log line", || {
        logs.lock().unwrap().contains("stopped")
    });
    let logs = logs.lock().unwrap().clone();
    assert!(
        logs.contains("connections still open at the end of the shutdown grace"),
        "{logs}"
    );
    // The silent peer's connection was closed by the server: the read
    // ends (EOF or reset) instead of timing out.
    let mut rest = Vec::new();
    let end = peer.read_to_end(&mut rest);
    assert!(
        end.as_ref().map_or_else(
            |e| e.kind() != std::io::ErrorKind::WouldBlock
                && e.kind() != std::io::ErrorKind::TimedOut,
            |_| true
        ),
        "{end:?}"
    );
}
