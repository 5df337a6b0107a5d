//! MLS conformance: the MLS working group's interoperability test vectors
//! (`tests/vectors/mlswg/`, see its README for source and licence) run against the code paths
//! Roost uses — tls_codec's variable-length vectors, openmls's decoding of every message the
//! server and the client parse, the ratchet-tree checks a hub makes when a group is created
//! (parent hashes, leaf signatures), with tree hashes and resolutions recomputed here from the
//! parsed nodes, and a passive client (joining from a Welcome, then processing proposals and
//! commits epoch after epoch) checked against each epoch's authenticator.

use openmls::prelude::{
    AddProposalIn, Ciphersuite, ExternalInitProposal, GroupContextExtensionProposalIn, GroupId,
    KeyPackage, KeyPackageBundle, MlsGroup, MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn,
    PreSharedKeyProposal, ProcessedMessageContent, ProtocolMessage, RatchetTreeIn, ReInitProposal,
    RemoveProposal, StagedWelcome, UpdateProposalIn, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use openmls::schedule::PreSharedKeyId;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::storage::StorageProvider;
use openmls_traits::OpenMlsProvider;
use sha2::Digest;
use tls_codec::{Deserialize, Serialize, VLBytes};

fn vectors(name: &str) -> Vec<serde_json::Value> {
    let path = format!(
        "{}/tests/vectors/mlswg/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn bytes(value: &serde_json::Value) -> Vec<u8> {
    hex::decode(value.as_str().expect("a hex string")).expect("hex")
}

#[test]
fn variable_length_headers_decode_and_encode_as_the_vectors_say() {
    let cases = vectors("deserialization");
    assert_eq!(cases.len(), 14);
    for case in cases {
        let header = bytes(&case["vlbytes_header"]);
        let length = case["length"].as_u64().unwrap() as usize;
        let (read, header_len) = tls_codec::vlen::read_length(&mut header.as_slice()).unwrap();
        assert_eq!((read, header_len), (length, header.len()), "{case}");
        let mut written = Vec::new();
        tls_codec::vlen::write_length(&mut written, length).unwrap();
        assert_eq!(written, header, "{case}");
        // A whole vector where that is small enough to build.
        if length <= 1 << 16 {
            let mut encoded = header.clone();
            encoded.resize(header.len() + length, 7);
            let decoded = VLBytes::tls_deserialize_exact(encoded.as_slice()).unwrap();
            assert_eq!(decoded.as_slice().len(), length);
            assert_eq!(decoded.tls_serialize_detached().unwrap(), encoded);
        }
    }
}

/// Decodes `encoded` as `T` (all of it) and checks that it encodes back to the same bytes; a
/// decoding refusal is returned.
fn round_trips<T: Deserialize + Serialize>(field: &str, encoded: &[u8]) -> Result<(), String> {
    let decoded = T::tls_deserialize_exact(encoded).map_err(|e| format!("{field}: {e}"))?;
    assert_eq!(
        decoded.tls_serialize_detached().unwrap(),
        encoded,
        "{field} re-encodes differently"
    );
    Ok(())
}

/// What openmls refuses on purpose when decoding: the vectors' randomly chosen extensions of a
/// ReInit proposal (the new group's context) include types RFC 9420 does not allow in a group
/// context (a ratchet tree), and openmls checks that rule while decoding. Roost never acts on a
/// ReInit (the hub refuses them), and wants that refusal.
fn refused_on_purpose(refusal: &str) -> bool {
    refusal.starts_with("re_init_proposal:") && refusal.contains("not allowed in the group context")
}

#[test]
fn every_message_of_the_vectors_decodes_and_re_encodes_to_its_bytes() {
    let cases = vectors("messages");
    assert_eq!(cases.len(), 300);
    let mut refused = Vec::new();
    for case in &cases {
        let field = |name: &str| bytes(&case[name]);
        let mut outcomes = Vec::new();
        for name in [
            "mls_welcome",
            "mls_group_info",
            "mls_key_package",
            "public_message_application",
            "public_message_proposal",
            "public_message_commit",
            "private_message",
        ] {
            outcomes.push(round_trips::<MlsMessageIn>(name, &field(name)));
        }
        outcomes.extend([
            round_trips::<RatchetTreeIn>("ratchet_tree", &field("ratchet_tree")),
            round_trips::<AddProposalIn>("add_proposal", &field("add_proposal")),
            round_trips::<UpdateProposalIn>("update_proposal", &field("update_proposal")),
            round_trips::<RemoveProposal>("remove_proposal", &field("remove_proposal")),
            round_trips::<PreSharedKeyProposal>(
                "pre_shared_key_proposal",
                &field("pre_shared_key_proposal"),
            ),
            round_trips::<ReInitProposal>("re_init_proposal", &field("re_init_proposal")),
            round_trips::<ExternalInitProposal>(
                "external_init_proposal",
                &field("external_init_proposal"),
            ),
            round_trips::<GroupContextExtensionProposalIn>(
                "group_context_extensions_proposal",
                &field("group_context_extensions_proposal"),
            ),
        ]);
        // `commit` and `group_secrets` have no public openmls type: the commit is checked
        // inside `public_message_commit`; group secrets are only ever decrypted by openmls.
        refused.extend(outcomes.into_iter().filter_map(Result::err));
    }
    let unexpected: Vec<&String> = refused
        .iter()
        .filter(|refusal| !refused_on_purpose(refusal))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:#?}");
    println!(
        "{} objects decoded and re-encoded; {} ReInit proposals refused on purpose",
        cases.len() * 15 - refused.len(),
        refused.len()
    );
}

/// A node of a ratchet tree as its encoding holds it (RFC 9420 section 7.1), read here on its own
/// rather than through openmls, so that the tree hashes and resolutions below are an independent
/// check: a leaf's bytes, or a parent's bytes and unmerged leaves.
enum RawNode {
    Leaf(Vec<u8>),
    Parent { bytes: Vec<u8>, unmerged: Vec<u32> },
}

/// Reads a variable-length vector off `reader`, returning its content.
fn vector<'a>(reader: &mut &'a [u8]) -> &'a [u8] {
    let (len, _) = tls_codec::vlen::read_length(reader).unwrap();
    let (content, rest) = reader.split_at(len);
    *reader = rest;
    content
}

fn take<'a>(reader: &mut &'a [u8], len: usize) -> &'a [u8] {
    let (taken, rest) = reader.split_at(len);
    *reader = rest;
    taken
}

/// The encoded length of the LeafNode at the start of `bytes`.
fn leaf_node_len(bytes: &[u8]) -> usize {
    let mut reader = bytes;
    vector(&mut reader); // encryption_key
    vector(&mut reader); // signature_key
    let credential_type = u16::from_be_bytes(take(&mut reader, 2).try_into().unwrap());
    match credential_type {
        1 => vector(&mut reader), // basic: identity
        2 => vector(&mut reader), // x509: certificates
        other => panic!("credential type {other} in a vector"),
    };
    for _ in 0..5 {
        vector(&mut reader); // capabilities: versions, suites, extensions, proposals, credentials
    }
    match take(&mut reader, 1)[0] {
        1 => {
            take(&mut reader, 16); // key_package: lifetime
        }
        2 => {} // update
        3 => {
            vector(&mut reader); // commit: parent_hash
        }
        other => panic!("leaf node source {other}"),
    }
    vector(&mut reader); // extensions
    vector(&mut reader); // signature
    bytes.len() - reader.len()
}

/// The nodes of an encoded `optional<Node> ratchet_tree<V>`, by node index.
fn raw_nodes(encoded: &[u8]) -> Vec<Option<RawNode>> {
    let mut outer = encoded;
    let mut reader = vector(&mut outer);
    assert!(outer.is_empty(), "bytes after the tree");
    let mut nodes = Vec::new();
    while !reader.is_empty() {
        if take(&mut reader, 1)[0] == 0 {
            nodes.push(None);
            continue;
        }
        nodes.push(Some(match take(&mut reader, 1)[0] {
            1 => {
                let len = leaf_node_len(reader);
                RawNode::Leaf(take(&mut reader, len).to_vec())
            }
            2 => {
                let start = reader;
                vector(&mut reader); // encryption_key
                vector(&mut reader); // parent_hash
                let unmerged = vector(&mut reader)
                    .chunks(4)
                    .map(|leaf| u32::from_be_bytes(leaf.try_into().unwrap()))
                    .collect();
                let bytes = start[..start.len() - reader.len()].to_vec();
                RawNode::Parent { bytes, unmerged }
            }
            other => panic!("node type {other}"),
        }));
    }
    nodes
}

/// Node index arithmetic of the array representation (RFC 9420 appendix C).
fn level(x: usize) -> u32 {
    (!x).trailing_zeros()
}

fn children(x: usize) -> (usize, usize) {
    let k = level(x);
    (x ^ (1 << (k - 1)), x ^ (3 << (k - 1)))
}

/// A tree of `nodes` (truncated: RFC 9420 section 12.4.3.3), as its full width.
fn full_width(nodes: usize) -> usize {
    let leaves = nodes.div_ceil(2);
    2 * leaves.next_power_of_two() - 1
}

fn root(width: usize) -> usize {
    (1 << (usize::BITS - 1 - width.leading_zeros())) - 1
}

/// The resolution of node `x` (RFC 9420 section 4.1.2).
fn resolution(nodes: &[Option<RawNode>], x: usize) -> Vec<u32> {
    match nodes.get(x).and_then(Option::as_ref) {
        Some(RawNode::Leaf(_)) => vec![x as u32],
        Some(RawNode::Parent { unmerged, .. }) => std::iter::once(x as u32)
            .chain(unmerged.iter().map(|leaf| 2 * leaf))
            .collect(),
        None if level(x) == 0 => Vec::new(),
        None => {
            let (left, right) = children(x);
            let mut resolved = resolution(nodes, left);
            resolved.extend(resolution(nodes, right));
            resolved
        }
    }
}

/// The tree hash of node `x` (RFC 9420 section 7.8), with `hash`, filling `hashes`.
fn tree_hash(
    nodes: &[Option<RawNode>],
    x: usize,
    hash: fn(&[u8]) -> Vec<u8>,
    hashes: &mut [Vec<u8>],
) -> Vec<u8> {
    let node = nodes.get(x).and_then(Option::as_ref);
    let mut input = Vec::new();
    if level(x) == 0 {
        input.push(1u8); // node_type leaf
        input.extend(((x / 2) as u32).to_be_bytes());
        match node {
            Some(RawNode::Leaf(bytes)) => {
                input.push(1);
                input.extend(bytes);
            }
            _ => input.push(0),
        }
    } else {
        input.push(2u8); // node_type parent
        match node {
            Some(RawNode::Parent { bytes, .. }) => {
                input.push(1);
                input.extend(bytes);
            }
            _ => input.push(0),
        }
        let (left, right) = children(x);
        let left = tree_hash(nodes, left, hash, hashes);
        let right = tree_hash(nodes, right, hash, hashes);
        for child in [left, right] {
            input.extend(VLBytes::new(child).tls_serialize_detached().unwrap());
        }
    }
    let digest = hash(&input);
    hashes[x] = digest.clone();
    digest
}

/// The hash function of a ciphersuite (RFC 9420 section 17.1).
fn suite_hash(suite: u16) -> fn(&[u8]) -> Vec<u8> {
    match suite {
        1..=3 => |data| sha2::Sha256::digest(data).to_vec(),
        7 => |data| sha2::Sha384::digest(data).to_vec(),
        4..=6 => |data| sha2::Sha512::digest(data).to_vec(),
        other => panic!("ciphersuite {other} has no hash here"),
    }
}

#[test]
fn ratchet_trees_of_the_vectors_validate_with_their_resolutions_and_tree_hashes() {
    let cases = vectors("tree-validation");
    assert_eq!(cases.len(), 98);
    let provider = OpenMlsRustCrypto::default();
    let mut verified_by_openmls = 0;
    for (number, case) in cases.iter().enumerate() {
        let suite = case["cipher_suite"].as_u64().unwrap() as u16;
        let encoded = bytes(&case["tree"]);
        let nodes = raw_nodes(&encoded);
        let width = full_width(nodes.len());

        let expected_resolutions: Vec<Vec<u32>> =
            serde_json::from_value(case["resolutions"].clone()).unwrap();
        let resolutions: Vec<Vec<u32>> = (0..width).map(|x| resolution(&nodes, x)).collect();
        assert_eq!(
            resolutions, expected_resolutions,
            "case {number}: resolutions"
        );

        let expected_hashes: Vec<Vec<u8>> = case["tree_hashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(bytes)
            .collect();
        let mut hashes = vec![Vec::new(); width];
        tree_hash(&nodes, root(width), suite_hash(suite), &mut hashes);
        assert_eq!(hashes, expected_hashes, "case {number}: tree hashes");

        // Parent hashes and leaf signatures, as a hub checks a new group's tree: with every
        // ciphersuite the crypto provider Roost runs supports.
        let Ok(ciphersuite) = Ciphersuite::try_from(suite) else {
            continue;
        };
        if provider.crypto().supports(ciphersuite).is_err() {
            continue;
        }
        let group_id = GroupId::from_slice(&bytes(&case["group_id"]));
        RatchetTreeIn::tls_deserialize_exact(encoded.as_slice())
            .unwrap()
            .into_verified(ciphersuite, provider.crypto(), &group_id)
            .unwrap_or_else(|e| panic!("case {number} (suite {suite}): {e:?}"));
        verified_by_openmls += 1;
    }
    println!("{verified_by_openmls} of {} trees verified by openmls (the others' ciphersuites are not offered)", cases.len());
    assert!(verified_by_openmls >= 40, "{verified_by_openmls}");
}

/// The provider for a vector's ciphersuite, if the crypto provider Roost runs offers it.
fn provider_for(suite: u16) -> Option<(OpenMlsRustCrypto, Ciphersuite)> {
    let provider = OpenMlsRustCrypto::default();
    let ciphersuite = Ciphersuite::try_from(suite).ok()?;
    provider.crypto().supports(ciphersuite).ok()?;
    Some((provider, ciphersuite))
}

/// The MLS handshake (`PublicMessage` or `PrivateMessage`) in the MLSMessage `bytes`.
fn handshake(bytes: &[u8]) -> ProtocolMessage {
    match MlsMessageIn::tls_deserialize_exact(bytes)
        .unwrap()
        .extract()
    {
        MlsMessageBodyIn::PublicMessage(message) => message.into(),
        MlsMessageBodyIn::PrivateMessage(message) => message.into(),
        _ => panic!("not a handshake message"),
    }
}

/// Stores the vector's KeyPackage with its private keys, as the client's key store holds one it
/// made itself. openmls builds a bundle from given keys only under its test features, so the
/// bundle is assembled through its serde form (the one its key stores write). The KeyPackage is
/// not validated: the vectors' lifetimes ended long ago, and joining skips lifetimes too.
fn store_key_package(provider: &OpenMlsRustCrypto, case: &serde_json::Value) {
    let MlsMessageBodyIn::KeyPackage(key_package) =
        MlsMessageIn::tls_deserialize_exact(bytes(&case["key_package"]).as_slice())
            .unwrap()
            .extract()
    else {
        panic!("key_package is not a KeyPackage");
    };
    let key_package: KeyPackage =
        serde_json::from_value(serde_json::to_value(&key_package).unwrap()).unwrap();
    let bundle: KeyPackageBundle = serde_json::from_value(serde_json::json!({
        "key_package": key_package,
        "private_init_key": { "vec": bytes(&case["init_priv"]) },
        "private_encryption_key": { "key": { "vec": bytes(&case["encryption_priv"]) } },
    }))
    .unwrap();
    let reference = key_package.hash_ref(provider.crypto()).unwrap();
    provider
        .storage()
        .write_key_package(&reference, &bundle)
        .unwrap();
}

/// Runs the passive-client vectors of `name`: joins from the Welcome (with the external PSKs
/// and, where given, the ratchet tree out of band), then processes each epoch's proposals and
/// commit, checking the epoch authenticator after each. Returns (cases run, epochs checked).
fn passive_client(name: &str) -> (usize, usize) {
    let (mut run, mut epochs) = (0, 0);
    for (number, case) in vectors(name).iter().enumerate() {
        let Some((provider, _)) = provider_for(case["cipher_suite"].as_u64().unwrap() as u16)
        else {
            continue;
        };
        for psk in case["external_psks"].as_array().unwrap() {
            PreSharedKeyId::external(bytes(&psk["psk_id"]), Vec::new())
                .store(&provider, &bytes(&psk["psk"]))
                .unwrap();
        }
        store_key_package(&provider, case);
        let MlsMessageBodyIn::Welcome(welcome) =
            MlsMessageIn::tls_deserialize_exact(bytes(&case["welcome"]).as_slice())
                .unwrap()
                .extract()
        else {
            panic!("case {number}: welcome is not a Welcome");
        };
        // Handshakes may come as PrivateMessages; resumption PSKs may name earlier epochs.
        let config = MlsGroupJoinConfig::builder()
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .number_of_resumption_psks(32)
            .build();
        let mut joining = StagedWelcome::build_from_welcome(&provider, &config, welcome)
            .unwrap_or_else(|e| panic!("case {number}: {e:?}"));
        if !case["ratchet_tree"].is_null() {
            let tree = bytes(&case["ratchet_tree"]);
            joining = joining
                .with_ratchet_tree(RatchetTreeIn::tls_deserialize_exact(tree.as_slice()).unwrap());
        }
        let staged = joining
            .skip_lifetime_validation()
            .build()
            .unwrap_or_else(|e| panic!("case {number}: the Welcome: {e:?}"));
        let mut group: MlsGroup = staged
            .into_group(&provider)
            .unwrap_or_else(|e| panic!("case {number}: joining: {e:?}"));
        assert_eq!(
            group.epoch_authenticator().as_slice(),
            bytes(&case["initial_epoch_authenticator"]),
            "case {number}: the epoch joined"
        );
        for (index, epoch) in case["epochs"].as_array().unwrap().iter().enumerate() {
            for proposal in epoch["proposals"].as_array().unwrap() {
                let processed = group
                    .process_message(&provider, handshake(&bytes(proposal)))
                    .unwrap_or_else(|e| panic!("case {number} epoch {index}: a proposal: {e:?}"));
                let ProcessedMessageContent::ProposalMessage(proposal) = processed.into_content()
                else {
                    panic!("case {number} epoch {index}: not a proposal");
                };
                group
                    .store_pending_proposal(provider.storage(), *proposal)
                    .unwrap();
            }
            let processed = group
                .process_message(&provider, handshake(&bytes(&epoch["commit"])))
                .unwrap_or_else(|e| panic!("case {number} epoch {index}: the commit: {e:?}"));
            let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content()
            else {
                panic!("case {number} epoch {index}: not a commit");
            };
            group.merge_staged_commit(&provider, *staged).unwrap();
            assert_eq!(
                group.epoch_authenticator().as_slice(),
                bytes(&epoch["epoch_authenticator"]),
                "case {number} epoch {index}"
            );
            epochs += 1;
        }
        run += 1;
    }
    (run, epochs)
}

#[test]
fn a_passive_client_joins_from_each_welcome_of_the_vectors() {
    let (run, _) = passive_client("passive-client-welcome");
    println!("{run} Welcomes joined (suites 1-3)");
    assert_eq!(run, 24);
}

#[test]
fn a_passive_client_follows_the_vectors_commits_epoch_after_epoch() {
    let (run, epochs) = passive_client("passive-client-handling-commit");
    println!("{run} groups followed through {epochs} commits");
    assert_eq!((run, epochs), (39, 78));
    let (run, epochs) = passive_client("passive-client-random");
    println!("{run} group followed through {epochs} random commits");
    assert_eq!((run, epochs), (1, 200));
}
