//! Group logs: clients that read them get a group's MLS messages from one shared log, with their
//! own windows and positions, instead of one queue copy each.

use roost::client::groups::GroupEvent;
use roost::protocol::{ErrorCode, MessageKind, Notification};

use crate::groups::{groups, receive};
use crate::support::{code, within, Device, TestServer};

/// Registers `user` with KeyPackages, reading group logs.
async fn log_reader(server: &TestServer, user: &str) -> Device {
    let device = server.register(user).await;
    within(device.connection.use_group_logs()).await.unwrap();
    device.publish(3, true).await;
    device
}

/// `device`'s entries of `group_id`'s log from `from_gseq` (0: after its position), all of them.
async fn read_log(
    device: &Device,
    group_id: &[u8],
    from_gseq: u64,
) -> roost::protocol::GroupLogMessages {
    within(
        device
            .connection
            .fetch_group_log(group_id, from_gseq, 100, u32::MAX),
    )
    .await
    .unwrap()
}

pub(crate) fn texts(events: &[GroupEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match event {
            GroupEvent::Message { text, .. } => Some(String::from_utf8(text.clone()).unwrap()),
            _ => None,
        })
        .collect()
}

/// Waits for a `GroupLogAppended` hint on `device`'s push stream.
async fn next_log_hint(device: &mut Device) -> roost::protocol::GroupLogAppended {
    loop {
        match within(device.push.next()).await.unwrap().unwrap() {
            Notification::GroupLogAppended(hint) => return hint,
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_message_is_logged_once_and_every_reader_reads_it_with_its_own_position() {
    let server = TestServer::start().await;
    let alice = log_reader(&server, "alice@localhost").await;
    let mut bob = log_reader(&server, "bob@localhost").await;
    let carol = log_reader(&server, "carol@localhost").await;
    let admin = groups(&server, &alice).await;
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite_many(&group_id, &["bob@localhost", "carol@localhost"]))
        .await
        .unwrap();
    assert!(receive(&server, &bob).await.contains(&GroupEvent::Joined {
        group_id: group_id.clone()
    }));

    within(admin.send(&group_id, b"hello")).await.unwrap();
    // The push carries the entry, tagged with its group and position.
    let hint = next_log_hint(&mut bob).await;
    assert_eq!(hint.group_id.as_slice(), group_id.as_slice());
    assert_eq!(hint.messages.len(), 1);
    assert_eq!(hint.messages[0].seq, hint.latest_gseq);
    assert_eq!(hint.messages[0].kind, MessageKind::Mls);

    // The queue held the Welcome only; the message is in the log, at one position for both.
    assert!(within(bob.connection.fetch_messages(0, 100, u32::MAX))
        .await
        .unwrap()
        .messages
        .is_empty());
    let for_bob = read_log(&bob, &group_id, 0).await;
    let for_carol = read_log(&carol, &group_id, 0).await;
    assert_eq!(for_bob.messages.len(), 1, "bob read up to his join already");
    assert_eq!(
        for_bob.messages.last().map(|m| m.seq),
        for_carol.messages.last().map(|m| m.seq),
        "one log, one position"
    );
    assert_eq!(texts(&receive(&server, &bob).await), ["hello"]);
    assert_eq!(texts(&receive(&server, &carol).await), ["hello"]);
    // Read and acknowledged: nothing more for either.
    assert!(receive(&server, &bob).await.is_empty());
    let cursors = within(bob.connection.list_group_logs()).await.unwrap();
    assert_eq!(cursors.logs.len(), 1);
    assert_eq!(cursors.logs[0].acked_gseq, cursors.logs[0].next_gseq - 1);
    assert_eq!(cursors.logs[0].last_gseq, 0, "still a member");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_starts_after_the_join_and_ends_with_the_removal() {
    let server = TestServer::start().await;
    let alice = log_reader(&server, "alice@localhost").await;
    let carol = log_reader(&server, "carol@localhost").await;
    let admin = groups(&server, &alice).await;
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.send(&group_id, b"before carol"))
        .await
        .unwrap();
    within(admin.invite(&group_id, "carol@localhost"))
        .await
        .unwrap();
    within(admin.send(&group_id, b"with carol")).await.unwrap();
    // Carol reads nothing from before she joined, not even the commit that added her.
    let read = read_log(&carol, &group_id, 1).await;
    assert_eq!(read.messages.len(), 1);
    let events = receive(&server, &carol).await;
    assert_eq!(texts(&events), ["with carol"]);

    within(admin.remove_user(&group_id, "carol@localhost"))
        .await
        .unwrap();
    within(admin.send(&group_id, b"after carol")).await.unwrap();
    // Her window ends with the commit that removed her: she reads it, nothing after it.
    let read = read_log(&carol, &group_id, 0).await;
    assert_eq!(read.messages.len(), 1, "the removing commit only");
    let last = read.messages[0].seq;
    assert_eq!(read.last_gseq, last);
    assert_eq!(
        code(carol.connection.ack_group_log(&group_id, last + 1).await),
        ErrorCode::InvalidSequence,
        "acknowledging beyond the window"
    );
    let events = receive(&server, &carol).await;
    assert!(
        events.contains(&GroupEvent::Removed {
            group_id: group_id.clone()
        }),
        "{events:?}"
    );
    // Read to its end, the window is gone.
    assert!(within(carol.connection.list_group_logs())
        .await
        .unwrap()
        .logs
        .is_empty());
    assert_eq!(
        code(
            carol
                .connection
                .fetch_group_log(&group_id, 0, 10, 1024)
                .await
        ),
        ErrorCode::NotAMember
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_readers_and_queue_readers_share_a_group() {
    let server = TestServer::start().await;
    let alice = log_reader(&server, "alice@localhost").await;
    let bob = log_reader(&server, "bob@localhost").await;
    let dave = server.register("dave@localhost").await;
    dave.publish(3, true).await;
    let admin = groups(&server, &alice).await;
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite_many(&group_id, &["bob@localhost", "dave@localhost"]))
        .await
        .unwrap();
    within(admin.send(&group_id, b"to all")).await.unwrap();
    within(groups(&server, &dave).await.receive())
        .await
        .unwrap();
    within(groups(&server, &dave).await.send(&group_id, b"from dave"))
        .await
        .unwrap();
    assert_eq!(
        texts(&receive(&server, &bob).await),
        ["to all", "from dave"]
    );
    assert_eq!(texts(&receive(&server, &alice).await), ["from dave"]);
    // Dave reads his queue: no log for him.
    assert!(within(dave.connection.list_group_logs())
        .await
        .unwrap()
        .logs
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_switching_to_logs_reads_its_queue_first_then_the_log() {
    let server = TestServer::start().await;
    let alice = log_reader(&server, "alice@localhost").await;
    let bob = server.register("bob@localhost").await;
    bob.publish(3, true).await;
    let admin = groups(&server, &alice).await;
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite(&group_id, "bob@localhost"))
        .await
        .unwrap();
    within(admin.send(&group_id, b"queued")).await.unwrap();
    within(bob.connection.use_group_logs()).await.unwrap();
    within(bob.connection.use_group_logs())
        .await
        .expect("asking again is harmless");
    within(admin.send(&group_id, b"logged")).await.unwrap();
    assert_eq!(texts(&receive(&server, &bob).await), ["queued", "logged"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_entries_survive_a_restart_and_read_entries_are_deleted() {
    let server = TestServer::start().await;
    let (group_id, bob_identity) = {
        let alice = log_reader(&server, "alice@localhost").await;
        let bob = log_reader(&server, "bob@localhost").await;
        let admin = groups(&server, &alice).await;
        let group_id = within(admin.create_group()).await.unwrap();
        within(admin.invite(&group_id, "bob@localhost"))
            .await
            .unwrap();
        receive(&server, &bob).await;
        for i in 0..3 {
            within(admin.send(&group_id, format!("m{i}").as_bytes()))
                .await
                .unwrap();
        }
        // Alice acknowledges everything she may read; bob nothing yet.
        receive(&server, &alice).await;
        (
            group_id,
            (bob.identity.clone(), bob.mls.snapshot().unwrap()),
        )
    };
    let server = server.restart().await;
    let (identity, mls) = bob_identity;
    let mut bob = server.reconnect(&identity).await;
    bob.mls = mls;
    let read = read_log(&bob, &group_id, 0).await;
    assert_eq!(read.messages.len(), 3, "kept across the restart");
    let first = read.messages[0].seq;
    assert_eq!(texts(&receive(&server, &bob).await), ["m0", "m1", "m2"]);
    // Every reader acknowledged them: the log no longer holds them.
    let again = read_log(&bob, &group_id, first).await;
    assert!(again.messages.is_empty(), "{:?}", again.messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_cannot_stop_the_others() {
    let server = TestServer::start_with(|config| config.queues.max_messages = 3).await;
    let alice = log_reader(&server, "alice@localhost").await;
    let bob = log_reader(&server, "bob@localhost").await;
    let carol = log_reader(&server, "carol@localhost").await;
    let admin = groups(&server, &alice).await;
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite_many(&group_id, &["bob@localhost", "carol@localhost"]))
        .await
        .unwrap();
    receive(&server, &carol).await;
    // Bob never reads. Carol keeps up, and every message is accepted for everyone.
    for i in 0..5 {
        within(admin.send(&group_id, format!("m{i}").as_bytes()))
            .await
            .unwrap();
        assert_eq!(texts(&receive(&server, &carol).await), [format!("m{i}")]);
    }
    // A commit goes in too.
    within(admin.commit_pending(&group_id)).await.unwrap();
    // The log kept its newest three entries: bob finds the older ones gone (a gap after his
    // position) and can tell.
    let cursor = within(bob.connection.list_group_logs()).await.unwrap().logs[0].clone();
    let read = read_log(&bob, &group_id, 0).await;
    assert_eq!(read.messages.len(), 3);
    assert!(read.messages[0].seq > cursor.acked_gseq + 1, "a gap");
    assert_eq!(read.messages.last().unwrap().seq, cursor.next_gseq - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_log_reader_leaves_nothing_of_it_and_lets_the_log_go() {
    let server = TestServer::start().await;
    let alice = log_reader(&server, "alice@localhost").await;
    let bob = log_reader(&server, "bob@localhost").await;
    let admin = groups(&server, &alice).await;
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite(&group_id, "bob@localhost"))
        .await
        .unwrap();
    within(admin.send(&group_id, b"unread by bob"))
        .await
        .unwrap();
    receive(&server, &alice).await;
    let unread = read_log(&bob, &group_id, 0)
        .await
        .messages
        .last()
        .unwrap()
        .seq;
    within(bob.connection.delete_user()).await.unwrap();
    let store = server.server.store();
    let traces = store.tables_containing(b"bob@localhost").await.unwrap();
    // Nothing but the group's own state names him (his leaf stays in the tree and his user in
    // the roles until a commit removes him, and he is in the tree kept for the joiners of the
    // epoch that added him): no window, no reader row, no queue.
    let mut traces: Vec<&str> = traces
        .iter()
        .map(|table| table.split('<').next().unwrap())
        .collect();
    traces.sort();
    assert_eq!(traces, ["group-state-1", "group-trees-1", "groups-1"]);
    // Only bob held the entry back: with him gone it is deleted (what alice may still read
    // comes after it: the server's proposal to remove bob).
    let read = read_log(&alice, &group_id, unread).await;
    assert!(
        read.messages.iter().all(|m| m.seq > unread),
        "{:?}",
        read.messages
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_proposed_to_leave_reads_nothing_sent_after() {
    let server = TestServer::start().await;
    let alice = log_reader(&server, "alice@localhost").await;
    let bob = log_reader(&server, "bob@localhost").await;
    let admin = groups(&server, &alice).await;
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite(&group_id, "bob@localhost"))
        .await
        .unwrap();
    receive(&server, &bob).await;
    within(groups(&server, &bob).await.leave(&group_id))
        .await
        .unwrap();
    within(admin.send(&group_id, b"after bob left"))
        .await
        .unwrap();
    // Alice takes in bob's proposal, then commits it.
    receive(&server, &alice).await;
    within(admin.commit_pending(&group_id)).await.unwrap();
    let read = read_log(&bob, &group_id, 0).await;
    assert_ne!(read.last_gseq, 0, "his window ended with his proposal");
    assert!(
        read.messages.iter().all(|m| m.seq <= read.last_gseq),
        "{:?}",
        read.messages
    );
    let heard = texts(&receive(&server, &bob).await);
    assert!(heard.is_empty(), "{heard:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_requests_for_groups_a_client_may_not_read_are_refused() {
    let server = TestServer::start().await;
    let alice = log_reader(&server, "alice@localhost").await;
    let mallory = log_reader(&server, "mallory@localhost").await;
    let _bob = log_reader(&server, "bob@localhost").await;
    let admin = groups(&server, &alice).await;
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite(&group_id, "bob@localhost"))
        .await
        .unwrap();
    within(admin.send(&group_id, b"not for mallory"))
        .await
        .unwrap();
    assert_eq!(
        code(
            mallory
                .connection
                .fetch_group_log(&group_id, 1, 10, 1024)
                .await
        ),
        ErrorCode::NotAMember
    );
    assert_eq!(
        code(mallory.connection.ack_group_log(&group_id, 1).await),
        ErrorCode::NotAMember
    );
    let huge = vec![7u8; 100_000];
    assert_eq!(
        code(mallory.connection.fetch_group_log(&huge, 0, 10, 1024).await),
        ErrorCode::InvalidGroupId
    );
    assert_eq!(
        code(mallory.connection.ack_group_log(&huge, 1).await),
        ErrorCode::InvalidGroupId
    );
    // Nothing of the above moved alice's log: her own message is still there for her (a
    // sender reads its own messages in the log; the client library skips them).
    let read = within(alice.connection.fetch_group_log(&group_id, 0, 10, 1024))
        .await
        .unwrap();
    assert_eq!(read.messages.len(), 1);
    assert!(texts(&receive(&server, &alice).await).is_empty());
}
