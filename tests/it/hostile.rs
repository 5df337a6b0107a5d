//! Hostile input, table-driven: every operation that needs an authenticated connection, sent
//! without one, is refused with `NotAuthenticated` and changes nothing.

use roost::protocol::{
    AckMessagesRequest, AddClientRequest, ClaimKeyPackagesRequest, ClientId, CreateGroupRequest,
    DeleteGroupRequest, ErrorCode, FetchMessagesRequest, GetDomainKeysRequest, GetGroupRequest,
    LookupUserRequest, PublishKeyPackagesRequest, RemoveClientRequest, Request, SendCommitRequest,
    SendMessageRequest, SendProposalRequest, Text,
};

use crate::support::{code, within, TestServer};

/// One well-formed request of every operation that needs authentication.
fn authenticated_operations() -> Vec<Request> {
    let text = |s: &str| Text::new(s).unwrap();
    let bob = ClientId {
        user_id: text("bob@localhost"),
        device_id: 1,
    };
    vec![
        Request::WhoAmI,
        Request::AddClient(AddClientRequest {
            signature_key: vec![1; 32].into(),
            ciphersuite: 1,
            proof: vec![2; 64].into(),
        }),
        Request::ListClients,
        Request::RemoveClient(RemoveClientRequest { client: bob }),
        Request::RenewCredential,
        Request::LookupUser(LookupUserRequest {
            user_id: text("bob@localhost"),
        }),
        Request::DeleteUser,
        Request::PublishKeyPackages(PublishKeyPackagesRequest {
            key_packages: vec![vec![0; 8].into()],
        }),
        Request::ClaimKeyPackages(ClaimKeyPackagesRequest {
            user_id: text("bob@localhost"),
            ciphersuite: 1,
        }),
        Request::KeyPackageStatus,
        Request::FetchMessages(FetchMessagesRequest {
            from_seq: 0,
            max_count: 10,
            max_bytes: 1024,
        }),
        Request::AckMessages(AckMessagesRequest { up_to_seq: 1 }),
        Request::CreateGroup(CreateGroupRequest {
            group_info: vec![0; 4].into(),
            ratchet_tree: vec![0; 4].into(),
        }),
        Request::SendCommit(SendCommitRequest {
            commit: vec![0; 4].into(),
            welcome: None,
            group_info: vec![0; 4].into(),
        }),
        Request::SendMessage(SendMessageRequest {
            message: vec![0; 4].into(),
        }),
        Request::GetGroup(GetGroupRequest {
            group_id: vec![0; 4].into(),
        }),
        Request::ListGroups,
        Request::SendProposal(SendProposalRequest {
            proposal: vec![0; 4].into(),
        }),
        Request::DeleteGroup(DeleteGroupRequest {
            group_id: vec![0; 4].into(),
        }),
        Request::GetDomainKeys(GetDomainKeysRequest {
            domain: text("localhost"),
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authenticated_operation_is_refused_without_authentication() {
    let server = TestServer::start().await;
    let bob = server.register("bob@localhost").await;
    bob.publish(2, false).await;
    let anonymous = server.connect().await;
    let operations = authenticated_operations();
    // Every operation code that needs authentication is in the table.
    let covered: std::collections::BTreeSet<u16> =
        operations.iter().map(|r| r.operation() as u16).collect();
    for code_point in 1..=64u16 {
        if let Some(operation) = roost::protocol::Operation::from_u16(code_point) {
            assert_eq!(
                covered.contains(&code_point),
                operation.requires_authentication(),
                "{operation:?} is not in the table"
            );
        }
    }
    for request in operations {
        let operation = request.operation();
        assert_eq!(
            code(within(anonymous.request(&request)).await),
            ErrorCode::NotAuthenticated,
            "{operation:?}"
        );
    }
    // Nothing changed for bob.
    let status = within(bob.connection.key_package_status()).await.unwrap();
    assert_eq!(status.clients[0].remaining, 2);
    assert_eq!(
        within(bob.connection.list_clients())
            .await
            .unwrap()
            .clients
            .len(),
        1
    );
}
