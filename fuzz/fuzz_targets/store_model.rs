//! The store against a model: random enqueues (of every admission class), acknowledgements and
//! reopenings of the database, checked after every step against an in-memory model of each
//! client's queue (sequence numbers, order, contents, what a full queue refuses).
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use roost::store::{Admission, Enqueued, Envelope, NewUser, QueueLimits, Store};

const CLIENTS: usize = 3;
const LIMITS: QueueLimits = QueueLimits::per_client(4, 64);

/// Each client's queue as the store must hold it: seq -> payload, and the next seq.
#[derive(Default)]
struct Model {
    queues: [BTreeMap<u64, Vec<u8>>; CLIENTS],
    next: [u64; CLIENTS],
}

fn user(index: usize) -> String {
    format!("user{index}@localhost")
}

/// The one device of user `index`.
fn device(index: usize) -> roost::protocol::ClientId {
    roost::protocol::ClientId {
        user_id: roost::protocol::Text::truncated(&user(index)),
        device_id: 1,
    }
}

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(data));
});

async fn run(data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    for index in 0..CLIENTS {
        let mut key = [0u8; 32];
        key[0] = index as u8 + 1;
        store
            .register_user(NewUser {
                user_id: user(index),
                signature_key: key,
                now: 0,
                quarantine_secs: 0,
                invite: None,
                issue_credential: Box::new(|_| vec![1]),
            })
            .await
            .unwrap()
            .unwrap();
    }
    let mut model = Model {
        next: [1; CLIENTS],
        ..Model::default()
    };
    for step in data.chunks(3) {
        let [op, a, b] = [
            step[0],
            *step.get(1).unwrap_or(&0),
            *step.get(2).unwrap_or(&0),
        ];
        let client = a as usize % CLIENTS;
        match op % 4 {
            // Enqueue an application message (refused alone when full).
            0 | 1 => {
                let payload = vec![b; (b % 40) as usize];
                let envelope = Envelope::new(
                    device(client),
                    roost::protocol::MessageKind::Mls,
                    Arc::new(payload.clone()),
                    Admission::Message,
                );
                let outcome = store.enqueue(vec![envelope], 0, LIMITS).await.unwrap();
                let queue = &mut model.queues[client];
                let bytes: usize = queue.values().map(Vec::len).sum();
                let fits = (queue.len() as u64) < LIMITS.max_messages
                    && (bytes + payload.len()) as u64 <= LIMITS.max_bytes;
                if fits {
                    let seq = model.next[client];
                    assert_eq!(outcome, Ok(vec![Enqueued::Queued { seq }]));
                    queue.insert(seq, payload);
                    model.next[client] += 1;
                } else {
                    assert_eq!(outcome, Ok(vec![Enqueued::QueueFull]));
                }
            }
            // Acknowledge up to some sequence number.
            2 => {
                let up_to = u64::from(b) % (model.next[client] + 2);
                let acked = store.ack_messages(&device(client), up_to).await.unwrap();
                if up_to >= model.next[client] {
                    assert_eq!(acked, Err(model.next[client]));
                } else {
                    assert_eq!(acked, Ok(()));
                    model.queues[client].retain(|seq, _| *seq > up_to);
                }
            }
            // Reopen: what was answered is on disk.
            _ => {
                store.close().await;
                drop(store);
                store = Store::open(dir.path()).unwrap();
            }
        }
        for (index, queue) in model.queues.iter().enumerate() {
            let (messages, next) = store
                .fetch_messages(&device(index), 0, 100, 1 << 20)
                .await
                .unwrap();
            assert_eq!(next, model.next[index]);
            let stored: BTreeMap<u64, Vec<u8>> =
                messages.into_iter().map(|m| (m.seq, m.payload)).collect();
            assert_eq!(&stored, queue);
        }
    }
    store.close().await;
}
