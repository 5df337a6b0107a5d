//! The race harness: two nodes' stores on one PostgreSQL database race every rule that spans
//! transactions (protocol-spec/nodes.md lists them, each with what enforces it). A race sets a
//! fresh situation up, runs its two operations at the same moment through the two stores, and
//! checks the rule afterwards with the store's own reads — most of them by searching every table
//! for what must be gone.
//!
//! Each race runs `ROOST_RACE_TRIES` tries (24 by default) and prints its tries, the write
//! batches that lost a race and ran again (conflicts) and the violations, which must be 0. The
//! soak: `ROOST_RACE_TRIES=300 cargo test --test it races:: -- --nocapture --test-threads 1`.

use std::sync::Arc;

use roost::store::{
    acting_for, Admission, Claimed, Envelope, GroupMemberRow, GroupRefusal, GroupTransition,
    IncomingDelivery, LeaseFence, NewKeyPackage, NewUser, OutgoingDelivery, QueueLimits,
    RegisterRefusal, RemoveClientRefusal, ScratchDatabase, Store, StoreLocation, StoredGroup,
    FIRST_DEVICE_ID,
};

const DOMAIN: &str = "localhost";
const LIMITS: QueueLimits = QueueLimits::per_client(1_000, 1 << 20);

fn tries() -> usize {
    std::env::var("ROOST_RACE_TRIES")
        .ok()
        .and_then(|tries| tries.parse().ok())
        .unwrap_or(24)
}

/// Two nodes' stores on one fresh database.
struct Nodes {
    a: Store,
    b: Store,
    _database: ScratchDatabase,
}

impl Nodes {
    async fn open() -> Self {
        let database = tokio::task::spawn_blocking(ScratchDatabase::create)
            .await
            .unwrap()
            .expect("the race harness needs PostgreSQL (see the README)");
        let open = |url: String| {
            tokio::task::spawn_blocking(move || Store::open_at(&StoreLocation::Postgres(url)))
        };
        let (a, b) = tokio::join!(open(database.url.clone()), open(database.url.clone()));
        let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        a.bind_domain(DOMAIN).await.unwrap();
        Self {
            a,
            b,
            _database: database,
        }
    }

    fn conflicts(&self) -> u64 {
        self.a.stats().conflicts() + self.b.stats().conflicts()
    }

    /// Registers `user_id` through node a; its first device is [`FIRST_DEVICE_ID`].
    async fn register(&self, user_id: &str) {
        self.a
            .register_user(new_user(user_id, None))
            .await
            .unwrap()
            .unwrap();
    }

    /// Adds a device to `user_id` through node a.
    async fn add_device(&self, user_id: &str) -> u32 {
        let added = self.a.add_client(new_client(user_id, 0));
        added.await.unwrap().unwrap().0
    }

    /// A new user with a second device: (user id, that device).
    async fn second_device(&self, user_id: &str) -> (String, u32) {
        self.register(user_id).await;
        (user_id.to_owned(), self.add_device(user_id).await)
    }

    /// Runs `write`, made for the client `(user_id, device_id)` through node a, at the same
    /// moment as the client's removal through node b; returns the write's outcome, as text.
    async fn against_removal<T: std::fmt::Debug>(
        &self,
        (user_id, device_id): (&str, u32),
        write: impl std::future::Future<Output = Result<T, roost::store::StoreError>>,
    ) -> String {
        let actor = Some(roost::protocol::ClientId::of(user_id, device_id));
        let removed = roost::protocol::ClientId::of(user_id, device_id);
        let (written, removed) =
            tokio::join!(acting_for(actor, write), self.b.remove_client(&removed, 0));
        removed.unwrap().unwrap();
        format!("{written:?}")
    }

    /// Tables of the database holding `needle` in a key or a value.
    async fn holding(&self, needle: &[u8]) -> Vec<String> {
        self.a.tables_containing(needle).await.unwrap()
    }
}

/// The count of one race: tries, conflicts, violations.
struct Tally {
    race: &'static str,
    tries: usize,
    conflicts_before: u64,
    violations: Vec<String>,
}

impl Tally {
    fn new(race: &'static str, nodes: &Nodes) -> Self {
        Self {
            race,
            tries: 0,
            conflicts_before: nodes.conflicts(),
            violations: Vec::new(),
        }
    }

    /// One try done: `held` is whether the rule held.
    fn check(&mut self, held: bool, violation: impl FnOnce() -> String) {
        self.tries += 1;
        if !held {
            self.violations.push(violation());
        }
    }

    fn finish(self, nodes: &Nodes) {
        println!(
            "race {}: {} tries, {} conflicts, {} violations",
            self.race,
            self.tries,
            nodes.conflicts() - self.conflicts_before,
            self.violations.len()
        );
        assert!(
            self.violations.is_empty(),
            "{}: {:#?}",
            self.race,
            self.violations
        );
    }
}

fn key() -> [u8; 32] {
    rand::random()
}

/// Issues `user_id`'s credentials with `key` (unsigned: the store does not check them).
fn credential(user_id: &str, key: [u8; 32]) -> roost::store::IssueCredential {
    let user_id = user_id.to_owned();
    Box::new(move |device_id| roost::store::placeholder_credential(&user_id, device_id, key))
}

fn new_user(user_id: &str, invite: Option<Vec<u8>>) -> NewUser {
    let key = key();
    NewUser {
        user_id: user_id.to_owned(),
        signature_key: key,
        now: 1,
        quarantine_secs: 0,
        invite: invite.map(|nonce| (nonce, 1)),
        issue_credential: credential(user_id, key),
    }
}

/// A second (or later) device of `user_id`, added at `now`.
fn new_client(user_id: &str, now: u64) -> roost::store::NewClient {
    let key = key();
    roost::store::NewClient {
        user_id: user_id.to_owned(),
        signature_key: key,
        now,
        max_clients: 10,
        issue_credential: credential(user_id, key),
    }
}

/// A payload found nowhere else in the database.
fn unique_payload(what: &str) -> Arc<Vec<u8>> {
    Arc::new(format!("{what} {:032x}", rand::random::<u128>()).into_bytes())
}

fn envelope(
    user_id: &str,
    device_id: u32,
    payload: &Arc<Vec<u8>>,
    admission: Admission,
) -> Envelope {
    Envelope {
        client: roost::protocol::ClientId::of(user_id, device_id),
        kind: roost::protocol::MessageKind::Welcome,
        payload: payload.clone(),
        admission,
    }
}

fn key_package(not_after: u64) -> NewKeyPackage {
    let key_package_ref = format!("kp-ref {:032x}", rand::random::<u128>()).into_bytes();
    NewKeyPackage {
        key_package: [b"key package of ".as_slice(), &key_package_ref].concat(),
        key_package_ref,
        ciphersuite: 1,
        not_after,
        last_resort: false,
    }
}

fn group(epoch: u64) -> StoredGroup {
    StoredGroup {
        epoch,
        created_at: 1,
        roles: Vec::new(),
        leaving: Vec::new(),
        group_info: Vec::new(),
        public_state: Vec::new(),
    }
}

fn member(user_id: &str, device_id: u32, leaf_index: u32) -> GroupMemberRow {
    GroupMemberRow {
        client: roost::protocol::ClientId::of(user_id, device_id),
        leaf_index,
    }
}

fn transition(
    from_epoch: u64,
    old_members: Vec<GroupMemberRow>,
    members: Vec<GroupMemberRow>,
    envelopes: Vec<Envelope>,
) -> GroupTransition {
    GroupTransition {
        from_epoch,
        group: group(from_epoch + 1),
        old_members,
        members,
        envelopes,
        remote: Vec::new(),
        request: None,
        joiners_tree: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_queued_while_its_device_is_removed_does_not_stay() {
    let nodes = Nodes::open().await;
    let mut tally = Tally::new("message queued / device removed", &nodes);
    for n in 0..tries() {
        let (user, device) = nodes.second_device(&format!("queue-{n}@{DOMAIN}")).await;
        let payload = unique_payload("message");
        let envelopes = vec![envelope(&user, device, &payload, Admission::Message)];
        // The sender is another client: the enqueue is not made for the removed one.
        let enqueue = acting_for(None, nodes.a.enqueue(envelopes, 1, LIMITS));
        let queued = nodes.against_removal((&user, device), enqueue).await;
        let left = nodes.holding(&payload).await;
        tally.check(left.is_empty(), || {
            format!("try {n} (enqueue {queued}): the removed device's message stayed in {left:?}")
        });
    }
    tally.finish(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_accounts_last_message_goes_with_it() {
    let nodes = Nodes::open().await;
    let mut tally = Tally::new("message queued / account deleted", &nodes);
    for n in 0..tries() {
        let user = format!("deleted-{n}@{DOMAIN}");
        nodes.register(&user).await;
        let payload = unique_payload("last message");
        let envelopes = vec![envelope(
            &user,
            FIRST_DEVICE_ID,
            &payload,
            Admission::Message,
        )];
        let (queued, deleted) = tokio::join!(
            nodes.a.enqueue(envelopes, 1, LIMITS),
            nodes.b.delete_user(&user, 1)
        );
        queued.unwrap().unwrap();
        assert_eq!(deleted.unwrap(), vec![FIRST_DEVICE_ID]);
        let left = [
            nodes.holding(&payload).await,
            nodes.holding(user.as_bytes()).await,
        ]
        .concat();
        // The next user of the id reads nothing of the last one's.
        nodes.register(&user).await;
        let (inherited, _) = nodes
            .a
            .fetch_messages(
                &roost::protocol::ClientId::of(&user, FIRST_DEVICE_ID),
                0,
                100,
                1 << 20,
            )
            .await
            .unwrap();
        tally.check(left.is_empty() && inherited.is_empty(), || {
            format!(
                "try {n}: left in {left:?}; the next {user} read {} messages",
                inherited.len()
            )
        });
    }
    tally.finish(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_adding_a_device_that_is_being_removed_leaves_nothing_for_it() {
    let nodes = Nodes::open().await;
    let mut tally = Tally::new("Welcome and membership / device removed", &nodes);
    for n in 0..tries() {
        let (admin, user) = (
            format!("admin-{n}@{DOMAIN}"),
            format!("joiner-{n}@{DOMAIN}"),
        );
        nodes.register(&admin).await;
        nodes.register(&user).await;
        let device = nodes.add_device(&user).await;
        let group_id = format!("group {:032x}", rand::random::<u128>()).into_bytes();
        let creator = vec![member(&admin, FIRST_DEVICE_ID, 0)];
        nodes
            .a
            .create_group(&group_id, group(0), creator.clone())
            .await
            .unwrap()
            .unwrap();
        let welcome = unique_payload("welcome");
        let joined = vec![creator[0].clone(), member(&user, device, 1)];
        let commit = transition(
            0,
            creator,
            joined,
            vec![envelope(&user, device, &welcome, Admission::Handshake)],
        );
        let removed = roost::protocol::ClientId::of(&user, device);
        let (committed, removed) = tokio::join!(
            nodes.a.commit_group(&group_id, commit, 1, LIMITS),
            nodes.b.remove_client(&removed, 0)
        );
        removed.unwrap().unwrap();
        let committed = committed.unwrap();
        let memberships = nodes
            .a
            .groups_of(&roost::protocol::ClientId::of(&user, device))
            .await
            .unwrap();
        let welcomes = nodes.holding(&welcome).await;
        tally.check(memberships.is_empty() && welcomes.is_empty(), || {
            format!(
                "try {n} (commit {committed:?}): the removed device is in {} groups, its \
                 Welcome in {welcomes:?}",
                memberships.len()
            )
        });
    }
    tally.finish(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_being_removed_publishes_no_key_packages() {
    let nodes = Nodes::open().await;
    let mut tally = Tally::new("KeyPackages published / device removed", &nodes);
    for n in 0..tries() {
        let user = format!("publisher-{n}@{DOMAIN}");
        nodes.register(&user).await;
        let device = nodes.add_device(&user).await;
        let batch = vec![key_package(u64::MAX), key_package(u64::MAX)];
        let reference = batch[0].key_package_ref.clone();
        let actor = Some(roost::protocol::ClientId::of(&user, device));
        let client = roost::protocol::ClientId::of(&user, device);
        let (published, removed) = tokio::join!(
            acting_for(actor, nodes.a.publish_key_packages(&client, batch, 100, 1)),
            nodes.b.remove_client(&client, 0)
        );
        removed.unwrap().unwrap();
        let outcome = format!("{published:?}");
        let left = nodes.holding(&reference).await;
        tally.check(left.is_empty(), || {
            format!("try {n} (publish {outcome}): the removed device's KeyPackage is in {left:?}")
        });
    }
    tally.finish(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_deleted_while_a_device_is_added_stays_deleted() {
    let nodes = Nodes::open().await;
    let mut tally = Tally::new("device added / account deleted", &nodes);
    for n in 0..tries() {
        let user = format!("adding-{n}@{DOMAIN}");
        nodes.register(&user).await;
        let (added, deleted) = tokio::join!(
            nodes.a.add_client(new_client(&user, 1)),
            nodes.b.delete_user(&user, 1)
        );
        let (added, deleted) = (added.unwrap(), deleted.unwrap());
        let left = nodes.holding(user.as_bytes()).await;
        tally.check(!deleted.is_empty() && left.is_empty(), || {
            format!("try {n} (add {added:?}, deleted {deleted:?}): the account is in {left:?}")
        });
    }
    tally.finish(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_revoked_while_it_is_used_has_one_serial_story() {
    let nodes = Nodes::open().await;
    let mut tally = Tally::new("invite used / invite revoked", &nodes);
    for n in 0..tries() {
        let nonce = format!("invite {:032x}", rand::random::<u128>()).into_bytes();
        nodes
            .a
            .record_invite(nonce.clone(), 1, u64::MAX, 1)
            .await
            .unwrap();
        let user = format!("invited-{n}@{DOMAIN}");
        let (registered, revoked) = tokio::join!(
            nodes.a.register_user(new_user(&user, Some(nonce.clone()))),
            nodes.b.revoke_invite(nonce, 5)
        );
        let (registered, revoked) = (registered.unwrap(), revoked.unwrap().unwrap());
        // Registered first: the revocation saw the use. Revoked first: the registration was
        // refused. Anything else is no serial order.
        let story = match &registered {
            Ok(_) => revoked.used == 1,
            Err(RegisterRefusal::InviteRevoked) => revoked.used == 0,
            Err(_) => false,
        };
        tally.check(story, || {
            format!(
                "try {n}: registration {registered:?}, revocation saw {} uses",
                revoked.used
            )
        });
    }
    tally.finish(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_for_one_admits_one_of_two_users_using_it_at_once() {
    let nodes = Nodes::open().await;
    let mut tally = Tally::new("invite used twice at once", &nodes);
    for n in 0..tries() {
        let nonce = format!("invite {:032x}", rand::random::<u128>()).into_bytes();
        nodes
            .a
            .record_invite(nonce.clone(), 1, u64::MAX, 1)
            .await
            .unwrap();
        let (first, second) = tokio::join!(
            nodes.a.register_user(new_user(
                &format!("first-{n}@{DOMAIN}"),
                Some(nonce.clone())
            )),
            nodes
                .b
                .register_user(new_user(&format!("second-{n}@{DOMAIN}"), Some(nonce)))
        );
        let admitted = [first.unwrap(), second.unwrap()]
            .iter()
            .filter(|outcome| outcome.is_ok())
            .count();
        tally.check(admitted == 1, || {
            format!("try {n}: {admitted} users admitted")
        });
    }
    tally.finish(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_id_is_registered_once() {
    let nodes = Nodes::open().await;
    let mut tally = Tally::new("one user id registered twice at once", &nodes);
    for n in 0..tries() {
        let user = format!("twice-{n}@{DOMAIN}");
        let (first, second) = tokio::join!(
            nodes.a.register_user(new_user(&user, None)),
            nodes.b.register_user(new_user(&user, None))
        );
        let (first, second) = (first.unwrap(), second.unwrap());
        let clients = nodes.a.clients_of(&user).await.unwrap().unwrap_or_default();
        let once = first.is_ok() != second.is_ok() && clients.len() == 1;
        tally.check(once, || {
            format!(
                "try {n}: {first:?} and {second:?}, {} clients",
                clients.len()
            )
        });
    }
    tally.finish(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_leaving_at_once_leave_their_user_one() {
    let nodes = Nodes::open().await;
    let mut tally = Tally::new("two devices removed at once", &nodes);
    for n in 0..tries() {
        let user = format!("leaving-{n}@{DOMAIN}");
        let (user, second) = nodes.second_device(&user).await;
        let second_device = roost::protocol::ClientId::of(&user, second);
        let first_device = roost::protocol::ClientId::of(&user, FIRST_DEVICE_ID);
        let (first_removed, second_removed) = tokio::join!(
            nodes.a.remove_client(&first_device, 0),
            nodes.b.remove_client(&second_device, 0)
        );
        let outcomes = [first_removed.unwrap(), second_removed.unwrap()];
        let clients = nodes.a.clients_of(&user).await.unwrap().unwrap_or_default();
        let refused = outcomes
            .iter()
            .filter(|outcome| **outcome == Err(RemoveClientRefusal::LastClient))
            .count();
        tally.check(clients.len() == 1 && refused == 1, || {
            format!("try {n}: {outcomes:?}, {} clients left", clients.len())
        });
    }
    tally.finish(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_package_is_claimed_once() {
    let nodes = Nodes::open().await;
    let mut tally = Tally::new("one KeyPackage claimed twice at once", &nodes);
    for n in 0..tries() {
        let user = format!("claimed-{n}@{DOMAIN}");
        nodes.register(&user).await;
        let batch = vec![key_package(u64::MAX)];
        nodes
            .a
            .publish_key_packages(
                &roost::protocol::ClientId::of(&user, FIRST_DEVICE_ID),
                batch,
                100,
                1,
            )
            .await
            .unwrap()
            .unwrap();
        let (first, second) = tokio::join!(
            nodes.a.claim_key_packages(&user, 1, 1),
            nodes.b.claim_key_packages(&user, 1, 1)
        );
        let handed_out = [first.unwrap(), second.unwrap()]
            .into_iter()
            .flatten()
            .flatten()
            .filter(|claim| matches!(claim.claimed, Claimed::KeyPackage(_)))
            .count();
        tally.check(handed_out == 1, || {
            format!("try {n}: the KeyPackage was handed out {handed_out} times")
        });
    }
    tally.finish(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_commit_of_an_epoch_wins() {
    let nodes = Nodes::open().await;
    let mut tally = Tally::new("two commits for one epoch", &nodes);
    let admin = format!("committer@{DOMAIN}");
    nodes.register(&admin).await;
    let members = vec![member(&admin, FIRST_DEVICE_ID, 0)];
    for n in 0..tries() {
        let group_id = format!("group {:032x}", rand::random::<u128>()).into_bytes();
        let create = nodes.a.create_group(&group_id, group(0), members.clone());
        create.await.unwrap().unwrap();
        let commit = || transition(0, members.clone(), members.clone(), Vec::new());
        let (first, second) = tokio::join!(
            nodes.a.commit_group(&group_id, commit(), 1, LIMITS),
            nodes.b.commit_group(&group_id, commit(), 1, LIMITS)
        );
        let (first, second) = (first.unwrap(), second.unwrap());
        let epoch = nodes.a.group(&group_id).await.unwrap().map(|g| g.epoch);
        let one_won = first.is_ok() != second.is_ok()
            && [&first, &second]
                .iter()
                .any(|outcome| matches!(outcome, Err(GroupRefusal::WrongEpoch { current: 1 })))
            && epoch == Some(1);
        tally.check(one_won, || {
            format!("try {n}: {first:?} and {second:?}, now at epoch {epoch:?}")
        });
    }
    tally.finish(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federation_delivery_received_through_both_nodes_is_queued_once() {
    let nodes = Nodes::open().await;
    let mut tally = Tally::new("one federation delivery received twice at once", &nodes);
    let user = format!("remote-reader@{DOMAIN}");
    nodes.register(&user).await;
    for n in 0..tries() {
        let payload = unique_payload("relayed");
        let delivery = IncomingDelivery {
            delivery_id: format!("delivery {n} {:016x}", rand::random::<u64>()).into_bytes(),
            group_id: b"a group hosted by b.example".to_vec(),
            group_deleted: false,
            envelopes: vec![envelope(
                &user,
                FIRST_DEVICE_ID,
                &payload,
                Admission::MessageOrRefuseAll,
            )],
        };
        let (first, second) = tokio::join!(
            nodes
                .a
                .receive_deliveries("b.example", vec![delivery.clone()], 1, LIMITS),
            nodes
                .b
                .receive_deliveries("b.example", vec![delivery], 1, LIMITS)
        );
        let (first, second) = (first.unwrap(), second.unwrap());
        let (messages, _) = nodes
            .a
            .fetch_messages(
                &roost::protocol::ClientId::of(&user, FIRST_DEVICE_ID),
                0,
                10_000,
                1 << 24,
            )
            .await
            .unwrap();
        let copies = messages
            .iter()
            .filter(|message| message.payload == *payload)
            .count();
        tally.check(copies == 1, || {
            format!("try {n}: queued {copies} times ({first:?}, {second:?})")
        });
    }
    tally.finish(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_with_room_for_one_more_takes_one_of_two_messages_sent_at_once() {
    let nodes = Nodes::open().await;
    let mut tally = Tally::new("two messages for the last place in a queue", &nodes);
    let limits = QueueLimits::per_client(1, 1 << 20);
    for n in 0..tries() {
        let user = format!("full-{n}@{DOMAIN}");
        nodes.register(&user).await;
        let envelopes = || {
            let payload = unique_payload("for the last place");
            vec![envelope(
                &user,
                FIRST_DEVICE_ID,
                &payload,
                Admission::Message,
            )]
        };
        let (first, second) = tokio::join!(
            nodes.a.enqueue(envelopes(), 1, limits),
            nodes.b.enqueue(envelopes(), 1, limits)
        );
        let (count, _) = nodes
            .a
            .queue_size(&roost::protocol::ClientId::of(&user, FIRST_DEVICE_ID))
            .await
            .unwrap();
        let (first, second) = (first.unwrap(), second.unwrap());
        tally.check(count == 1, || {
            format!("try {n}: {count} messages in a queue of 1 ({first:?}, {second:?})")
        });
    }
    tally.finish(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_being_removed_keeps_no_push_target() {
    let nodes = Nodes::open().await;
    let mut tally = Tally::new("push target added / device removed", &nodes);
    for n in 0..tries() {
        let (user, device) = nodes.second_device(&format!("pushed-{n}@{DOMAIN}")).await;
        let endpoint = format!("https://push.example/{:032x}", rand::random::<u128>());
        let target = roost::protocol::PushTarget::WebPush(roost::protocol::WebPushSubscription {
            endpoint: roost::protocol::Text::new(&endpoint).unwrap(),
            p256dh: vec![4; 65].into(),
            auth: vec![1; 16].into(),
        });
        let client = roost::protocol::ClientId::of(&user, device);
        let add = nodes.a.add_push_target(&client, target, 1, 4);
        let outcome = nodes.against_removal((&user, device), add).await;
        let left = nodes.holding(endpoint.as_bytes()).await;
        tally.check(left.is_empty(), || {
            format!("try {n} (add {outcome}): the removed device's push target is in {left:?}")
        });
    }
    tally.finish(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_being_removed_keeps_no_group_log_reading() {
    let nodes = Nodes::open().await;
    let mut tally = Tally::new("group logs turned on / device removed", &nodes);
    for n in 0..tries() {
        let (user, device) = nodes
            .second_device(&format!("log-reader-{n}@{DOMAIN}"))
            .await;
        let client = roost::protocol::ClientId::of(&user, device);
        let turn_on = nodes.a.use_group_logs(&client);
        let outcome = nodes.against_removal((&user, device), turn_on).await;
        let reads_logs = nodes
            .a
            .uses_group_logs(&roost::protocol::ClientId::of(&user, device))
            .await
            .unwrap();
        tally.check(!reads_logs, || {
            format!("try {n} ({outcome}): the removed device still reads group logs")
        });
    }
    tally.finish(&nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_at_once_through_both_nodes_has_one_holder() {
    let nodes = Nodes::open().await;
    let mut tally = Tally::new("one lease taken twice at once", &nodes);
    for n in 0..tries() {
        let lease = format!("job-{n}");
        let (first, second) = tokio::join!(
            nodes.a.hold_lease(&lease, 1, 1_000, 60_000),
            nodes.b.hold_lease(&lease, 2, 1_000, 60_000)
        );
        let (first, second) = (first.unwrap(), second.unwrap());
        tally.check(first.is_some() != second.is_some(), || {
            format!("try {n}: node 1 {first:?}, node 2 {second:?}")
        });
    }
    tally.finish(&nodes);
}

/// Puts one delivery for `peer` in the outbox through `store`; returns the outbox's first seq.
async fn queue_for_peer(store: &Store, peer: &str) -> u64 {
    let remote = vec![OutgoingDelivery {
        peer: peer.to_owned(),
        delivery: b"a delivery".to_vec(),
    }];
    store
        .deliver(Vec::new(), None, remote, 1, LIMITS, None)
        .await
        .unwrap()
        .unwrap();
    let waiting = store.outbox_first(peer, 10, 1 << 20).await.unwrap();
    waiting.last().unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drainer_paused_past_its_lease_cannot_remove_what_the_next_holder_drains() {
    let nodes = Nodes::open().await;
    let (peer, lease) = ("b.example", "outbox:b.example".to_owned());
    let fence = |holder, generation| LeaseFence {
        lease: lease.clone(),
        holder,
        generation,
    };
    // Node 1 takes the outbox lease for 500 ms and reads a delivery to send...
    let first = nodes
        .a
        .hold_lease(&lease, 1, 1_000, 500)
        .await
        .unwrap()
        .unwrap();
    let seq = queue_for_peer(&nodes.a, peer).await;
    // ... and pauses. Its lease runs out; node 2 takes it over.
    let second = nodes
        .b
        .hold_lease(&lease, 2, 1_600, 500)
        .await
        .unwrap()
        .unwrap();
    assert!(second > first, "the lease changed hands: a new generation");
    // Node 1 resumes: by its clock (1,700) or by a clock running slow (1,200, when its lease
    // looks unexpired), its removal is refused and the delivery stays for node 2.
    for now in [1_700, 1_200] {
        let done = nodes
            .a
            .outbox_done(peer, vec![seq], Some(fence(1, first)), now);
        assert!(
            !done.await.unwrap(),
            "a stale drainer removed deliveries (at {now})"
        );
        assert_eq!(
            nodes.a.outbox_first(peer, 10, 1 << 20).await.unwrap().len(),
            1
        );
    }
    // Renewing is no way back in while node 2 holds it.
    assert_eq!(
        nodes.a.hold_lease(&lease, 1, 1_700, 500).await.unwrap(),
        None
    );
    // Node 2 drains under its own lease.
    let done = nodes
        .b
        .outbox_done(peer, vec![seq], Some(fence(2, second)), 1_700);
    assert!(done.await.unwrap());
    assert!(nodes
        .a
        .outbox_first(peer, 10, 1 << 20)
        .await
        .unwrap()
        .is_empty());
    // A holder whose lease expired with no taker yet is fenced out too until it renews (a new
    // generation, since the lease lapsed).
    let seq = queue_for_peer(&nodes.a, peer).await;
    let lapsed = nodes
        .b
        .outbox_done(peer, vec![seq], Some(fence(2, second)), 2_200);
    assert!(!lapsed.await.unwrap());
    let renewed = nodes
        .b
        .hold_lease(&lease, 2, 2_200, 500)
        .await
        .unwrap()
        .unwrap();
    assert!(renewed > second);
    let done = nodes
        .b
        .outbox_done(peer, vec![seq], Some(fence(2, renewed)), 2_300);
    assert!(done.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_queued_while_the_queue_is_acknowledged_is_counted_once() {
    let nodes = Nodes::open().await;
    let mut tally = Tally::new("message queued / queue acknowledged", &nodes);
    for n in 0..tries() {
        let user = format!("acking-{n}@{DOMAIN}");
        nodes.register(&user).await;
        let earlier: Vec<Envelope> = (0..3)
            .map(|_| {
                let payload = unique_payload("earlier");
                envelope(&user, FIRST_DEVICE_ID, &payload, Admission::Message)
            })
            .collect();
        nodes.a.enqueue(earlier, 1, LIMITS).await.unwrap().unwrap();
        let payload = unique_payload("new");
        let new = vec![envelope(
            &user,
            FIRST_DEVICE_ID,
            &payload,
            Admission::Message,
        )];
        let client = roost::protocol::ClientId::of(&user, FIRST_DEVICE_ID);
        let (queued, acked) = tokio::join!(
            nodes.a.enqueue(new, 1, LIMITS),
            nodes.b.ack_messages(&client, 3)
        );
        queued.unwrap().unwrap();
        acked.unwrap().unwrap();
        let (waiting, _) = nodes
            .a
            .fetch_messages(
                &roost::protocol::ClientId::of(&user, FIRST_DEVICE_ID),
                0,
                100,
                1 << 20,
            )
            .await
            .unwrap();
        let size = nodes
            .a
            .queue_size(&roost::protocol::ClientId::of(&user, FIRST_DEVICE_ID))
            .await
            .unwrap();
        let exact = waiting.len() == 1
            && waiting[0].payload == *payload
            && size == (1, payload.len() as u64);
        tally.check(exact, || {
            format!(
                "try {n}: {} messages waiting, the queue counts {size:?}",
                waiting.len()
            )
        });
    }
    tally.finish(&nodes);
}
