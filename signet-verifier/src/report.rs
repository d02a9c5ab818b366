//! Failure counts sent back to Signet (the `report` feature).

use signet_proto::v1 as pb;

use crate::{Failure, Verifier};

impl Verifier {
    /// Sends the failure counts since the last report (see
    /// [`Verifier::take_counts`]) to Signet's `ReportVerificationFailures`
    /// for `ring`, under this verifier's name; nothing is sent when there
    /// were no failures. The counts are taken before the call: a failed
    /// report loses them rather than counting them twice.
    pub async fn report(
        &self,
        client: &mut pb::signer_client::SignerClient<tonic::transport::Channel>,
        ring: &str,
        verifier_name: &str,
    ) -> Result<(), tonic::Status> {
        let counts = self.take_counts();
        if counts.is_empty() {
            return Ok(());
        }
        client
            .report_verification_failures(pb::ReportVerificationFailuresRequest {
                key_ring: ring.to_owned(),
                counts: counts
                    .into_iter()
                    .map(|(f, n)| pb::FailureCount {
                        reason: pb::VerifyFailure::from(f).into(),
                        count: n,
                    })
                    .collect(),
                verifier: verifier_name.to_owned(),
            })
            .await
            .map(|_| ())
    }
}

impl From<Failure> for pb::VerifyFailure {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Malformed => pb::VerifyFailure::Malformed,
            Failure::MissingKid => pb::VerifyFailure::MissingKid,
            Failure::UnknownKid => pb::VerifyFailure::UnknownKid,
            Failure::AlgMismatch => pb::VerifyFailure::AlgMismatch,
            Failure::BadSignature => pb::VerifyFailure::BadSignature,
            Failure::Expired => pb::VerifyFailure::Expired,
            Failure::NotYetValid => pb::VerifyFailure::NotYetValid,
            Failure::RevokedKey => pb::VerifyFailure::RevokedKey,
        }
    }
}
