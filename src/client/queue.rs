//! A device's place in its queue, and what a `NewMessages` hint asks of it: the messages a hint
//! carries are processed without a fetch when they follow on from what is done.

use crate::protocol::{FetchedMessages, NewMessages, QueuedMessage};

/// How far a device has processed and acknowledged its queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueuePosition {
    /// Every message up to this sequence number is processed and acknowledged.
    done: u64,
}

/// What to do about a `NewMessages` hint.
#[derive(Debug, PartialEq, Eq)]
pub enum HintAction<'h> {
    /// Everything it announces is done already.
    Nothing,
    /// Process these (they follow on from what is done), then acknowledge the last.
    Process(&'h [QueuedMessage]),
    /// Fetch from the queue: messages in between were not carried.
    Fetch,
}

impl QueuePosition {
    /// The last sequence number processed and acknowledged (0: none yet).
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Records that everything up to `seq` is processed and acknowledged.
    pub fn advance(&mut self, seq: u64) {
        self.done = self.done.max(seq);
    }

    /// Records a fetch that found the queue empty: everything before its `next_seq` is gone.
    pub fn caught_up(&mut self, fetched: &FetchedMessages) {
        if fetched.messages.is_empty() {
            self.advance(fetched.next_seq.saturating_sub(1));
        }
    }

    /// What to do about `hint`.
    pub fn on_hint<'h>(&self, hint: &'h NewMessages) -> HintAction<'h> {
        if hint.latest_seq <= self.done {
            return HintAction::Nothing;
        }
        match hint.messages.first() {
            Some(first) if Some(first.seq) == self.done.checked_add(1) => {
                HintAction::Process(&hint.messages)
            }
            _ => HintAction::Fetch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MessageKind;

    fn hint(latest_seq: u64, carried: &[u64]) -> NewMessages {
        NewMessages {
            latest_seq,
            messages: carried
                .iter()
                .map(|&seq| QueuedMessage {
                    seq,
                    enqueued_at_ms: 0,
                    kind: MessageKind::Mls,
                    payload: vec![].into(),
                })
                .collect(),
        }
    }

    #[test]
    fn carried_messages_are_used_only_when_they_follow_on() {
        let mut position = QueuePosition::default();
        position.caught_up(&FetchedMessages {
            messages: Vec::new(),
            next_seq: 5,
        });
        assert_eq!(position.done(), 4);
        let follows = hint(6, &[5, 6]);
        assert_eq!(
            position.on_hint(&follows),
            HintAction::Process(&follows.messages)
        );
        assert_eq!(
            position.on_hint(&hint(6, &[6])),
            HintAction::Fetch,
            "5 was not carried"
        );
        assert_eq!(position.on_hint(&hint(6, &[])), HintAction::Fetch);
        position.advance(6);
        assert_eq!(position.on_hint(&hint(6, &[5, 6])), HintAction::Nothing);
        position.advance(3);
        assert_eq!(position.done(), 6, "a position never moves back");
    }
}
