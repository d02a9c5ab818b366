//! The `unseal` action and `signet rings list` (ListKeyRings).

use std::sync::Arc;

use signet::{
    authz::{Authz, SharedAuthz},
    pb::{self, operator_client::OperatorClient},
    rpc::guard::Authorizer,
};
use tonic::Code;

use super::{audit_records, audited};
use crate::common::process::Proc;

/// A `seal`-only identity seals but may not unseal; `unseal` is its own
/// action. Decided by the request guard and audited as denied.
#[tokio::test]
async fn seal_only_identity_cannot_unseal() {
    let dir = tempfile::tempdir().unwrap();
    let me = crate::common::process::my_uid();
    let policy = &format!("[[rule]]\nidentity = {me:?}\nactions = [\"seal\"]\nrings = [\"*\"]\n");
    let authz = SharedAuthz::new(Authz::from_toml(policy).unwrap());
    let (channel, keys) = audited(dir.path(), Arc::new(authz)).await;
    let mut op = OperatorClient::new(channel);
    op.seal(pb::SealRequest {
        reason: "on-call drill".into(),
    })
    .await
    .unwrap();
    assert!(keys.is_sealed());
    let s = op.unseal(pb::UnsealRequest {}).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    assert_eq!(s.message(), format!("{me:?} may not unseal on ring \"*\""));
    assert!(keys.is_sealed(), "still sealed");
    let last = audit_records(dir.path()).pop().unwrap();
    assert_eq!(last["rpc"], "signet.v1.Operator/Unseal");
    assert_eq!(last["outcome"], "denied");

    let both = SharedAuthz::new(
        Authz::from_toml(&policy.replace(r#"["seal"]"#, r#"["seal", "unseal"]"#)).unwrap(),
    );
    let peer = signet::tls::PeerInfo {
        identity: me.clone(),
        names: vec![me.clone()],
        addr: None,
    };
    assert!(both.authorize(&peer, "unseal", "*").is_ok());
    let admin =
        SharedAuthz::new(Authz::from_toml(&policy.replace(r#"["seal"]"#, r#"["admin"]"#)).unwrap());
    assert!(admin.authorize(&peer, "unseal", "*").is_ok());
}

/// `signet rings list`: every ring with its algorithm and active kid.
#[test]
fn rings_list_shows_every_ring() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Proc::dev(&dir.path().join("data"), &[], &[]).unwrap();
    dev.ok(&["rings", "create", "edge", "--alg", "EdDSA"]);
    let json: serde_json::Value =
        serde_json::from_str(&dev.ok(&["rings", "list", "--json"])).unwrap();
    let rings = json.as_array().unwrap();
    let names: Vec<_> = rings.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["default", "edge"]);
    assert_eq!(rings[0]["algorithm"], "RS256");
    assert_eq!(rings[1]["algorithm"], "EdDSA");
    assert_eq!(rings[1]["keys"], 1);
    let kid = rings[1]["active_kid"].as_str().unwrap();

    let table = dev.ok(&["rings", "list"]);
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("NAME"), "{table}");
    assert!(lines.next().unwrap().starts_with("default "), "{table}");
    let edge = lines.next().unwrap();
    assert!(
        edge.starts_with("edge ") && edge.contains(kid) && edge.ends_with(" 1"),
        "{table}"
    );
}
