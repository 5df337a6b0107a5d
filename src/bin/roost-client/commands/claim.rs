//! `claim`: one KeyPackage per client of a user, each leaf credential verified.

use openmls::prelude::{BasicCredential, KeyPackageIn, ProtocolVersion};
use openmls_rust_crypto::RustCrypto;
use roost::identity::{verify_member, DomainKeys};
use roost::protocol::{ClaimOutcome, ClaimedKeyPackages, ClientCredential};
use serde_json::json;
use tls_codec::Deserialize as _;

use super::Context;
use crate::device::{now, user_domain};
use crate::output::Output;

/// Claims for `user` in `ciphersuite` and verifies what came.
pub async fn run(context: &Context<'_>, user: &str, ciphersuite: u16) -> anyhow::Result<Output> {
    let _session = context.authenticate().await?;
    let connection = context.connection;
    let claimed = connection.claim_key_packages(user, ciphersuite).await?;
    let keys = connection.domain_keys_of(user_domain(user)?).await?;
    Ok(claim_output(&claimed, &keys))
}

/// A claim as JSON and text, each KeyPackage's leaf credential verified against `keys`.
fn claim_output(claimed: &ClaimedKeyPackages, keys: &DomainKeys) -> Output {
    let crypto = RustCrypto::default();
    let mut text = format!("claimed for {}:", claimed.user_id);
    let claims: Vec<_> = claimed
        .claims
        .iter()
        .map(|claim| {
            let (kind, bytes) = match &claim.outcome {
                ClaimOutcome::KeyPackage(bytes) => ("key_package", Some(bytes.as_slice())),
                ClaimOutcome::LastResort(bytes) => ("last_resort", Some(bytes.as_slice())),
                ClaimOutcome::Unavailable => ("none", None),
            };
            let checked = bytes.map(|bytes| {
                let key_package = KeyPackageIn::tls_deserialize_exact(bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|key_package| {
                        key_package
                            .validate(&crypto, ProtocolVersion::Mls10)
                            .map_err(|e| e.to_string())
                    })?;
                let key_ref = key_package.hash_ref(&crypto).map_err(|e| e.to_string())?;
                let leaf = key_package.leaf_node();
                let identity = BasicCredential::try_from(leaf.credential().clone())
                    .map_err(|e| e.to_string())?;
                let credential = ClientCredential::tls_deserialize_exact(identity.identity())
                    .map_err(|e| e.to_string())?;
                let member =
                    verify_member(leaf.signature_key().as_slice(), &credential, keys, now())
                        .map_err(|e| e.to_string())?;
                if member != claim.client {
                    return Err(format!("the KeyPackage belongs to {member}"));
                }
                Ok(hex::encode(key_ref.as_slice()))
            });
            let (key_ref, verified, error) = match &checked {
                Some(Ok(key_ref)) => (Some(key_ref.clone()), true, None),
                Some(Err(e)) => (None, false, Some(e.clone())),
                None => (None, false, None),
            };
            text.push_str(&format!("\n  {}: {kind}", claim.client));
            if let Some(e) = &error {
                text.push_str(&format!(" (NOT VERIFIED: {e})"));
            }
            json!({
                "client_id": claim.client.to_string(),
                "kind": kind,
                "key_package_ref": key_ref,
                "verified": verified,
                "verification_error": error,
            })
        })
        .collect();
    Output::new(
        json!({ "user": claimed.user_id.as_str(), "claims": claims }),
        text,
    )
}
